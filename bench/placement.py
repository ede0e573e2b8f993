"""Benchmark of the pure placement function: decisions per second and cycle time.

    python -m bench.placement [--quick] [--json PATH] [--runs N]

Builds realistic federations (3, 100 and 1,000 sites over about 20 jurisdictions, H100 / GB200 /
GB300 pools, power caps, home countries with surplus offers, a few tenant-restricted sites),
tenants (countries, weights, some quotas) and pending queues (1k .. 1M jobs: priority classes,
residency to one country, a pre-expanded group or anywhere, 0 / 1 / 8 GPUs and 4 x 8 gangs).
Like the scheduler, each cycle sees only a window of the queue (``--window`` jobs, see
``window_of``); building the whole queue is not timed, ``place`` is. Decisions are the window's
jobs that got an outcome (placed, waiting or unschedulable); each row is the median of
``--runs`` cycles on the same snapshot (see ``run``).
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench._report import Column, Goal, add_arguments, emit, goal_lines, header, json_text, machine
from bench._report import table as _table
from orchestrator.jurisdictions import GROUPS
from orchestrator.scheduler.model import (
    JobRequest,
    Priority,
    RunningJob,
    SitePolicy,
    SiteView,
    Snapshot,
    TenantView,
)
from orchestrator.scheduler.placement import place

__all__ = ["Goal", "Report", "Row", "main", "measure_all", "quick", "run"]

JURISDICTIONS = (
    "NO", "SE", "FI", "DK", "IS", "DE", "FR", "NL", "IE", "GB",
    "ES", "IT", "PL", "US", "CA", "AE", "SA", "JP", "SG", "AU",
)  # fmt: skip
GPU_WATTS = {"H100": 1400, "GB200": 2000, "GB300": 2400}
FEDERATION_GPUS = 240_000
"""GPUs across the federation, whatever the number of sites (3 big sites or 1,000 small)."""
DEFAULT_JSON = Path("bench/results/placement.json")
NOW = 1e9
SITE_COUNTS = (3, 100, 1000)
PENDING_COUNTS = (1_000, 10_000, 100_000, 1_000_000)


@dataclass(frozen=True, slots=True)
class Row:
    """One (sites, pending) measurement."""

    sites: int
    pending: int
    window_jobs: int
    cycle_seconds: float
    """Wall-clock time of one cycle (median over the runs)."""
    cpu_seconds: float
    """CPU time of one cycle (median): what the goals use, as it moves less than wall-clock
    time when other processes share the machine."""
    cpu_runs: list[float]
    """CPU time of every run, in round order (the ratio goals pair runs of the same round)."""
    decisions_per_second: float
    """Window jobs decided per CPU second (median run)."""
    us_per_decision: float
    """CPU microseconds per decided job."""
    placed: int
    waiting: int
    unschedulable: int
    preemptions: int


def build_sites(n: int, rng: random.Random) -> list[SiteView]:
    """``n`` sites sharing ``FEDERATION_GPUS``, about 40% in use, some home sites and caps."""
    if n == 3:
        plan = [("narvik", "NO", 0.45), ("uae", "AE", 0.2), ("abilene", "US", 0.35)]
    else:
        plan = [(f"site-{i:04d}", JURISDICTIONS[i % len(JURISDICTIONS)], 1.0 / n) for i in range(n)]
    sites = []
    for i, (site_id, juris, part) in enumerate(plan):
        size = max(int(FEDERATION_GPUS * part * rng.uniform(0.7, 1.3)), 64)
        types = rng.sample(sorted(GPU_WATTS), rng.randint(1, 3)) if n != 3 else sorted(GPU_WATTS)
        total = {t: size // len(types) for t in types}
        used = {t: int(c * rng.uniform(0.2, 0.6)) for t, c in total.items()}
        gpus_total = sum(total.values())
        used_watts = sum(used[t] * GPU_WATTS[t] for t in types)
        full_watts = sum(total[t] * GPU_WATTS[t] for t in types)
        capped = rng.random() < 0.5
        home = frozenset({juris}) if (n == 3 and i == 0) or rng.random() < 0.4 else frozenset()
        restricted = n != 3 and rng.random() < 0.05
        sites.append(
            SiteView(
                site_id=site_id,
                jurisdiction=juris,
                accepting=rng.random() < 0.97 or n == 3,
                total_gpus=total,
                total_cpus=gpus_total * 16 + 256,
                total_memory_mb=(gpus_total * 16 + 256) * 8192,
                used_gpus=used,
                used_cpus=sum(used.values()) * 12,
                used_memory_mb=sum(used.values()) * 12 * 8192,
                gpu_watts=GPU_WATTS,
                power_cap_watts=int(full_watts * rng.uniform(0.8, 0.95)) if capped else None,
                used_watts=used_watts,
                home_countries=home,
                policy=SitePolicy(
                    allowed_tenant_countries=GROUPS["EEA"] if restricted else frozenset(),
                    surplus_gpus=gpus_total // 4 if home else None,
                ),
                used_gpus_nonhome=gpus_total // 10 if home else 0,
                renewable_share=round(rng.random(), 2),
                carbon_intensity=round(rng.uniform(10, 700), 1),
            )
        )
    return sites


def build_tenants(
    countries: Sequence[str], rng: random.Random, n: int = 300
) -> dict[str, TenantView]:
    """``n`` tenants from ``countries``: weights 1 or 2, a fifth with a GPU quota."""
    tenants = {}
    for i in range(n):
        name = f"tenant-{i:03d}"
        country = rng.choice(countries)
        quota = rng.choice([256, 1024, 4096]) if rng.random() < 0.2 else None
        by_j = {country: 512} if rng.random() < 0.05 else {}
        tenants[name] = TenantView(
            tenant=name,
            country=country,
            weight=rng.choice([1.0, 1.0, 2.0]),
            quota_gpus=quota,
            quota_gpus_by_jurisdiction=by_j,
            used_gpus=rng.randint(0, 64),
            used_cpus=rng.randint(0, 1024),
            used_memory_mb=rng.randint(0, 1 << 20),
        )
    return tenants


def build_jobs(
    n: int, sites: Sequence[SiteView], tenants: dict[str, TenantView], rng: random.Random
) -> list[JobRequest]:
    """``n`` pending jobs in submit order."""
    present = sorted({s.jurisdiction for s in sites})
    groups = [g for g in GROUPS.values() if g & set(present)]
    names = sorted(tenants)
    site_ids = [s.site_id for s in sites]
    prios = rng.choices(list(Priority), weights=[20, 60, 15, 5], k=n)
    sizes = rng.choices([0, 1, 8, 32], weights=[20, 40, 30, 10], k=n)
    who = rng.choices(names, k=n)
    where = rng.choices(["any", "one", "group"], weights=[30, 40, 30], k=n)
    typed = rng.choices([True, False], k=n)
    extra = [rng.random() for _ in range(n)]
    jobs = []
    for i in range(n):
        tenant = tenants[who[i]]
        if where[i] == "one":
            allowed = frozenset(
                {tenant.country if tenant.country in present else present[i % len(present)]}
            )
        elif where[i] == "group":
            allowed = groups[i % len(groups)]
        else:
            allowed = frozenset()
        gpus = sizes[i]
        x = extra[i]
        jobs.append(
            JobRequest(
                job_id=f"job-{i:07d}",
                attempt=1,
                tenant=tenant.tenant,
                priority=prios[i],
                submit_order=float(i),
                gpus=gpus,
                gpu_type=("H100", "GB200", "GB300")[i % 3] if gpus and typed[i] else "",
                cpus=max(gpus * 12, 4),
                memory_mb=max(gpus * 12, 4) * 8192,
                nodes=4 if gpus == 32 else 1,
                allowed_jurisdictions=allowed,
                excluded_sites=frozenset({site_ids[i % len(site_ids)]})
                if x < 0.03
                else frozenset(),
                preferred_sites=(site_ids[(i * 7) % len(site_ids)],) if 0.03 <= x < 0.08 else (),
                tenant_country=tenant.country,
            )
        )
    return jobs


def build_running(
    sites: Sequence[SiteView], tenants: dict[str, TenantView], rng: random.Random
) -> list[RunningJob]:
    """A few SURPLUS-class jobs at each home site (preemption candidates)."""
    names = sorted(tenants)
    out = []
    for s in sites:
        if not s.home_countries:
            continue
        for k in range(3):
            t = tenants[rng.choice(names)]
            gpu_type = sorted(s.total_gpus)[0]
            out.append(
                RunningJob(
                    job_id=f"run-{s.site_id}-{k}",
                    attempt=1,
                    tenant=t.tenant,
                    site_id=s.site_id,
                    priority=Priority.SURPLUS,
                    gpu_type=gpu_type,
                    gpus=8,
                    cpus=96,
                    memory_mb=96 * 8192,
                    watts=8 * GPU_WATTS[gpu_type],
                    home_at_site=t.country in s.home_countries,
                    last_preempted_at=None if k else NOW - 60.0,  # k = 0: recently preempted
                )
            )
    return out


def window_of(jobs: Sequence[JobRequest], size: int) -> list[JobRequest]:
    """The head of the queue: its ``size`` oldest jobs.

    The store reads class first, then submit order; with a million jobs pending that window
    would be all CRITICAL, and rows would compare different mixes of work rather than queues of
    different lengths. The oldest jobs keep the window's mix the same for every queue length.
    """
    return heapq.nsmallest(size, jobs, key=lambda j: j.submit_order)


def snapshots(
    *,
    site_counts: Sequence[int],
    pending_counts: Sequence[int],
    window: int,
    seed: int = 7,
    progress: bool = False,
) -> dict[tuple[int, int], Snapshot]:
    """One snapshot per (sites, pending): the whole queue is built, only its window is kept."""
    out = {}
    for n_sites in site_counts:
        rng = random.Random(seed)  # noqa: S311 - benchmark data, not secrets
        sites = build_sites(n_sites, rng)
        tenants = build_tenants(sorted({s.jurisdiction for s in sites} | {"GB", "SE", "DE"}), rng)
        running = build_running(sites, tenants, rng)
        for pending in pending_counts:
            jobs = build_jobs(pending, sites, tenants, random.Random(seed + pending))  # noqa: S311
            out[(n_sites, pending)] = Snapshot(
                jobs=window_of(jobs, window), sites=sites, tenants=tenants, running=running, now=NOW
            )
            del jobs
            if progress:
                print(f"  built {n_sites} sites x {pending:,} pending", file=sys.stderr)
    return out


def run(
    *,
    site_counts: Sequence[int] = SITE_COUNTS,
    pending_counts: Sequence[int] = PENDING_COUNTS,
    window: int = 10_000,
    runs: int = 3,
    progress: bool = False,
) -> list[Row]:
    """Measure every (sites, pending) pair: one warm-up round, then ``runs`` rounds that each
    time every snapshot once, in alternating order (so that the machine's ups and downs, when it
    is shared, hit every row alike), and the median per row."""
    snaps = snapshots(
        site_counts=site_counts, pending_counts=pending_counts, window=window, progress=progress
    )
    results = {key: place(snap) for key, snap in snaps.items()}
    wall: dict[tuple[int, int], list[float]] = {key: [] for key in snaps}
    cpu: dict[tuple[int, int], list[float]] = {key: [] for key in snaps}
    for round_ in range(runs):
        order = list(snaps.items())
        for key, snap in order if round_ % 2 == 0 else order[::-1]:
            started, started_cpu = time.perf_counter(), time.process_time()
            results[key] = place(snap)
            cpu[key].append(time.process_time() - started_cpu)
            wall[key].append(time.perf_counter() - started)
        if progress:
            print(f"  round {round_ + 1}/{runs}", file=sys.stderr)
    rows = []
    for (n_sites, pending), snap in snaps.items():
        result = results[(n_sites, pending)]
        seconds = statistics.median(cpu[(n_sites, pending)])
        decided = len(result.decisions) + len(result.waiting) + len(result.unschedulable)
        rows.append(
            Row(
                sites=n_sites,
                pending=pending,
                window_jobs=len(snap.jobs),
                cycle_seconds=statistics.median(wall[(n_sites, pending)]),
                cpu_seconds=seconds,
                cpu_runs=cpu[(n_sites, pending)],
                decisions_per_second=decided / seconds if seconds else 0.0,
                us_per_decision=seconds / decided * 1e6 if decided else 0.0,
                placed=len(result.decisions),
                waiting=len(result.waiting),
                unschedulable=len(result.unschedulable),
                preemptions=len(result.preemptions),
            )
        )
    return rows


def paired(a: Row, b: Row, *, per_decision: bool) -> float:
    """Median over rounds of a's CPU time over b's in the same round (per decision if asked):
    a ratio that drifts in the machine's speed between rounds do not move."""
    scale = (b.window_jobs / a.window_jobs) if per_decision else 1.0
    return statistics.median(x / y * scale for x, y in zip(a.cpu_runs, b.cpu_runs, strict=True))


