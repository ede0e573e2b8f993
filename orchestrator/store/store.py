"""The queue store: jobs, queues, sites and events in Redis, every change one Lua script.

Domain code: raises ``orchestrator.errors`` classes, never imports gRPC. A Redis that cannot be
reached raises ``StoreUnavailableError`` and nothing is half-written (each change is one script).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf.timestamp_pb2 import Timestamp

from orchestrator._pb.orchestrator.v1 import federation_pb2, types_pb2
from orchestrator.config import RedisConfig
from orchestrator.errors import (
    IllegalTransitionError,
    InvalidSpecError,
    JobNotFoundError,
    PermissionDeniedError,
    SiteNotFoundError,
    StoreUnavailableError,
    TenantNotFoundError,
)
from orchestrator.federation import effective_policy, offer_active
from orchestrator.ids import new_job_id
from orchestrator.jurisdictions import expand
from orchestrator.states import JobState
from orchestrator.store.connection import use_c_packing
from orchestrator.store.keys import Keys
from orchestrator.store.scripts import Scripts

__all__ = [
    "MAX_SUBMIT_BATCH",
    "Ack",
    "Assignment",
    "Decision",
    "HeldAttempt",
    "JobStore",
    "PendingJob",
    "PendingRef",
    "Reconciliation",
    "RunningRecord",
    "SiteRecord",
    "StatusReport",
    "Submitted",
    "TenantRecord",
    "Victim",
    "pending_score",
    "unavailable_as_error",
]

log = logging.getLogger(__name__)

EVENTS_MAXLEN = 20_000
"""Entries kept in the global events stream (each holds up to 100 events: see lua/_lib.lua)."""
IDEMPOTENCY_TTL_SECONDS = 7 * 24 * 3600
_RECORD_VALUE_BYTES = 1024  # hash-max-ziplist-value that keeps job records listpacks
_READ_PER_CALL = 5_000  # job ids per read script call (Lua's unpack and reply sizes stay small)
_CLASS_SPAN = 10**13  # ms; pending score = (CRITICAL - class) * span + submit ms
_LIST_SCAN = 500
_SUBMIT_SPACES = 10  # separators in submit.lua's per-job fields string
MAX_SUBMIT_BATCH = 10_000
"""Most jobs one :meth:`JobStore.submit_many` (one SubmitJobs call) may carry: one Lua call
holds Redis for all of them."""
_RUNNING_FIELDS = ("state", "attempt", "tenant", "site", "gpu_type", "r_gpus", "r_cpus", "r_mem",
                   "r_watts", "nonhome", "preempted_at")  # fmt: skip
"""What ``surplus_running`` reads of each job (see ``_running_records``)."""
_ENDS = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
"""The states a RUNNING report may share one update with (see ``apply_status``)."""
_RS = "\x1e"
_SITES_PER_CALL = 1000  # sites per call of seen.lua or sites_with_work: microseconds each
_CAS_TRIES = 20  # reads and writes of a site's policy that a concurrent change can undo
_OFFER_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True)
class PendingRef:
    """A pending job as the scheduler first sees it: id, attempt and queue order."""

    job_id: str
    attempt: int
    score: float


@dataclass(frozen=True, slots=True)
class PendingJob:
    """What the scheduler keeps of a pending job while it stays in its window."""

    spec: types_pb2.JobSpec
    traceparent: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Submitted:
    """What one ``submit.lua`` call did with a batch of specs (``JobStore.submit_specs``)."""

    job_ids: list[str]
    """Per spec, in order: the new job's id, or the earlier job's for a deduplicated retry."""
    deduplicated: list[bool]
    earlier: dict[str, types_pb2.Job]
    """The earlier jobs of the deduplicated specs, as read back (their current state)."""
    created: Timestamp
    """The new jobs' submit time."""

    def write_job(self, i: int, spec: types_pb2.JobSpec, into: types_pb2.Job) -> None:
        """Write the job of the ``i``-th spec (``spec``) into the empty message ``into``: the
        new job as written (PENDING, attempt 1), or the earlier one. Filling a message that
        is already where it goes (a response's repeated field) copies the spec once, where
        making a ``Job`` and handing it to a parent message copies it twice."""
        job_id = self.job_ids[i]
        if self.deduplicated[i]:
            into.CopyFrom(self.earlier[job_id])
            return
        into.id = job_id
        into.state = types_pb2.JOB_STATE_PENDING
        into.attempt = 1
        into.reason = "waiting for placement"
        into.created_at.CopyFrom(self.created)
        into.updated_at.CopyFrom(self.created)
        into.spec.CopyFrom(spec)


@dataclass(frozen=True, slots=True)
class Decision:
    """Place attempt ``attempt`` of ``job_id`` on ``site`` using GPUs of ``gpu_type``."""

    job_id: str
    attempt: int
    site: str
    gpu_type: str = ""
    watts: int = 0


@dataclass(frozen=True, slots=True)
class Victim:
    """Preempt attempt ``attempt`` of ``job_id`` to make room for ``for_job_id``."""

    job_id: str
    attempt: int
    for_job_id: str


@dataclass(frozen=True, slots=True)
class RunningRecord:
    """A placed SURPLUS-class job that may be preempted."""

    job_id: str
    attempt: int
    tenant: str
    site: str
    gpu_type: str
    gpus: int
    cpus: int
    memory_mb: int
    watts: int
    nonhome: bool
    preempted_at: float | None


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant with its usage."""

    tenant: types_pb2.Tenant
    used_gpus: int
    used_gpus_by_jurisdiction: dict[str, int]
    used_cpus: int
    used_memory_mb: int


@dataclass(frozen=True, slots=True)
class Assignment:
    """A job taken from a site's outbox, ready to send to the agent."""

    job_id: str
    attempt: int
    spec: bytes
    traceparent: str
    gpu_type: str


@dataclass(frozen=True, slots=True)
class CycleView:
    """What a scheduler cycle reads before it places, read at one instant (``cycle_view``)."""

    epoch: int
    """The epoch, advanced by this read (for the caller's ``EpochGuard``)."""
    order: list[tuple[str, float]]
    """As ``pending_order``."""
    sites: list[SiteRecord]
    """As ``site_records()``; or, with ``silent_before`` and no job pending, only the sites
    last heard from before that time (see ``cycle_view``)."""
    tenants: list[TenantRecord]
    """As ``tenant_records()``."""
    surplus: list[RunningRecord]
    """As ``surplus_running()``."""


@dataclass(frozen=True, slots=True)
class SiteWork:
    """What a site's stream carries from the store: assignments taken from its outbox, and the
    (job id, attempt) cancels to deliver, sorted."""

    assignments: list[Assignment]
    cancels: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Ack:
    """The agent's answer to one assignment."""

    job_id: str
    attempt: int
    accepted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One attempt state change reported by an agent."""

    job_id: str
    attempt: int
    state: JobState
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class HeldAttempt:
    """An attempt a site's agent holds, as it reports when a stream opens."""

    job_id: str
    attempt: int
    state: JobState
    """DISPATCHED (accepted, not started), RUNNING, or the state it ended in."""


@dataclass
class Reconciliation:
    """The store's answer to what an agent holds (see reconcile.lua)."""

    keep: list[tuple[str, int]] = field(default_factory=list)
    """Current attempts: keep running them."""
    stop: list[tuple[str, int]] = field(default_factory=list)
    """Running attempts the store no longer wants there."""
    forget: list[tuple[str, int]] = field(default_factory=list)
    """Ended attempts whose outcome is no longer needed."""
    requeued: list[str] = field(default_factory=list)
    """Jobs the store had at the site that the agent does not hold: requeued (or finished
    CANCELLED when a cancel was pending)."""


@dataclass(frozen=True, slots=True)
class SiteRecord:
    """A site as the scheduler needs it: registration, state, capacity and use."""

    site: types_pb2.Site
    state: int
    capacity_gpus: dict[str, int]
    capacity_cpus: int
    capacity_memory_mb: int
    used_gpus: dict[str, int]
    used_cpus: int
    used_memory_mb: int
    active_jobs: int
    last_heartbeat: float | None
    connected_by: str
    used_watts: int = 0
    used_gpus_nonhome: int = 0
    releasing_gpus: dict[str, int] | None = None
    releasing_cpus: int = 0
    releasing_memory_mb: int = 0
    releasing_watts: int = 0
    policy: types_pb2.SitePolicy | None = None
    """The policy placement enforces: the base one (``site.policy``, as the owner set it) with
    the site's capacity offers that hold now (``orchestrator.federation.effective_policy``).
    None for a site recorded before offers existed: ``site.policy`` applies."""


