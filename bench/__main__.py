"""The benchmark suite: every figure of issue 6 and its goal, measured in one run.

    python -m bench [--quick] [--runs N] [--big] [--only e2e,tracing,ray,idle]
                    [--sites N] [--dispatchers K] [--json PATH]

The parts, run in this order (``--only`` picks some; each is a benchmark of its own, whose
module docstring has the method):

    e2e      ``bench.e2e``, on one cluster of real processes (redis-server, the api, scheduler
             and dispatcher roles, a simulated fleet of ``--sites`` sites): batch submit, one
             RPC per job beside a bare unary gRPC call, paced at half rate (p99 latency), the
             physical floor (``bench.floor``) in the same rounds, then the same batch submit
             with 1k and 100k jobs queued (1M with ``--big``) and Redis memory per queued job
    tracing  ``bench.e2e.measure_tracing``: batch submit with tracing off, at 100% sampling and
             at 1% (parent-based), every process exporting to memory; a fresh cluster per mode
             and round, the modes interleaved; the spans each process recorded are checked;
             the cost is judged on what tracing adds to CPU per job (fresh clusters differ in
             rate by more than the 3% to resolve; the rate ratios are reported too)
    ray      the peer, Ray Jobs (``bench.ray_jobs.measure_ray_jobs``, on a Ray head of its
             own), against ours in the same round: our batch submit on a fresh cluster over its
             jobs/s, and our control plane's memory per job in flight
             (``bench.e2e.measure_inflight_memory``: api, scheduler, dispatchers and
             redis-server with K jobs held RUNNING, minus before, over K) over its memory per
             in-flight job
    idle     ``bench.idle_sites``: 1,000 simulated sites connected and idle; the control
             plane's CPU (percent of one core) and memory per site

Every figure is a median over ``--runs`` rounds (default 3); every ratio is the median of
per-round ratios, both sides measured in the same round. The suite prints progress lines on
stderr while it runs, then one table of every figure and every goal with PASS or FAIL (goals
are reported, not enforced), and writes it all, each part's own report included, to
``bench/results/suite-<UTC time>.json``. A part that fails is reported (its goals FAIL as not
measured) and the others still run; the exit status is then 1 (130 on Ctrl-C; every process
started is stopped either way).

How long, on this project's 2-core development machine: a full run takes roughly 20 to 30
minutes (estimated from the parts' sizes at today's rates: e2e ~5, tracing ~4, ray ~8, idle
~5); ``--big`` adds about 10 (filling 1M queued jobs); ``--quick`` (tiny sizes, one round: a
smoke test) about 1.5 minutes, most of it Ray's. The machine is shared: run the full suite
when nobody else's work is measuring, or its figures measure them too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import e2e, idle_sites
from bench._report import (
    Column,
    Goal,
    Ratio,
    emit,
    goal_lines,
    header,
    json_text,
    machine,
    number,
    own_redis,
    progress,
    sigterm_interrupts,
    table,
)

__all__ = [
    "PARTS",
    "Figure",
    "PeerReport",
    "PeerRound",
    "SuiteReport",
    "main",
    "measure_peer",
]

log = logging.getLogger(__name__)

PARTS = ("e2e", "tracing", "ray", "idle")
"""The suite's parts, in the order they run."""
RATE_FACTOR = 50.0
"""Ours must submit at least this many times Ray Jobs' jobs/s (issue 6)."""
MEMORY_FACTOR = 50.0
"""Ours must hold a job in flight in at most 1/this of Ray Jobs' memory (issue 6)."""
INFLIGHT_JOBS = {"full": 5000, "quick": 100}
"""Jobs our control plane holds RUNNING for its memory per job in flight."""
_NOT_MEASURED = {
    "e2e": [
        "batch submit",
        "batch submit / floor",
        "one RPC per job / bare unary call",
        "p99 submit -> RUNNING at half rate",
        "rate, deepest / shallowest queue",
        "Redis memory per queued job",
    ],
    "tracing": [
        "tracing at 100% sampling: throughput lost",
        "tracing at 1% sampling: throughput lost",
    ],
    "ray": ["batch submit / Ray Jobs", "memory per job in flight / Ray Jobs'"],
    "idle": ["control-plane CPU, idle sites connected", "control-plane memory per site"],
}
"""The goals of each part, as named when it fails before measuring them."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One line of the suite's table."""

    part: str
    name: str
    value: float
    unit: str


