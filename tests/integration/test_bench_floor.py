"""The floor benchmark runs against a real redis-server and a real gRPC stream on loopback and
reports in the documented shape: every job it wrote is in Redis, every job was acked exactly
once, and its pre-encoded bytes are the bytes the libraries send (never how fast)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.floor import (
    QUICK,
    SITE,
    Codec,
    Encoding,
    FloorResult,
    InProcessReceiver,
    Ratio,
    ReceiverProcess,
    Report,
    Row,
    Stages,
    Where,
    acks,
    acks_message,
    configs,
    default_json_path,
    default_payload,
    job_ids,
    job_spec,
    main,
    measure_floor,
    quick,
)
from orchestrator._pb.agent.v1 import agent_pb2
from orchestrator.store import LocalRedis

JOBS, BATCH = 250, 40  # an uneven last batch


@pytest.fixture
def client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url)
    try:
        yield c
    finally:
        c.close()


def written(client: redis.Redis, prefix: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every job record under ``prefix``, by job id."""
    return {
        key.split(b"job:", 1)[1]: client.hgetall(key)
        for key in client.scan_iter(match=f"{prefix}job:*", count=1000)
    }


def leftovers(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match="bench-floor-*", count=1000))


def assert_shape(result: FloorResult, *, grpc: bool, redis_: bool) -> None:
    assert result.jobs == JOBS and result.batch == BATCH
    assert result.seconds > 0 and result.jobs_per_second > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.spec_bytes == len(default_payload())
    assert result.cpu_us_per_job > 0
    assert (result.grpc_bytes_per_job > result.spec_bytes) is grpc
    assert (result.redis_bytes_per_job > result.spec_bytes) is redis_
    assert result.bytes_per_job == pytest.approx(
        result.redis_bytes_per_job + result.grpc_bytes_per_job
    )
    assert (result.redis_cpu_us_per_job > 0) is redis_
    assert result.acked == (JOBS if grpc else 0)
    assert result.stored == (JOBS if redis_ else 0)


def test_pre_encoded_bytes_are_the_bytes_the_libraries_send() -> None:
    payload = default_payload()
    ids = job_ids(3)
    raw = [j.encode() for j in ids]
    codec = Codec(prefix="p:", payload=payload, id_length=len(ids[0]))

    dispatched = codec.dispatch(raw)
    assert dispatched == codec.dispatch_message(ids)
    message = agent_pb2.ControlMessage.FromString(dispatched)
    assert [(a.job_id, a.attempt, a.spec, a.gpu_type) for a in message.dispatch.assignments] == [
        (j, 1, job_spec(), "H100") for j in ids
    ]
    assert acks(ids, 1) == acks_message(message.dispatch.assignments)
    answer = agent_pb2.AgentMessage.FromString(acks(ids, 7))
    assert [(a.job_id, a.attempt, a.accepted) for a in answer.acks.acks] == [
        (j, 7, True) for j in ids
    ]

    score = 1_700_000_000_123
    hsets = [
        ("HSET", f"p:job:{j}", "spec", payload, "state", 3, "attempt", 1, "site", SITE) for j in ids
    ]
    zadd = ("ZADD", f"p:site:{SITE}:inflight", *(x for j in ids for x in (score, j)))
    packer = redis.connection.Connection()
    packed = b"".join(packer.pack_commands([*hsets, zadd]))
    assert codec.resp_batch(raw, score, multi=False) == packed
    packed = b"".join(packer.pack_commands([("MULTI",), *hsets, zadd, ("EXEC",)]))
    assert codec.resp_batch(raw, score) == packed


@pytest.mark.parametrize("encoding", list(Encoding))
async def test_every_job_is_written_to_redis_and_acked_exactly_once(
    redis_server: LocalRedis, client: redis.Redis, encoding: Encoding
) -> None:
    async with InProcessReceiver(record=True) as receiver:
        result = await measure_floor(
            redis_server.url,
            jobs=JOBS,
            batch=BATCH,
            encoding=encoding,
            receiver=receiver,
            keep=True,
        )
    try:
        assert_shape(result, grpc=True, redis_=True)
        assert (result.stages, result.receiver, result.encoding) == (
            "redis+grpc",
            "same process",
            str(encoding),
        )
        records = written(client, result.prefix)
        assert len(records) == JOBS
        for record in records.values():
            assert record == {
                b"spec": default_payload(),
                b"state": b"3",
                b"attempt": b"1",
                b"site": SITE.encode(),
            }
        in_flight = client.zrange(f"{result.prefix}site:{SITE}:inflight", 0, -1)
        assert set(in_flight) == set(records) and len(in_flight) == JOBS
        # the receiver acked each job it was sent once, and those are the jobs written
        assert len(receiver.acked) == JOBS and set(receiver.acked.values()) == {1}
        assert {j.encode() for j in receiver.acked} == set(records)
    finally:
        client.unlink(*client.scan_iter(match=f"{result.prefix}*"))


