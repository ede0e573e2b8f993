"""The Jepsen-style checker: what the jobs' runs and the store's final states say happened.

``check(runs, acknowledged, final_states, site_jurisdictions, overlap_bound=...)`` returns a
``Report``. It is ``ok`` when no acknowledged job is lost (every one ended in a terminal state),
no two attempts of a job overlapped by more than ``overlap_bound`` seconds (a lease period plus
the kill grace: a partitioned site may run an attempt that long after the control plane gave up
on it), no attempt ran twice, and no run happened outside its job's jurisdictions. Runs of jobs
never acknowledged are listed apart: a submit that failed on the client may still have been
written, so they fail the check only with ``strict_unexpected``.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.jurisdictions import expand
from orchestrator.states import JobState

from .jobprog import Run

__all__ = ["Expect", "JurisdictionViolation", "Overlap", "Report", "check"]

_EXAMPLES = 5


@dataclass(frozen=True)
class Expect:
    """What the harness knows about a job whose submit was acknowledged."""

    job_id: str
    """The job's id."""
    allowed_jurisdictions: frozenset[str] = frozenset()
    """Country codes and group names (``EEA``) it may run in; empty for anywhere."""
    cancelled_at: float | None = None
    """Wall-clock time the harness asked to cancel it, if it did."""


@dataclass(frozen=True)
class Overlap:
    """Two runs of one job, different attempts, at the same time for ``seconds``."""

    first: Run
    second: Run
    seconds: float


@dataclass(frozen=True)
class JurisdictionViolation:
    """A run at a site whose jurisdiction the job does not allow."""

    run: Run
    jurisdiction: str | None
    """The site's jurisdiction; ``None`` for a site not in the map."""
    allowed: frozenset[str]
    """The countries the job allows (groups expanded)."""


