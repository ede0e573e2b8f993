"""Tests of the fault harness's parts: the delay proxy, the job program, the checker, netns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .checker import Expect, check
from .jobprog import Run, main, read_records, record_name
from .netns import (
    STATE_DIR,
    LoopbackNetwork,
    Network,
    available,
    cleanup_stale,
    make_network,
)
from .proxy import DelayProxy

REPO = Path(__file__).resolve().parents[2]


# -- proxy ----------------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An echo server on a free loopback port (on the test's own event loop)."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _connect(proxy: DelayProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _nothing_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"expected silence, got {data!r}")


async def test_proxy_round_trip_is_twice_the_one_way_delay(echo_port: int) -> None:
    with DelayProxy("127.0.0.1", echo_port, delay_ms=40) as proxy:
        reader, writer = await _connect(proxy)
        rtts = []
        for i in range(5):
            began = time.perf_counter()
            writer.write(b"%d\n" % i)
            assert await reader.readline() == b"%d\n" % i
            rtts.append(time.perf_counter() - began)
        await _close(writer)
    assert min(rtts) >= 0.080, rtts
    assert sorted(rtts)[len(rtts) // 2] < 0.080 + 0.040, rtts


async def test_proxy_keeps_order_under_jitter(echo_port: int) -> None:
    chunks = [b"%06d;" % i for i in range(400)]
    with DelayProxy("127.0.0.1", echo_port, delay_ms=3, jitter_ms=3, seed=1) as proxy:
        reader, writer = await _connect(proxy)
        for i, chunk in enumerate(chunks):
            writer.write(chunk)
            if i % 4 == 0:
                await asyncio.sleep(0.0005)  # separate reads, so chunks get different delays
        echoed = await asyncio.wait_for(reader.readexactly(sum(map(len, chunks))), 10)
        await _close(writer)
        stats = proxy.stats()
    assert echoed == b"".join(chunks)
    assert stats.bytes_forwarded == {"up": len(echoed), "down": len(echoed)}


async def test_proxy_partition_blackholes_and_heal_restores(echo_port: int) -> None:
    with DelayProxy("127.0.0.1", echo_port, delay_ms=5) as proxy:
        reader, writer = await _connect(proxy)
        writer.write(b"before\n")
        assert await reader.readline() == b"before\n"

        proxy.partition()
        assert proxy.partitioned == {"up", "down"}
        writer.write(b"lost\n")
        assert await _nothing_within(reader, 0.2)  # dropped, and the connection stays open
        late_reader, late_writer = await _connect(proxy)  # accepted, but nothing gets through
        late_writer.write(b"late\n")
        assert await _nothing_within(late_reader, 0.1)
        assert proxy.stats().bytes_dropped["up"] == len(b"lost\n") + len(b"late\n")

        proxy.heal()
        writer.write(b"after\n")
        assert await asyncio.wait_for(reader.readline(), 2) == b"after\n"
        late_writer.write(b"later\n")
        assert await asyncio.wait_for(late_reader.readline(), 2) == b"later\n"
        assert proxy.stats().connections_open == 2
        await _close(writer)
        await _close(late_writer)


async def test_proxy_partition_of_one_direction(echo_port: int) -> None:
    with DelayProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await _connect(proxy)
        proxy.partition("down")
        writer.write(b"ping\n")
        assert await _nothing_within(reader, 0.2)
        stats = proxy.stats()
        assert stats.bytes_forwarded["up"] == 5  # the server got it; its answer was dropped
        assert stats.bytes_dropped == {"up": 0, "down": 5}
        proxy.heal("down")
        writer.write(b"pong\n")
        assert await asyncio.wait_for(reader.readline(), 2) == b"pong\n"
        await _close(writer)


def test_proxy_reset_all_closes_connections_from_sync_code() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        with DelayProxy("127.0.0.1", server.getsockname()[1]) as proxy:
            clients = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(3)]
            accepted = [server.accept()[0] for _ in clients]
            assert proxy.reset_all() == 3
            for sock in clients + accepted:
                sock.settimeout(2)
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1) == b""
                sock.close()
            stats = proxy.stats()
            assert (stats.connections_accepted, stats.connections_open, stats.resets) == (3, 0, 3)
            address = proxy.address
        with pytest.raises(OSError):  # stopped: nobody listens any more
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=1)


# -- jobprog --------------------------------------------------------------------------------


def _start_job(log_dir: Path, job: str, attempt: int, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOB_ID": job, "JOB_ATTEMPT": str(attempt), "SG_SITE": "narvik"}
    argv = [sys.executable, "-m", "tests.faults.jobprog", "--log-dir", str(log_dir), *args]
    return subprocess.Popen(argv, cwd=REPO, env=env)


def _wait_for_record(log_dir: Path, proc: subprocess.Popen[bytes], job: str, attempt: int) -> None:
    path = log_dir / record_name(job, attempt, proc.pid)
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None, f"jobprog exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"no record {path.name}"
        time.sleep(0.01)


def test_jobprog_records_done_sigterm_and_killed(tmp_path: Path) -> None:
    job = "j/odd id%.x"  # unsafe in a file name
    done = _start_job(tmp_path, job, 1, "--seconds", "0.3", "--exit-code", "3")
    termed = _start_job(tmp_path, job, 2, "--seconds", "30")
    killed = _start_job(tmp_path, "j-2", 1, "--seconds", "30")
    try:
        _wait_for_record(tmp_path, termed, job, 2)
        _wait_for_record(tmp_path, killed, "j-2", 1)
        time.sleep(0.35)  # a few ticks
        assert {r.how for r in read_records(tmp_path) if r.pid != done.pid} == {"running"}
        term_at = time.time()
        termed.send_signal(signal.SIGTERM)
        kill_at = time.time()
        killed.kill()
        codes = [p.wait(timeout=10) for p in (done, termed, killed)]
    finally:
        for p in (done, termed, killed):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [3, 143, -signal.SIGKILL]
    started = ((job, 1, done), (job, 2, termed), ("j-2", 1, killed))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        record_name(j, a, p.pid) for j, a, p in started
    )
    runs = {r.pid: r for r in read_records(tmp_path)}
    assert runs[done.pid] == Run(
        job=job,
        attempt=1,
        site="narvik",
        pid=done.pid,
        start=runs[done.pid].start,
        end=runs[done.pid].end,
        how="done",
    )
    assert 0.3 <= runs[done.pid].seconds < 1.0
    assert (runs[termed.pid].how, runs[termed.pid].attempt) == ("sigterm", 2)
    assert term_at <= runs[termed.pid].end < term_at + 2
    assert runs[killed.pid].how == "killed"
    # Its last tick is its end, to within a tick (plus the file system's coarse clock).
    assert kill_at - 0.1 - 0.15 <= runs[killed.pid].end <= kill_at + 0.01  # slack: a busy CPU
    first = (tmp_path / record_name(job, 1, done.pid)).read_text().splitlines()
    assert json.loads(first[0])["job"] == job
    assert json.loads(first[-1])["how"] == "done"


def test_jobprog_needs_the_job_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--log-dir", str(tmp_path), "--seconds", "0"], env={}) == 2
    assert "JOB_ID" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- checker --------------------------------------------------------------------------------

SITES = {"narvik": "NO", "loughton": "GB", "abilene": "US"}
T = 1_000_000.0


def _run(job: str, attempt: int, site: str, start: float, end: float, how: str = "done") -> Run:
    return Run(job, attempt, site, pid=1000 + int(start), start=T + start, end=T + end, how=how)


def test_checker_passes_a_clean_history() -> None:
    runs = [
        _run("a", 1, "narvik", 0, 10, "killed"),  # site partitioned: its attempt ran on
        _run("a", 2, "loughton", 8, 20),  # overlap 2 s, within the bound
        _run("b", 1, "abilene", 1, 3),
        _run("c", 1, "narvik", 2, 4, "sigterm"),
    ]
    acked = {
        "a": Expect("a", frozenset({"NORTHERN_EUROPE"})),
        "b": Expect("b"),
        "c": Expect("c", frozenset({"EEA"}), cancelled_at=T + 3.5),
        "d": Expect("d", cancelled_at=T + 1),  # cancelled before it ever ran
    }
    states = {"a": "SUCCEEDED", "b": "FAILED", "c": "CANCELLED", "d": "cancelled"}
    report = check(runs, acked, states, SITES, overlap_bound=5.0)
    assert report.ok, report.table()
    assert (report.acknowledged, report.terminal, report.runs) == (4, 4, 4)
    assert report.cancel_latencies == {"c": 0.5, "d": 0.0}
    assert report.max_cancel_latency == 0.5
    assert report.table().startswith("fault check: OK")
    assert json.loads(report.to_json())["ok"] is True


def test_checker_reports_each_violation() -> None:
    runs = [
        _run("dup", 1, "narvik", 0, 30, "killed"),
        _run("dup", 2, "narvik", 10, 40),  # overlap 20 s > 5 s
        _run("twice", 1, "narvik", 0, 1),
        _run("twice", 1, "loughton", 5, 6),  # same attempt again, even without overlap
        _run("no-only", 1, "abilene", 0, 1),  # US for a NO-only job
        _run("eea", 1, "mystery", 0, 1),  # a site not in the map
        _run("ghost", 1, "narvik", 0, 1),  # never acknowledged
    ]
    acked = {
        "dup": Expect("dup"),
        "twice": Expect("twice"),
        "no-only": Expect("no-only", frozenset({"NO"})),
        "eea": Expect("eea", frozenset({"EEA"})),
        "pending": Expect("pending"),
        "missing": Expect("missing"),
    }
    states = {"dup": "SUCCEEDED", "twice": "SUCCEEDED", "no-only": "SUCCEEDED", "eea": "FAILED"}
    states["pending"] = "PENDING"
    report = check(runs, acked, states, SITES, overlap_bound=5.0)
    assert not report.ok
    assert report.lost == ("missing", "pending")
    assert [(o.first.attempt, o.second.attempt, o.seconds) for o in report.duplicated] == [
        (1, 2, 20.0)
    ]
    assert [(a.site, b.site) for a, b in report.same_attempt_twice] == [("narvik", "loughton")]
    assert [(v.run.job, v.jurisdiction) for v in report.jurisdiction_violations] == [
        ("no-only", "US"),
        ("eea", None),
    ]
    assert "NO" in report.jurisdiction_violations[1].allowed  # the group was expanded
    assert [r.job for r in report.unexpected] == ["ghost"]
    assert report.max_cancel_latency is None
    table = report.table()
    assert table.startswith("fault check: FAILED")
    for text in ("missing", "20.00s", "no-only attempt 1 at abilene", "in ?", "ghost"):
        assert text in table, table
    data = json.loads(report.to_json())
    assert data["lost"] == ["missing", "pending"] and data["duplicated"][0]["seconds"] == 20.0


def test_checker_unexpected_runs_fail_only_when_strict() -> None:
    runs = [_run("ghost", 1, "narvik", 0, 1)]
    acked = {"a": Expect("a")}
    assert check(runs, acked, {"a": "SUCCEEDED"}, SITES, overlap_bound=1).ok
    strict = check(runs, acked, {"a": "SUCCEEDED"}, SITES, overlap_bound=1, strict_unexpected=True)
    assert not strict.ok
    assert "unexpected          1 (failure)" in strict.table()


def test_checker_cancel_latency_counts_the_last_run() -> None:
    runs = [_run("c", 1, "narvik", 0, 4, "killed"), _run("c", 2, "loughton", 5, 9, "sigterm")]
    report = check(
        runs,
        {"c": Expect("c", cancelled_at=T + 6)},
        {"c": "CANCELLED"},
        SITES,
        overlap_bound=1,
    )
    assert report.cancel_latencies == {"c": 3.0}


# -- netns ----------------------------------------------------------------------------------


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5) as c:
        print(c.recv(16).decode())
except OSError as exc:
    print(type(exc).__name__)
    sys.exit(1)
"""


