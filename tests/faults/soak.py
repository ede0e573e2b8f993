"""The fault soak: ``python -m tests.faults.soak --seed N --duration SECONDS [--json PATH]``.

Starts a whole cluster (see ``tests.faults.cluster``), runs a continuous seeded workload against
it, and for the duration injects faults from ``tests.faults.scenarios.FAULTS`` in seeded random
order (every kind once per round, at a random site where it strikes one; one at a time, each
healed before the next, the cluster healthy again in between). Then it stops
the workload, heals everything, waits for every acknowledged job to end, checks the history, and
prints a table. Exit codes: 0 when the invariants hold (no acknowledged job lost, no duplicate
beyond lease + kill grace, no attempt twice, no run outside its jurisdictions); 1 when one does
not (or, with ``--strict``, when an expectation does not either); 2 when the harness itself could
not finish (the cluster did not recover, jobs never ended). Run it from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.sdk import AsyncClient
from orchestrator.store import JobStore

from .cluster import Cluster
from .scenarios import (
    FAULTS,
    Evaluation,
    FaultContext,
    FaultRecord,
    SiteMonitor,
    Workload,
    evaluate,
    settle,
    wait_terminal,
)

__all__ = ["SoakResult", "main", "run_soak"]

log = logging.getLogger("tests.faults.soak")

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_HARNESS = 2


@dataclass
class SoakResult:
    """What a soak did and found."""

    seed: int
    duration: float
    network: str
    faults: list[FaultRecord]
    evaluation: Evaluation
    submit_errors: int
    workload_errors: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)

    @property
    def invariants_ok(self) -> bool:
        """The checker's invariants: nothing lost, doubled, run twice or out of jurisdiction."""
        return self.evaluation.report.ok

    @property
    def expectations_ok(self) -> bool:
        """Beyond the invariants: outcomes as planned, cut-off sites fenced in time, cancels
        within the bound, every fault fired, no unexpected client error."""
        ev = self.evaluation
        bound = ev.report.overlap_bound
        latency = ev.report.max_cancel_latency
        return (
            not ev.wrong_outcomes
            and not ev.fence_late
            and not ev.unexpected_losses
            and (latency is None or latency <= bound)
            and all(f.fired for f in self.faults)
            and not self.workload_errors
            and not self.gave_up
        )

    def table(self) -> str:
        """The soak's table: faults by kind, jobs, violations, figures, verdict."""
        ev = self.evaluation
        r = ev.report
        by_kind = Counter(f.kind for f in self.faults)
        not_fired = Counter(f.kind for f in self.faults if not f.fired)
        lines = [
            f"fault soak: seed {self.seed}, {self.duration:.0f}s of faults, network {self.network}",
            "",
            "faults injected (by kind)",
        ]
        for kind in sorted(by_kind):
            extra = f"  ({not_fired[kind]} never fired)" if not_fired[kind] else ""
            lines.append(f"  {kind:<40} {by_kind[kind]:>6}{extra}")
        lines.append(f"  {'total':<40} {sum(by_kind.values()):>6}")
        lines.append("")

        def row(name: str, value: object, note: str = "") -> None:
            lines.append(f"{name:<42} {value!s:>6}  {note}".rstrip())

        row("jobs acknowledged", r.acknowledged)
        row("jobs terminal", r.terminal)
        row("runs recorded", r.runs)
        row("lost", len(r.lost), "must be 0")
        row(f"duplicated beyond the bound ({r.overlap_bound:g}s)", len(r.duplicated), "must be 0")
        row("same attempt twice", len(r.same_attempt_twice), "must be 0")
        row("jurisdiction violations", len(r.jurisdiction_violations), "must be 0")
        row("unexpected runs (never acknowledged)", len(r.unexpected), "not a failure")
        row("wrong outcomes (a fault became a failure)", len(ev.wrong_outcomes), "expected 0")
        row("runs not fenced by lease + grace", len(ev.fence_late), "expected 0")
        row(
            "sites lost without an isolating fault",
            len(ev.unexpected_losses),
            "expected 0 (a short outage must not lose a site)",
        )
        latency = r.max_cancel_latency
        row(
            "cancel latency, max",
            "-" if latency is None else f"{latency:.2f}s",
            f"expected <= {r.overlap_bound:g}s over {len(r.cancel_latencies)} cancels",
        )
        row("submit calls failed (then retried)", self.submit_errors)
        row("time to detect a lost site", _figure(ev.detect_seconds))
        row("time to requeue (LOST -> RUNNING elsewhere)", _figure(ev.requeue_seconds))
        row("jobs moved off lost sites", sum(ev.moved.values()), _counts(ev.moved))
        lines.append("")
        verdict = "PASS" if self.invariants_ok else "FAIL"
        lines.append(
            f"invariants: {verdict}; expectations: {'met' if self.expectations_ok else 'NOT met'}"
        )
        details = [
            ("lost", list(r.lost)),
            ("wrong outcomes", [str(o) for o in ev.wrong_outcomes]),
            ("late fencing", ev.fence_late),
            ("sites lost without an isolating fault", ev.unexpected_losses),
            ("workload errors", self.workload_errors),
        ]
        for name, items in details:
            if items:
                more = f"first 5 of {len(items)}" if len(items) > 5 else str(len(items))
                lines.append(f"{name} ({more}):")
                lines += [f"  {x}" for x in items[:5]]
        if not r.ok:
            lines.append(r.table())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form of the result."""
        ev = self.evaluation
        return {
            "seed": self.seed,
            "duration": self.duration,
            "network": self.network,
            "invariants_ok": self.invariants_ok,
            "expectations_ok": self.expectations_ok,
            "faults": [asdict(f) for f in self.faults],
            "faults_by_kind": dict(Counter(f.kind for f in self.faults)),
            "report": ev.report.to_dict(),
            "wrong_outcomes": [str(o) for o in ev.wrong_outcomes],
            "fence_late": ev.fence_late,
            "unexpected_losses": ev.unexpected_losses,
            "detect_seconds": ev.detect_seconds,
            "requeue_seconds": ev.requeue_seconds,
            "moved": dict(ev.moved),
            "submit_errors": self.submit_errors,
            "workload_errors": self.workload_errors,
            "gave_up": self.gave_up,
        }


def _figure(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f}s / max {max(values):.2f}s (n={len(values)})"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


async def run_soak(
    cluster: Cluster,
    *,
    seed: int,
    duration: float,
    work_dir: Path,
    rate: float = 4.0,
    kinds: Sequence[str] = tuple(FAULTS),
    gap: tuple[float, float] = (2.0, 6.0),
    finish_timeout: float = 120.0,
) -> SoakResult:
    """Faults of ``kinds`` at random for ``duration`` seconds against a continuous workload of
    about ``rate`` jobs per second; then heal, wait and check."""
    rng = random.Random(seed)
    store = JobStore.from_config(cluster.redis_config)
    client = await AsyncClient.connect(cluster.api_address, timeout=5.0)
    workload = Workload(cluster, client, work_dir / "records", rng)
    monitor = SiteMonitor(store, cluster.sites)
    faults: list[FaultRecord] = []
    stop = asyncio.Event()
    try:
        await cluster.wait_healthy(store=store)
        monitor.start()
        feeder = asyncio.create_task(
            workload.continuous(stop, rate=rate, prefix=f"soak{seed}", cancel_share=0.1)
        )
        ends = time.monotonic() + duration
        order: list[str] = []
        n = 0
        while time.monotonic() < ends:
            await asyncio.sleep(rng.uniform(*gap))
            if time.monotonic() >= ends:
                break
            await cluster.wait_healthy(store=store, timeout=45)
            if not order:  # every kind once per round, in a seeded order
                order = list(kinds)
                rng.shuffle(order)
            kind = order.pop()
            site = rng.choice(sorted(cluster.sites)) if FAULTS[kind].site else None
            ctx = FaultContext(cluster, store, workload, monitor, rng, f"soak{seed}f{n}")
            log.info("fault %d: %s at %s", n, kind, site or "-")
            record = await FAULTS[kind].fn(ctx, site)
            record.kind = kind
            log.info(
                "fault %d: %s healed after %.1fs %s",
                n,
                record.kind,
                record.healed - record.started,
                record.note,
            )
            faults.append(record)
            n += 1
        stop.set()
        await feeder
        await workload.drain()
        await asyncio.to_thread(cluster.heal_all)
        await cluster.wait_healthy(store=store, timeout=45)
        await wait_terminal(store, list(workload.acked), timeout=finish_timeout)
        evaluation = await evaluate(cluster, store, workload, monitor, faults)
        return SoakResult(
            seed=seed,
            duration=duration,
            network=cluster.kind,
            faults=faults,
            evaluation=evaluation,
            submit_errors=workload.submit_errors,
            workload_errors=workload.errors,
            gave_up=workload.gave_up,
        )
    finally:
        stop.set()
        await monitor.stop()
        try:
            await asyncio.to_thread(cluster.heal_all)
            await settle(cluster, store)
        except Exception as exc:
            log.warning("could not settle the cluster: %r", exc)
        await client.close()
        await store.close()


def build_parser() -> argparse.ArgumentParser:
    """The soak's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.soak",
        description=(
            "Fault soak of the whole orchestrator: start a cluster (Redis, the control plane as "
            "role processes, one sg-agent per site in its own network namespace behind a "
            "WAN-delay proxy), run a continuous seeded workload, inject random faults for "
            "DURATION seconds (kill -9 of agents with or without their jobs, Redis, the "
            "scheduler, dispatchers at crash points, the whole control plane; partitions "
            "short and long, one way or both; a frozen agent), heal, wait for every "
            "acknowledged job to end, check the history and print a table."
        ),
        epilog=(
            "Invariants (exit 1 when one fails): no acknowledged job lost, no two attempts of a "
            "job overlapping by more than lease + kill grace, no attempt run twice, no run "
            "outside the job's jurisdictions. Expectations (exit 1 only with --strict): every "
            "job ended as planned (a fault never became the job's failure), sites cut off past "
            "their lease had their runs stopped by lease + grace, no site was declared lost "
            "but by a fault that cut it off past lost_after, cancels took effect within "
            "lease + grace, every fault fired. Exit 2: the harness could not finish. Figures: "
            "time to detect a lost site (fault start to LOST in the store) and time to requeue "
            "(LOST to the moved job RUNNING elsewhere), median and max. Fault kinds: "
            + ", ".join(sorted(FAULTS))
            + ". Run from the repository root; needs root for network namespaces, else falls "
            "back to loopback (saying so)."
        ),
    )
    parser.add_argument("--seed", type=int, required=True, help="seed of workload and faults")
    parser.add_argument(
        "--duration",
        type=float,
        required=True,
        metavar="SECONDS",
        help="how long to inject faults (the run takes longer: start, heal, drain, check)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result here")
    parser.add_argument(
        "--rate", type=float, default=4.0, help="jobs submitted per second (default: %(default)s)"
    )
    parser.add_argument(
        "--faults",
        metavar="KIND,...",
        help="only these fault kinds (comma-separated; default: all)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="where logs, Redis data and job records go (default: a new temporary directory, "
        "kept and printed)",
    )
    parser.add_argument(
        "--loopback",
        action="store_true",
        help="do not use network namespaces (hosts share 127.0.0.1; partitions via the proxy)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when an expectation is not met too"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    kinds = tuple(FAULTS) if not args.faults else tuple(args.faults.split(","))
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        print(f"unknown fault kinds: {', '.join(unknown)}", file=sys.stderr)
        return EXIT_HARNESS
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="sg-soak-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"soak: work directory {work_dir} (logs in {work_dir / 'cluster' / 'logs'})")

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cluster's teardown

    signal.signal(signal.SIGTERM, terminated)
    began = time.monotonic()
    try:
        with Cluster(work_dir / "cluster", seed=args.seed, prefer_netns=not args.loopback) as c:
            try:
                result = asyncio.run(
                    run_soak(
                        c,
                        seed=args.seed,
                        duration=args.duration,
                        work_dir=work_dir,
                        rate=args.rate,
                        kinds=kinds,
                    )
                )
            except Exception as exc:
                print(f"soak: the harness could not finish: {exc!r}", file=sys.stderr)
                print(c.tails(lines=15), file=sys.stderr)
                return EXIT_HARNESS
    except Exception as exc:
        print(f"soak: the cluster failed: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    print(result.table())
    print(f"(wall time {time.monotonic() - began:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    if not result.invariants_ok or (args.strict and not result.expectations_ok):
        return EXIT_VIOLATION
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
