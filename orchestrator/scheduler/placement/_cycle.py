"""One cycle's caches: sites in score order per jurisdiction set, candidates per key.

Part of ``orchestrator.scheduler.placement``; see its docstring for how a cycle works.
"""

from __future__ import annotations

from bisect import bisect_left

from orchestrator.scheduler.model import (
    JobRequest,
    Snapshot,
)
from orchestrator.scheduler.placement._checks import _fit, _never, _packing, _static_score
from orchestrator.scheduler.placement._messages import _short
from orchestrator.scheduler.placement._state import _RANK, _Entry, _Key, _Site, _Tenant


class _Cycle:
    """Per-cycle state and caches: sites in score order, per jurisdiction set, per key."""

    def __init__(self, snapshot: Snapshot) -> None:
        w = snapshot.weights
        self.weights = w
        self.snapshot = snapshot
        sites = [_Site(v, w) for v in snapshot.sites]
        self.sites = sites
        self.by_id = {s.site_id: s for s in sites}
        entries = sorted([(-s.base, s.site_id, s) for s in sites])
        self.entries = entries
        self.ordered = [e[2] for e in entries]
        self.home_of: dict[str, list[_Site]] = {}
        self.named: set[str] = set()
        self.by_jur: dict[str, list[_Entry]] = {}
        tg = tc = tm = 0
        for i, entry in enumerate(entries):
            s = entry[2]
            s.order = i
            self.by_jur.setdefault(s.jurisdiction, []).append(entry)
            for c in s.home:
                self.home_of.setdefault(c, []).append(s)
            if s.allow_tenants:
                self.named |= s.allow_tenants
            tg += sum(s.total.values())
            tc += s.total_cpus
            tm += s.total_mem
        self.tenants: dict[str, _Tenant] = {}
        self.inv = (1 / tg if tg > 0 else 0.0, 1 / tc if tc > 0 else 0.0, 1 / tm if tm > 0 else 0.0)
        self._bases: dict[frozenset[str], list[_Entry]] = {}
        self._homes: dict[tuple[frozenset[str], str], list[_Site]] = {}
        self._ctx: dict[tuple[frozenset[str], str, frozenset[str]], list[_Entry]] = {}

    def tenant(self, name: str) -> _Tenant:
        t = self.tenants.get(name)
        if t is None:
            t = self.tenants[name] = _Tenant(name, self.snapshot.tenants.get(name))
            t.tag = name if t.jq or name in self.named else ""
            self.reshare(t)
        return t

    def reshare(self, t: _Tenant) -> None:
        """Recompute ``t``'s dominant share: max over resources of usage / total, / weight."""
        ig, ic, im = self.inv
        t.share = max(t.gpus * ig, t.cpus * ic, t.mem * im) / t.weight

    def base(self, allowed: frozenset[str]) -> list[_Entry]:
        """Sites in ``allowed`` (all for the empty set) by the score every job shares."""
        got = self._bases.get(allowed)
        if got is None:
            if allowed:
                got = []
                for j in allowed:
                    got += self.by_jur.get(j, ())
                got.sort()
            else:
                got = self.entries
            self._bases[allowed] = got
        return got

    def homes(self, allowed: frozenset[str], country: str) -> list[_Site]:
        """Sites in ``allowed`` where ``country`` is a home country."""
        got = self._homes.get((allowed, country))
        if got is None:
            got = [
                s for s in self.home_of.get(country, ()) if not allowed or s.jurisdiction in allowed
            ]
            self._homes[(allowed, country)] = got
        return got

    def context(self, k: _Key) -> list[_Entry]:
        """``k``'s candidate sites, best static score first (ties by site id)."""
        w = self.weights
        allowed = k.allowed
        homes = self.homes(allowed, k.country) if w.home and k.country else []
        prefs = []
        if k.preferred and w.preferred:
            for sid in sorted(k.preferred):
                s = self.by_id.get(sid)
                if s is not None and (not allowed or s.jurisdiction in allowed):
                    prefs.append(s)
        ck = (allowed, k.country if homes else "", frozenset(s.site_id for s in prefs))
        got = self._ctx.get(ck)
        if got is None:
            special = {s.site_id: s for s in homes + prefs}
            got = _splice(
                self.base(allowed), [(_static_score(s, k, w), s) for s in special.values()]
            )
            self._ctx[ck] = got
        return got

    def new_key(self, job: JobRequest, country: str, t: _Tenant) -> _Key:
        """A key for ``job``'s shape: could it ever run, is it home, its candidates."""
        k = _Key(job, country)
        k.never = True
        for _, _, s in self.base(k.allowed):
            if _never(s, k, t, overall=False) is None:
                k.never = False
                break
        if not k.never:
            k.home = bool(country) and any(
                _never(s, k, t, overall=False) is None for s in self.homes(k.allowed, country)
            )
            k.ctx = self.context(k)
        return k


