"""What every benchmark's report shares: the header, tables, medians, goals, JSON and ``main``.

Each benchmark (``bench.floor``, ``bench.e2e``, ``bench.idle_sites``, ``bench.security``,
``bench.placement`` and the suite, ``python -m bench``) measures its own thing but reports it
the same way, so that a reader compares runs of different benchmarks (and of different
machines) at a glance, and a script reads every JSON file alike:

- ``machine``: what ran it and when (date, cores and CPU model, Python, the gRPC, protobuf and
  Redis client versions, the redis-server's when there is one, the repository's commit), and
  ``header``, its first two lines of text;
- ``table``: fixed-width columns of cells the benchmark formats itself;
- ``paired``, ``percentile``, ``rotated``: the medians and orders the benchmarks measure with
  (ratios are medians of per-round ratios: both sides measured in the same round, so that a
  shared machine's drift from round to round leaves them alone);
- ``Goal``: a goal of issue 6, its limit and whether the run met it, and ``goal_lines``;
- ``default_json_path`` and ``emit``: print the report and write it to
  ``bench/results/<name>-<UTC time>.json``;
- ``add_arguments`` (``--quick``, ``--json``, ``--runs``), ``own_redis`` (the ``--redis-url``
  given, or a durable redis-server of our own) and ``sigterm_interrupts`` for ``main``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import google.protobuf
import grpc
import redis

from orchestrator.store import LocalRedis

__all__ = [
    "REPO",
    "RESULTS",
    "Column",
    "Goal",
    "Ratio",
    "Reportable",
    "add_arguments",
    "commit",
    "cpu_model",
    "default_json_path",
    "emit",
    "goal_lines",
    "header",
    "machine",
    "number",
    "own_redis",
    "paired",
    "percentile",
    "progress",
    "redis_version",
    "rotated",
    "sigterm_interrupts",
    "table",
]

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
"""The repository root."""
RESULTS = Path("bench/results")
"""Where results go by default (relative: the benchmarks are run from the repository root)."""


# -- what ran it --------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows; else ``?``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or "?"


def commit() -> str:
    """The repository's commit, ``+modified`` when its tracked files differ from it (what was
    measured is the working tree); ``?`` without git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}+modified" if changed else head


def redis_version(url: str) -> str:
    """The ``redis_version`` of the server at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def machine(*, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """What ran the benchmark, and when (now): the keys ``header`` prints, ``redis-server``
    with ``redis_url``, and ``extra`` (other libraries' versions)."""
    out = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "redis-py": redis.__version__,
    }
    if redis_url is not None:
        out["redis-server"] = redis_version(redis_url)
    out.update(extra)
    out["commit"] = commit()
    return out


_NOT_VERSIONS = frozenset(
    {"date", "cores", "cpu", "python", "implementation", "platform", "commit"}
)


def header(title: str, m: dict[str, str]) -> list[str]:
    """The first two lines of a report: the benchmark, the date and the machine; the CPU, the
    versions of what it ran on and the commit."""
    versions = ", ".join(f"{k} {v}" for k, v in m.items() if k not in _NOT_VERSIONS)
    return [
        f"{title}  {m['date']}  {m['cores']} cores  {m['implementation']} {m['python']}  "
        f"({m['platform']})",
        f"cpu {m.get('cpu', '?')}; {versions}; commit {m.get('commit', '?')}",
    ]