def goals(rows: Sequence[Row], *, window: int) -> list[Goal]:
    """The speed goals, each checked where the rows allow it, on CPU time.

    - at least 50,000 decisions/s with 100 sites (every queue length measured);
    - per-decision cost with the most sites at most 2x that with the fewest (per queue length);
    - cycle time with the longest queue at most 1.2x that with a queue of one window (per
      federation size): only the window enters a cycle.

    Ratios are medians of per-round ratios (``paired``).
    """
    by = {(r.sites, r.pending): r for r in rows}
    site_counts = sorted({r.sites for r in rows})
    pendings = sorted({r.pending for r in rows})
    out = []
    for p in pendings:
        if (100, p) in by:
            rate = by[(100, p)].decisions_per_second
            out.append(Goal.at_least(f"decisions/s, 100 sites, {p} pending", rate, 50_000))
    if len(site_counts) > 1:
        few, many = site_counts[0], site_counts[-1]
        for p in pendings:
            if (few, p) in by and (many, p) in by:
                ratio = paired(by[(many, p)], by[(few, p)], per_decision=True)
                name = f"cost per decision, {many} vs {few} sites, {p} pending"
                out.append(Goal.at_most(name, ratio, 2.0, unit="x"))
    full = [p for p in pendings if p >= window]
    if len(full) > 1:
        for n in site_counts:
            base, big = by.get((n, full[0])), by.get((n, full[-1]))
            if base and big:
                ratio = paired(big, base, per_decision=False)
                name = f"cycle time, {big.pending} vs {base.pending} pending, {n} sites"
                out.append(Goal.at_most(name, ratio, 1.2, unit="x"))
    return out