def _splice(entries: list[_Entry], special: list[tuple[float, _Site]]) -> list[_Entry]:
    """``entries`` with the ``special`` sites (all among them) moved to where their own
    scores sort them: a few bisections and C-level slice copies, no Python loop over entries."""
    if not special:
        return entries
    front = sorted((-score, s.site_id, s) for score, s in special)
    if -front[-1][0] > -entries[0][0]:
        # every special site outscores every site (the usual case: home and preferred bonuses
        # dwarf renewable and carbon terms): put them first. Their own entries further down
        # are harmless duplicates: a walk reaches them only after the special entry failed.
        return front + entries
    removed = sorted(bisect_left(entries, (-s.base, s.site_id)) for _, s in special)
    out: list[_Entry] = []
    prev = 0
    ri = 0
    for entry in front:
        p = bisect_left(entries, entry[:2])
        while ri < len(removed) and removed[ri] < p:
            out += entries[prev : removed[ri]]
            prev = removed[ri] + 1
            ri += 1
        out += entries[prev:p]
        prev = max(prev, p)
        out.append(entry)
    for r in removed[ri:]:
        out += entries[prev:r]
        prev = r + 1
    out += entries[prev:]
    return out


def _choose(k: _Key, t: _Tenant, pw: float, lookahead: int) -> tuple[float, _Site, str] | None:
    """The best site for the next job of ``k`` now, or None; moves ``k``'s cursor past sites
    that no longer fit it (the quick ``avail`` test first, the full checks after)."""
    cands = k.ctx
    i = k.pos
    n = len(cands)
    gpus, gt, cpus, mem, skip = k.gpus, k.gpu_type, k.cpus, k.mem, k.skip
    while i < n:
        neg, _, s = cands[i]
        if (
            not s.accepting
            or (gpus and (s.avail.get(gt, 0) if gt else s.max_avail) < gpus)
            or s.free_cpus < cpus
            or s.free_mem < mem
            or (skip and s in skip)
        ):
            i += 1
            continue
        r = _fit(s, k, t)
        if isinstance(r, str):
            k.pos = i
            if pw and lookahead:
                return _lookahead(k, t, i, -neg, s, r, pw, lookahead)
            return -neg + pw * _packing(s, k, r), s, r
        i += 1
    k.pos = i
    return None


def _lookahead(
    k: _Key, t: _Tenant, i: int, static: float, s: _Site, gt: str, pw: float, lookahead: int
) -> tuple[float, _Site, str]:
    """The best by exact score (ties by site id) among the first feasible site, at ``i``, and
    up to ``lookahead`` sites after it that pass a quick capacity test and whose static score
    leaves packing a chance to lift them above it."""
    cands = k.ctx
    gpus, cpus, mem, typed = k.gpus, k.cpus, k.mem, k.gpu_type
    best, best_site, best_type = static + pw * _packing(s, k, gt), s, gt
    upper = pw if pw > 0 else 0.0
    seen = 0
    for j in range(i + 1, min(len(cands), i + 1 + 4 * lookahead)):
        neg2, _, s2 = cands[j]
        static2 = -neg2
        if static2 + upper < best:
            break
        if (
            not s2.accepting
            or (gpus and (s2.avail.get(typed, 0) if typed else s2.max_avail) < gpus)
            or s2.free_cpus < cpus
            or s2.free_mem < mem
            or (k.skip and s2 in k.skip)
        ):
            continue
        seen += 1
        if typed:
            # the exact score if it fits: only a winner is worth the full checks
            total = s2.total[typed]
            score = static2 + pw * ((total - s2.free[typed] + gpus) / total)
            if score < best or (score == best and s2.site_id > best_site.site_id):
                if seen >= lookahead:
                    break
                continue
        elif not gpus:
            score = static2 + pw * _packing(s2, k, "")
            if score < best or (score == best and s2.site_id > best_site.site_id):
                if seen >= lookahead:
                    break
                continue
        r2 = _fit(s2, k, t)
        if isinstance(r2, str):
            score = static2 + pw * _packing(s2, k, r2)
            if score > best or (score == best and s2.site_id < best_site.site_id):
                best, best_site, best_type = score, s2, r2
        else:
            if k.skip is None:
                k.skip = set()
            k.skip.add(s2)
        if seen >= lookahead:
            break
    return best, best_site, best_type


def _why(k: _Key, t: _Tenant) -> str:
    """Why a key that ran out of sites waits: its most informative site's reason."""
    best: tuple[int, int, _Site] | None = None
    for _, _, s in k.ctx:
        r = _fit(s, k, t)
        if isinstance(r, int) and (best is None or _RANK[r] > best[0]):
            best = (_RANK[r], r, s)
    if best is None:
        return "no site fits it now"
    return _short(best[1], best[2], k, t)