@dataclass(frozen=True)
class Report:
    """The checker's findings; ``ok`` tells whether the run of the harness passed."""

    acknowledged: int
    """Jobs whose submit was acknowledged."""
    terminal: int
    """Of those, jobs in a terminal state at the end."""
    runs: int
    """Runs recorded (of every job, acknowledged or not)."""
    overlap_bound: float
    """Seconds two attempts of a job may overlap (lease period plus kill grace)."""
    lost: tuple[str, ...] = ()
    """Acknowledged jobs not in a terminal state (or missing from the store)."""
    duplicated: tuple[Overlap, ...] = ()
    """Runs of one job, different attempts, overlapping by more than ``overlap_bound``."""
    same_attempt_twice: tuple[tuple[Run, Run], ...] = ()
    """Two runs of one job with the same attempt number: always a violation."""
    jurisdiction_violations: tuple[JurisdictionViolation, ...] = ()
    """Runs outside their job's allowed jurisdictions."""
    unexpected: tuple[Run, ...] = ()
    """Runs of jobs never acknowledged (a failure only with ``strict_unexpected``)."""
    strict_unexpected: bool = False
    """Whether ``unexpected`` runs fail the check."""
    cancel_latencies: dict[str, float] = field(default_factory=dict)
    """Per job the harness cancelled: ``max(0, last run's end - cancelled_at)`` in seconds."""

    @property
    def max_cancel_latency(self) -> float | None:
        """The largest cancel latency; ``None`` if no job was cancelled."""
        return max(self.cancel_latencies.values(), default=None)

    @property
    def ok(self) -> bool:
        """No lost job, no duplicate, no attempt twice, no residency violation (and no unexpected
        run, with ``strict_unexpected``)."""
        return not (
            self.lost
            or self.duplicated
            or self.same_attempt_twice
            or self.jurisdiction_violations
            or (self.strict_unexpected and self.unexpected)
        )

    def table(self) -> str:
        """A readable summary: counts, then the first few examples of each violation."""
        t0 = min(
            [r.start for o in self.duplicated for r in (o.first, o.second)]
            + [r.start for p in self.same_attempt_twice for r in p]
            + [v.run.start for v in self.jurisdiction_violations]
            + [r.start for r in self.unexpected],
            default=0.0,
        )

        def run(r: Run) -> str:
            return (
                f"{r.job} attempt {r.attempt} at {r.site} pid {r.pid} "
                f"[{r.start - t0:.2f}s..{r.end - t0:.2f}s {r.how}]"
            )

        cancel = self.max_cancel_latency
        unexpected_note = "failure" if self.strict_unexpected else "not a failure"
        rows = [
            ("acknowledged", str(self.acknowledged)),
            ("terminal", str(self.terminal)),
            ("runs", str(self.runs)),
            ("lost", str(len(self.lost))),
            ("duplicated", f"{len(self.duplicated)} (overlap bound {self.overlap_bound:g}s)"),
            ("same attempt twice", str(len(self.same_attempt_twice))),
            ("jurisdiction", str(len(self.jurisdiction_violations))),
            ("unexpected", f"{len(self.unexpected)} ({unexpected_note})"),
            (
                "cancel latency",
                "-"
                if cancel is None
                else f"max {cancel:.2f}s over {len(self.cancel_latencies)} jobs",
            ),
        ]
        lines = [f"fault check: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  {name:<19} {value}" for name, value in rows]
        examples: list[tuple[str, list[str]]] = [
            ("lost", list(self.lost)),
            (
                "duplicated",
                [f"{o.seconds:.2f}s: {run(o.first)} / {run(o.second)}" for o in self.duplicated],
            ),
            ("same attempt twice", [f"{run(a)} / {run(b)}" for a, b in self.same_attempt_twice]),
            (
                "jurisdiction",
                [
                    f"{run(v.run)} in {v.jurisdiction or '?'}, "
                    f"allowed {','.join(sorted(v.allowed))}"
                    for v in self.jurisdiction_violations
                ],
            ),
            ("unexpected", [run(r) for r in self.unexpected]),
        ]
        for name, items in examples:
            if items:
                more = f" (first {_EXAMPLES} of {len(items)})" if len(items) > _EXAMPLES else ""
                lines.append(f"{name}{more}:")
                lines += [f"  {item}" for item in items[:_EXAMPLES]]
        if t0:
            lines.append(f"(times are seconds after {t0:.3f})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""

        def run(r: Run) -> dict[str, Any]:
            return {
                "job": r.job,
                "attempt": r.attempt,
                "site": r.site,
                "pid": r.pid,
                "start": r.start,
                "end": r.end,
                "how": r.how,
            }

        return {
            "ok": self.ok,
            "acknowledged": self.acknowledged,
            "terminal": self.terminal,
            "runs": self.runs,
            "overlap_bound": self.overlap_bound,
            "lost": list(self.lost),
            "duplicated": [
                {"seconds": o.seconds, "first": run(o.first), "second": run(o.second)}
                for o in self.duplicated
            ],
            "same_attempt_twice": [[run(a), run(b)] for a, b in self.same_attempt_twice],
            "jurisdiction_violations": [
                {
                    "run": run(v.run),
                    "jurisdiction": v.jurisdiction,
                    "allowed": sorted(v.allowed),
                }
                for v in self.jurisdiction_violations
            ],
            "unexpected": [run(r) for r in self.unexpected],
            "strict_unexpected": self.strict_unexpected,
            "cancel_latencies": dict(self.cancel_latencies),
            "max_cancel_latency": self.max_cancel_latency,
        }

    def to_json(self) -> str:
        """``to_dict()`` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def check(
    runs: Iterable[Run],
    acknowledged: Mapping[str, Expect],
    final_states: Mapping[str, str],
    site_jurisdictions: Mapping[str, str],
    *,
    overlap_bound: float,
    strict_unexpected: bool = False,
) -> Report:
    """Check the runs against the acknowledged submits and the store's final states.

    ``final_states`` maps job ids to state names (``"SUCCEEDED"``, ``"pending"``, ...);
    ``site_jurisdictions`` maps site ids to their country codes.
    """
    all_runs = list(runs)
    by_job: dict[str, list[Run]] = defaultdict(list)
    for r in all_runs:
        by_job[r.job].append(r)

    terminal = [job for job in acknowledged if _is_terminal(final_states.get(job))]
    lost = sorted(set(acknowledged) - set(terminal))

    duplicated: list[Overlap] = []
    twice: list[tuple[Run, Run]] = []
    for job_runs in by_job.values():
        for a, b in itertools.combinations(sorted(job_runs, key=lambda r: r.start), 2):
            if a.attempt == b.attempt:
                twice.append((a, b))
                continue
            overlap = min(a.end, b.end) - max(a.start, b.start)
            if overlap > overlap_bound:
                duplicated.append(Overlap(a, b, overlap))

    violations: list[JurisdictionViolation] = []
    unexpected: list[Run] = []
    for r in all_runs:
        expect = acknowledged.get(r.job)
        if expect is None:
            unexpected.append(r)
            continue
        allowed = expand(expect.allowed_jurisdictions)
        where = site_jurisdictions.get(r.site)
        if allowed and where not in allowed:
            violations.append(JurisdictionViolation(r, where, allowed))

    latencies = {}
    for job, expect in acknowledged.items():
        if expect.cancelled_at is not None:
            last_end = max((r.end for r in by_job.get(job, ())), default=expect.cancelled_at)
            latencies[job] = max(0.0, last_end - expect.cancelled_at)

    return Report(
        acknowledged=len(acknowledged),
        terminal=len(terminal),
        runs=len(all_runs),
        overlap_bound=overlap_bound,
        lost=tuple(lost),
        duplicated=tuple(duplicated),
        same_attempt_twice=tuple(twice),
        jurisdiction_violations=tuple(violations),
        unexpected=tuple(unexpected),
        strict_unexpected=strict_unexpected,
        cancel_latencies=latencies,
    )


def _is_terminal(state: str | None) -> bool:
    if state is None:
        return False
    try:
        return JobState.from_name(state).is_terminal()
    except ValueError:
        return False
