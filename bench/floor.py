"""The physical floor of dispatching a job on this machine, to measure the orchestrator against.

    python -m bench.floor [--quick] [--json PATH] [--runs N] [--redis-url URL]

The least work any design must do per job here: one durable Redis write of the job's record and
its delivery, in a batched message on one long-lived gRPC stream, to a receiver that answers
each batch, in one asyncio process with no placement logic. Per batch of ``batch`` jobs:

1. Redis (a redis-server with ``appendonly yes`` and ``appendfsync always``, as ``LocalRedis``
   starts it, so a reply means the write is on disk): one pipeline, in ``MULTI`` ... ``EXEC``,
   of an ``HSET`` per job (``spec``: the serialized ``orchestrator.v1.JobSpec`` of a small
   job, ``state``, ``attempt``, ``site``) and one ``ZADD`` of the batch's ids to the site's
   in-flight set (``{p}job:{id}`` and ``{p}site:{id}:inflight`` as in
   ``orchestrator.store.keys``); no Lua.
2. gRPC (grpc.aio on loopback, the real ``agent.v1.AgentService/Connect`` stream and
   messages): once the batch's Redis reply is in, one ``ControlMessage`` whose
   ``DispatchBatch`` holds an ``Assignment`` (id, attempt, spec, GPU type) per job; the
   receiver parses it and answers with one ``AgentMessage`` whose ``AckBatch`` holds an
   ``AssignmentAck`` per job. A job is done when its ack is back and checked (the acks of a
   batch name its jobs, in order, accepted: every job acked exactly once).

Batches overlap: up to ``window`` batches are between the start of their Redis write and the
return of their acks, so one batch is on the wire while the next is written (one stream; one
Redis connection for ``bytes``, one pooled connection per batch in flight for ``library``).
The receiver runs in this process and event loop (``same process``) or in a second Python
process (``two processes``: it gets a core of its own, and the messages cross processes).

Two encodings of the same commands and the same bytes on the wire (a test pins them equal):

    bytes     pre-encoded: each batch's RESP and protobuf bytes are joined from pieces encoded
              once (the ids are the only per-job parts); Redis replies and acks are checked by
              comparing bytes: the least Python per job
    library   as the orchestrator's code does it: a redis-py pipeline (``hset`` per job); the
              protobuf classes (``assignments.add`` and ``spec.ParseFromString`` per job, as
              the dispatcher does; ``AssignmentAck`` objects at the receiver, as the agent)

Both receivers parse every batch with the generated classes (that is how an agent learns what
it was sent). For reference the same pipeline also runs as ``grpc only`` (no Redis), ``redis
only`` (no gRPC) and ``redis plain`` (Redis only, without ``MULTI``/``EXEC``), so one can see
which part bounds the floor. ``MULTI`` matters with ``appendfsync always``: Redis reads a
client's pipeline 16 KB at a time and fsyncs after each read that ran a write, so a plain
pipeline of a batch pays many fsyncs where a transaction (or one Lua call) pays one.

Every configuration runs at every batch size (``--runs`` rounds after a smaller warm-up round;
within a round the configurations take turns in an order that rotates, so the ups and downs of
a shared machine hit them alike). Reported per configuration: the median over the rounds of
jobs/s (jobs over the seconds from the first write to the last ack), of the p50 and p99 of the
per-batch latency (start of the batch's Redis write to its acks checked, or to its Redis reply
without gRPC), of the CPU per job of the Python processes (this one and a separate receiver)
and of redis-server (``INFO cpu``), and the bytes per job (RESP commands and replies, protobuf
messages both ways, without TCP or HTTP/2 framing). The floor is the best ``redis+grpc`` row;
ratios are medians of per-round ratios at the floor's batch size. Results go to
``bench/results/floor-<UTC time>.json``.

Other benchmarks call :func:`measure_floor` in their own run (by default: ``redis+grpc``,
``bytes``, the receiver in the same process) to report their rate as a ratio of the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import enum
import logging
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import grpc
import redis.asyncio as aredis
from redis.asyncio.connection import parse_url
from redis.typing import EncodableT

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
)
from bench._report import default_json_path as results_path
from bench._report import table as _table
from orchestrator._pb.agent.v1 import agent_pb2
from orchestrator._pb.orchestrator.v1 import types_pb2

__all__ = [
    "BATCHES",
    "FULL",
    "QUICK",
    "SITE",
    "Codec",
    "Config",
    "Encoding",
    "FloorResult",
    "InProcessReceiver",
    "Ratio",
    "ReceiverHandle",
    "ReceiverProcess",
    "Report",
    "Row",
    "Sizes",
    "Stages",
    "Where",
    "acks",
    "acks_message",
    "configs",
    "default_json_path",
    "default_payload",
    "job_ids",
    "job_spec",
    "main",
    "measure",
    "measure_floor",
    "quick",
    "run",
    "serve_receiver",
]

BATCHES = (100, 500, 1000, 5000)
"""Batch sizes of the full sweep."""
WINDOW = 4
"""Batches in flight at once (Redis write started, acks not yet back)."""
SITE = "narvik"
SERVICE = "agent.v1.AgentService"
CONNECT = f"/{SERVICE}/Connect"
DISPATCHED = str(types_pb2.JobState.JOB_STATE_DISPATCHED).encode()
ATTEMPT = 1
_MAX_MESSAGE = 64 * 1024 * 1024
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
]
_RUN_TIMEOUT = 600.0
"""Seconds one measurement may take before it is abandoned (a lost reply must not hang)."""
_CHUNK = 10_000
"""Keys per command when checking and deleting what a run wrote."""


class Stages(enum.StrEnum):
    """What each job goes through."""

    FLOOR = "redis+grpc"
    GRPC = "grpc only"
    REDIS = "redis only"
    PLAIN = "redis plain"
    """Redis only, each batch's pipeline not wrapped in MULTI/EXEC."""

    @property
    def redis(self) -> bool:
        return self != Stages.GRPC

    @property
    def grpc(self) -> bool:
        return self in (Stages.FLOOR, Stages.GRPC)