@dataclass(frozen=True, slots=True)
class _PolicyInputs:
    """What a site's effective policy is computed from, as read at one policy version."""

    version: str
    site: types_pb2.Site | None
    offers: dict[str, federation_pb2.CapacityOffer]
    effective: bytes | None


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _site_records(site_ids: Sequence[str], rows: Sequence[Any]) -> list[SiteRecord]:
    """Site records from the four items per site of add_site_row (lua/_lib.lua; a missing site
    has none)."""
    out = []
    for i in range(len(site_ids)):
        info, used, active, releasing = rows[4 * i : 4 * i + 4]
        if not info:
            continue
        g = {info[k].decode(): info[k + 1] for k in range(0, len(info), 2)}
        u = {used[k].decode(): int(used[k + 1]) for k in range(0, len(used), 2)}
        rel = {releasing[k].decode(): int(releasing[k + 1]) for k in range(0, len(releasing), 2)}
        site = types_pb2.Site()
        site.ParseFromString(g.get("reg", b""))
        policy = None
        if "eff" in g:
            policy = types_pb2.SitePolicy()
            policy.ParseFromString(g["eff"])
        hb = _s(g.get("hb"))
        out.append(
            SiteRecord(
                site=site,
                state=int(_s(g.get("state")) or 0),
                capacity_gpus={
                    k[len("cap:gpu:") :]: int(v) for k, v in g.items() if k.startswith("cap:gpu:")
                },
                capacity_cpus=int(_s(g.get("cap:cpus")) or 0),
                capacity_memory_mb=int(_s(g.get("cap:mem")) or 0),
                used_gpus={k[4:]: v for k, v in u.items() if k.startswith("gpu:") and v},
                used_cpus=u.get("cpus", 0),
                used_memory_mb=u.get("mem", 0),
                active_jobs=int(active),
                last_heartbeat=float(hb) if hb else None,
                connected_by=_s(g.get("conn")),
                used_watts=u.get("watts", 0),
                used_gpus_nonhome=u.get("gpu_nonhome", 0),
                releasing_gpus={k[4:]: v for k, v in rel.items() if k.startswith("gpu:") and v},
                releasing_cpus=rel.get("cpus", 0),
                releasing_memory_mb=rel.get("mem", 0),
                releasing_watts=rel.get("watts", 0),
                policy=policy,
            )
        )
    return out


def _tenant_records(tenant_ids: Sequence[str], rows: Sequence[Any]) -> list[TenantRecord]:
    """Tenant records from two items per tenant: its spec (None if gone) and its used
    counters (a dict)."""
    out = []
    for i in range(len(tenant_ids)):
        raw, used = rows[2 * i], rows[2 * i + 1]
        if raw is None:
            continue
        tenant = types_pb2.Tenant()
        tenant.ParseFromString(raw)
        u = {k.decode(): int(v) for k, v in used.items()}
        out.append(
            TenantRecord(
                tenant=tenant,
                used_gpus=u.get("gpus", 0),
                used_gpus_by_jurisdiction={
                    k[5:]: v for k, v in u.items() if k.startswith("gpus:") and v
                },
                used_cpus=u.get("cpus", 0),
                used_memory_mb=u.get("mem", 0),
            )
        )
    return out


def _running_records(ids: Sequence[str], rows: Sequence[Any]) -> list[RunningRecord]:
    """Running records from the _RUNNING_FIELDS of each job (those not placed dropped)."""
    out = []
    for job_id, row in zip(ids, rows, strict=True):
        v = [_s(x) for x in row]
        if v[0] not in ("2", "3", "4"):
            continue
        out.append(
            RunningRecord(
                job_id=job_id,
                attempt=int(v[1]),
                tenant=v[2],
                site=v[3],
                gpu_type=v[4],
                gpus=int(v[5] or 0),
                cpus=int(v[6] or 0),
                memory_mb=int(v[7] or 0),
                watts=int(v[8] or 0),
                nonhome=v[9] == "1",
                preempted_at=float(v[10]) if v[10] else None,
            )
        )
    return out


def _pairs(flat: Sequence[Any]) -> dict[bytes, Any]:
    """A flat field, value list (HGETALL in a script) as a dict, as redis-py gives it."""
    return {flat[k]: flat[k + 1] for k in range(0, len(flat), 2)}


def _front(jobs: Iterable[tuple[str, float]], limit: int) -> list[tuple[str, float]]:
    """The ``limit`` (job id, score) pairs of lowest score (then id), in that order."""
    return [(jid, score) for score, jid in heapq.nsmallest(limit, ((sc, j) for j, sc in jobs))]


def _cancel_refs(members: Iterable[bytes | str]) -> list[tuple[str, int]]:
    """A site's cancels set ('job:attempt' members) as sorted (job id, attempt) pairs."""
    out = []
    for m in members:
        job_id, _, attempt = _s(m).rpartition(":")
        out.append((job_id, int(attempt)))
    return sorted(out)


def _ts(seconds: str) -> Timestamp:
    ts = Timestamp()
    if seconds:
        ts.FromNanoseconds(int(float(seconds) * 1e9))
    return ts


def _csv(items: Iterable[str]) -> str:
    """A set as ",A,B," (sorted), the form the Lua scripts test membership in; "" if empty."""
    values = sorted(set(items))
    return f",{','.join(values)}," if values else ""


def _now() -> str:
    return f"{time.time():.6f}"


def _policy_bytes(policy: types_pb2.SitePolicy) -> bytes:
    return policy.SerializeToString(deterministic=True)


def _policy_args(policy: types_pb2.SitePolicy) -> list[Any]:
    """An effective policy as the Lua scripts take it: bytes, pol:c, pol:t, pol:surplus."""
    return [
        _policy_bytes(policy),
        _csv(policy.allowed_tenant_countries),
        _csv(policy.allowed_tenants),
        policy.surplus_gpus if policy.has_surplus_limit else "",
    ]


async def _cas_tries() -> AsyncIterator[int]:
    """Rounds of a read, compute, checked write of a site's policy: the first at once, each
    next one (a concurrent write changed the site in between) after a short random pause, so
    that writers contending for one site spread out."""
    for attempt in range(_CAS_TRIES):
        if attempt:
            cap = min(0.002 * 2**attempt, 0.1)
            await asyncio.sleep(cap * secrets.randbelow(1001) / 1000)
        yield attempt


def _busy(site_id: str) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"site {site_id!r} kept changing while its policy was recomputed; retry"
    )


def _no_offer(site_id: str) -> InvalidSpecError:
    return InvalidSpecError("offer_id", f"no such offer on site {site_id}")


def _new_offer_id(taken: Mapping[str, object]) -> str:
    while True:
        offer_id = f"o-{secrets.token_hex(4)}"
        if offer_id not in taken:
            return offer_id


def _check_offer(offer: federation_pb2.CapacityOffer) -> None:
    """What the store relies on in an offer (the API validates the rest)."""
    if not offer.site_id:
        raise InvalidSpecError("offer.site_id", "is required")
    if offer.id and not _OFFER_ID_RE.match(offer.id):
        raise InvalidSpecError("offer.id", "1-64 letters, digits, '.', '_' or '-'")
    for i, w in enumerate(offer.hours):
        if w.start_hour > 23 or w.end_hour > 24:
            raise InvalidSpecError(
                f"offer.hours[{i}]", "start_hour is 0-23 and end_hour 0-24 (UTC)"
            )


@contextlib.contextmanager
def unavailable_as_error(
    on_connection_error: Callable[[], None] | None = None, *, username: str | None = None
) -> Any:
    """Turn Redis connection trouble into ``StoreUnavailableError`` (UNAVAILABLE to clients);
    ``on_connection_error`` runs first when the connection itself failed. A refused login or
    command names ``username`` (the Redis user; never the password)."""
    user = f" for user {username!r}" if username else ""
    try:
        yield
    except (
        redis.exceptions.AuthenticationError,
        redis.exceptions.AuthorizationError,
        redis.exceptions.AuthenticationWrongNumberOfArgsError,
    ) as exc:
        raise StoreUnavailableError(
            f"authentication to Redis failed{user}: the queue store (Redis) refused the "
            f"configured credentials: {exc}"
        ) from exc
    except redis.exceptions.NoPermissionError as exc:
        raise StoreUnavailableError(
            f"Redis denied a command{user} (its ACL lacks a permission the queue store "
            f"needs): {exc}"
        ) from exc
    except redis.exceptions.BusyLoadingError as exc:
        raise StoreUnavailableError("queue store (Redis) is loading its data; retry") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        if on_connection_error is not None:
            on_connection_error()
        raise StoreUnavailableError(f"queue store (Redis) unreachable: {exc}") from exc


