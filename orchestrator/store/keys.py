"""The Redis key schema: every key the orchestrator writes, in one place.

All keys start with a configurable prefix (``sg:`` by default). Lua scripts that must reach keys
derived from data (a job's site, a site's counters) build them from the same templates, passed
in ARGV as the prefix; the templates below and in ``lua/*.lua`` must agree.

    {p}job:{id}              hash   one job: spec (JobSpec protobuf bytes), status fields (those
                                    at their defaults left out) and its history (h: its events)
    {p}jobs                  zset   every job id, scored by submit time in ms (listing, paging)
    {p}queues                set    queue names that have ever had a job
    {p}pending:{queue}       zset   pending job ids, scored by priority class then submit time
    {p}unsched               zset   pending jobs no registered site can ever run
    {p}idem:{tenant}:{rid}   string job id for a client request id (idempotent submit)
    {p}events                stream every job event (capped; an entry holds up to 100 events of
                                    one state, site and message: job and attempt list them)
    {p}sites                 set    registered site ids
    {p}sites:ver             string bumped on every site registration or state change
    {p}site:{id}             hash   registration (Site protobuf bytes), owner, state, capacity,
                                    heartbeat, effective policy (eff: SitePolicy protobuf bytes,
                                    and pol:c / pol:t / pol:surplus as commit.lua checks them),
                                    policy version (pver: bumped by every write to the
                                    registration, base policy or offers)
    {p}site:{id}:used        hash   capacity in use by jobs placed there: gpu:{type}, cpus, mem
    {p}site:{id}:active      set    job ids placed there and not finished
    {p}site:{id}:outbox      zset   SCHEDULED job ids waiting to be sent to the agent
    {p}site:{id}:inflight    zset   DISPATCHED job ids the agent has not acknowledged yet
    {p}site:{id}:cancels     set    "{job_id}:{attempt}" cancels to send to the agent
    {p}site:{id}:releasing   hash   capacity held by jobs being preempted there (freed soon)
    {p}site:{id}:offers      hash   capacity offers: offer id -> CapacityOffer protobuf bytes
    {p}site:{id}:usage       hash   what ended attempts used there, by tenant: gs:{tenant}
                                    GPU-seconds, j:{tenant} joules (HINCRBYFLOAT)
    {p}site:{id}:log         stream the site's administrative log (state changes, withdrawals)
    {p}offers                set    ids of the sites that have capacity offers
    {p}once:{token id}       string a single-use token that was spent (expires after the token)
    {p}surplus               set    placed, unfinished SURPLUS-class jobs (preemption candidates)
    {p}tenants               set    tenant ids
    {p}tenant:{id}           hash   tenant (Tenant protobuf bytes), country, weight, quotas
    {p}tenant:{id}:used      hash   GPUs (overall and gpus:{country}), CPUs, memory held now
    {p}epoch                 string the epoch: a counter every control-plane process INCRs
                                    (a value below one seen means Redis went back in time)
    {p}notify                pubsub channel: a site id whose outbox or cancels changed
    {p}wake                  pubsub channel: new pending work for the scheduler
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    """Key templates under one prefix."""

    prefix: str = "sg:"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}jobs"

    @property
    def queues(self) -> str:
        return f"{self.prefix}queues"

    def pending(self, queue: str) -> str:
        return f"{self.prefix}pending:{queue}"

    @property
    def unschedulable(self) -> str:
        return f"{self.prefix}unsched"

    def idempotency(self, tenant: str, request_id: str) -> str:
        return f"{self.prefix}idem:{tenant}:{request_id}"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def sites(self) -> str:
        return f"{self.prefix}sites"

    @property
    def sites_version(self) -> str:
        return f"{self.prefix}sites:ver"

    def site(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}"

    def site_used(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:used"

    def site_active(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:active"

    def site_outbox(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:outbox"

    def site_inflight(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:inflight"

    def site_cancels(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:cancels"

    def site_releasing(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:releasing"

    def site_offers(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:offers"

    def site_usage(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:usage"

    def site_log(self, site_id: str) -> str:
        return f"{self.prefix}site:{site_id}:log"

    @property
    def offer_sites(self) -> str:
        return f"{self.prefix}offers"

    def spent_token(self, token_id: str) -> str:
        return f"{self.prefix}once:{token_id}"

    @property
    def surplus_running(self) -> str:
        return f"{self.prefix}surplus"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    def tenant(self, tenant_id: str) -> str:
        return f"{self.prefix}tenant:{tenant_id}"

    def tenant_used(self, tenant_id: str) -> str:
        return f"{self.prefix}tenant:{tenant_id}:used"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    @property
    def notify_channel(self) -> str:
        return f"{self.prefix}notify"

    @property
    def wake_channel(self) -> str:
        return f"{self.prefix}wake"