def progress(text: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(f"  {text}", file=sys.stderr, flush=True)


# -- tables and numbers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a fixed-width table."""

    title: str
    width: int
    left: bool = False
    """Left-aligned (names); numbers are right-aligned."""


def table(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> str:
    """Rows of formatted cells under their columns' titles and a rule."""

    def line(cells: Sequence[str]) -> str:
        return " ".join(
            f"{c:<{col.width}}" if col.left else f"{c:>{col.width}}"
            for col, c in zip(columns, cells, strict=True)
        ).rstrip()

    head = line([c.title for c in columns])
    return "\n".join([head, "-" * len(head), *(line(r) for r in rows)])


def number(value: float) -> str:
    """A figure as a reader wants it: thousands grouped, a few significant digits."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def paired(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a's figure over b's in the same round: a ratio that the drifts of
    the machine's speed from round to round leave alone."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def rotated(items: Sequence[T], by: int) -> list[T]:
    """``items`` starting at index ``by`` (mod their number): turns taken in a rotating order,
    so that the ups and downs of a shared machine hit every configuration alike."""
    k = by % len(items)
    return [*items[k:], *items[:k]]


@dataclass(frozen=True, slots=True)
class Ratio:
    """A figure over another, round by round."""

    name: str
    value: float
    """Median of the per-round ratios (``paired``)."""


# -- goals --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Goal:
    """A goal (of issue 6, or of a benchmark's own), its limit and whether the run met it.
    Goals are reported, not enforced: a run that misses one still succeeds."""

    name: str
    value: float
    target: str
    """The limit as text: ``>= 10,000``, ``<= 0.02``."""
    limit: float
    unit: str
    """Of ``value`` and ``limit`` (may be empty)."""
    passed: bool

    @classmethod
    def at_least(cls, name: str, value: float, limit: float, *, unit: str = "") -> Goal:
        """Met when ``value >= limit`` (never by NaN)."""
        return cls(name, value, f">= {limit:,.10g}", limit, unit, value >= limit)

    @classmethod
    def at_most(cls, name: str, value: float, limit: float, *, unit: str = "") -> Goal:
        """Met when ``value <= limit`` (never by NaN)."""
        return cls(name, value, f"<= {limit:,.10g}", limit, unit, value <= limit)

    def line(self) -> str:
        """``PASS  name: value unit (goal >= limit unit)``."""
        unit = self.unit if self.unit in ("", "x", "%") else f" {self.unit}"
        return (
            f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {number(self.value)}{unit} "
            f"(goal {self.target}{unit})"
        )


def goal_lines(goals: Sequence[Goal]) -> list[str]:
    """``goals`` and one indented line per goal."""
    return ["goals", *(f"  {g.line()}" for g in goals)]


# -- output and main ----------------------------------------------------------------------------


class Reportable(Protocol):
    """A benchmark's report: text for people, JSON for scripts."""

    def text(self) -> str: ...

    def to_json(self) -> str: ...


def json_text(doc: Any) -> str:
    """``doc`` as indented JSON, strict: a figure that is no number (NaN or infinite: not
    measured) is written as null, since NaN is not JSON and strict readers refuse it."""
    return json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def default_json_path(name: str, now: datetime.datetime | None = None) -> Path:
    """``bench/results/<name>-<UTC timestamp>.json``."""
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS / f"{name}-{stamp}.json"


def emit(report: Reportable, *, name: str, path: Path | None = None) -> Path:
    """Print ``report``, write its JSON to ``path`` (default: ``default_json_path(name)``),
    say where; the path written."""
    out = path or default_json_path(name)
    print(report.text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json())
    print(f"\nwrote {out}")
    return out


def add_arguments(
    parser: argparse.ArgumentParser,
    *,
    name: str,
    runs: int,
    runs_help: str = "rounds (median)",
    json_default: Path | None = None,
) -> None:
    """``--quick``, ``--json`` and ``--runs``, as every benchmark takes them."""
    parser.add_argument("--quick", action="store_true", help="a tiny run (a smoke test)")
    where = json_default or f"bench/results/{name}-<UTC time>.json"
    parser.add_argument(
        "--json", type=Path, default=json_default, help=f"where to write results (default: {where})"
    )
    parser.add_argument("--runs", type=int, default=runs, help=f"{runs_help}; default {runs}")


@contextlib.contextmanager
def own_redis(url: str | None) -> Iterator[str]:
    """``url``, or a durable redis-server of our own (``LocalRedis``: ``appendfsync always``)
    in a temporary directory, stopped afterwards."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="sg-bench-redis-") as tmp:
        local = LocalRedis(Path(tmp))
        try:
            yield local.start()
        finally:
            local.stop()


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM stops the benchmark as Ctrl-C does (asyncio's SIGINT handler cancels the run;
    the processes started are stopped on the way out)."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt  # SIGINT ignored (a background job): interrupt here
    signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside: SIGTERM interrupts as Ctrl-C does, so a benchmark that is told to stop
    still stops every process it started."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
