"""Preemption: evict SURPLUS-class work for waiting jobs that may preempt.

Part of ``orchestrator.scheduler.placement``; see its docstring for how a cycle works.
"""

from __future__ import annotations

from orchestrator.scheduler.model import (
    JobRequest,
    Preemption,
    Priority,
    RunningJob,
    SiteView,
    Snapshot,
)
from orchestrator.scheduler.placement._checks import _never, _static_score, _types_for
from orchestrator.scheduler.placement._cycle import _Cycle
from orchestrator.scheduler.placement._state import _Entry, _Key, _releasing, _Site, _Tenant


class _Credit:
    """Capacity at a site on its way back (releasing, victims chosen this cycle) less what
    preemptors reserved this cycle, and the site's remaining preemption victims."""

    __slots__ = ("cpus", "gpus", "mem", "surplus", "victims", "watts")

    def __init__(self, v: SiteView) -> None:
        self.gpus: dict[str, int] = dict(v.releasing_gpus)
        self.cpus = v.releasing_cpus
        self.mem = v.releasing_memory_mb
        self.watts = v.releasing_watts
        self.surplus = 0
        self.victims: list[RunningJob] = []


_Need = tuple[int, int, int, int, int]
"""Shortfalls: GPUs of the type, CPUs, MiB, watts, surplus GPUs (for a non-home tenant)."""


