"""Commands packed in C (``orchestrator.store.connection``) are the bytes redis-py's asyncio
connections pack in Python."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import DataError

from orchestrator.config import RedisConfig
from orchestrator.store import JobStore
from orchestrator.store import connection as fast

_ARG = st.one_of(
    st.text(),
    st.binary(),
    st.integers(),
    st.floats(allow_nan=False),
    st.binary().map(bytearray),
    st.binary().map(memoryview),
)
_PYTHON = aioredis.Connection()


@given(st.sampled_from(["EVALSHA", "HSET", "CONFIG GET", b"CLIENT SETNAME"]), st.lists(_ARG))
def test_same_bytes_as_redis_py(command: str | bytes, args: list[object]) -> None:
    assert b"".join(fast.pack_command(command, *args)) == b"".join(
        _PYTHON.pack_command(command, *args)
    )


def test_a_big_script_call_is_the_same() -> None:
    args: list[object] = ["EVALSHA", "f" * 40, 0, "sg:", "1764456000.123", 1000]
    for i in range(1000):
        args += [f"j-{i:026d}", 1, "narvik", "H100", 700.0]
    assert b"".join(fast.pack_command(*args)) == b"".join(_PYTHON.pack_command(*args))


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}])
def test_what_redis_py_refuses_is_refused_the_same_way(bad: object) -> None:
    with pytest.raises(DataError):
        _PYTHON.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "python_class", "c_class"),
    [
        ("redis://127.0.0.1:1/0", aioredis.Connection, fast.Connection),
        ("rediss://127.0.0.1:1/0", aioredis.SSLConnection, fast.SSLConnection),
        (
            "unix:///tmp/no.sock",
            aioredis.UnixDomainSocketConnection,
            fast.UnixDomainSocketConnection,
        ),
    ],
)
async def test_the_stores_pools_pack_in_c(
    url: str, python_class: type[object], c_class: type[object]
) -> None:
    assert aioredis.ConnectionPool.from_url(url).connection_class is python_class
    store = JobStore.from_config(RedisConfig(url=url))
    try:
        for client in (store.client, store._watch_client):
            assert client.connection_pool.connection_class is c_class
            assert issubclass(c_class, python_class)
    finally:
        await store.close()
