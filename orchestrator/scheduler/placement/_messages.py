"""Human sentences for verdicts, waiting reasons and unschedulable jobs.

Part of ``orchestrator.scheduler.placement``; see its docstring for how a cycle works.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from orchestrator.scheduler.model import (
    JobRequest,
)
from orchestrator.scheduler.placement._checks import _never, _types_for
from orchestrator.scheduler.placement._state import (
    _CAPACITY,
    _EXCLUDED,
    _GPU_TYPE,
    _MAX_NAMES,
    _POLICY,
    _POWER,
    _QUOTA,
    _REASONS,
    _RESIDENCY,
    _STATE,
    _SURPLUS,
    _TOO_LARGE,
    _Key,
    _Site,
    _Tenant,
)


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _watts(w: float) -> str:
    """11200 -> "11.2 kW", 230_000_000 -> "230 MW"."""
    for unit, scale in (("MW", 1e6), ("kW", 1e3)):
        if abs(w) >= scale:
            return f"{_num(w / scale)} {unit}"
    return f"{_num(w)} W"


def _codes(codes: Iterable[str]) -> str:
    return ", ".join(sorted(codes))


def _names(sites: Sequence[_Site]) -> str:
    names = ", ".join(s.site_id for s in sites[:_MAX_NAMES])
    if len(sites) > _MAX_NAMES:
        names += f" and {len(sites) - _MAX_NAMES} more"
    return names


def _need(k: _Key) -> str:
    """Everything the job asks for: "8 x H100, 32 CPUs, 65536 MiB"."""
    if k.gpus:
        return f"{k.gpus} x {k.gpu_type or 'any GPU'}, {k.cpus} CPUs, {k.mem} MiB"
    return f"{k.cpus} CPUs and {k.mem} MiB"


def _first_type(s: _Site, k: _Key, *, powered: bool) -> str:
    """The type to talk about at ``s``: the first that fits by size (and by power if asked)."""
    types = _types_for(s, k)
    if powered:
        types = [x for x in types if not (k.gpus * s.watts.get(x, 0) > s.power_room)] or types
    return types[0] if types else (k.gpu_type or "GPU")


def _detail(code: int, s: _Site, k: _Key, t: _Tenant) -> str:
    """The sentence behind a reason code, with the numbers as they stand now."""
    if code == _STATE:
        return "site is not accepting work (not active, or not connected)"
    if code == _EXCLUDED:
        return "excluded by the job"
    if code == _RESIDENCY:
        return f"allows {_codes(k.allowed)}; site is in {s.jurisdiction}"
    if code == _POLICY:
        allowed = []
        if s.allow_countries:
            allowed.append(f"tenants from {_codes(s.allow_countries)}")
        if s.allow_tenants:
            allowed.append(f"tenants {_codes(s.allow_tenants)}")
        return (
            f"accepts {' and '.join(allowed)}; {t.name} is from {k.country or 'an unknown country'}"
        )
    if code == _GPU_TYPE:
        has = f"has {_codes(s.types)}" if s.types else "has no GPUs"
        return f"no {k.gpu_type or 'GPUs'} here ({has})"
    if code == _TOO_LARGE:
        if k.gpu_type and s.total.get(k.gpu_type, 0) < k.gpus:
            return f"needs {k.gpus} x {k.gpu_type}, site has {s.total.get(k.gpu_type, 0)}"
        if k.gpus and not k.gpu_type and s.max_pool < k.gpus:
            pools = ", ".join(f"{s.total[x]} x {x}" for x in s.types)
            return f"needs {k.gpus} GPUs of one type, site has {pools}"
        if s.total_cpus < k.cpus:
            return f"needs {k.cpus} CPUs, site has {s.total_cpus}"
        return f"needs {k.mem} MiB, site has {s.total_mem} MiB"
    if code == _QUOTA:
        if t.quota_room is not None and t.quota is not None and k.gpus > t.quota_room:
            used = t.quota - t.quota_room
            return f"tenant {t.name} holds {used} of its {t.quota} GPUs, needs {k.gpus}"
        j = s.jurisdiction
        used = t.jq[j] - t.jq_room[j]
        return f"tenant {t.name} holds {used} of its {t.jq[j]} GPUs in {j}, needs {k.gpus}"
    if code == _SURPLUS:
        limit = s.surplus_limit or 0
        used = limit - (s.surplus_room or 0)
        return f"non-home tenants hold {used} of the {limit} surplus GPUs offered, needs {k.gpus}"
    if code == _POWER:
        gt = _first_type(s, k, powered=False)
        cap = s.cap or 0
        used = cap - s.power_room
        draw = k.gpus * s.watts.get(gt, 0)
        return f"would draw {_watts(draw)} over the {_watts(cap)} cap with {_watts(used)} in use"
    # capacity
    if k.gpus:
        gt = _first_type(s, k, powered=True)
        free = s.free.get(gt, 0)
        if free < k.gpus:
            return f"needs {k.gpus} x {gt}, {free} free"
    if s.free_cpus < k.cpus:
        return f"needs {k.cpus} CPUs, {s.free_cpus} free"
    return f"needs {k.mem} MiB, {s.free_mem} MiB free"


def _short(code: int, s: _Site, k: _Key, t: _Tenant) -> str:
    """A waiting job's one-line reason from its most informative site."""
    if code == _CAPACITY:
        if k.gpus:
            gt = _first_type(s, k, powered=True)
            if s.free.get(gt, 0) < k.gpus:
                return f"no capacity: {s.site_id} full for {k.gpus} x {gt}"
        return f"no capacity: {s.site_id} full for {k.cpus} CPUs, {k.mem} MiB"
    if code == _POWER:
        return f"power cap at {s.site_id}: {_detail(code, s, k, t)}"
    if code == _SURPLUS:
        return f"surplus used up at {s.site_id}: {_detail(code, s, k, t)}"
    if code == _QUOTA:
        if t.quota_room is not None and k.gpus > t.quota_room:
            return _quota_short(t)
        j = s.jurisdiction
        return f"quota: tenant {t.name} at {t.jq[j] - t.jq_room[j]}/{t.jq[j]} GPUs in {j}"
    if code == _STATE:
        return f"no accepting site: {s.site_id} is not accepting work"
    return f"{_REASONS[code].value} at {s.site_id}: {_detail(code, s, k, t)}"