class _Preemptor:
    """Preemption, after the normal pass, for the jobs still waiting (in the order considered).

    A job may evict SURPLUS-class running jobs at a site if its class is above SURPLUS, or if it
    is SURPLUS-class, its tenant is home at the site and the victims are not. Victims preempted
    within the snapshot's window are left alone; each is evicted at most once. Only sites that
    pass every check but capacity, power and the surplus limit (which victims may free) count,
    best static score first. Pass one: if free plus releasing capacity (less what earlier
    preemptors reserved) covers the job at some site, reserve it and wait. Pass two: at the
    first site where evicting eligible victims would cover it, evict a minimal set (biggest
    holders of the needed GPU type first, then drop any victim the others make unnecessary),
    reserve, and wait. The preemptor is not placed this cycle. Releasing capacity is not
    assumed to free a surplus offer (whose it was is unknown); an evicted non-home victim is.
    Reservations also count against the preemptor's quota, so that two preemptors of one tenant
    do not evict for GPUs its quota would not let both use.
    """

    def __init__(
        self, cyc: _Cycle, snapshot: Snapshot, out: list[Preemption], waiting: dict[str, str]
    ) -> None:
        self.cyc = cyc
        self.out = out
        self.waiting = waiting
        credit = {s.site_id: _Credit(s.view) for s in cyc.sites if _releasing(s.view)}
        now, window = snapshot.now, snapshot.preemption_window_seconds
        for v in snapshot.running:
            s = cyc.by_id.get(v.site_id)
            if s is None or v.priority != Priority.SURPLUS:
                continue
            if v.last_preempted_at is not None and now - v.last_preempted_at < window:
                continue
            c = credit.get(v.site_id)
            if c is None:
                c = credit[v.site_id] = _Credit(s.view)
            c.victims.append(v)
        self.credit = credit
        self.sites = sorted((cyc.by_id[site_id] for site_id in credit), key=lambda s: s.order)

    def run(self, left: list[tuple[JobRequest, _Key, _Tenant]]) -> None:
        if not self.sites:
            return
        for job, k, t in left:
            wide = job.priority > Priority.SURPLUS
            if not wide and job.priority != Priority.SURPLUS:
                continue
            if k.gpus and t.quota_room is not None and k.gpus > t.quota_room:
                continue  # evictions do not free quota (an earlier preemptor reserved it)
            cands = k.preempt.get(wide)
            if cands is None:
                cands = k.preempt[wide] = self._candidates(k, t, wide=wide)
            if cands:
                done = self._reuse(k, t, cands) or self._evict(job, k, t, cands, wide=wide)
                if done is not None:
                    self.waiting[job.job_id] = done

    def _candidates(self, k: _Key, t: _Tenant, *, wide: bool) -> list[_Entry]:
        w = self.cyc.weights
        out = [
            (-_static_score(s, k, w), s.site_id, s)
            for s in self.sites
            if s.accepting
            and _never(s, k, t, overall=False) is None
            and (wide or (k.country and k.country in s.home))
        ]
        out.sort()
        return out

    def _needs(self, s: _Site, k: _Key, t: _Tenant, gt: str) -> _Need | None:
        """Shortfalls at ``s`` using ``gt``, counting capacity on its way back; None if the
        tenant's quota there (which evictions do not free) rules the site out."""
        c = self.credit[s.site_id]
        gpus = k.gpus
        if gpus:
            room = t.jq_room.get(s.jurisdiction)
            if room is not None and gpus > room:
                return None
        surplus = 0
        if gpus and s.surplus_room is not None and k.country not in s.home:
            surplus = gpus - (s.surplus_room + c.surplus)
        draw = gpus * s.watts.get(gt, 0) if gt else 0
        return (
            gpus - (s.free.get(gt, 0) + c.gpus.get(gt, 0)) if gt else 0,
            k.cpus - (s.free_cpus + c.cpus),
            k.mem - (s.free_mem + c.mem),
            draw - (s.power_room + c.watts) if draw else 0,
            surplus,
        )

    def _reserve(self, s: _Site, k: _Key, t: _Tenant, gt: str) -> None:
        c = self.credit[s.site_id]
        gpus = k.gpus
        if gt:
            c.gpus[gt] = c.gpus.get(gt, 0) - gpus
            c.watts -= gpus * s.watts.get(gt, 0)
        c.cpus -= k.cpus
        c.mem -= k.mem
        if gpus:
            if s.surplus_room is not None and k.country not in s.home:
                c.surplus -= gpus
            if t.quota_room is not None:
                t.quota_room -= gpus
            if s.jurisdiction in t.jq_room:
                t.jq_room[s.jurisdiction] -= gpus

    def _reuse(self, k: _Key, t: _Tenant, cands: list[_Entry]) -> str | None:
        for _, _, s in cands:
            for gt in _types_for(s, k) if k.gpus else [""]:
                need = self._needs(s, k, t, gt)
                if need is not None and max(need) <= 0:
                    self._reserve(s, k, t, gt)
                    return f"waiting for preempted jobs at {s.site_id} to stop"
        return None

    def _evict(
        self,
        job: JobRequest,
        k: _Key,
        t: _Tenant,
        cands: list[_Entry],
        *,
        wide: bool,
    ) -> str | None:
        while cands:
            s = cands[0][2]
            c = self.credit[s.site_id]
            pool = [v for v in c.victims if wide or not v.home_at_site]
            for gt in _types_for(s, k) if k.gpus else [""]:
                need = self._needs(s, k, t, gt)
                chosen = None if need is None else _pick(pool, need, gt)
                if need is None or chosen is None:
                    continue
                for v in chosen:
                    c.victims.remove(v)
                    if v.gpu_type:
                        c.gpus[v.gpu_type] = c.gpus.get(v.gpu_type, 0) + v.gpus
                    c.cpus += v.cpus
                    c.mem += v.memory_mb
                    c.watts += v.watts
                    if not v.home_at_site:
                        c.surplus += v.gpus
                    self.out.append(Preemption(v.job_id, v.attempt, s.site_id, job.job_id))
                self._reserve(s, k, t, gt)
                if not chosen:  # covered by what is on its way back after all
                    return f"waiting for preempted jobs at {s.site_id} to stop"
                return f"preempting {len(chosen)} surplus job(s) at {s.site_id}"
            # not even every eligible victim would do, and victims only get fewer this cycle
            del cands[0]
        return None


def _frees(v: RunningJob, gt: str) -> _Need:
    return (
        v.gpus if gt and v.gpu_type == gt else 0,
        v.cpus,
        v.memory_mb,
        v.watts,
        0 if v.home_at_site else v.gpus,
    )


def _pick(pool: list[RunningJob], need: _Need, gt: str) -> list[RunningJob] | None:
    """A minimal set of victims covering every shortfall in ``need``, or None if none does."""
    frees = [(_frees(v, gt), v) for v in pool]
    if any(sum(f[d] for f, _ in frees) < need[d] for d in range(5)):
        return None
    # biggest holders of the needed type first (then of power, CPUs, memory)
    frees.sort(key=lambda fv: (-fv[0][0], -fv[0][3], -fv[0][1], -fv[0][2], fv[1].job_id))
    short = list(need)
    chosen: list[tuple[_Need, RunningJob]] = []
    for f, v in frees:
        if max(short) <= 0:
            break
        chosen.append((f, v))
        short = [short[d] - f[d] for d in range(5)]
    # then drop any victim the others already cover, smallest first
    for f, v in list(reversed(chosen)):
        if all(short[d] + f[d] <= 0 for d in range(5)):
            chosen.remove((f, v))
            short = [short[d] + f[d] for d in range(5)]
    return [v for _, v in chosen]