_COLUMNS = (
    Column("sites", 6),
    Column("pending", 9),
    Column("window", 7),
    Column("wall ms", 8),
    Column("cpu ms", 7),
    Column("decisions/s", 12),
    Column("us/dec", 7),
    Column("placed", 7),
    Column("waiting", 7),
    Column("unsched", 7),
    Column("preempt", 7),
)


def _cells(r: Row) -> list[str]:
    return [
        str(r.sites), str(r.pending), str(r.window_jobs), f"{r.cycle_seconds * 1e3:.1f}",
        f"{r.cpu_seconds * 1e3:.1f}", f"{r.decisions_per_second:,.0f}",
        f"{r.us_per_decision:.2f}", str(r.placed), str(r.waiting), str(r.unschedulable),
        str(r.preemptions),
    ]  # fmt: skip


def table(rows: Sequence[Row]) -> str:
    """Rows as a fixed-width table."""
    return _table(_COLUMNS, map(_cells, rows))


@dataclass(frozen=True, slots=True)
class Report:
    """A whole run: where and when, the measurements, the goals."""

    machine: dict[str, str]
    window: int
    runs: int
    rows: list[Row]
    goals: list[Goal]

    def to_json(self) -> str:
        return json_text(asdict(self))

    def text(self) -> str:
        m = self.machine
        lines = [
            *header("placement benchmark", m),
            f"window {self.window} jobs, median of {self.runs} run(s) per row; "
            "decisions/s, us/dec and the goals use CPU time",
            "",
            table(self.rows),
            "",
            *goal_lines(self.goals),
        ]
        return "\n".join(lines)