class Where(enum.StrEnum):
    """Where the receiver runs."""

    SAME_PROCESS = "same process"
    TWO_PROCESSES = "two processes"


class Encoding(enum.StrEnum):
    """How commands and messages are encoded (the same bytes either way)."""

    BYTES = "bytes"
    LIBRARY = "library"


# -- the job and its encodings ------------------------------------------------------------------


def job_spec() -> types_pb2.JobSpec:
    """A small, realistic job: an 8-GPU training shard that must stay in the Nordics."""
    return types_pb2.JobSpec(
        name="train-llama-8b-shard-0042",
        tenant="acme",
        queue="default",
        priority=types_pb2.PriorityClass.PRIORITY_CLASS_NORMAL,
        command=["python", "-m", "train", "--config", "configs/llama-8b.yaml", "--shard", "42"],
        resources=types_pb2.Resources(gpus=8, gpu_type="H100", cpus=96, memory_mb=786_432),
        placement=types_pb2.Placement(
            allowed_jurisdictions=["NO", "SE", "FI"], excluded_sites=["abilene"]
        ),
        max_runtime_seconds=86_400,
        max_attempts=3,
    )


def default_payload() -> bytes:
    """The serialized :func:`job_spec`: what each job's record and assignment carry."""
    return job_spec().SerializeToString()


