"""One cycle's caches: sites in score order per jurisdiction set, candidates per key.

Part of ``orchestrator.scheduler.placement``; see its docstring for how a cycle works.
"""

from __future__ import annotations

from bisect import bisect_left
from functools import cached_property

from orchestrator.scheduler.model import (
    JobRequest,
    Snapshot,
)
from orchestrator.scheduler.placement._checks import _fit, _never, _packing, _static_score
from orchestrator.scheduler.placement._messages import _short
from orchestrator.scheduler.placement._state import _RANK, _Entry, _Key, _Site, _sites, _Tenant


class _Cycle:
    """Per-cycle state and caches: sites in score order, per jurisdiction set, per key."""

    def __init__(self, snapshot: Snapshot) -> None:
        w = snapshot.weights
        self.weights = w
        self.snapshot = snapshot
        views = snapshot.sites
        sites = _sites(views, w)
        self.sites = sites
        entries = sorted([(-s.base, s.site_id, s) for s in sites])
        self.entries = entries
        home_of: dict[str, list[_Site]] = {}
        by_jur: dict[str, list[_Entry]] = {}
        for i, entry in enumerate(entries):
            s = entry[2]
            s.order = i
            by_jur.setdefault(s.jurisdiction, []).append(entry)
            if s.home:
                for c in s.home:
                    home_of.setdefault(c, []).append(s)
        self.home_of = home_of
        self.by_jur = by_jur
        self.named: set[str] = set()
        for v in views:
            if v.policy.allowed_tenants:
                self.named |= v.policy.allowed_tenants
        tg = sum([sum(v.total_gpus.values()) for v in views])
        tc = sum([v.total_cpus for v in views])
        tm = sum([v.total_memory_mb for v in views])
        self.tenants: dict[str, _Tenant] = {}
        self.inv = (1 / tg if tg > 0 else 0.0, 1 / tc if tc > 0 else 0.0, 1 / tm if tm > 0 else 0.0)
        self._bases: dict[frozenset[str], list[_Entry]] = {}
        self._homes: dict[tuple[frozenset[str], str], list[_Site]] = {}
        self._ctx: dict[tuple[frozenset[str], str, frozenset[str]], _Ctx] = {}
        self._ctx_of: dict[tuple[frozenset[str], str, tuple[str, ...]], _Ctx] = {}

    @cached_property
    def by_id(self) -> dict[str, _Site]:
        """Sites by id (built when first needed: preferred sites, preemption)."""
        return {s.site_id: s for s in self.sites}

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

    def context(self, k: _Key, preferred: tuple[str, ...]) -> _Ctx:
        """``k``'s candidate sites, best static score first (ties by site id). Many shapes
        share their residency, country and preferred sites: those find theirs at once."""
        quick = (k.allowed, k.country, preferred)
        got = self._ctx_of.get(quick)
        if got is None:
            got = self._ctx_of[quick] = self._context(k)
        return got

    def _context(self, k: _Key) -> _Ctx:
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
        # One walk answers both questions in the usual case: candidates come best first, and
        # home sites outscore the rest, so the first site that could ever run the shape is a
        # home site if any is.
        front, rest = self.context(k, job.preferred_sites)
        first = None
        failed: set[_Site] = set()
        for part in (front, rest or ()):
            for _, _, s in part:
                if _never(s, k, t, overall=False) is None:
                    first = s
                    break
                if country in s.home:
                    failed.add(s)
            if first is not None:
                break
        if first is None:
            k.never = True
            return k
        k.ctx = front
        k.rest = rest
        if country:
            if country in first.home:
                k.home = True
            else:
                homes = self.homes(k.allowed, country)
                k.home = len(failed) < len(homes) and any(
                    _never(s, k, t, overall=False) is None for s in homes if s not in failed
                )
        return k


_Ctx = tuple[list[_Entry], list[_Entry] | None]
"""Candidates: a list to walk first and, when it is only the special sites (home, preferred),
the shared list of all sites to walk after it (no per-shape copy of a thousand entries)."""


def _splice(entries: list[_Entry], special: list[tuple[float, _Site]]) -> _Ctx:
    """``entries`` with the ``special`` sites (all among them) moved to where their own
    scores sort them: a few bisections and C-level slice copies, no Python loop over entries."""
    if not special:
        return entries, None
    front = sorted([(-score, s.site_id, s) for score, s in special])
    if -front[-1][0] > -entries[0][0]:
        # every special site outscores every site (the usual case: home and preferred bonuses
        # dwarf renewable and carbon terms): walk them first, then all. Their own entries in
        # ``entries`` are harmless duplicates: a walk reaches them only after the first failed.
        return front, entries
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
    return out, None


def _choose(k: _Key, t: _Tenant, pw: float, lookahead: int) -> tuple[float, _Site, str] | None:
    """The best site for the next job of ``k`` now, or None; moves ``k``'s cursor past sites
    that no longer fit it (the quick ``avail`` test first, the full checks after)."""
    gpus, gt, cpus, mem, skip = k.gpus, k.gpu_type, k.cpus, k.mem, k.skip
    while True:
        cands = k.ctx
        i = k.pos
        n = len(cands)
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
        if k.rest is None:
            k.pos = i
            return None
        # the special sites are used up: walk all
        k.ctx, k.rest, k.pos = k.rest, None, 0


def _lookahead(
    k: _Key, t: _Tenant, i: int, static: float, s: _Site, gt: str, pw: float, lookahead: int
) -> tuple[float, _Site, str]:
    """The best by exact score (ties by site id) among the first feasible site, at ``i``, and
    up to ``lookahead`` sites after it that pass a quick capacity test and whose static score
    leaves packing a chance to lift them above it."""
    span = 4 * lookahead
    window = k.ctx[i + 1 : i + 1 + span]
    if k.rest is not None and len(window) < span:
        window += k.rest[: span - len(window)]
    gpus, cpus, mem, typed = k.gpus, k.cpus, k.mem, k.gpu_type
    best, best_site, best_type = static + pw * _packing(s, k, gt), s, gt
    upper = pw if pw > 0 else 0.0
    seen = 0
    for neg2, _, s2 in window:
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
        # The exact score if it fits, from the type ``_fit`` would pick (the first one with
        # room, which the quick test above just found exists): only a winner is worth the full
        # checks.
        if gpus:
            gt2 = typed
            if not gt2:
                avail = s2.avail
                for gt2 in s2.types:
                    if avail[gt2] >= gpus:
                        break
            total = s2.total[gt2]
            score = static2 + pw * ((total - s2.free[gt2] + gpus) / total)
        else:
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
    for _, _, s in k.ctx + (k.rest or []):
        r = _fit(s, k, t)
        if isinstance(r, int) and (best is None or _RANK[r] > best[0]):
            best = (_RANK[r], r, s)
    if best is None:
        return "no site fits it now"
    return _short(best[1], best[2], k, t)