def measure_all(
    *,
    site_counts: Sequence[int] = SITE_COUNTS,
    pending_counts: Sequence[int] = PENDING_COUNTS,
    window: int = 10_000,
    runs: int = 3,
    progress: bool = False,
) -> Report:
    """Run every (sites, pending) pair and check the goals."""
    rows = run(
        site_counts=site_counts,
        pending_counts=pending_counts,
        window=window,
        runs=runs,
        progress=progress,
    )
    return Report(machine(), window, runs, rows, goals(rows, window=window))


def quick() -> Report:
    """A tiny run, for tests: two small federations, two short queues, one run each."""
    return measure_all(site_counts=(3, 20), pending_counts=(50, 100, 400), window=100, runs=1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and the goals, write JSON. Exits 0: goals are reported, not enforced."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.placement", description="Benchmark the placement function."
    )
    add_arguments(
        parser,
        name="placement",
        runs=11,
        runs_help="cycles per row (median); at least 3",
        json_default=DEFAULT_JSON,
    )
    parser.add_argument("--window", type=int, default=10_000, help="jobs per cycle")
    args = parser.parse_args(argv)
    if args.quick:
        report = quick()
    else:
        report = measure_all(window=args.window, runs=max(args.runs, 3), progress=True)
    emit(report, name="placement", path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