# -- the peer: Ray Jobs -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerRound:
    """One round of the peer comparison: ours and Ray Jobs', one after the other."""

    round: int
    ours_jobs_per_s: float
    """Our batch submit (sustained jobs/s to RUNNING) on a fresh cluster."""
    ours_inflight_jobs: int
    ours_mb_per_inflight_job: float
    """Our control plane's resident memory per job held RUNNING (MiB)."""
    ours_rss_mb: dict[str, float]
    """Our control plane's processes with the jobs held RUNNING (MiB)."""
    theirs: dict[str, Any]
    """Ray Jobs' ``RayJobsResult``, as a dict."""
    rate_ratio: float
    """Ours over theirs: jobs/s."""
    memory_ratio: float
    """Ours over theirs: memory per job in flight."""


@dataclass(frozen=True, slots=True)
class PeerReport:
    """The peer comparison over the rounds."""

    rounds: list[PeerRound]
    ratios: list[Ratio]
    goals: list[Goal]


RayJobs = Callable[..., Any]
"""``bench.ray_jobs.measure_ray_jobs``, or a stand-in with its signature and result."""


def measure_peer(
    base_dir: Path,
    *,
    sizes: e2e.Sizes,
    runs: int,
    inflight_jobs: int,
    ray_rate_jobs: int,
    ray_inflight: int,
    sites: int = 8,
    dispatchers: int = 2,
    measure_ray_jobs: RayJobs | None = None,
    say: Callable[[str], None] = progress,
) -> PeerReport:
    """``runs`` rounds of: our batch submit on a fresh cluster, our control plane's memory with
    ``inflight_jobs`` jobs RUNNING on another, then Ray Jobs (``ray_rate_jobs`` jobs for its rate,
    ``ray_inflight`` held for its memory; ``measure_ray_jobs``, by default
    ``bench.ray_jobs.measure_ray_jobs``, on a Ray head of its own in ``base_dir``)."""
    if measure_ray_jobs is None:
        from bench.ray_jobs import measure_ray_jobs as measure  # only when the part runs

        measure_ray_jobs = measure
    rounds: list[PeerRound] = []
    for round_ in range(1, runs + 1):
        where = base_dir / f"peer-{round_}"
        ours = e2e.batch_on_fresh_cluster(
            where / "rate", sizes=sizes, sites=sites, dispatchers=dispatchers
        )
        say(f"peer round {round_}/{runs}: ours {ours.result.jobs_per_second:,.0f} jobs/s")
        held = e2e.measure_inflight_memory(
            where / "held",
            jobs=inflight_jobs,
            sites=sites,
            dispatchers=dispatchers,
            warm_up=min(inflight_jobs, 1000),
        )
        say(
            f"peer round {round_}/{runs}: ours {held.bytes_per_job / 1024:,.1f} KiB per job "
            f"in flight ({held.jobs:,} held)"
        )
        theirs = measure_ray_jobs(jobs=ray_rate_jobs, inflight=ray_inflight, temp_dir=where / "ray")
        say(
            f"peer round {round_}/{runs}: Ray Jobs {theirs.jobs_per_s:,.2f} jobs/s, "
            f"{theirs.memory_per_inflight_mb:,.1f} MiB per job in flight"
        )
        rounds.append(
            PeerRound(
                round=round_,
                ours_jobs_per_s=ours.result.jobs_per_second,
                ours_inflight_jobs=held.jobs,
                ours_mb_per_inflight_job=held.mb_per_job,
                ours_rss_mb=dict(held.rss_mb),
                theirs=_fields(theirs),
                rate_ratio=ours.result.jobs_per_second / theirs.jobs_per_s,
                memory_ratio=held.mb_per_job / theirs.memory_per_inflight_mb,
            )
        )
    rate = statistics.median(r.rate_ratio for r in rounds)
    memory = statistics.median(r.memory_ratio for r in rounds)
    return PeerReport(
        rounds=rounds,
        ratios=[
            Ratio("batch submit jobs/s, ours / Ray Jobs", rate),
            Ratio("memory per job in flight, ours / Ray Jobs", memory),
        ],
        goals=[
            Goal.at_least("batch submit / Ray Jobs", rate, RATE_FACTOR, unit="x"),
            Goal.at_most("memory per job in flight / Ray Jobs'", memory, 1 / MEMORY_FACTOR),
        ],
    )


_RAY_FIELDS = (
    "jobs", "submit_per_s", "jobs_per_s", "latency_p50_ms", "latency_p99_ms", "inflight_jobs",
    "memory_per_inflight_mb", "baseline_rss_mb", "ray_version",
)  # fmt: skip


def _fields(result: Any) -> dict[str, Any]:
    return {name: getattr(result, name) for name in _RAY_FIELDS}


