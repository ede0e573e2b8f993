"""The checks: does a job shape fit a site now, could it ever, and how a site scores.

Part of ``orchestrator.scheduler.placement``; see its docstring for how a cycle works.
"""

from __future__ import annotations

from orchestrator.scheduler.model import (
    Weights,
)
from orchestrator.scheduler.placement._state import (
    _CAPACITY,
    _EXCLUDED,
    _GPU_TYPE,
    _POLICY,
    _POWER,
    _QUOTA,
    _RESIDENCY,
    _STATE,
    _SURPLUS,
    _TOO_LARGE,
    _Key,
    _Site,
    _Tenant,
)


def _static(s: _Site, k: _Key, t: _Tenant) -> int | None:
    """The first check ``s`` fails for ``k`` whatever its use (exclusion, residency, policy,
    GPU type, size), or None. Shared by ``_fit`` (now) and ``_never`` (ever)."""
    if k.excluded and s.site_id in k.excluded:
        return _EXCLUDED
    if k.allowed and s.jurisdiction not in k.allowed:
        return _RESIDENCY
    if s.restricted and t.name not in s.allow_tenants and k.country not in s.allow_countries:
        return _POLICY
    gpus = k.gpus
    gt = k.gpu_type
    if gpus:
        if gt:
            total = s.total.get(gt, 0)
            if total <= 0:
                return _GPU_TYPE
            if total < gpus:
                return _TOO_LARGE
        elif not s.types:
            return _GPU_TYPE
        elif s.max_pool < gpus:
            return _TOO_LARGE
    if s.total_cpus < k.cpus or s.total_mem < k.mem:
        return _TOO_LARGE
    return None


def _fit(s: _Site, k: _Key, t: _Tenant) -> str | int:
    """The GPU type ``k`` would use at ``s`` now ("" for CPU-only), or the failing reason code."""
    if not s.accepting:
        return _STATE
    static = _static(s, k, t)
    if static is not None:
        return static
    gpus = k.gpus
    gt = k.gpu_type
    if not gpus:
        if s.free_cpus < k.cpus or s.free_mem < k.mem:
            return _CAPACITY
        return ""
    if t.quota_room is not None and gpus > t.quota_room:
        return _QUOTA
    if t.jq_room:
        room = t.jq_room.get(s.jurisdiction)
        if room is not None and gpus > room:
            return _QUOTA
    if s.surplus_room is not None and gpus > s.surplus_room and k.country not in s.home:
        return _SURPLUS
    cpu_ok = s.free_cpus >= k.cpus and s.free_mem >= k.mem
    if gt:
        draw = gpus * s.watts.get(gt, 0)
        if draw and draw > s.power_room:
            return _POWER
        return gt if cpu_ok and s.free.get(gt, 0) >= gpus else _CAPACITY
    code = _POWER
    for gt in s.types:
        if s.total[gt] < gpus:
            continue
        draw = gpus * s.watts.get(gt, 0)
        if draw and draw > s.power_room:
            continue
        code = _CAPACITY
        if cpu_ok and s.free[gt] >= gpus:
            return gt
    return code


def _never(s: _Site, k: _Key, t: _Tenant, *, overall: bool = True) -> int | None:
    """Why ``s`` could not run ``k`` even empty and accepting, or None if it could.

    ``overall=False`` leaves out the tenant's overall quota (checked per job by ``place``, as
    tenants without per-site rules share keys)."""
    static = _static(s, k, t)
    if static is not None:
        return static
    gpus = k.gpus
    if not gpus:
        return None
    if overall and t.quota is not None and gpus > t.quota:
        return _QUOTA
    limit = t.jq.get(s.jurisdiction)
    if limit is not None and gpus > limit:
        return _QUOTA
    if s.surplus_limit is not None and gpus > s.surplus_limit and k.country not in s.home:
        return _SURPLUS
    if s.cap is not None and (s.capped.get(k.gpu_type, 0) if k.gpu_type else s.max_capped) < gpus:
        return _POWER
    return None


def _types_for(s: _Site, k: _Key) -> list[str]:
    """GPU types ``k`` could use at ``s`` by size, in the order they are tried."""
    if k.gpu_type:
        return [k.gpu_type] if s.total.get(k.gpu_type, 0) >= k.gpus else []
    return [x for x in s.types if s.total[x] >= k.gpus]


def _static_score(s: _Site, k: _Key, w: Weights) -> float:
    score = s.base
    if k.country and k.country in s.home:
        score += w.home
    if s.site_id in k.preferred:
        score += w.preferred
    return score


def _packing(s: _Site, k: _Key, gt: str) -> float:
    """Share of the site's GPUs of ``gt`` (CPUs for a CPU-only job) in use after placing."""
    if gt:
        total = s.total[gt]
        return (total - s.free[gt] + k.gpus) / total
    if s.total_cpus <= 0:
        return 0.0
    return (s.total_cpus - s.free_cpus + k.cpus) / s.total_cpus