def pending_score(priority: int, submit_ms: int) -> int:
    """Queue order: higher priority class first, then earlier submit."""
    return (types_pb2.PRIORITY_CLASS_CRITICAL - priority) * _CLASS_SPAN + submit_ms


class JobStore:
    """Jobs, queues, sites and events in one Redis, under one key prefix."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "sg:",
        watch_client: aioredis.Redis | None = None,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.prefix = prefix
        self._scripts = Scripts(client)
        # Blocking reads (event followers) hold a connection for a while: they get their own
        # pool, so that many watchers never starve submits of connections.
        self._watch_client = watch_client or client

    @classmethod
    def from_config(cls, config: RedisConfig) -> JobStore:
        """A store on new connection pools for ``config`` (connects lazily).

        The pools wait for a free connection (up to ``socket_timeout``) rather than failing at
        once when all are busy, so a burst of concurrent requests queues instead of erroring.
        """
        kwargs: dict[str, Any] = {
            "socket_timeout": config.socket_timeout,
            "socket_connect_timeout": config.socket_timeout,
            "health_check_interval": 30,
            "timeout": config.socket_timeout,
        }
        if config.username is not None:
            kwargs["username"] = config.username
        if config.password is not None:
            kwargs["password"] = config.password
        if config.url.startswith("rediss://"):
            kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True)
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if getattr(config, name) is not None:
                    kwargs[name] = getattr(config, name)

        def client(max_connections: int) -> aioredis.Redis:
            pool = aioredis.BlockingConnectionPool.from_url(
                config.url, max_connections=max_connections, **kwargs
            )
            # closing the client closes its pool
            return aioredis.Redis.from_pool(use_c_packing(pool))

        return cls(
            client(config.max_connections),
            prefix=config.prefix,
            watch_client=client(config.max_watch_connections),
        )

    def _unavailable(self) -> Any:
        user = self.client.connection_pool.connection_kwargs.get("username") or "default"
        return unavailable_as_error(username=user)

    async def close(self) -> None:
        """Close the connection pools."""
        await self.client.aclose()
        if self._watch_client is not self.client:
            await self._watch_client.aclose()

    async def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless Redis answers."""
        with self._unavailable():
            await self.client.ping()

    async def durability_warnings(self) -> list[str]:
        """What about the server's persistence settings could lose an acknowledged submit."""
        with self._unavailable():
            aof = await self.client.config_get("appendonly")
            fsync = await self.client.config_get("appendfsync")
        warnings = []
        if _s(aof.get("appendonly")) != "yes":
            warnings.append(
                "Redis has appendonly=no: acknowledged jobs are lost if Redis crashes "
                "(set appendonly yes and appendfsync always)"
            )
        elif _s(fsync.get("appendfsync")) != "always":
            warnings.append(
                f"Redis has appendfsync={_s(fsync.get('appendfsync'))}: up to a second of "
                "acknowledged jobs can be lost if the host crashes (set appendfsync always)"
            )
        return warnings + await self._memory_advice()

    async def _memory_advice(self) -> list[str]:
        """Whether job records can stay compact: a record (a few hundred bytes with its spec and
        history) is a listpack only while every value fits ``hash-max-ziplist-value`` (called
        ``hash-max-listpack-value`` since Redis 7); past it a record takes about three times
        the memory. ``LocalRedis`` sets 1024."""
        with self._unavailable():
            try:
                got = await self.client.config_get("hash-max-ziplist-value")
            except redis.exceptions.ResponseError:  # a managed Redis may refuse CONFIG
                return []
        value = next(iter(got.values()), None) if got else None
        if value is None or int(value) >= _RECORD_VALUE_BYTES:
            return []
        return [
            f"Redis has hash-max-ziplist-value={_s(value)}: job records over it take about "
            f"three times the memory (set hash-max-ziplist-value {_RECORD_VALUE_BYTES}, "
            "hash-max-listpack-value on Redis 7)"
        ]

    # ---------------------------------------------------------------- jobs

    async def submit(
        self, spec: types_pb2.JobSpec, *, traceparent: str = ""
    ) -> tuple[types_pb2.Job, bool]:
        """Enqueue a normalised spec. Returns the job and whether it was a deduplicated retry.

        A batch of one: see :meth:`submit_many`.
        """
        [result] = await self.submit_many([spec], traceparents=[traceparent])
        return result

    async def submit_many(
        self,
        specs: Sequence[types_pb2.JobSpec],
        *,
        traceparents: Sequence[str] | None = None,
    ) -> list[tuple[types_pb2.Job, bool]]:
        """Enqueue normalised specs, all in one atomic step (see :meth:`submit_specs`).
        Returns, in order, each job and whether it was a deduplicated retry."""
        done = await self.submit_specs(specs, traceparents=traceparents)
        out: list[tuple[types_pb2.Job, bool]] = []
        for i, spec in enumerate(specs):
            job = types_pb2.Job()
            done.write_job(i, spec, job)
            out.append((job, done.deduplicated[i]))
        return out

    async def submit_specs(
        self,
        specs: Sequence[types_pb2.JobSpec],
        *,
        traceparents: Sequence[str] | None = None,
    ) -> Submitted:
        """Enqueue normalised specs, all in one atomic step. Returns what became of each
        (``Submitted.write_job`` writes its job into a message).

        One call of ``submit.lua`` writes every job: Redis runs nothing else meanwhile, and the
        answer comes after the write is in the AOF (one fsync for the whole batch, which is
        what makes batches fast). A spec whose ``(tenant, client_request_id)`` is known, from an
        earlier submit or from earlier in this batch, returns the earlier job (read back from
        Redis, in its current state) and writes nothing. New jobs are returned as written
        (PENDING, attempt 1) without reading them back. Their ids come from
        :func:`orchestrator.ids.new_job_id` and increase in batch order, and they share one
        submit time, so their queue order is the batch order. ``traceparents``, one per spec,
        are recorded with the jobs (default: none).

        The batch is not split into chunks: chunks in separate scripts would not be atomic,
        and chunks in one MULTI/EXEC hold Redis just as long. Redis is busy for the whole
        call, about 30-45 us per job (Redis 6.2 with appendfsync always, on the test machine):
        some 40 ms for 1,000 jobs (the SDK's default batch), some 0.5 s for
        :data:`MAX_SUBMIT_BATCH`, the most one call may carry. Other clients see that as
        latency, not errors. More is ``InvalidSpecError`` on ``specs``.
        """
        if len(specs) > MAX_SUBMIT_BATCH:
            raise InvalidSpecError(
                "specs", f"{len(specs)} specs; at most {MAX_SUBMIT_BATCH} per call"
            )
        if traceparents is not None and len(traceparents) != len(specs):
            raise InvalidSpecError(
                "traceparents", f"{len(traceparents)} given for {len(specs)} specs"
            )
        if not specs:
            return Submitted([], [], {}, Timestamp())
        tps = traceparents if traceparents is not None else [""] * len(specs)
        now = time.time()
        now_text = f"{now:.6f}"
        submit_ms = int(now * 1000)
        args: list[Any] = [self.prefix, now_text, IDEMPOTENCY_TTL_SECONDS, EVENTS_MAXLEN]
        for spec, tp in zip(specs, tps, strict=True):
            res = spec.resources
            nodes = max(res.nodes, 1)
            fields = (
                f"{spec.tenant} {spec.queue} {int(spec.priority)} {max(spec.max_attempts, 1)} "
                f"{pending_score(spec.priority, submit_ms)} {res.gpus * nodes} "
                f"{res.cpus * nodes} {res.memory_mb * nodes} {spec.client_request_id} "
                f"{_csv(expand(spec.placement.allowed_jurisdictions))} "
                f"{_csv(spec.placement.excluded_sites)}"
            )
            if fields.count(" ") != _SUBMIT_SPACES:  # a spec that was not normalised
                raise InvalidSpecError(
                    "spec", "tenant, queue, client_request_id or placement holds a space"
                )
            args += [new_job_id(now), spec.SerializeToString(), tp, fields]
        with self._unavailable():
            flat = await self._scripts.run("submit", args)
        job_ids = [_s(job_id) for job_id in flat[::2]]
        deduplicated = [bool(int(dedup)) for dedup in flat[1::2]]
        earlier_ids = sorted({j for j, dedup in zip(job_ids, deduplicated, strict=True) if dedup})
        found = {j.id: j for j in await self.get_jobs(earlier_ids)} if earlier_ids else {}
        for job_id in earlier_ids:
            if job_id not in found:
                raise JobNotFoundError(job_id)
        return Submitted(job_ids, deduplicated, found, _ts(now_text))

    async def get_job(self, job_id: str) -> types_pb2.Job:
        """One job. Raises ``JobNotFoundError``."""
        with self._unavailable():
            fields = await self.client.hgetall(self.keys.job(job_id))
        if not fields:
            raise JobNotFoundError(job_id)
        return self._job_from_hash(job_id, fields)

    async def get_jobs(self, job_ids: Sequence[str]) -> list[types_pb2.Job]:
        """Several jobs in one round trip; missing ones are left out."""
        with self._unavailable():
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hgetall(self.keys.job(job_id))
                rows = await pipe.execute()
        return [self._job_from_hash(j, f) for j, f in zip(job_ids, rows, strict=True) if f]

    async def job_trace(self, job_id: str) -> str:
        """The traceparent recorded with the job at submit."""
        with self._unavailable():
            return _s(await self.client.hget(self.keys.job(job_id), "tp"))

    def _job_from_hash(self, job_id: str, f: Mapping[Any, Any]) -> types_pb2.Job:
        g = {k.decode(): v for k, v in f.items()}
        job = types_pb2.Job(
            id=job_id,
            state=int(_s(g.get("state")) or 0),  # type: ignore[arg-type]
            attempt=int(_s(g.get("attempt")) or 0),
            site=_s(g.get("site")),
            reason=_s(g.get("reason")),
            unschedulable=_s(g.get("unsched")) == "1",
            cancel_requested=_s(g.get("cancel")) == "1",
            preemptions=int(_s(g.get("preempts")) or 0),
        )
        job.spec.ParseFromString(g.get("spec", b""))
        if "exit_code" in g:
            job.exit_code = int(_s(g["exit_code"]))
            job.has_exit_code = True
        for name, key in (
            ("created_at", "created"),
            ("updated_at", "updated"),
            ("started_at", "started"),
            ("finished_at", "finished"),
        ):
            if g.get(key):
                getattr(job, name).CopyFrom(_ts(_s(g[key])))
        return job

    async def list_jobs(
        self,
        *,
        states: Iterable[JobState] = (),
        tenant: str = "",
        queue: str = "",
        site: str = "",
        page_size: int = 100,
        page_token: str = "",
    ) -> tuple[list[types_pb2.Job], str]:
        """Jobs newest first. Returns a page and the token of the next ("" at the end).

        Scans at most a few pages of ids per call, so a filter that matches rarely returns a
        short (possibly empty) page with a token to go on from.
        """
        want = {int(s.value) for s in states}
        page_size = max(1, min(page_size or 100, 1000))
        cursor = f"({page_token}" if page_token else "+"
        out: list[types_pb2.Job] = []
        scanned = 0
        last = ""
        with self._unavailable():
            while len(out) < page_size and scanned < 20 * max(page_size, _LIST_SCAN):
                ids = [
                    _s(i)
                    for i in await self.client.zrevrangebylex(
                        self.keys.jobs, cursor, "-", start=0, num=_LIST_SCAN
                    )
                ]
                if not ids:
                    return out, ""
                scanned += len(ids)
                async with self.client.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.hmget(self.keys.job(job_id), "state", "tenant", "queue", "site")
                    rows = await pipe.execute()
                matched: list[str] = []
                for job_id, (st, tn, qu, si) in zip(ids, rows, strict=True):
                    last = job_id
                    if st is None:
                        continue
                    if (
                        (not want or int(st) in want)
                        and (not tenant or _s(tn) == tenant)
                        and (not queue or _s(qu) == queue)
                        and (not site or _s(si) == site)
                    ):
                        matched.append(job_id)
                        if len(out) + len(matched) == page_size:
                            break
                out.extend(await self.get_jobs(matched))
                cursor = f"({last}"
                if len(ids) < _LIST_SCAN and len(out) < page_size:
                    return out, ""
        return out, last

    async def cancel(self, job_id: str, reason: str = "") -> types_pb2.Job:
        """Cancel a job (idempotent). Raises ``IllegalTransitionError`` if it already ended."""
        with self._unavailable():
            code, state = await self._scripts.run(
                "cancel", [self.prefix, job_id, _now(), EVENTS_MAXLEN, reason]
            )
        code = _s(code)
        if code == "missing":
            raise JobNotFoundError(job_id)
        if code == "terminal" and int(state) != JobState.CANCELLED.value:
            raise IllegalTransitionError(job_id, JobState(int(state)).name, "cancel")
        return await self.get_job(job_id)

    async def events(
        self, job_id: str, *, after: str = "", block_ms: int | None = None, count: int = 500
    ) -> list[types_pb2.JobEvent]:
        """Events of a job after cursor ``after`` ("" = from the start), at most ``count``.

        An event's id is its place in the job's history ("1", "2", ...; the history is the
        record's field ``h``, see ``lua/_lib.lua``). With ``block_ms``, waits up to that long
        for the first new one: it waits on the global events stream, which every script that
        records an event writes to, and reads the history again when anything was written.
        """
        first = int(after) if after else 0
        key = self.keys.job(job_id)
        with self._unavailable():
            if block_ms is None:
                raw: Any = await self.client.hget(key, "h")
                return self._events(job_id, raw, first, count)
            deadline = time.monotonic() + block_ms / 1000
            while True:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.xrevrange(self.keys.events, "+", "-", count=1)
                    pipe.hget(key, "h")
                    last, raw = await pipe.execute()
                events = self._events(job_id, raw, first, count)
                left_ms = int((deadline - time.monotonic()) * 1000)
                if events or left_ms <= 0:
                    return events
                since = _s(last[0][0]) if last else "0-0"
                await self._watch_client.xread({self.keys.events: since}, count=1, block=left_ms)

    async def follow_events(
        self, job_id: str, *, after: str = "", poll_ms: int = 1000
    ) -> AsyncIterator[types_pb2.JobEvent]:
        """Every event after ``after``, then new ones as they come, until a terminal one."""
        cursor = after
        backlog = await self.events(job_id, after=cursor)
        while True:
            for event in backlog:
                cursor = event.event_id
                yield event
                if JobState(event.state).is_terminal():
                    return
            backlog = await self.events(job_id, after=cursor, block_ms=poll_ms)

    @staticmethod
    def _events(job_id: str, raw: bytes | None, first: int, count: int) -> list[types_pb2.JobEvent]:
        """The events of a job's history ``raw`` after the ``first``-th, at most ``count``."""
        if not raw:
            return []
        entries = raw.split(b"\x1e")[:-1]  # each entry ends with the separator
        out = []
        for n, entry in enumerate(entries[first : first + count], start=first + 1):
            state, attempt, site, t, exit_code, msg = entry.decode().split("\x1f", 5)
            ev = types_pb2.JobEvent(
                event_id=str(n),
                job_id=job_id,
                state=int(state),  # type: ignore[arg-type]
                attempt=int(attempt),
                site=site,
                message=msg,
            )
            ev.time.CopyFrom(_ts(t))
            if exit_code:
                ev.exit_code = int(exit_code)
                ev.has_exit_code = True
            out.append(ev)
        return out

    # ---------------------------------------------------------------- sites

    async def register_site(
        self, site: types_pb2.Site, *, owner: str | None = None
    ) -> types_pb2.SiteStatus:
        """Register (or update) a normalised site registration; an existing site keeps its
        state and its capacity offers.

        ``owner=None`` is the operator's path: the site's owner becomes ``site.owner``. With
        ``owner`` (a partner id) the site's owner becomes ``owner``, and a site that exists with
        another owner (or none: registered by an operator without one) raises
        ``PermissionDeniedError`` with nothing written; the check and the write are one step, so
        of two partners registering the same new id exactly one wins.
        """
        stored = types_pb2.Site()
        stored.CopyFrom(site)
        if owner is not None:
            stored.owner = owner
        caps: list[Any] = [
            "cap:cpus", site.cpus, "cap:mem", site.memory_mb, "jur", site.jurisdiction,
            "home", _csv(site.home_countries),
        ]  # fmt: skip
        for pool in site.gpus:
            caps += [f"cap:gpu:{pool.type}", pool.count]
        if site.power_cap_mw > 0:
            caps += ["cap:watts", int(site.power_cap_mw * 1_000_000)]
        async for _ in _cas_tries():
            [cur] = await self._policy_inputs([site.id])
            now = time.time()
            eff = effective_policy(stored.policy, stored.home_countries, cur.offers.values(), now)
            with self._unavailable():
                code, _ = await self._scripts.run(
                    "register_site",
                    [self.prefix, site.id, stored.SerializeToString(), f"{now:.6f}",
                     0 if owner is None else 1, stored.owner, cur.version,
                     *_policy_args(eff), *caps],
                )  # fmt: skip
            if _s(code) == "denied":
                raise PermissionDeniedError(
                    f"site {site.id!r} belongs to another owner", principal=owner or ""
                )
            if _s(code) == "ok":
                return await self.get_site(site.id)
        raise _busy(site.id)

    async def site_owner(self, site_id: str) -> str:
        """The partner that owns a site ("" for none). Raises ``SiteNotFoundError``."""
        with self._unavailable():
            owner, reg = await self.client.hmget(self.keys.site(site_id), "owner", "reg")
        if reg is None:
            raise SiteNotFoundError(site_id)
        return _s(owner)

    async def set_site_state(
        self, site_id: str, state: int, *, reason: str = ""
    ) -> types_pb2.SiteStatus:
        """Set a site's administrative state (recorded in its log with ``reason``). Raises
        ``SiteNotFoundError``."""
        with self._unavailable():
            ok = await self._scripts.run(
                "set_site_state", [self.prefix, site_id, int(state), _now(), reason]
            )
            if not int(ok):
                raise SiteNotFoundError(site_id)
            if state == types_pb2.SITE_STATE_ACTIVE:
                await self._scripts.run("reconsider", [self.prefix])
        return await self.get_site(site_id)

    async def site_log(self, site_id: str, *, count: int = 100) -> list[tuple[float, int, str]]:
        """The latest ``count`` entries of a site's log, oldest first: (time, site state after,
        message). State changes (set_site_state, withdraw) and withdrawn offers."""
        with self._unavailable():
            rows: Any = await self.client.xrevrange(self.keys.site_log(site_id), count=count)
        out = []
        for _, f in reversed(rows):
            g = {k.decode(): _s(v) for k, v in f.items()}
            out.append((float(g.get("t") or 0), int(g.get("state") or 0), g.get("msg", "")))
        return out

    async def set_site_policy(
        self, site_id: str, policy: types_pb2.SitePolicy
    ) -> types_pb2.SiteStatus:
        """Replace a site's base policy (kept in its registration, as its owner set it) and
        apply the effective one (with its capacity offers). Raises ``SiteNotFoundError``."""
        async for _ in _cas_tries():
            [cur] = await self._policy_inputs([site_id])
            if cur.site is None:
                raise SiteNotFoundError(site_id)
            site = types_pb2.Site()
            site.CopyFrom(cur.site)
            site.policy.CopyFrom(policy)
            now = time.time()
            eff = effective_policy(policy, site.home_countries, cur.offers.values(), now)
            code = await self._apply_policy(site_id, cur.version, now, eff, reg=site)
            if code == "missing":
                raise SiteNotFoundError(site_id)
            if code == "ok":
                return await self.get_site(site_id)
        raise _busy(site_id)

    # ---------------------------------------------------------------- federation

    async def _policy_inputs(self, site_ids: Sequence[str]) -> list[_PolicyInputs]:
        """What a site's effective policy is computed from. The version is read first (with the
        registration, in one command): a write landing between the reads changes it, so the
        checked write that follows fails and is retried (no MULTI needed)."""
        with self._unavailable():
            async with self.client.pipeline(transaction=False) as pipe:
                for sid in site_ids:
                    pipe.hmget(self.keys.site(sid), "pver", "reg", "eff")
                    pipe.hgetall(self.keys.site_offers(sid))
                rows = await pipe.execute()
        out = []
        for i in range(len(site_ids)):
            (version, reg, eff), raw_offers = rows[2 * i], rows[2 * i + 1]
            site = None
            if reg is not None:
                site = types_pb2.Site()
                site.ParseFromString(reg)
            offers = {}
            for oid, raw in raw_offers.items():
                offer = federation_pb2.CapacityOffer()
                offer.ParseFromString(raw)
                offers[_s(oid)] = offer
            out.append(_PolicyInputs(_s(version) or "0", site, offers, eff))
        return out

    async def _apply_policy(
        self,
        site_id: str,
        version: str,
        now: float,
        eff: types_pb2.SitePolicy,
        *,
        reg: types_pb2.Site | None = None,
        ops: Sequence[tuple[str, str, bytes]] = (),
    ) -> str:
        """Run apply_policy.lua; its code ('ok', 'missing', 'conflict', 'no_offer')."""
        args: list[Any] = [
            self.prefix, site_id, version, f"{now:.6f}",
            reg.SerializeToString() if reg is not None else b"", *_policy_args(eff),
        ]  # fmt: skip
        for op, offer_id, raw in ops:
            args += [op, offer_id, raw]
        with self._unavailable():
            code, _ = await self._scripts.run("apply_policy", args)
        return _s(code)

    async def put_offer(self, offer: federation_pb2.CapacityOffer) -> federation_pb2.CapacityOffer:
        """Store a capacity offer on its site (``offer.site_id``) and apply the site's effective
        policy. An empty id gets a new one (``o-`` and 8 hex digits); an existing id on that site
        is replaced (keeping its ``created_at``, else set now). Returns the offer as stored, with
        ``active_now``. Raises ``SiteNotFoundError``, and ``InvalidSpecError`` for what the store
        relies on (site id, offer id characters, hour ranges; see also
        ``orchestrator.validation``)."""
        _check_offer(offer)
        stored = federation_pb2.CapacityOffer()
        stored.CopyFrom(offer)
        stored.active_now = False
        async for _ in _cas_tries():
            [cur] = await self._policy_inputs([offer.site_id])
            if cur.site is None:
                raise SiteNotFoundError(offer.site_id)
            now = time.time()
            if not offer.id:
                stored.id = _new_offer_id(cur.offers)
            prev = cur.offers.get(stored.id)
            if prev is not None and prev.HasField("created_at"):
                stored.created_at.CopyFrom(prev.created_at)
            else:
                stored.created_at.CopyFrom(_ts(f"{now:.6f}"))
            offers = {**cur.offers, stored.id: stored}
            eff = effective_policy(cur.site.policy, cur.site.home_countries, offers.values(), now)
            code = await self._apply_policy(
                offer.site_id, cur.version, now, eff,
                ops=[("put", stored.id, stored.SerializeToString())],
            )  # fmt: skip
            if code == "missing":
                raise SiteNotFoundError(offer.site_id)
            if code == "ok":
                out = federation_pb2.CapacityOffer()
                out.CopyFrom(stored)
                out.active_now = offer_active(stored, now)
                return out
        raise _busy(offer.site_id)

    async def list_offers(
        self, site_ids: Sequence[str] | None = None, *, now: float | None = None
    ) -> list[federation_pb2.CapacityOffer]:
        """Offers of the given sites (None: every site), by site then id, with ``active_now``
        for ``now`` (default: the current time)."""
        at = time.time() if now is None else now
        with self._unavailable():
            if site_ids is None:
                ids = sorted(_s(s) for s in await self.client.smembers(self.keys.offer_sites))
            else:
                ids = sorted(set(site_ids))
            async with self.client.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.hgetall(self.keys.site_offers(sid))
                rows = await pipe.execute()
        out = []
        for raw_offers in rows:
            offers = []
            for raw in raw_offers.values():
                offer = federation_pb2.CapacityOffer()
                offer.ParseFromString(raw)
                offer.active_now = offer_active(offer, at)
                offers.append(offer)
            out += sorted(offers, key=lambda o: o.id)
        return out

    async def delete_offer(self, site_id: str, offer_id: str) -> types_pb2.SiteStatus:
        """Delete an offer and apply the site's effective policy; running jobs are left alone
        (see ``withdraw``). Raises ``SiteNotFoundError``, or ``InvalidSpecError`` (field
        ``offer_id``) when the site has no such offer."""
        async for _ in _cas_tries():
            [cur] = await self._policy_inputs([site_id])
            if cur.site is None:
                raise SiteNotFoundError(site_id)
            if offer_id not in cur.offers:
                raise _no_offer(site_id)
            now = time.time()
            offers = [o for oid, o in cur.offers.items() if oid != offer_id]
            eff = effective_policy(cur.site.policy, cur.site.home_countries, offers, now)
            code = await self._apply_policy(
                site_id, cur.version, now, eff, ops=[("del", offer_id, b"")]
            )
            if code == "missing":
                raise SiteNotFoundError(site_id)
            if code == "no_offer":
                raise _no_offer(site_id)
            if code == "ok":
                return await self.get_site(site_id)
        raise _busy(site_id)

    async def withdraw(
        self, site_id: str, *, offer_id: str, mode: int, reason: str = ""
    ) -> tuple[types_pb2.SiteStatus, int, int]:
        """Withdraw one offer of a site, or (``offer_id=""``) the whole site from the federation.
        Returns the site's status, how many attempts were stopped to be requeued elsewhere, and
        how many withdrawn attempts are left running (see withdraw.lua).

        One offer: it is deleted and the site's effective policy applied; the withdrawn
        attempts are those of non-home tenants the new policy no longer lets in, then, while
        non-home tenants hold more GPUs than the new surplus limit, the most recently started.
        The whole site: every offer is deleted and the site becomes CORDONED, then DRAINING
        (both in its log, with ``reason``); every attempt there is withdrawn.

        ``mode`` (``federation_pb2.WithdrawMode``): REQUEUE stops withdrawn attempts that were
        sent (PREEMPTED, a cancel to the agent; requeued with attempt + 1 when it reports the
        end, never counted as a failure, counted in ``Job.preemptions``); FINISH and UNSPECIFIED
        leave them running. Withdrawn attempts not sent yet are requeued in every mode.
        Repeating a whole-site withdrawal changes nothing more. Raises ``SiteNotFoundError``,
        ``InvalidSpecError`` for an unknown mode or an offer the site does not have.
        """
        if mode not in federation_pb2.WithdrawMode.values():
            raise InvalidSpecError("mode", f"{mode} is not a withdraw mode")
        async for _ in _cas_tries():
            [cur] = await self._policy_inputs([site_id])
            if cur.site is None:
                raise SiteNotFoundError(site_id)
            if offer_id and offer_id not in cur.offers:
                raise _no_offer(site_id)
            now = time.time()
            kept = [o for oid, o in cur.offers.items() if offer_id and oid != offer_id]
            eff = effective_policy(cur.site.policy, cur.site.home_countries, kept, now)
            with self._unavailable():
                code, requeued, running = await self._scripts.run(
                    "withdraw",
                    [self.prefix, site_id, cur.version, f"{now:.6f}", EVENTS_MAXLEN, offer_id,
                     int(mode), reason, *_policy_args(eff)],
                )  # fmt: skip
            code = _s(code)
            if code == "missing":
                raise SiteNotFoundError(site_id)
            if code == "no_offer":
                raise _no_offer(site_id)
            if code == "ok":
                return await self.get_site(site_id), int(requeued), int(running)
        raise _busy(site_id)

    async def refresh_offers(self, now: float | None = None) -> int:
        """Apply again the effective policy of every site with offers whose policy at ``now``
        (default: the current time) differs from the one applied: hour windows that opened or
        closed. Returns how many sites changed. The scheduler calls it about once a minute."""
        at = time.time() if now is None else now
        with self._unavailable():
            ids = sorted(_s(s) for s in await self.client.smembers(self.keys.offer_sites))
        changed = 0
        for sid, first in zip(ids, await self._policy_inputs(ids), strict=True):
            cur = first
            async for _ in _cas_tries():
                if cur.site is None:
                    break
                eff = effective_policy(
                    cur.site.policy, cur.site.home_countries, cur.offers.values(), at
                )
                if cur.effective == _policy_bytes(eff):
                    break
                code = await self._apply_policy(sid, cur.version, at, eff)
                if code != "conflict":
                    changed += code == "ok"
                    break
                [cur] = await self._policy_inputs([sid])  # changed meanwhile: read again
        return changed

    async def usage(self, site_ids: Sequence[str]) -> list[federation_pb2.SiteUsage]:
        """GPU-hours and energy per tenant at each site (ordered by id): attempts that ended
        there plus the ones running now, up to now. GPU-hours are GPUs x hours RUNNING; energy
        is the watts placement reserved for the attempt (its GPUs at their pool's watts) x the
        same time."""
        ids = sorted(set(site_ids))
        if not ids:
            return []
        with self._unavailable():
            rows = await self._scripts.run("usage", [self.prefix, *ids])
        now = time.time()
        out = []
        for sid, (flat, running) in zip(ids, rows, strict=True):
            gpu_s: dict[str, float] = {}
            joules: dict[str, float] = {}
            for i in range(0, len(flat), 2):
                name, value = _s(flat[i]), float(flat[i + 1])
                kind, _, tenant = name.partition(":")
                target = gpu_s if kind == "gs" else joules
                target[tenant] = target.get(tenant, 0.0) + value
            for i in range(0, len(running), 4):
                tenant = _s(running[i])
                seconds = max(0.0, now - float(running[i + 3]))
                gpu_s[tenant] = gpu_s.get(tenant, 0.0) + int(running[i + 1]) * seconds
                joules[tenant] = joules.get(tenant, 0.0) + int(running[i + 2]) * seconds
            site = federation_pb2.SiteUsage(site_id=sid)
            site.as_of.CopyFrom(_ts(f"{now:.6f}"))
            for tenant in sorted(set(gpu_s) | set(joules)):
                site.tenants.add(
                    tenant=tenant,
                    gpu_hours=gpu_s.get(tenant, 0.0) / 3600,
                    energy_kwh=joules.get(tenant, 0.0) / 3.6e6,
                )
            site.gpu_hours = sum(t.gpu_hours for t in site.tenants)
            site.energy_kwh = sum(t.energy_kwh for t in site.tenants)
            out.append(site)
        return out

    async def consume_once(self, token_id: str, *, expires_at: float) -> bool:
        """Spend a single-use token: True the first time only. The mark is kept until a day
        after the token expires (at least an hour from now), so it cannot be spent again while
        it could still be accepted."""
        exat = max(int(expires_at) + 86_400 + 1, int(time.time()) + 3600)
        with self._unavailable():
            ok = await self.client.set(self.keys.spent_token(token_id), "1", nx=True, exat=exat)
        return bool(ok)

    async def site_records(self, site_ids: Sequence[str] | None = None) -> list[SiteRecord]:
        """Sites (all, or the ones named) with state, capacity and use, ordered by id."""
        with self._unavailable():
            if site_ids is None:
                site_ids = sorted(_s(s) for s in await self.client.smembers(self.keys.sites))
            rows: list[Any] = []
            for i in range(0, len(site_ids), _SITES_PER_CALL):
                chunk = site_ids[i : i + _SITES_PER_CALL]
                rows += await self._scripts.run("site_rows", [self.prefix, *chunk])
        return _site_records(site_ids, rows)

    @staticmethod
    def site_status(rec: SiteRecord) -> types_pb2.SiteStatus:
        """The public view of a site record."""
        status = types_pb2.SiteStatus(
            site=rec.site,
            state=rec.state,  # type: ignore[arg-type]
            connected=bool(rec.connected_by),
            active_jobs=rec.active_jobs,
            power_used_mw=rec.used_watts / 1_000_000,
            gpus_used_surplus=rec.used_gpus_nonhome,
        )
        for gpu_type, n in sorted(rec.used_gpus.items()):
            status.gpus_used.add(type=gpu_type, count=n)
        if rec.last_heartbeat is not None:
            status.last_heartbeat.CopyFrom(_ts(f"{rec.last_heartbeat}"))
        return status

    async def get_site(self, site_id: str) -> types_pb2.SiteStatus:
        """One site with its status. Raises ``SiteNotFoundError``."""
        recs = await self.site_records([site_id])
        if not recs:
            raise SiteNotFoundError(site_id)
        return self.site_status(recs[0])

    async def list_sites(self) -> list[types_pb2.SiteStatus]:
        """All sites with their status, ordered by id."""
        return [self.site_status(r) for r in await self.site_records()]

    async def sites_version(self) -> int:
        """A counter bumped by every site registration or state change."""
        with self._unavailable():
            return int(await self.client.get(self.keys.sites_version) or 0)

    # ---------------------------------------------------------------- scheduler

    async def pending_order(self, limit: int) -> list[tuple[str, float]]:
        """The first ``limit`` pending job ids across all queues, in queue order, with their
        scores: one ``ZRANGE`` per queue, nothing per job."""
        with self._unavailable():
            queues = sorted(_s(q) for q in await self.client.smembers(self.keys.queues))
            async with self.client.pipeline(transaction=False) as pipe:
                for q in queues:
                    pipe.zrange(self.keys.pending(q), 0, limit - 1, withscores=True)
                per_queue = await pipe.execute()
        return _front(((_s(jid), score) for rows in per_queue for jid, score in rows), limit)

    async def cycle_view(
        self, limit: int, *, epoch_key: str, silent_before: float | None = None
    ) -> CycleView:
        """Advance the epoch at ``epoch_key`` and read ``pending_order(limit)``, every site,
        every tenant and ``surplus_running()``, in one script call (cycle_view.lua): a cycle's
        reads were some ten round trips, each waiting its turn at a busy Redis.

        With ``silent_before`` (a time) and no job pending, the sites read are only those last
        heard from before it (never heard from: not read): all an idle cycle looks at. At
        1,000 sites that is some 60 ms of CPU less per idle cycle, Redis's and the caller's.
        """
        silent = "" if silent_before is None else f"{silent_before:.6f}"
        with self._unavailable():
            epoch, queues, sites, tenants, surplus = await self._scripts.run(
                "cycle_view", [self.prefix, epoch_key, limit, " ".join(_RUNNING_FIELDS), silent]
            )
        waiting: list[tuple[str, float]] = []
        for rows in queues[1::2]:  # name, front of the queue (id, score, ...), name, ...
            waiting += [(_s(rows[k]), float(rows[k + 1])) for k in range(0, len(rows), 2)]
        site_ids = [_s(sites[i]) for i in range(0, len(sites), 5)]
        site_rows = [row for i in range(0, len(sites), 5) for row in sites[i + 1 : i + 5]]
        tenant_ids = [_s(tenants[i]) for i in range(0, len(tenants), 3)]
        tenant_rows = [
            row
            for i in range(0, len(tenants), 3)
            for row in (tenants[i + 1], _pairs(tenants[i + 2]))
        ]
        return CycleView(
            epoch=int(epoch),
            order=_front(waiting, limit),
            sites=_site_records(site_ids, site_rows),
            tenants=_tenant_records(tenant_ids, tenant_rows),
            surplus=_running_records(
                [_s(surplus[i]) for i in range(0, len(surplus), 2)], surplus[1::2]
            ),
        )

    async def pending_window(self, limit: int) -> list[PendingRef]:
        """The first ``limit`` pending jobs across all queues, in queue order, each checked
        PENDING in its record (one read per job; the scheduler uses :meth:`pending_order`
        and :meth:`pending_jobs`, which read each job once while it stays in the window)."""
        order = await self.pending_order(limit)
        with self._unavailable():
            async with self.client.pipeline(transaction=False) as pipe:
                for jid, _ in order:
                    pipe.hmget(self.keys.job(jid), "attempt", "state")
                rows = await pipe.execute()
        return [
            PendingRef(jid, int(att), score)
            for (jid, score), (att, st) in zip(order, rows, strict=True)
            if att is not None and _s(st) == "1"
        ]

    async def pending_jobs(self, job_ids: Sequence[str]) -> dict[str, PendingJob]:
        """Spec, traceparent and attempt of those of ``job_ids`` that are PENDING, in one
        script call per 5,000 (for the scheduler's cache of its window)."""
        out = {}
        for i in range(0, len(job_ids), _READ_PER_CALL):
            chunk = job_ids[i : i + _READ_PER_CALL]
            with self._unavailable():
                flat = await self._scripts.run("read_pending", [self.prefix, *chunk])
            for n, jid in enumerate(chunk):
                raw = flat[3 * n]
                if raw:  # Lua false arrives as None
                    spec = types_pb2.JobSpec()
                    spec.ParseFromString(raw)
                    out[jid] = PendingJob(spec, _s(flat[3 * n + 1]), int(flat[3 * n + 2]))
        return out

    async def commit(self, decisions: Sequence[Decision]) -> list[str]:
        """Commit placements atomically; one result code per decision (see commit.lua)."""
        if not decisions:
            return []
        args: list[Any] = [self.prefix, _now(), EVENTS_MAXLEN]
        for d in decisions:
            args += [d.job_id, d.attempt, d.site, d.gpu_type, d.watts]
        with self._unavailable():
            return [_s(c) for c in await self._scripts.run("commit", args)]

    async def mark_unschedulable(self, items: Sequence[tuple[str, int, str]]) -> int:
        """Record (job id, attempt, reason) for jobs no registered site can ever run."""
        if not items:
            return 0
        args: list[Any] = [self.prefix, _now(), EVENTS_MAXLEN]
        for job_id, attempt, reason in items:
            args += [job_id, attempt, reason]
        with self._unavailable():
            return int(await self._scripts.run("mark_unschedulable", args))

    async def preempt(self, victims: Sequence[Victim]) -> list[str]:
        """Preempt SURPLUS-class jobs (see preempt.lua); one result code per victim."""
        if not victims:
            return []
        args: list[Any] = [self.prefix, _now(), EVENTS_MAXLEN]
        for v in victims:
            args += [v.job_id, v.attempt, v.for_job_id]
        with self._unavailable():
            return [_s(c) for c in await self._scripts.run("preempt", args)]

    async def surplus_running(self) -> list[RunningRecord]:
        """Placed, unfinished SURPLUS-class jobs not already being preempted."""
        with self._unavailable():
            ids = sorted(_s(i) for i in await self.client.smembers(self.keys.surplus_running))
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self.keys.job(job_id), *_RUNNING_FIELDS)
                rows = await pipe.execute()
        return _running_records(ids, rows)

    async def note_waiting(self, items: Sequence[tuple[str, int, str]]) -> int:
        """Record why pending jobs wait, where it changed (see note_waiting.lua)."""
        if not items:
            return 0
        args: list[Any] = [self.prefix]
        for job_id, attempt, reason in items:
            args += [job_id, attempt, reason]
        with self._unavailable():
            return int(await self._scripts.run("note_waiting", args))

    async def queue_position(self, job: types_pb2.Job) -> tuple[int, int]:
        """1-based position of a pending job in its queue (0 if not there), and the queue length."""
        key = self.keys.pending(job.spec.queue or "default")
        with self._unavailable():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrank(key, job.id)
                pipe.zcard(key)
                rank, length = await pipe.execute()
        return (0 if rank is None else int(rank) + 1), int(length)

    # ---------------------------------------------------------------- tenants

    async def put_tenant(self, tenant: types_pb2.Tenant) -> types_pb2.TenantStatus:
        """Create or replace a normalised tenant."""
        quotas: list[Any] = []
        if tenant.has_quota_gpus:
            quotas += ["q:gpus", tenant.quota_gpus]
        for code, gpus in sorted(tenant.quota_gpus_by_jurisdiction.items()):
            quotas += [f"q:gpus:{code}", gpus]
        with self._unavailable():
            await self._scripts.run(
                "put_tenant",
                [self.prefix, tenant.id, tenant.SerializeToString(), tenant.country,
                 tenant.weight or 1.0, *quotas],
            )  # fmt: skip
        return await self.get_tenant(tenant.id)

    async def tenant_records(self, tenant_ids: Sequence[str] | None = None) -> list[TenantRecord]:
        """Tenants (all, or the ones named) with their usage, ordered by id."""
        with self._unavailable():
            if tenant_ids is None:
                tenant_ids = sorted(_s(t) for t in await self.client.smembers(self.keys.tenants))
            async with self.client.pipeline(transaction=False) as pipe:
                for tid in tenant_ids:
                    pipe.hget(self.keys.tenant(tid), "spec")
                    pipe.hgetall(self.keys.tenant_used(tid))
                rows = await pipe.execute()
        return _tenant_records(tenant_ids, rows)

    @staticmethod
    def tenant_status(rec: TenantRecord) -> types_pb2.TenantStatus:
        """The public view of a tenant record."""
        return types_pb2.TenantStatus(
            tenant=rec.tenant,
            gpus_used=rec.used_gpus,
            gpus_used_by_jurisdiction=rec.used_gpus_by_jurisdiction,
        )

    async def get_tenant(self, tenant_id: str) -> types_pb2.TenantStatus:
        """One tenant with its usage. Raises ``TenantNotFoundError``."""
        recs = await self.tenant_records([tenant_id])
        if not recs:
            raise TenantNotFoundError(tenant_id)
        return self.tenant_status(recs[0])

    async def list_tenants(self) -> list[types_pb2.TenantStatus]:
        """All tenants with their usage, ordered by id."""
        return [self.tenant_status(r) for r in await self.tenant_records()]

    # ---------------------------------------------------------------- dispatcher

    async def take_outbox(self, site_id: str, *, limit: int, resend: bool) -> list[Assignment]:
        """Mark up to ``limit`` SCHEDULED jobs of a site DISPATCHED and return them."""
        return (await self.take_work(site_id, limit=limit, resend=resend)).assignments

    async def take_work(self, site_id: str, *, limit: int, resend: bool) -> SiteWork:
        """What a site's stream carries, in one call: ``take_outbox``'s assignments and the
        ``pending_cancels``."""
        with self._unavailable():
            flat, members = await self._scripts.run(
                "take_outbox",
                [self.prefix, site_id, _now(), EVENTS_MAXLEN, limit, 1 if resend else 0],
            )
        assignments = [
            Assignment(_s(flat[i]), int(flat[i + 1]), flat[i + 2], _s(flat[i + 3]), _s(flat[i + 4]))
            for i in range(0, len(flat), 5)
        ]
        return SiteWork(assignments, _cancel_refs(members))

    async def has_outbox(self, site_id: str) -> bool:
        """Whether the site has jobs waiting to be sent."""
        with self._unavailable():
            return bool(await self.client.zcard(self.keys.site_outbox(site_id)))

    async def sites_with_work(self, site_ids: Sequence[str]) -> list[str]:
        """Those of ``site_ids`` with jobs waiting to be sent or cancels to deliver, in order:
        one pipelined round trip per thousand sites."""
        out: list[str] = []
        with self._unavailable():
            for i in range(0, len(site_ids), _SITES_PER_CALL):
                chunk = site_ids[i : i + _SITES_PER_CALL]
                async with self.client.pipeline(transaction=False) as pipe:
                    for site_id in chunk:  # an empty set or sorted set does not exist
                        pipe.exists(self.keys.site_outbox(site_id), self.keys.site_cancels(site_id))
                    counts = await pipe.execute()
                out += [site_id for site_id, n in zip(chunk, counts, strict=True) if n]
        return out

    async def record_acks(self, site_id: str, acks: Sequence[Ack]) -> list[str]:
        """Apply the agent's answers to assignments (see ack.lua)."""
        if not acks:
            return []
        args: list[Any] = [self.prefix, site_id, _now(), EVENTS_MAXLEN]
        for a in acks:
            args += [a.job_id, a.attempt, 1 if a.accepted else 0, a.reason]
        with self._unavailable():
            return [_s(c) for c in await self._scripts.run("ack", args)]

    async def apply_status(self, site_id: str, reports: Sequence[StatusReport]) -> list[str]:
        """Apply status reports from a site's agent (see status.lua); one code per report.

        An attempt's RUNNING followed, with nothing for it in between, by its end (a short
        job: the agent reports both in one batch) goes to the script as one update, which
        reads and writes the record once."""
        if not reports:
            return []
        updates: list[list[Any]] = []  # job id, attempt, state, exit code, message
        of: list[list[int]] = []  # the reports (their places) each update stands for
        running: dict[tuple[str, int], int] = {}  # attempt -> its RUNNING update, if last
        for n, r in enumerate(reports):
            key = (r.job_id, r.attempt)
            exit_code = "" if r.exit_code is None else str(r.exit_code)
            i = running.pop(key, None)
            if i is not None and r.state in _ENDS:
                u = updates[i]
                u[2], u[3] = f"4{r.state.value}", exit_code
                u[4] = u[4].replace(_RS, " ") + _RS + r.message
                of[i].append(n)
                continue
            if r.state == JobState.RUNNING:
                running[key] = len(updates)
            updates.append([r.job_id, r.attempt, r.state.value, exit_code, r.message])
            of.append([n])
        args: list[Any] = [self.prefix, site_id, _now(), EVENTS_MAXLEN]
        for u in updates:
            args += u
        with self._unavailable():
            replies = await self._scripts.run("status", args)
        codes = [""] * len(reports)
        for places, reply in zip(of, replies, strict=True):
            for n, code in zip(places, _s(reply).split(" "), strict=True):
                codes[n] = code
        return codes

    async def pending_cancels(self, site_id: str) -> list[tuple[str, int]]:
        """(job id, attempt) cancels to deliver to a site."""
        with self._unavailable():
            members = await self.client.smembers(self.keys.site_cancels(site_id))
        return _cancel_refs(members)

    async def record_heartbeat(
        self, site_id: str, *, dispatcher_id: str, at: float | None = None
    ) -> bool:
        """Note that ``dispatcher_id`` holds the site's stream and heard from it now (see
        seen.lua). True when the site was LOST until now: its attempts were requeued, so the
        agent must be reconciled before its lease is renewed."""
        [back] = await self.record_heartbeats([site_id], dispatcher_id=dispatcher_id, at=at)
        return back

    async def record_heartbeats(
        self, site_ids: Sequence[str], *, dispatcher_id: str, at: float | None = None
    ) -> list[bool]:
        """``record_heartbeat`` for many sites at once: one script call per
        thousand sites, all recorded at the same time. One answer per site, in
        order (an unknown site is False)."""
        now = f"{at or time.time():.6f}"
        out: list[bool] = []
        with self._unavailable():
            for i in range(0, len(site_ids), _SITES_PER_CALL):
                chunk = site_ids[i : i + _SITES_PER_CALL]
                codes = await self._scripts.run("seen", [self.prefix, now, dispatcher_id, *chunk])
                out += [int(code) == 1 for code in codes]
        return out

    async def lose_site(
        self, site_id: str, *, lost_after: float, at: float | None = None
    ) -> tuple[str, int]:
        """Declare the site LOST if it has been silent for longer than ``lost_after`` seconds,
        and requeue its work (see lose_site.lua). Returns the script's code ('lost', 'alive',
        'never', 'missing') and how many jobs moved."""
        with self._unavailable():
            code, moved = await self._scripts.run(
                "lose_site",
                [self.prefix, site_id, f"{at or time.time():.6f}", EVENTS_MAXLEN, lost_after],
            )
        return _s(code), int(moved)

    async def reconcile(self, site_id: str, held: Sequence[HeldAttempt]) -> Reconciliation:
        """What the agent should do with the attempts it holds, and the jobs the store had at
        the site that the agent does not hold (requeued or finished; see reconcile.lua)."""
        args: list[Any] = [self.prefix, site_id, _now(), EVENTS_MAXLEN]
        for h in held:
            args += [h.job_id, h.attempt, h.state.value]
        with self._unavailable():
            out = [_s(x) for x in await self._scripts.run("reconcile", args)]
        verdicts, gone = out[: len(held)], out[len(held) :]
        result = Reconciliation(requeued=gone)
        for h, verdict in zip(held, verdicts, strict=True):
            getattr(result, verdict).append((h.job_id, h.attempt))
        return result

    async def record_disconnect(self, site_id: str, *, dispatcher_id: str) -> None:
        """Clear the connected mark if ``dispatcher_id`` still holds it."""
        key = self.keys.site(site_id)
        with self._unavailable():
            if _s(await self.client.hget(key, "conn")) == dispatcher_id:
                await self.client.hdel(key, "conn")