# -- the suite ----------------------------------------------------------------------------------


@dataclass
class SuiteReport:
    """The whole run: what ran it, every figure and goal, and each part's own report."""

    machine: dict[str, str]
    runs: int
    quick: bool
    big: bool
    parts: list[str]
    figures: list[Figure] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    """Parts that failed, and why."""
    seconds: dict[str, float] = field(default_factory=dict)
    """How long each part took."""
    details: dict[str, Any] = field(default_factory=dict)
    """Each part's own report (its JSON)."""

    def to_json(self) -> str:
        return json_text(asdict(self))

    def text(self) -> str:
        took = ", ".join(f"{p} {s:.0f} s" for p, s in self.seconds.items())
        lines = [
            *header("benchmark suite", self.machine),
            f"parts: {', '.join(self.parts)} ({took}); "
            + ("--quick: tiny sizes, one round" if self.quick else f"median of {self.runs} "
               "round(s); ratios: medians of per-round ratios, both sides in the same round"),
            "",
            table(
                (Column("part", 8, left=True), Column("figure", 58, left=True),
                 Column("value", 12), Column("unit", 10, left=True)),
                ([f.part, f.name, number(f.value), f.unit] for f in self.figures),
            ),
            "",
            *goal_lines(self.goals),
        ]  # fmt: skip
        for part, why in self.failures.items():
            lines += ["", f"FAILED {part}: {why}"]
        passed = sum(g.passed for g in self.goals)
        lines += ["", f"{passed} of {len(self.goals)} goals met"]
        return "\n".join(lines)


def _e2e_figures(report: e2e.Report) -> list[Figure]:
    out = []
    for row in report.rows:
        unit = "calls/s" if row.measurement.startswith("bare") else "jobs/s"
        out.append(Figure("e2e", row.measurement, row.jobs_per_second, unit))
        if row.measurement.startswith("paced") and row.p99_ms is not None:
            out.append(Figure("e2e", "  p99 submit -> RUNNING", row.p99_ms, "ms"))
            out += [
                Figure("e2e", f"    p99 {stage}", p99, "ms")
                for stage, (_, p99) in row.stages_ms.items()
            ]
    out += [
        Figure("e2e", f"Redis memory per queued job ({q.queued:,} queued)", q.bytes_per_job, "B")
        for q in report.queue_memory
    ]
    out += [Figure("e2e", r.name, r.value, "ratio") for r in report.ratios]
    return out


def _tracing_figures(report: e2e.TracingReport) -> list[Figure]:
    out = [Figure("tracing", r.measurement, r.jobs_per_second, "jobs/s") for r in report.rows]
    for mode in e2e.TRACING_MODES[1:]:
        runs = [c for c in report.clusters if c.mode == mode.name]
        per_job = statistics.median(c.spans_per_job for c in runs)
        out.append(Figure("tracing", f"spans recorded per job, {mode.name}", per_job, "spans"))
    out += [Figure("tracing", r.name, r.value, "ratio") for r in report.ratios]
    return out


def _peer_figures(report: PeerReport) -> list[Figure]:
    med = statistics.median
    rounds = report.rounds
    theirs = [r.theirs for r in rounds]
    out = [
        Figure("ray", "ours: batch submit (fresh cluster)",
               med(r.ours_jobs_per_s for r in rounds), "jobs/s"),
        Figure("ray", "Ray Jobs: jobs to SUCCEEDED", med(t["jobs_per_s"] for t in theirs),
               "jobs/s"),
        Figure("ray", "Ray Jobs: submit calls", med(t["submit_per_s"] for t in theirs),
               "calls/s"),
        Figure("ray", "Ray Jobs: p99 submit -> RUNNING", med(t["latency_p99_ms"] for t in theirs),
               "ms"),
        Figure("ray", f"ours: memory per job in flight ({rounds[0].ours_inflight_jobs:,} held)",
               med(r.ours_mb_per_inflight_job for r in rounds) * 1024, "KiB"),
        Figure("ray", f"Ray Jobs: memory per job in flight ({theirs[0]['inflight_jobs']} held)",
               med(t["memory_per_inflight_mb"] for t in theirs), "MiB"),
    ]  # fmt: skip
    out += [Figure("ray", r.name, r.value, "ratio") for r in report.ratios]
    return out


def _idle_figures(report: idle_sites.Report) -> list[Figure]:
    sites = int(report.sizes["sites"])
    out = [
        Figure("idle", f"{r.name}: CPU, {sites:,} idle sites connected", r.cpu_percent,
               "% of core")
        for r in report.processes
    ]  # fmt: skip
    out += [
        Figure("idle", f"{r.name}: memory per site", r.kb_per_site, "KiB") for r in report.processes
    ]
    return out


