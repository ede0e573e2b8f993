"""Benchmark of what the API's security costs: bearer tokens, TLS and the checks of every call.

    python -m bench.security [--quick] [--json PATH] [--runs N] [--redis-url URL]

Token figures time ``TokenSigner.issue`` and ``TokenVerifier.verify`` in a loop: a cold verify
gets a token it has never seen (a cache miss: parse, Ed25519 signature, claims), a cached verify
the same token again and again (a hit in the LRU cache of verified tokens).

API figures come from three ``ApiServer``s over one ``JobStore`` (a real redis-server), served
in this process on loopback:

    plaintext   ``insecure=True``: no TLS, no tokens (every caller is an operator)
    tls         TLS (the development PKI of ``write_dev_pki``), no tokens
    tls+auth    TLS and bearer tokens: the client holds a tenant token, so every call is
                verified (cache hits after the first), rate-limited, scope-checked and, for
                GetJob, checked against the job's tenant

All three set the rate limit out of reach (``RATE_PER_SECOND``, ``RATE_BURST``): the limiter
still runs on every call, it never refuses one. Each server has its own SDK client
(``AsyncClient``, one connection, opened before timing), which calls GetJob of one existing job
sequentially (calls/s, p50 and p99 latency), then ``concurrency`` at a time with
``asyncio.gather`` (calls/s), and SubmitJob sequentially (plaintext and tls+auth only; a spec
whose environment runs the secret-looking-value check); ``connect ms`` is opening a new
client (the TLS handshake, where there is one) and its first call, a health check. Client and
servers share one process and one event loop, so a call's time is the whole round trip, the
client's Python included. Redis runs with the durable settings of ``LocalRedis``
(``appendfsync always``), so each SubmitJob waits for an fsync.

One warm-up round (smaller, not recorded), then ``--runs`` rounds. Within a round the
configurations take turns: the round's API calls are cut into slices (``Sizes.slices``), and
each slice runs its share of every figure on every configuration, in an order that rotates
from slice to slice, so that the machine's ups and downs (it is shared, and has few cores) hit
every configuration alike. A round's figure is its calls over the seconds its slices took;
each figure reported is the median over the rounds, each ratio the median of the per-round
ratios (``paired``). Every answer timed is checked (the job's id and tenant); a wrong one
stops the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cryptography

from bench._report import (
    Column,
    Ratio,
    add_arguments,
    emit,
    header,
    json_text,
    machine,
    own_redis,
    paired,
    percentile,
    rotated,
    table,
)
from bench._report import default_json_path as results_path
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.api import ApiServer
from orchestrator.config import RedisConfig, SecurityConfig, TlsFiles
from orchestrator.errors import OrchestratorError
from orchestrator.sdk import AsyncClient
from orchestrator.security.certs import write_dev_pki
from orchestrator.security.tokens import Kind, TokenSigner, TokenVerifier, write_key_pair
from orchestrator.spec import JobSpec
from orchestrator.store import JobStore

__all__ = [
    "FULL",
    "QUICK",
    "ApiRow",
    "Ratio",
    "Report",
    "Sizes",
    "TokenRow",
    "default_json_path",
    "main",
    "measure",
    "quick",
    "run",
]

TENANT = "acme"
RATE_PER_SECOND = 1e9
RATE_BURST = 10**9
ANSWERED = "answered"
"""What a check records when the call succeeded (else the class of the error it raised)."""
TOKEN_TTL_SECONDS = 3600
SUBMIT_ENV = {
    "HF_TOKEN": "secret://vault/hf/acme",  # a reference: checked for its shape
    "MAX_NEW_TOKENS": "512",
    "WANDB_PROJECT": "bench-security",
    "DATA_DIR": "/data/acme/shards",
    "NCCL_DEBUG": "WARN",
}
"""The environment of every submitted job: a secret reference among ordinary variables, so
the secret-looking-value check runs over every kind of value and lets them all through."""


_SLICED = ("sequential_calls", "batches", "submit_calls", "connects")


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each round does."""

    token_calls: int
    """Tokens issued, and tokens verified cold, per round."""
    cached_calls: int
    """Verifications of one cached token per round."""
    sequential_calls: int
    """GetJob calls one at a time, per configuration and round."""
    concurrency: int
    """GetJob calls in flight at once (one ``asyncio.gather``)."""
    batches: int
    """Batches of ``concurrency`` calls, per configuration and round."""
    submit_calls: int
    """SubmitJob calls one at a time, per configuration and round."""
    connects: int
    """New clients opened (and closed), per configuration and round."""
    slices: int
    """Slices each round of API calls is cut into, the configurations taking turns in each
    (see ``api_round``)."""

    def __post_init__(self) -> None:
        for name in _SLICED:
            if getattr(self, name) < self.slices:
                raise ValueError(f"sizes: {name} must be at least slices ({self.slices})")

    def warm_up(self) -> Sizes:
        """The round that is not recorded: a fifth of the calls, the same concurrency."""
        return replace(
            self,
            token_calls=max(self.token_calls // 5, 1),
            cached_calls=max(self.cached_calls // 5, 1),
            **{name: max(getattr(self, name) // 5, self.slices) for name in _SLICED},
        )


FULL = Sizes(
    token_calls=3000,
    cached_calls=50_000,
    sequential_calls=2000,
    concurrency=64,
    batches=40,
    submit_calls=400,
    connects=20,
    slices=10,
)
QUICK = Sizes(
    token_calls=20,
    cached_calls=200,
    sequential_calls=20,
    concurrency=8,
    batches=2,
    submit_calls=4,
    connects=2,
    slices=2,
)


@dataclass(frozen=True, slots=True)
class TokenRow:
    """One token operation."""

    operation: str
    calls: int
    """Calls per round."""
    us_per_call: float
    """Microseconds per call (median over the rounds)."""
    us_runs: list[float]
    """Microseconds per call in every round, in round order."""


@dataclass(frozen=True, slots=True)
class ApiRow:
    """One API server configuration."""

    name: str
    tls: bool
    auth: bool
    get_per_second: float
    """GetJob calls per second, one at a time (median over the rounds)."""
    get_runs: list[float]
    get_p50_ms: float
    """Median latency of a sequential GetJob (median over the rounds)."""
    get_p99_ms: float
    """99th percentile latency of a sequential GetJob (median over the rounds)."""
    concurrent_per_second: float
    """GetJob calls per second with ``concurrency`` in flight (median over the rounds)."""
    concurrent_runs: list[float]
    submit_per_second: float | None
    """SubmitJob calls per second, one at a time (median); None: not measured here."""
    submit_runs: list[float]
    connect_ms: float
    """Opening a new client and its first call, a health check (median over the rounds)."""
    connect_runs: list[float]
    answers_checked: int
    """Answers whose job id and tenant were checked (every timed call, warm-up included)."""
    without_token: str
    """A GetJob without a token: ``answered`` or the error class it raised."""
    plaintext_client: str
    """A plaintext client's first call: ``answered`` or the error class it raised."""


@dataclass
class _Tally:
    """Calls and seconds of one configuration in the current round."""

    get_calls: int = 0
    get_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    concurrent_calls: int = 0
    concurrent_seconds: float = 0.0
    submit_calls: int = 0
    submit_seconds: float = 0.0
    connects: int = 0
    connect_seconds: float = 0.0


@dataclass
class _Api:
    """One server under test, its client and what was measured on it."""

    name: str
    server: ApiServer
    client: AsyncClient
    """The client every timed call goes through (one connection, opened before timing)."""
    tls: TlsFiles | None
    token: str | None
    submits: bool
    get: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)
    connect: list[float] = field(default_factory=list)
    checked: int = 0
    without_token: str = ""
    plaintext_client: str = ""
    tally: _Tally = field(default_factory=_Tally)
    """This round's calls and seconds so far, summed over its slices."""

    def end_round(self) -> None:
        """Turn this round's tally into one figure per list, and start a new tally."""
        t, self.tally = self.tally, _Tally()
        self.get.append(t.get_calls / t.get_seconds)
        self.p50.append(percentile(t.latencies, 0.50) * 1e3)
        self.p99.append(percentile(t.latencies, 0.99) * 1e3)
        self.concurrent.append(t.concurrent_calls / t.concurrent_seconds)
        if t.submit_calls:
            self.submit.append(t.submit_calls / t.submit_seconds)
        self.connect.append(t.connect_seconds / t.connects * 1e3)


async def connect(address: str, *, tls: TlsFiles | None, token: str | None) -> AsyncClient:
    """An SDK client of the server at ``address`` (its first call, a health check, answered)."""
    return await AsyncClient.connect(address, tls=tls, token=token, timeout=10)


async def outcome(call: Callable[[], Awaitable[object]]) -> str:
    """``ANSWERED`` if ``call`` succeeds, else the class name of the orchestrator error."""
    try:
        await call()
    except OrchestratorError as exc:
        return type(exc).__name__
    return ANSWERED


def _check(job: types_pb2.Job, job_id: str) -> None:
    """Raise unless ``job`` is job ``job_id`` of tenant ``TENANT``."""
    if job.id != job_id or job.spec.tenant != TENANT:
        raise RuntimeError(f"wrong answer: job {job.id!r} of tenant {job.spec.tenant!r}")


# -- one round ----------------------------------------------------------------------------------


def token_round(
    signer: TokenSigner, sizes: Sizes, round_: int, out: dict[str, list[float]]
) -> None:
    """Time issue, cold verify and cached verify once each; append us/call to ``out``."""
    started = time.perf_counter()
    tokens = [
        signer.issue(Kind.TENANT, "alice", tenant=TENANT, ttl_seconds=TOKEN_TTL_SECONDS)[0]
        for _ in range(sizes.token_calls)
    ]
    out["issue"].append((time.perf_counter() - started) / sizes.token_calls * 1e6)
    verifier = TokenVerifier([signer.public_key])
    cached = signer.issue(Kind.TENANT, "alice", tenant=TENANT, ttl_seconds=TOKEN_TTL_SECONDS)[0]
    verifier.verify(cached)

    def cold() -> None:
        started = time.perf_counter()
        principals = [verifier.verify(t) for t in tokens]
        out["verify, cold"].append((time.perf_counter() - started) / len(tokens) * 1e6)
        if any(p.tenant != TENANT for p in principals):
            raise RuntimeError("a cold token verified as the wrong tenant")

    def hot() -> None:
        verify = verifier.verify
        started = time.perf_counter()
        for _ in range(sizes.cached_calls):
            verify(cached)
        out["verify, cached"].append((time.perf_counter() - started) / sizes.cached_calls * 1e6)
        if verify(cached).tenant != TENANT:
            raise RuntimeError("the cached token verified as the wrong tenant")

    for step in rotated([cold, hot], round_):
        step()
    info = verifier.cache_info()
    if info.misses != len(tokens) + 1 or info.hits != sizes.cached_calls + 1:
        raise RuntimeError(f"the cache did not behave as the benchmark assumes: {info}")


async def sequential(api: _Api, job_id: str, n: int) -> None:
    """GetJob ``n`` times, one at a time."""
    client, t = api.client, api.tally
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        job = await client.get_job(job_id)
        t.latencies.append(time.perf_counter() - t0)
        _check(job, job_id)
    t.get_seconds += time.perf_counter() - started
    t.get_calls += n
    api.checked += n


async def concurrent(api: _Api, job_id: str, batches: int, concurrency: int) -> None:
    """GetJob in ``batches`` batches of ``concurrency`` calls in flight."""
    client, t = api.client, api.tally
    started = time.perf_counter()
    for _ in range(batches):
        jobs = await asyncio.gather(*(client.get_job(job_id) for _ in range(concurrency)))
        for job in jobs:
            _check(job, job_id)
    t.concurrent_seconds += time.perf_counter() - started
    t.concurrent_calls += batches * concurrency
    api.checked += batches * concurrency


async def submits(api: _Api, spec: JobSpec, n: int) -> None:
    """SubmitJob ``n`` times, one at a time."""
    started = time.perf_counter()
    jobs = [await api.client.submit(spec) for _ in range(n)]
    api.tally.submit_seconds += time.perf_counter() - started
    api.tally.submit_calls += n
    for job in jobs:
        if job.info is None:
            raise RuntimeError("SubmitJob answered without the job")
        _check(job.info, job.id)
    if len({job.id for job in jobs}) != n:
        raise RuntimeError("SubmitJob answered the same job twice")
    api.checked += n


async def connects(api: _Api, n: int) -> None:
    """Open and close ``n`` new clients."""
    started = time.perf_counter()
    for _ in range(n):
        client = await connect(api.server.address, tls=api.tls, token=api.token)
        await client.close()
    api.tally.connect_seconds += time.perf_counter() - started
    api.tally.connects += n


def share(total: int, slices: int, k: int) -> int:
    """Slice ``k``'s share of ``total`` calls split as evenly as can be into ``slices``."""
    return total * (k + 1) // slices - total * k // slices


async def api_round(apis: Sequence[_Api], job_id: str, sizes: Sizes, round_: int) -> None:
    """Every API figure once for every configuration. The round is cut into ``sizes.slices``
    slices; each slice runs a share of every phase on every configuration in turn, the order
    rotating from slice to slice, so that every configuration samples the same stretches of
    time."""
    spec = JobSpec(name="bench", tenant=TENANT, command=("python", "train.py"), env=SUBMIT_ENV)
    n = sizes.slices
    for k in range(n):
        order = rotated(apis, round_ + k)
        for api in order:
            await sequential(api, job_id, share(sizes.sequential_calls, n, k))
        for api in order:
            await concurrent(api, job_id, share(sizes.batches, n, k), sizes.concurrency)
        for api in order:
            if api.submits:
                await submits(api, spec, share(sizes.submit_calls, n, k))
        for api in order:
            await connects(api, share(sizes.connects, n, k))
    for api in apis:
        api.end_round()


# -- the whole run ------------------------------------------------------------------------------


def _forget(api: _Api) -> None:
    for runs in (api.get, api.p50, api.p99, api.concurrent, api.submit, api.connect):
        runs.clear()


async def _delete_prefix(store: JobStore) -> None:
    batch: list[bytes | str] = []
    async for key in store.client.scan_iter(match=f"{store.prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await store.client.unlink(*batch)
            batch.clear()
    if batch:
        await store.client.unlink(*batch)


async def measure(
    redis_url: str, *, sizes: Sizes = FULL, runs: int = 5, progress: bool = False
) -> Report:
    """Start the three servers over ``redis_url`` (under a key prefix of their own, deleted
    afterwards), run a warm-up round and ``runs`` rounds, and report."""
    where = await asyncio.to_thread(  # dated when the run starts
        machine, redis_url=redis_url, cryptography=cryptography.__version__
    )
    prefix = f"bench-security-{os.getpid()}-{time.time_ns()}:"
    store = JobStore.from_config(RedisConfig(url=redis_url, prefix=prefix))
    servers: list[ApiServer] = []
    apis: list[_Api] = []
    token_runs: dict[str, list[float]] = {"issue": [], "verify, cold": [], "verify, cached": []}
    try:
        with tempfile.TemporaryDirectory(prefix="sg-bench-security-") as tmp:
            certs = Path(tmp) / "certs"
            write_dev_pki(certs)
            signing, verify = write_key_pair(Path(tmp) / "auth")
            signer = TokenSigner.from_file(signing)
            token = signer.issue(
                Kind.TENANT, "alice", tenant=TENANT, ttl_seconds=TOKEN_TTL_SECONDS
            )[0]
            limits = SecurityConfig(
                insecure=True, rate_per_second=RATE_PER_SECOND, rate_burst=RATE_BURST
            )
            tls = replace(
                limits,
                insecure=False,
                api_tls=TlsFiles.in_dir(certs, "api"),
                agent_tls=TlsFiles.in_dir(certs, "control-plane"),
            )
            ca = TlsFiles(ca=certs / "ca.pem")
            for name, security, client_tls, client_token, submit in (
                ("plaintext", limits, None, None, True),
                ("tls", tls, ca, None, False),
                ("tls+auth", replace(tls, token_verify_keys=(verify,)), ca, token, True),
            ):
                server = ApiServer(store, security=security)
                servers.append(server)
                address = await server.start()
                client = await connect(address, tls=client_tls, token=client_token)
                apis.append(_Api(name, server, client, client_tls, client_token, submit))
            spec = JobSpec(name="bench-target", tenant=TENANT, command=("true",))
            job_id = (await apis[0].client.submit(spec)).id
            for api in apis:
                api.without_token = await _without_token(api, job_id)
                api.plaintext_client = await _plaintext_client(api, job_id)
            for round_ in range(-1, runs):
                warm = round_ < 0
                size = sizes.warm_up() if warm else sizes
                token_round(signer, size, round_, token_runs)
                await api_round(apis, job_id, size, round_)
                if warm:
                    for runs_ in token_runs.values():
                        runs_.clear()
                    for api in apis:
                        _forget(api)
                if progress:
                    what = "warm-up" if warm else f"round {round_ + 1}/{runs}"
                    print(f"  {what} done", file=sys.stderr)
    finally:
        for api in apis:
            await api.client.close()
        for server in servers:
            await server.stop(0)
        try:
            await _delete_prefix(store)
        finally:
            await store.close()
    return _report(where, sizes, runs, token_runs, apis)


async def _without_token(api: _Api, job_id: str) -> str:
    client = await connect(api.server.address, tls=api.tls, token=None)
    try:
        return await outcome(lambda: client.get_job(job_id))
    finally:
        await client.close()


async def _plaintext_client(api: _Api, job_id: str) -> str:
    async def call() -> None:
        client = await connect(api.server.address, tls=None, token=api.token)
        try:
            await client.get_job(job_id)
        finally:
            await client.close()

    return await outcome(call)


def _report(
    where: dict[str, str],
    sizes: Sizes,
    runs: int,
    token_runs: dict[str, list[float]],
    apis: Sequence[_Api],
) -> Report:
    calls = {
        "issue": sizes.token_calls,
        "verify, cold": sizes.token_calls,
        "verify, cached": sizes.cached_calls,
    }
    tokens = [
        TokenRow(op, calls[op], statistics.median(us), list(us)) for op, us in token_runs.items()
    ]
    rows = [
        ApiRow(
            name=a.name,
            tls=a.tls is not None,
            auth=a.token is not None,
            get_per_second=statistics.median(a.get),
            get_runs=list(a.get),
            get_p50_ms=statistics.median(a.p50),
            get_p99_ms=statistics.median(a.p99),
            concurrent_per_second=statistics.median(a.concurrent),
            concurrent_runs=list(a.concurrent),
            submit_per_second=statistics.median(a.submit) if a.submit else None,
            submit_runs=list(a.submit),
            connect_ms=statistics.median(a.connect),
            connect_runs=list(a.connect),
            answers_checked=a.checked,
            without_token=a.without_token,
            plaintext_client=a.plaintext_client,
        )
        for a in apis
    ]
    return Report(where, runs, asdict(sizes), tokens, rows, ratios(tokens, rows))


def ratios(tokens: Sequence[TokenRow], rows: Sequence[ApiRow]) -> list[Ratio]:
    """Each secured configuration against plaintext, and a cold verify against a cached one."""
    by, op = {r.name: r for r in rows}, {t.operation: t for t in tokens}
    base, tls, auth = by["plaintext"], by["tls"], by["tls+auth"]
    pairs = [
        ("GetJob sequential calls/s, tls / plaintext", tls.get_runs, base.get_runs),
        ("GetJob sequential calls/s, tls+auth / plaintext", auth.get_runs, base.get_runs),
        ("GetJob concurrent calls/s, tls / plaintext", tls.concurrent_runs, base.concurrent_runs),
        (
            "GetJob concurrent calls/s, tls+auth / plaintext",
            auth.concurrent_runs,
            base.concurrent_runs,
        ),
        ("SubmitJob calls/s, tls+auth / plaintext", auth.submit_runs, base.submit_runs),
        ("connect time, tls / plaintext", tls.connect_runs, base.connect_runs),
        ("connect time, tls+auth / plaintext", auth.connect_runs, base.connect_runs),
        ("verify time, cold / cached", op["verify, cold"].us_runs, op["verify, cached"].us_runs),
    ]
    return [Ratio(name, paired(a, b)) for name, a, b in pairs]


# -- output -------------------------------------------------------------------------------------


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def token_table(rows: Sequence[TokenRow]) -> str:
    columns = (Column("token operation", 16, left=True), Column("calls/round", 11),
               Column("us/call", 9))  # fmt: skip
    return table(columns, ((r.operation, f"{r.calls:,}", f"{r.us_per_call:.2f}") for r in rows))


def _api_cells(r: ApiRow) -> list[str]:
    submit = f"{r.submit_per_second:,.0f}" if r.submit_per_second is not None else "-"
    return [
        r.name, _yes(r.tls), _yes(r.auth), f"{r.get_per_second:,.0f}", f"{r.get_p50_ms:.3f}",
        f"{r.get_p99_ms:.3f}", f"{r.concurrent_per_second:,.0f}", submit, f"{r.connect_ms:.2f}",
        r.without_token, r.plaintext_client,
    ]  # fmt: skip


def api_table(rows: Sequence[ApiRow], sizes: dict[str, int]) -> str:
    columns = (
        Column("server", 10, left=True),
        Column("tls", 3),
        Column("auth", 4),
        Column("GetJob/s", 9),
        Column("p50 ms", 7),
        Column("p99 ms", 7),
        Column(f"x{sizes['concurrency']} calls/s", 14),
        Column("SubmitJob/s", 11),
        Column("connect ms", 10),
        Column("no token", 22, left=True),
        Column("plaintext client", 16, left=True),
    )
    return table(columns, map(_api_cells, rows))


@dataclass(frozen=True, slots=True)
class Report:
    """A whole run: where and when, the sizes, the measurements, the ratios."""

    machine: dict[str, str]
    runs: int
    sizes: dict[str, int]
    tokens: list[TokenRow]
    api: list[ApiRow]
    ratios: list[Ratio]

    def to_json(self) -> str:
        return json_text(asdict(self))

    def text(self) -> str:
        m, s = self.machine, self.sizes
        lines = [
            *header("security benchmark", m),
            f"median of {self.runs} round(s), configurations interleaved in each round; client "
            "and servers in one process on loopback",
            "",
            token_table(self.tokens),
            "",
            f"GetJob: {s['sequential_calls']:,} sequential and {s['batches']} x "
            f"{s['concurrency']} concurrent calls, SubmitJob: {s['submit_calls']:,} sequential "
            f"calls, {s['connects']} connects, per configuration and round",
            api_table(self.api, s),
            "",
            "ratios (median of the per-round ratios)",
        ]
        lines += [f"  {r.name}: {r.value:.3f}" for r in self.ratios]
        return "\n".join(lines)


# -- entry points -------------------------------------------------------------------------------


def run(redis_url: str, *, sizes: Sizes = FULL, runs: int = 5, progress: bool = False) -> Report:
    """:func:`measure` on a loop of its own."""
    return asyncio.run(measure(redis_url, sizes=sizes, runs=runs, progress=progress))


def quick(redis_url: str) -> Report:
    """A tiny run, for tests: tiny sizes, two rounds."""
    return run(redis_url, sizes=QUICK, runs=2)


def default_json_path(now: datetime.datetime | None = None) -> Path:
    """``bench/results/security-<UTC timestamp>.json``."""
    return results_path("security", now)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the tables and the ratios, write JSON. No goals: the figures are reported."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.security",
        description="Benchmark token checks, TLS and the API's authentication.",
    )
    add_arguments(parser, name="security", runs=5, runs_help="rounds (median); at least 3")
    parser.add_argument(
        "--redis-url", default=None, help="a Redis to use (default: start a redis-server)"
    )
    args = parser.parse_args(argv)
    with own_redis(args.redis_url) as url:
        report = quick(url) if args.quick else run(url, runs=max(args.runs, 3), progress=True)
    emit(report, name="security", path=args.json)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