async def test_a_receiver_in_a_second_process(redis_server: LocalRedis) -> None:
    with ReceiverProcess() as receiver:
        assert receiver.where == Where.TWO_PROCESSES
        result = await measure_floor(
            redis_server.url, jobs=JOBS, batch=BATCH, receiver=receiver, window=3
        )
    assert_shape(result, grpc=True, redis_=True)
    assert result.receiver == "two processes" and result.window == 3


@pytest.mark.parametrize(
    ("stages", "grpc", "redis_"),
    [(Stages.GRPC, True, False), (Stages.REDIS, False, True), (Stages.PLAIN, False, True)],
)
async def test_the_references_leave_out_one_part_and_delete_what_they_wrote(
    redis_server: LocalRedis, client: redis.Redis, stages: Stages, grpc: bool, redis_: bool
) -> None:
    result = await measure_floor(redis_server.url, jobs=JOBS, batch=BATCH, stages=stages)
    assert_shape(result, grpc=grpc, redis_=redis_)
    assert result.stages == str(stages)
    assert result.receiver == ("same process" if grpc else "")
    assert leftovers(client) == []


async def test_a_payload_of_ones_own_is_carried(
    redis_server: LocalRedis, client: redis.Redis
) -> None:
    spec = job_spec()
    spec.env["WANDB_PROJECT"] = "floor"
    payload = spec.SerializeToString()
    result = await measure_floor(redis_server.url, jobs=5, batch=2, payload=payload, keep=True)
    try:
        assert result.spec_bytes == len(payload) and result.acked == result.stored == 5
        assert {r[b"spec"] for r in written(client, result.prefix).values()} == {payload}
    finally:
        client.unlink(*client.scan_iter(match=f"{result.prefix}*"))


def test_quick_run_measures_every_configuration(
    redis_server: LocalRedis, client: redis.Redis
) -> None:
    report = quick(redis_server.url)

    assert isinstance(report, Report)
    assert report.runs == 2
    assert set(report.machine) >= {"cores", "date", "grpcio", "redis-py", "redis-server"}
    expected = configs(QUICK.batches)
    assert [(r.stages, r.receiver, r.encoding, r.batch) for r in report.rows] == [
        (str(c.stages), str(c.where or ""), str(c.encoding), c.batch) for c in expected
    ]
    assert {r.stages for r in report.rows} == {str(s) for s in Stages}
    for row in report.rows:
        assert isinstance(row, Row)
        assert row.jobs == QUICK.jobs_for(row.batch)
        assert row.jobs_per_second > 0 and len(row.rate_runs) == report.runs
        assert 0 < row.p50_ms <= row.p99_ms
        assert row.cpu_us_per_job > 0 and row.bytes_per_job > row.spec_bytes
        assert row.all_acked and row.all_stored

    floor = report.floor
    assert floor.stages == "redis+grpc"
    assert floor.jobs_per_second == max(
        r.jobs_per_second for r in report.rows if r.stages == "redis+grpc"
    )
    assert len(report.ratios) == 4
    assert all(isinstance(r, Ratio) and r.value > 0 for r in report.ratios)
    names = " | ".join(r.name for r in report.ratios)
    for part in ("floor / grpc only", "floor / redis only", "two processes", "library"):
        assert part in names
    assert leftovers(client) == []


def test_main_prints_the_table_and_writes_json(
    redis_server: LocalRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "floor.json"
    assert main(["--quick", "--json", str(out), "--redis-url", redis_server.url]) == 0
    printed = capsys.readouterr().out
    for text in ("floor benchmark", "cores", "jobs/s", "p99 ms", "the floor:", "ratios", str(out)):
        assert text in printed
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "runs", "sizes", "rows", "ratios", "floor"}
    assert set(doc["rows"][0]) == {
        "stages",
        "receiver",
        "encoding",
        "batch",
        "jobs",
        "jobs_per_second",
        "rate_runs",
        "p50_ms",
        "p99_ms",
        "cpu_us_per_job",
        "redis_cpu_us_per_job",
        "bytes_per_job",
        "spec_bytes",
        "all_acked",
        "all_stored",
    }
    assert doc["floor"]["stages"] == "redis+grpc"


def test_results_go_to_a_timestamped_file_under_bench_results_by_default() -> None:
    when = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    assert default_json_path(when) == Path("bench/results/floor-20250304T050607Z.json")