def _run_part(
    part: str, args: argparse.Namespace, base: Path
) -> tuple[Any, list[Figure], list[Goal]]:
    """Run one part; its report (for the JSON), its figures and its goals."""
    quick, runs = args.quick, args.runs
    sizes = e2e.QUICK if quick else e2e.BIG if args.big else e2e.FULL
    if part == "e2e":
        report = e2e.run(
            base / "e2e",
            sizes=sizes,
            runs=runs,
            warm_up=not quick,
            sites=args.sites,
            dispatchers=args.dispatchers,
            progress=True,
        )
        return report, _e2e_figures(report), report.goals
    if part == "tracing":
        traced = e2e.measure_tracing(
            base / "tracing",
            sizes=sizes,
            runs=runs,
            sites=args.sites,
            dispatchers=args.dispatchers,
            progress=True,
        )
        return traced, _tracing_figures(traced), traced.goals
    if part == "ray":
        from bench import ray_jobs

        ray_sizes = ray_jobs.QUICK if quick else ray_jobs.FULL
        peer = measure_peer(
            base / "ray",
            sizes=sizes,
            runs=runs,
            inflight_jobs=INFLIGHT_JOBS["quick" if quick else "full"],
            ray_rate_jobs=ray_sizes.jobs,
            ray_inflight=ray_sizes.inflight,
            sites=args.sites,
            dispatchers=args.dispatchers,
        )
        return peer, _peer_figures(peer), peer.goals
    with own_redis(None) as url:
        idle = idle_sites.quick(url) if quick else idle_sites.run(url, runs=runs, progress=True)
    return idle, _idle_figures(idle), idle.goals


def _as_json(report: Any) -> Any:
    to_json = getattr(report, "to_json", None)
    return json.loads(to_json()) if callable(to_json) else asdict(report)


def run_suite(args: argparse.Namespace, parts: Sequence[str], base: Path) -> SuiteReport:
    """Every part of ``parts`` in turn (a failed part is recorded, the others still run)."""
    suite = SuiteReport(machine(), 1 if args.quick else args.runs, args.quick, args.big,
                        list(parts))  # fmt: skip
    for part in parts:
        progress(f"== {part}: started at {time.strftime('%H:%M:%S')}")
        started = time.monotonic()
        try:
            report, figures, goals = _run_part(part, args, base)
        except Exception as exc:  # noqa: BLE001 - one part's failure must not lose the rest
            traceback.print_exc(file=sys.stderr)
            suite.failures[part] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            goals = [
                Goal(name, math.nan, "not measured", math.nan, "", False)
                for name in _NOT_MEASURED[part]
            ]
            figures, report = [], None
        suite.seconds[part] = time.monotonic() - started
        suite.figures += figures
        suite.goals += goals
        if report is not None:
            suite.details[part] = _as_json(report)
        verdict = "FAILED" if part in suite.failures else "done"
        progress(f"== {part}: {verdict} in {suite.seconds[part]:.0f} s")
    return suite


def _parts(text: str) -> list[str]:
    chosen = {p.strip() for p in text.split(",") if p.strip()}
    unknown = chosen - set(PARTS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"--only takes parts among {', '.join(PARTS)} (got {text!r})"
        )
    return [p for p in PARTS if p in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, print the table and the goals, write JSON. Exit 0 when every part ran
    (whatever the goals), 1 when a part failed, 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and one round: a smoke test"
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds per part (median); default 3")
    parser.add_argument(
        "--big", action="store_true", help="e2e: also measure with 1M jobs queued (slow)"
    )
    parser.add_argument(
        "--only",
        type=_parts,
        default=list(PARTS),
        metavar="PARTS",
        help=f"comma-separated parts to run, among {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--sites", type=int, default=8, help="simulated sites of e2e's clusters (default 8)"
    )
    parser.add_argument(
        "--dispatchers", type=int, default=2, help="dispatchers of e2e's clusters (default 2)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write results (default: bench/results/suite-<UTC time>.json)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.sites < 1 or args.dispatchers < 1:
        parser.error("--runs, --sites and --dispatchers must be at least 1")
    if args.quick:
        args.runs = 1
    try:
        with sigterm_interrupts(), tempfile.TemporaryDirectory(prefix="sg-bench-suite-") as tmp:
            suite = run_suite(args, args.only, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    emit(suite, name="suite", path=args.json)
    return 1 if suite.failures else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