def _quota_short(t: _Tenant) -> str:
    quota = t.quota or 0
    return f"quota: tenant {t.name} at {quota - (t.quota_room or 0)}/{quota} GPUs"


def _never_sentence(job: JobRequest, k: _Key, t: _Tenant, sites: Sequence[_Site]) -> str | None:
    """Why no site in ``sites`` could ever run the job, or None if one could."""
    codes = [(s, _never(s, k, t)) for s in sites]
    if any(c is None for _, c in codes):
        return None
    allowed = [(s, c) for s, c in codes if c is not None and c not in (_EXCLUDED, _RESIDENCY)]
    if not allowed:
        if job.allowed_jurisdictions:
            text = (
                f"no registered site in allowed jurisdictions [{_codes(job.allowed_jurisdictions)}]"
            )
            if any(s.jurisdiction in job.allowed_jurisdictions for s, _ in codes):
                text += " that is not excluded"
            return text
        return "no registered site that is not excluded"
    names = _names([s for s, _ in allowed])
    kinds = {c for _, c in allowed}
    if kinds <= {_GPU_TYPE, _TOO_LARGE}:
        return f"no allowed site ({names}) has {_need(k)}"
    if kinds == {_POLICY}:
        country = f"from {k.country}" if k.country else "with no country"
        return f"no allowed site ({names}) accepts tenant {t.name} {country}"
    if kinds == {_QUOTA}:
        if t.quota is not None and k.gpus > t.quota:
            return f"needs {k.gpus} GPUs, more than tenant {t.name}'s quota of {t.quota}"
        return (
            f"needs {k.gpus} GPUs, more than tenant {t.name}'s quota at every allowed site "
            f"({names})"
        )
    if kinds == {_SURPLUS}:
        return (
            f"needs {k.gpus} GPUs, more than every allowed site ({names}) offers to non-home "
            f"tenants"
        )
    if kinds == {_POWER}:
        return f"{_need(k)} would draw more than the power cap of every allowed site ({names})"
    parts = [f"{s.site_id}: {_never_detail(c, s, k, t)}" for s, c in allowed[:_MAX_NAMES]]
    more = f"; and {len(allowed) - _MAX_NAMES} more" if len(allowed) > _MAX_NAMES else ""
    return f"no allowed site can ever run {_need(k)}: {'; '.join(parts)}{more}"


def _never_detail(code: int, s: _Site, k: _Key, t: _Tenant) -> str:
    if code == _QUOTA:
        limit = t.quota if t.quota is not None and k.gpus > t.quota else t.jq[s.jurisdiction]
        return f"over tenant {t.name}'s quota of {limit} GPUs"
    if code == _SURPLUS:
        return f"offers {s.surplus_limit} surplus GPUs to non-home tenants"
    if code == _POWER:
        gt = _first_type(s, k, powered=False)
        draw = k.gpus * s.watts.get(gt, 0)
        return f"would draw {_watts(draw)}, cap {_watts(s.cap or 0)}"
    return _detail(code, s, k, t)