def _call(net: Network, host_name: str, server: socket.socket) -> str:
    """Connect from a host to ``server`` (in the root namespace); what the client printed."""
    host, port = server.getsockname()
    proc = net.hosts[host_name].popen(
        [sys.executable, "-c", _CLIENT, host, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        conn, peer = server.accept()
    except TimeoutError:
        pass
    else:
        with conn:
            assert peer[0] == net.hosts[host_name].ip  # no NAT: the root sees the host's address
            conn.sendall(b"hello")
    out, _ = proc.communicate(timeout=10)
    return str(out).strip()


def test_netns_network_or_loopback_fallback() -> None:
    reason = available()
    if reason is not None:
        # No namespaces here: the fallback must be what make_network() gives, and say so.
        net = make_network()
        assert isinstance(net, LoopbackNetwork)
        with net:
            host = net.add_host("a")
            assert (net.kind, host.ip, host.netns) == ("loopback", "127.0.0.1", None)
            with pytest.raises(NotImplementedError, match="DelayProxy"):
                host.link_down()
        return

    with Network() as net, socket.create_server((net.root_ip, 0)) as server:
        server.settimeout(1)
        a, b = net.add_host("a"), net.add_host("b")
        assert net.kind == "netns"
        assert a.netns == f"sg-{net.suffix}-a" and a.ip != b.ip
        assert _call(net, "a", server) == "hello"
        a.link_down()
        assert _call(net, "a", server) in {"TimeoutError", "OSError"}  # a cut link: silence
        assert _call(net, "b", server) == "hello"  # only a is cut off
        a.link_up()
        assert _call(net, "a", server) == "hello"
        suffix = net.suffix
    assert f"sg-{suffix}-" not in _ip("netns", "list")
    assert suffix not in _ip("-o", "link", "show")
    assert not (STATE_DIR / suffix).exists()


def test_netns_cleanup_stale_removes_what_a_dead_run_left() -> None:
    if available() is not None:
        with LoopbackNetwork() as net:
            assert net.add_host("a").popen([sys.executable, "-c", "pass"]).wait(timeout=10) == 0
        return
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Network() as net:
        net.add_host("x")
        (STATE_DIR / net.suffix).write_text(f"{dead.pid}\n")  # as if its owner had crashed
        removed = cleanup_stale()
        assert f"sg-{net.suffix}-x" in removed and f"sgbr{net.suffix}" in removed
        assert net.suffix not in _ip("-o", "link", "show")
    # close() after a cleanup still succeeds


def test_make_network_fallback_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    net = make_network(prefer_netns=False)
    assert isinstance(net, LoopbackNetwork)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not used (not wanted by the caller)" in err