def job_ids(n: int) -> list[str]:
    """``n`` distinct ids of the orchestrator's shape and length (``j-<10>-<6>``)."""
    stamp = secrets.token_hex(5)
    return [f"j-{stamp}-{i:06x}" for i in range(n)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def bulk(*args: bytes) -> bytes:
    """``args`` as RESP bulk strings."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def resp(*args: bytes) -> bytes:
    """One Redis command in RESP."""
    return b"*%d\r\n" % len(args) + bulk(*args)


_MULTI = resp(b"MULTI")
_EXEC = resp(b"EXEC")


class Codec:
    """Pre-encoded pieces for batches of jobs with ids of one length: each batch's bytes are
    these pieces joined around the ids (``bytes``), or built with the libraries
    (``library``); the two give the same bytes."""

    def __init__(self, *, prefix: str, payload: bytes, id_length: int) -> None:
        self.prefix = prefix
        self.payload = payload
        self.id_length = id_length
        spec = types_pb2.JobSpec.FromString(payload)
        self.gpu_type = spec.resources.gpu_type
        self.job_key_prefix = f"{prefix}job:"
        self.inflight_key = f"{prefix}site:{SITE}:inflight"
        self.fields: dict[EncodableT, EncodableT] = {
            "spec": payload,
            "state": DISPATCHED,
            "attempt": ATTEMPT,
            "site": SITE,
        }
        # HSET {p}job:<id> spec <payload> state 3 attempt 1 site <site>, the id cut out
        head = b"*10\r\n$4\r\nHSET\r\n$%d\r\n%s" % (
            len(self.job_key_prefix) + id_length,
            self.job_key_prefix.encode(),
        )
        fields = (b"spec", payload, b"state", DISPATCHED, b"attempt", b"%d" % ATTEMPT)
        tail = b"\r\n" + bulk(*fields, b"site", SITE.encode())
        self._hset = (head, tail)
        # Assignment{job_id, attempt, spec, gpu_type} as an element of DispatchBatch.assignments
        a_tail = b"\x10" + varint(ATTEMPT) + b"\x1a" + varint(len(payload)) + payload
        if self.gpu_type:
            gpu = self.gpu_type.encode()
            a_tail += b"\x2a" + varint(len(gpu)) + gpu
        a_len = 1 + len(varint(id_length)) + id_length + len(a_tail)
        self._assignment = (b"\x0a" + varint(a_len) + b"\x0a" + varint(id_length), a_tail)

    # bytes

    def resp_batch(self, ids: Sequence[bytes], score: int, *, multi: bool = True) -> bytes:
        """The RESP of one batch: an HSET per job, then one ZADD of all ids at ``score``, in
        MULTI ... EXEC unless not ``multi``."""
        head, tail = self._hset
        member = b"$%d\r\n%d\r\n$%d\r\n" % (len(str(score)), score, self.id_length)
        zadd = b"*%d\r\n$4\r\nZADD\r\n$%d\r\n%s\r\n" % (
            2 + 2 * len(ids),
            len(self.inflight_key),
            self.inflight_key.encode(),
        )
        commands = [head, (tail + head).join(ids), tail, zadd, member]
        commands += [(b"\r\n" + member).join(ids), b"\r\n"]
        if multi:
            commands = [_MULTI, *commands, _EXEC]
        return b"".join(commands)

    @staticmethod
    def resp_replies(n: int, *, multi: bool = True) -> bytes:
        """What Redis answers :meth:`resp_batch` of ``n`` new jobs: 4 new fields each, then
        ``n`` new members (with ``multi``: after OK and a QUEUED per command, as one array)."""
        replies = b":4\r\n" * n + b":%d\r\n" % n
        if multi:
            return b"+OK\r\n" + b"+QUEUED\r\n" * (n + 1) + b"*%d\r\n" % (n + 1) + replies
        return replies

    def dispatch(self, ids: Sequence[bytes]) -> bytes:
        """A ``ControlMessage`` with a ``DispatchBatch`` of one ``Assignment`` per id."""
        head, tail = self._assignment
        body = b"".join((head, (tail + head).join(ids), tail))
        return b"\x12" + varint(len(body)) + body

    # library

    async def write_with_redis_py(
        self, client: aredis.Redis, ids: Sequence[str], score: int, *, multi: bool = True
    ) -> None:
        """The same commands as :meth:`resp_batch`, through a redis-py pipeline."""
        pipe = client.pipeline(transaction=multi)
        key, fields = self.job_key_prefix, self.fields
        for job_id in ids:
            pipe.hset(key + job_id, mapping=fields)
        pipe.zadd(self.inflight_key, dict.fromkeys(ids, score))
        replies = await pipe.execute()
        if replies[-1] != len(ids) or replies[:-1] != [4] * len(ids):
            raise RuntimeError(f"unexpected Redis replies: {replies[:3]!r} .. {replies[-1]!r}")

    def dispatch_message(self, ids: Sequence[str]) -> bytes:
        """:meth:`dispatch` built as the dispatcher builds it."""
        msg = agent_pb2.ControlMessage()
        add, payload, gpu = msg.dispatch.assignments.add, self.payload, self.gpu_type
        for job_id in ids:
            add(job_id=job_id, attempt=ATTEMPT, gpu_type=gpu).spec.ParseFromString(payload)
        return msg.SerializeToString()


def acks(ids: Sequence[str], attempt: int) -> bytes:
    """An ``AgentMessage`` with an ``AckBatch`` accepting each id (all of one length, ASCII)
    at ``attempt``, spliced from pieces."""
    n = len(ids[0])
    tail = b"\x10" + varint(attempt) + b"\x18\x01"
    head = b"\x0a" + varint(1 + len(varint(n)) + n + len(tail)) + b"\x0a" + varint(n)
    h, t = head.decode("latin-1"), tail.decode("latin-1")
    body = (h + (t + h).join(ids) + t).encode("latin-1")
    return b"\x12" + varint(len(body)) + body


def acks_message(assignments: Iterable[agent_pb2.Assignment]) -> bytes:
    """:func:`acks` built as the agent builds it."""
    return agent_pb2.AgentMessage(
        acks=agent_pb2.AckBatch(
            acks=[
                agent_pb2.AssignmentAck(job_id=a.job_id, attempt=a.attempt, accepted=True)
                for a in assignments
            ]
        )
    ).SerializeToString()


# -- the receiver -------------------------------------------------------------------------------


class _Agent:
    """``AgentService.Connect`` at its least: a hello, then one ``AckBatch`` per batch."""

    def __init__(self, *, record: bool = False) -> None:
        self.acked: Counter[str] | None = Counter() if record else None

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE, {"Connect": grpc.stream_stream_rpc_method_handler(self.connect)}
        )

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        hello: agent_pb2.ControlHello | None = None
        async for raw in requests:
            msg = agent_pb2.ControlMessage.FromString(raw)
            if hello is None:
                if msg.WhichOneof("kind") != "hello":
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "hello first")
                hello = msg.hello
                yield agent_pb2.AgentMessage(
                    hello=agent_pb2.AgentHello(site_id=hello.site_id, jurisdiction="NO")
                ).SerializeToString()
                continue
            assignments = msg.dispatch.assignments
            if hello.dispatcher_id == Encoding.LIBRARY:
                answer = acks_message(assignments)
            else:
                ids = [a.job_id for a in assignments]
                attempts = {a.attempt for a in assignments}
                if len(attempts) == 1 and len(set(map(len, ids))) == 1 and "".join(ids).isascii():
                    answer = acks(ids, attempts.pop())
                else:
                    answer = acks_message(assignments)
            if self.acked is not None:
                self.acked.update(a.job_id for a in assignments)
            yield answer


class ReceiverHandle(Protocol):
    """A running receiver."""

    @property
    def address(self) -> str: ...

    @property
    def where(self) -> Where: ...

    def cpu_seconds(self) -> float:
        """CPU time of the receiver's own process so far (0 when it shares this one)."""
        ...


class InProcessReceiver:
    """The receiver as a gRPC server on this process's event loop.

    ``record``: count every job id acked (``acked``), for tests.
    """

    where = Where.SAME_PROCESS

    def __init__(self, *, record: bool = False) -> None:
        self._agent = _Agent(record=record)
        self._server: grpc.aio.Server | None = None
        self.address = ""

    @property
    def acked(self) -> Counter[str]:
        if self._agent.acked is None:
            raise ValueError("the receiver was started without record=True")
        return self._agent.acked

    def cpu_seconds(self) -> float:
        return 0.0

    async def __aenter__(self) -> Self:
        server = grpc.aio.server(options=_GRPC_OPTIONS)
        server.add_generic_rpc_handlers((self._agent.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server, self.address = server, f"127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None


def serve_receiver() -> None:
    """Body of the receiver's own process: serve, print the address, then answer each ``cpu``
    line on stdin with this process's CPU seconds, until stdin closes."""

    async def serve() -> None:
        async with InProcessReceiver() as rx:
            print(rx.address, flush=True)
            while line := await asyncio.to_thread(sys.stdin.readline):
                if line.strip() == "cpu":
                    print(time.process_time(), flush=True)

    asyncio.run(serve())


_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import bench.floor; bench.floor.serve_receiver()"
)


class ReceiverProcess:
    """The receiver in a second Python process, for as long as the ``with``."""

    where = Where.TWO_PROCESSES

    def __init__(self) -> None:
        self.address = ""
        self._process: subprocess.Popen[str] | None = None

    def _ask(self, line: str | None) -> str:
        proc = self._process
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("the receiver process is not running")
        if line is not None:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the receiver process ended (exit code {proc.poll()})")
        return answer.strip()

    def cpu_seconds(self) -> float:
        return float(self._ask("cpu"))

    def __enter__(self) -> Self:
        root = str(Path(__file__).resolve().parent.parent)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.address = self._ask(None)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._process = self._process, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


# -- Redis without a client library -------------------------------------------------------------


class _RawRedis:
    """One Redis connection spoken to in pre-encoded RESP: ``send`` writes a batch's commands
    at once and returns a future that a reader task completes when exactly the expected reply
    bytes are back (anything else fails it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._pending: asyncio.Queue[tuple[bytes, asyncio.Future[None]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())
        self.bytes_out = self.bytes_in = 0

    @classmethod
    async def connect(cls, url: str) -> _RawRedis:
        kw: dict[str, Any] = dict(parse_url(url))
        if "path" in kw:
            reader, writer = await asyncio.open_unix_connection(kw["path"])
        elif url.startswith("redis://"):
            reader, writer = await asyncio.open_connection(
                kw.get("host", "localhost"), kw.get("port", 6379)
            )
        else:
            raise ValueError("the floor speaks RESP over redis:// or unix:// only (no TLS)")
        setup = []
        if kw.get("password"):
            user = [kw["username"].encode()] if kw.get("username") else []
            setup.append(resp(b"AUTH", *user, kw["password"].encode()))
        if kw.get("db"):
            setup.append(resp(b"SELECT", b"%d" % kw["db"]))
        for command in setup:
            writer.write(command)
            line = await reader.readline()
            if not line.startswith(b"+OK"):
                writer.close()
                raise RuntimeError(f"Redis refused the connection's set-up: {line!r}")
        return cls(reader, writer)

    def send(self, data: bytes, expect: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((expect, fut))
        self._writer.write(data)
        self.bytes_out += len(data)
        return fut

    async def drain(self) -> None:
        await self._writer.drain()

    async def _read(self) -> None:
        while True:
            expect, fut = await self._pending.get()
            try:
                got = await self._reader.readexactly(len(expect))
            except (OSError, asyncio.IncompleteReadError) as exc:
                fut.set_exception(exc)
                return
            self.bytes_in += len(got)
            if got != expect:
                fut.set_exception(RuntimeError(f"unexpected Redis reply: {got[:120]!r}"))
                return
            fut.set_result(None)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


# -- one measurement ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FloorResult:
    """One run of the floor pipeline."""

    stages: str
    receiver: str
    """Where the receiver ran; empty for ``redis only``."""
    encoding: str
    jobs: int
    batch: int
    window: int
    seconds: float
    """From the first batch's start to the last batch's acks (or Redis reply)."""
    jobs_per_second: float
    p50_ms: float
    """Median per-batch latency: start of its Redis write (or of its encoding, for ``grpc
    only``) to its acks checked (or its Redis reply, for ``redis only``)."""
    p99_ms: float
    bytes_per_job: float
    """``redis_bytes_per_job + grpc_bytes_per_job``."""
    redis_bytes_per_job: float
    """RESP sent and received (the commands are the same for both encodings)."""
    grpc_bytes_per_job: float
    """Protobuf messages sent and received, without HTTP/2 framing."""
    spec_bytes: int
    """Size of the serialized ``JobSpec`` each job carries."""
    cpu_us_per_job: float
    """CPU of the Python processes (this one and a separate receiver) per job."""
    redis_cpu_us_per_job: float
    """CPU of redis-server per job (``INFO cpu``, user + system), 0 without Redis."""
    acked: int
    """Jobs whose ack came back and was checked (0 for ``redis only``)."""
    stored: int
    """Jobs found in Redis after the run (record and in-flight entry; 0 for ``grpc only``)."""
    prefix: str
    """Prefix of the keys written (deleted after the run unless ``keep``)."""


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    done: int = 0
    grpc_bytes: int = 0
    redis_bytes: int = 0


async def _redis_cpu(client: aredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _stored(client: aredis.Redis, codec: Codec, ids: Sequence[str]) -> int:
    """Jobs of ``ids`` whose record holds the payload and that are in the in-flight set."""
    found = 0
    for i in range(0, len(ids), _CHUNK):
        found += await client.exists(*(codec.job_key_prefix + j for j in ids[i : i + _CHUNK]))
    members = await client.zcard(codec.inflight_key)
    for j in {ids[0], ids[-1]}:
        if await client.hget(codec.job_key_prefix + j, "spec") != codec.payload:
            return 0
    return min(found, members)


async def _delete(client: aredis.Redis, codec: Codec, ids: Sequence[str]) -> None:
    for i in range(0, len(ids), _CHUNK):
        await client.unlink(*(codec.job_key_prefix + j for j in ids[i : i + _CHUNK]))
    await client.unlink(codec.inflight_key)


async def measure_floor(
    redis_url: str,
    *,
    jobs: int,
    batch: int,
    payload: bytes | None = None,
    stages: Stages = Stages.FLOOR,
    encoding: Encoding = Encoding.BYTES,
    receiver: ReceiverHandle | None = None,
    window: int = WINDOW,
    keep: bool = False,
) -> FloorResult:
    """Dispatch ``jobs`` jobs in batches of ``batch`` through the floor pipeline and time it.

    ``payload``: the serialized ``JobSpec`` each job carries (default :func:`default_payload`).
    ``receiver``: a running receiver (:class:`InProcessReceiver`, :class:`ReceiverProcess`);
    by default one is started in this process for the call. ``keep``: leave the keys written
    (under ``FloorResult.prefix``) instead of deleting them. ``redis_url`` is not used by
    ``grpc only``. Stream set-up, id generation, the checks of what Redis holds and the
    clean-up are not timed.
    """
    if jobs < 1 or batch < 1 or window < 1:
        raise ValueError("jobs, batch and window must be at least 1")
    payload = default_payload() if payload is None else payload
    ids = job_ids(jobs)
    codec = Codec(
        prefix=f"bench-floor-{secrets.token_hex(4)}:", payload=payload, id_length=len(ids[0])
    )
    uses_redis, uses_grpc = stages.redis, stages.grpc
    async with contextlib.AsyncExitStack() as stack:
        client: aredis.Redis | None = None
        if uses_redis:
            client = aredis.Redis.from_url(redis_url)
            stack.push_async_callback(client.aclose)
        if uses_grpc and receiver is None:
            receiver = await stack.enter_async_context(InProcessReceiver())
        rx_cpu = receiver.cpu_seconds() if uses_grpc and receiver is not None else 0.0
        redis_cpu = await _redis_cpu(client) if client is not None else 0.0
        try:
            tally, seconds, cpu = await asyncio.wait_for(
                _pipeline(
                    codec,
                    ids,
                    batch=batch,
                    window=window,
                    encoding=encoding,
                    multi=stages != Stages.PLAIN,
                    client=client,
                    redis_url=redis_url if uses_redis else None,
                    address=receiver.address if uses_grpc and receiver is not None else None,
                ),
                _RUN_TIMEOUT,
            )
            if uses_grpc and receiver is not None:
                cpu += receiver.cpu_seconds() - rx_cpu
            stored = 0
            if client is not None:
                redis_cpu = await _redis_cpu(client) - redis_cpu
                stored = await _stored(client, codec, ids)
        finally:
            if client is not None and not keep:
                await _delete(client, codec, ids)
    latencies = tally.latencies
    return FloorResult(
        stages=str(stages),
        receiver=str(receiver.where) if uses_grpc and receiver is not None else "",
        encoding=str(encoding),
        jobs=jobs,
        batch=batch,
        window=window,
        seconds=seconds,
        jobs_per_second=jobs / seconds,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        bytes_per_job=(tally.redis_bytes + tally.grpc_bytes) / jobs,
        redis_bytes_per_job=tally.redis_bytes / jobs,
        grpc_bytes_per_job=tally.grpc_bytes / jobs,
        spec_bytes=len(payload),
        cpu_us_per_job=cpu / jobs * 1e6,
        redis_cpu_us_per_job=redis_cpu / jobs * 1e6 if uses_redis else 0.0,
        acked=tally.done if uses_grpc else 0,
        stored=stored,
        prefix=codec.prefix,
    )


async def _pipeline(
    codec: Codec,
    ids: Sequence[str],
    *,
    batch: int,
    window: int,
    encoding: Encoding,
    multi: bool,
    client: aredis.Redis | None,
    redis_url: str | None,
    address: str | None,
) -> tuple[_Tally, float, float]:
    """The timed part: returns the tally, wall seconds and this process's CPU seconds."""
    chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
    raw_chunks = [[j.encode() for j in c] for c in chunks] if encoding == Encoding.BYTES else []
    tally = _Tally()
    slots = asyncio.Semaphore(window)
    inflight: deque[tuple[float, Sequence[str]]] = deque()
    send_lock = asyncio.Lock()
    raw_redis: _RawRedis | None = None
    async with contextlib.AsyncExitStack() as stack:
        if redis_url is not None and encoding == Encoding.BYTES:
            raw_redis = await _RawRedis.connect(redis_url)
            stack.push_async_callback(raw_redis.close)
        call: grpc.aio.StreamStreamCall[bytes, bytes] | None = None
        if address is not None:
            channel = grpc.aio.insecure_channel(address, options=_GRPC_OPTIONS)
            stack.push_async_callback(channel.close)
            connect: grpc.aio.StreamStreamMultiCallable[bytes, bytes]
            connect = channel.stream_stream(CONNECT)
            call = connect()
            hello = agent_pb2.ControlMessage(
                hello=agent_pb2.ControlHello(site_id=SITE, dispatcher_id=str(encoding))
            )
            await call.write(hello.SerializeToString())
            answer = agent_pb2.AgentMessage.FromString(await _read(call))
            if answer.WhichOneof("kind") != "hello" or answer.hello.site_id != SITE:
                raise RuntimeError(f"the receiver answered the hello with {answer!r}")
        if redis_url is not None and client is not None and encoding == Encoding.LIBRARY:
            # open the pool's connections before timing: one per batch in flight
            await asyncio.gather(*(client.ping() for _ in range(window)))

        async def one_batch(k: int) -> None:
            started = time.perf_counter()
            chunk = chunks[k]
            written: Awaitable[None] | None = None
            if raw_redis is not None:
                data = codec.resp_batch(raw_chunks[k], int(time.time() * 1000), multi=multi)
                written = raw_redis.send(data, codec.resp_replies(len(chunk), multi=multi))
                await raw_redis.drain()
            elif client is not None:
                score = int(time.time() * 1000)
                written = codec.write_with_redis_py(client, chunk, score, multi=multi)
            if call is None:
                if written is not None:
                    await written
                tally.latencies.append(time.perf_counter() - started)
                tally.done += len(chunk)
                slots.release()
                return
            # bytes: encoded while Redis writes; library: the pipeline runs when awaited
            message = codec.dispatch(raw_chunks[k]) if encoding == Encoding.BYTES else b""
            if written is not None:
                await written
            if encoding == Encoding.LIBRARY:
                message = codec.dispatch_message(chunk)
            async with send_lock:
                inflight.append((started, chunk))
                await call.write(message)
            tally.grpc_bytes += len(message)

        async def read_acks(stream: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
            while tally.done < len(ids):
                raw = await _read(stream)
                started, chunk = inflight.popleft()
                if encoding == Encoding.BYTES:
                    ok = raw == acks(chunk, ATTEMPT)
                else:
                    got = agent_pb2.AgentMessage.FromString(raw).acks.acks
                    ok = [a.job_id for a in got] == chunk and all(
                        a.accepted and a.attempt == ATTEMPT for a in got
                    )
                if not ok:
                    raise RuntimeError(f"wrong acks for a batch of {len(chunk)} jobs")
                tally.grpc_bytes += len(raw)
                tally.latencies.append(time.perf_counter() - started)
                tally.done += len(chunk)
                slots.release()

        started, started_cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as group:
            if call is not None:
                group.create_task(read_acks(call))
            for k in range(len(chunks)):
                await slots.acquire()
                group.create_task(one_batch(k))
        seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if call is not None:
            await call.done_writing()
            if await call.read() is not grpc.aio.EOF:
                raise RuntimeError("the receiver sent more than one answer per batch")
    if raw_redis is not None:
        tally.redis_bytes = raw_redis.bytes_out + raw_redis.bytes_in
    elif client is not None:
        per_batch = [
            len(codec.resp_batch([j.encode() for j in c], int(time.time() * 1000), multi=multi))
            + len(codec.resp_replies(len(c), multi=multi))
            for c in chunks
        ]
        tally.redis_bytes = sum(per_batch)
    return tally, seconds, cpu


async def _read(call: grpc.aio.StreamStreamCall[bytes, bytes]) -> bytes:
    raw = await call.read()
    if not isinstance(raw, bytes):
        raise ConnectionError("the receiver closed the stream")
    return raw


# -- the sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each configuration does per round."""

    jobs: int
    """Jobs per run (at least ``min_batches`` batches: more for big batches)."""
    min_batches: int
    batches: tuple[int, ...]
    """Batch sizes swept."""
    window: int
    """Batches in flight at once."""

    def jobs_for(self, batch: int) -> int:
        return max(self.jobs, self.min_batches * batch)

    def warm_up(self) -> Sizes:
        """The round that is not recorded: a fifth of the jobs, the same batches."""
        return replace(self, jobs=max(self.jobs // 5, 1), min_batches=max(self.min_batches // 5, 2))


FULL = Sizes(jobs=20_000, min_batches=8, batches=BATCHES, window=WINDOW)
QUICK = Sizes(jobs=120, min_batches=3, batches=(20, 40), window=2)


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration of the sweep."""

    stages: Stages
    where: Where | None
    encoding: Encoding
    batch: int

    @property
    def name(self) -> str:
        return f"{self.stages}, {self.where or '-'}, {self.encoding}, batch {self.batch}"


def configs(batches: Sequence[int]) -> list[Config]:
    """Every configuration: the floor and its two references, both receivers, both encodings."""
    out = []
    for stages in Stages:
        for where in tuple(Where) if stages.grpc else (None,):
            for encoding in Encoding:
                out += [Config(stages, where, encoding, b) for b in batches]
    return out


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration, over the rounds."""

    stages: str
    receiver: str
    encoding: str
    batch: int
    jobs: int
    """Jobs per run."""
    jobs_per_second: float
    """Median over the rounds."""
    rate_runs: list[float]
    """Jobs/s of every round, in round order."""
    p50_ms: float
    p99_ms: float
    cpu_us_per_job: float
    redis_cpu_us_per_job: float
    bytes_per_job: float
    spec_bytes: int
    all_acked: bool
    """Every run had every job acked (always true without gRPC)."""
    all_stored: bool
    """Every run left every job in Redis (always true without Redis)."""


def _row(config: Config, results: Sequence[FloorResult]) -> Row:
    med = statistics.median
    return Row(
        stages=str(config.stages),
        receiver=str(config.where or ""),
        encoding=str(config.encoding),
        batch=config.batch,
        jobs=results[0].jobs,
        jobs_per_second=med(r.jobs_per_second for r in results),
        rate_runs=[r.jobs_per_second for r in results],
        p50_ms=med(r.p50_ms for r in results),
        p99_ms=med(r.p99_ms for r in results),
        cpu_us_per_job=med(r.cpu_us_per_job for r in results),
        redis_cpu_us_per_job=med(r.redis_cpu_us_per_job for r in results),
        bytes_per_job=med(r.bytes_per_job for r in results),
        spec_bytes=results[0].spec_bytes,
        all_acked=not config.stages.grpc or all(r.acked == r.jobs for r in results),
        all_stored=not config.stages.redis or all(r.stored == r.jobs for r in results),
    )


async def measure(
    redis_url: str, *, sizes: Sizes = FULL, runs: int = 3, progress: bool = False
) -> Report:
    """Every configuration at every batch size: a warm-up round, then ``runs`` rounds, the
    configurations taking turns in a rotating order; one receiver of each kind serves all."""
    where = await asyncio.to_thread(machine, redis_url=redis_url)  # dated when the run starts
    todo = configs(sizes.batches)
    results: dict[Config, list[FloorResult]] = {c: [] for c in todo}
    payload = default_payload()
    with ReceiverProcess() as remote:
        async with InProcessReceiver() as local:
            receivers: dict[Where | None, ReceiverHandle | None] = {
                Where.SAME_PROCESS: local,
                Where.TWO_PROCESSES: remote,
                None: None,
            }
            for round_ in range(-1, runs):
                size = sizes.warm_up() if round_ < 0 else sizes
                started = time.perf_counter()
                for c in rotated(todo, round_ * 7 + 3):
                    result = await measure_floor(
                        redis_url,
                        jobs=size.jobs_for(c.batch),
                        batch=c.batch,
                        payload=payload,
                        stages=c.stages,
                        encoding=c.encoding,
                        receiver=receivers[c.where],
                        window=size.window,
                    )
                    if round_ >= 0:
                        results[c].append(result)
                if progress:
                    what = "warm-up" if round_ < 0 else f"round {round_ + 1}/{runs}"
                    took = time.perf_counter() - started
                    print(f"  {what} done in {took:.1f} s", file=sys.stderr)
    rows = [_row(c, results[c]) for c in todo]
    return Report(where, runs, asdict(sizes), rows, ratios(rows))


def _paired(a: Row, b: Row) -> float:
    return paired(a.rate_runs, b.rate_runs)


def best(rows: Iterable[Row], **match: str) -> Row | None:
    """The fastest row whose fields equal ``match`` (None: no such row)."""
    chosen = [r for r in rows if all(getattr(r, k) == v for k, v in match.items())]
    return max(chosen, key=lambda r: r.jobs_per_second, default=None)


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    """At the floor's batch size and encoding (and receiver, where it has one): what Redis,
    gRPC, a second process and the client libraries change."""
    floor = best(rows, stages=Stages.FLOOR)
    if floor is None:
        return []
    by = {(r.stages, r.receiver, r.encoding, r.batch): r for r in rows}
    f, rx, enc, b = Stages.FLOOR, floor.receiver, floor.encoding, floor.batch
    other_rx = Where.TWO_PROCESSES if rx == Where.SAME_PROCESS else Where.SAME_PROCESS
    other_enc = Encoding.LIBRARY if enc == Encoding.BYTES else Encoding.BYTES
    pairs = [
        (f"jobs/s, floor / grpc only ({rx}, {enc})", (f, rx, enc, b), (Stages.GRPC, rx, enc, b)),
        (f"jobs/s, floor / redis only ({enc})", (f, rx, enc, b), (Stages.REDIS, "", enc, b)),
        (f"jobs/s, {other_rx} / {rx} ({enc})", (f, other_rx, enc, b), (f, rx, enc, b)),
        (f"jobs/s, {other_enc} / {enc} ({rx})", (f, rx, other_enc, b), (f, rx, enc, b)),
    ]
    return [
        Ratio(f"{name}, batch {b}", _paired(by[x], by[y]))
        for name, x, y in pairs
        if x in by and y in by
    ]


# -- output -------------------------------------------------------------------------------------


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


_COLUMNS = (
    Column("stages", 11, left=True),
    Column("receiver", 13, left=True),
    Column("encoding", 8, left=True),
    Column("batch", 5),
    Column("jobs/s", 9),
    Column("p50 ms", 7),
    Column("p99 ms", 7),
    Column("cpu us/job", 10),
    Column("redis us/job", 12),
    Column("B/job", 5),
    Column("acked", 5),
    Column("stored", 6),
)


def _cells(r: Row) -> list[str]:
    return [
        r.stages, r.receiver or "-", r.encoding, str(r.batch), f"{r.jobs_per_second:,.0f}",
        f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.cpu_us_per_job:.2f}",
        f"{r.redis_cpu_us_per_job:.2f}", f"{r.bytes_per_job:.0f}", _yes(r.all_acked),
        _yes(r.all_stored),
    ]  # fmt: skip


def table(rows: Sequence[Row]) -> str:
    """Rows as a fixed-width table."""
    return _table(_COLUMNS, map(_cells, rows))


@dataclass(frozen=True, slots=True)
class Report:
    """A whole sweep: where and when, the sizes, the rows, the ratios."""

    machine: dict[str, str]
    runs: int
    sizes: dict[str, Any]
    rows: list[Row]
    ratios: list[Ratio]

    @property
    def floor(self) -> Row:
        """The fastest ``redis+grpc`` row."""
        row = best(self.rows, stages=Stages.FLOOR)
        if row is None:
            raise ValueError("no redis+grpc row")
        return row

    def to_json(self) -> str:
        doc = asdict(self)
        doc["floor"] = asdict(self.floor)
        return json_text(doc)

    def text(self) -> str:
        m, s = self.machine, self.sizes
        floor = self.floor
        lines = [
            *header("floor benchmark", m),
            f"redis-server with appendfsync always; median of {self.runs} round(s), "
            "configurations interleaved in each round",
            f"{s['jobs']:,} jobs per run (at least {s['min_batches']} batches), "
            f"{s['window']} batches in flight, spec {floor.spec_bytes} bytes; cpu us/job: "
            "the Python processes (sender and receiver)",
            "",
            table(self.rows),
            "",
            f"the floor: {floor.jobs_per_second:,.0f} jobs/s ({floor.stages}, {floor.receiver}, "
            f"{floor.encoding}, batch {floor.batch}; p99 {floor.p99_ms:.2f} ms per batch)",
        ]
        for where in Where:
            for encoding in Encoding:
                row = best(self.rows, stages=Stages.FLOOR, receiver=where, encoding=encoding)
                if row is not None:
                    lines.append(
                        f"  best {where}, {encoding}: {row.jobs_per_second:,.0f} jobs/s "
                        f"(batch {row.batch})"
                    )
        lines += ["", "ratios (median of the per-round ratios)"]
        lines += [f"  {r.name}: {r.value:.3f}" for r in self.ratios]
        return "\n".join(lines)


# -- entry points -------------------------------------------------------------------------------


def run(redis_url: str, *, sizes: Sizes = FULL, runs: int = 3, progress: bool = False) -> Report:
    """:func:`measure` on a loop of its own."""
    return asyncio.run(measure(redis_url, sizes=sizes, runs=runs, progress=progress))


def quick(redis_url: str) -> Report:
    """A tiny run, for tests: tiny sizes, two rounds."""
    return run(redis_url, sizes=QUICK, runs=2)


def default_json_path(now: datetime.datetime | None = None) -> Path:
    """``bench/results/floor-<UTC timestamp>.json``."""
    return results_path("floor", now)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, the floor and the ratios, write JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description="Measure the physical floor of dispatching a job: a durable Redis write "
        "and delivery on one gRPC stream.",
    )
    add_arguments(parser, name="floor", runs=3, runs_help="rounds (median); at least 3")
    parser.add_argument(
        "--redis-url", default=None, help="a Redis to use (default: start a redis-server)"
    )
    args = parser.parse_args(argv)
    with own_redis(args.redis_url) as url:
        report = quick(url) if args.quick else run(url, runs=max(args.runs, 3), progress=True)
    emit(report, name="floor", path=args.json)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
