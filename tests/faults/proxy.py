"""A user-space TCP proxy with WAN delay, jitter, blackhole partitions and resets.

The kernel here has no netem, so fault tests put a ``DelayProxy`` between two peers (an agent and
the dispatcher that dials it, a service and Redis, ...) and dial the proxy's ``address``::

    with DelayProxy("127.0.0.1", agent_port, delay_ms=40, jitter_ms=5, seed=7) as proxy:
        channel = grpc.aio.insecure_channel(proxy.address)
        ...
        proxy.partition()  # both directions blackholed; connections stay open
        proxy.heal()
        proxy.reset_all()  # every current connection closed abruptly

Directions: ``"up"`` is client to server (the side that dialled the proxy to the target),
``"down"`` is server to client. Each chunk read in a direction is delivered at
``max(previous deadline, now + delay + uniform(-jitter, +jitter))``, so jitter never reorders a
direction's bytes. A partitioned direction reads and drops its bytes (and its FIN: a cut link
carries nothing), so neither peer notices until its own timeouts or keepalives fire.

The proxy runs its own asyncio loop in a background thread, so sync and async tests drive it the
same way; its methods are safe to call from any thread other than the proxy's own.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

__all__ = ["DelayProxy", "Direction", "ProxyStats", "Which"]

Direction = Literal["up", "down"]
"""``"up"``: client to server; ``"down"``: server to client."""
Which = Literal["both", "up", "down"]
"""One direction or both."""

_HIGH_WATER = 1 << 20  # bytes queued or buffered towards a peer before we stop reading the other


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started (a snapshot)."""

    bytes_forwarded: dict[Direction, int]
    """Bytes written to the far side, by direction (``"up"``, ``"down"``)."""
    bytes_dropped: dict[Direction, int]
    """Bytes read and dropped by a partition, by direction."""
    connections_accepted: int
    """Client connections accepted."""
    connections_open: int
    """Client connections not yet closed on both sides."""
    resets: int
    """Connections closed by ``reset_all()``."""


class _Eof:
    """Queue marker for the end of a direction: FIN (half-close) when not ``close``; else the
    source's socket closed, cleanly or (``abort``) with an error, and so will the other."""

    def __init__(self, *, close: bool, abort: bool) -> None:
        self.close = close
        self.abort = abort


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: the accepted client's or the dialled server's."""

    def __init__(self, conn: _Connection, direction_out: Direction) -> None:
        self.conn = conn
        self.out = direction_out  # the direction of the bytes this side reads
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.pipes[self.out].push(data)

    def eof_received(self) -> bool:
        self.conn.pipes[self.out].push_eof(_Eof(close=False, abort=False))
        return True  # keep the socket open for the other direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.conn.peer(self).pause_reading()

    def resume_writing(self) -> None:
        self.conn.peer(self).resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost and not self.transport.is_reading():
            self.transport.resume_reading()


class _Pipe:
    """One direction of a connection: a FIFO of (deadline, chunk) and one timer."""

    def __init__(self, proxy: DelayProxy, direction: Direction, src: _Side, dst: _Side) -> None:
        self.proxy = proxy
        self.direction = direction
        self.src = src
        self.dst = dst
        self.queue: collections.deque[tuple[float, bytes | _Eof]] = collections.deque()
        self.queued_bytes = 0
        self.last_deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.eof_sent = False
        self.paused_src = False

    def push(self, data: bytes) -> None:
        if self.proxy._blocked(self.direction):
            self.proxy._dropped[self.direction] += len(data)
            return
        self.queued_bytes += len(data)
        self._enqueue(data)
        if self.queued_bytes > _HIGH_WATER and not self.paused_src:
            self.paused_src = True
            self.src.pause_reading()

    def push_eof(self, eof: _Eof) -> None:
        if not self.proxy._blocked(self.direction):  # a cut link carries no FIN or RST either
            self._enqueue(eof)

    def _enqueue(self, item: bytes | _Eof) -> None:
        loop = self.proxy._loop_now()
        now = loop.time()
        deadline = max(self.last_deadline, now + self.proxy._sample_delay(self.direction))
        self.last_deadline = deadline
        self.queue.append((deadline, item))
        if self.timer is None:
            if deadline <= now:
                self.flush()
            else:
                self.timer = loop.call_at(deadline, self.flush)

    def flush(self) -> None:
        """Deliver every chunk whose deadline has come; re-arm the timer for the next one."""
        self.timer = None
        dst = self.dst.transport
        if dst is None and not self.dst.lost:
            return  # the server is still being dialled; side_made() flushes again
        loop = self.proxy._loop_now()
        now = loop.time()
        out: list[bytes] = []
        while self.queue and self.queue[0][0] <= now:
            _, item = self.queue.popleft()
            if isinstance(item, _Eof):
                self._write(out)
                out = []
                if not self.proxy._blocked(self.direction):
                    self._deliver_eof(item)
                continue
            self.queued_bytes -= len(item)
            if self.proxy._blocked(self.direction):
                self.proxy._dropped[self.direction] += len(item)  # in flight when the link was cut
            else:
                out.append(item)
        self._write(out)
        if self.paused_src and self.queued_bytes <= _HIGH_WATER // 2:
            self.paused_src = False
            self.src.resume_reading()
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self.flush)

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        size = sum(map(len, chunks))
        dst = self.dst.transport
        if dst is None or self.dst.lost or dst.is_closing():
            # The far side is gone: its host would answer with RST.
            self.proxy._dropped[self.direction] += size
            self.src.conn.abort()
            return
        self.proxy._forwarded[self.direction] += size  # first: a reader may see the bytes at once
        dst.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _deliver_eof(self, eof: _Eof) -> None:
        dst = self.dst.transport
        if dst is None or self.dst.lost or dst.is_closing():
            return
        if eof.abort:
            dst.abort()
        elif eof.close:
            dst.close()
        else:
            if dst.can_write_eof():
                try:
                    dst.write_eof()
                except OSError:  # the peer reset the connection meanwhile: nothing to half-close
                    dst.abort()
                    return
            self.eof_sent = True
            self.src.conn.maybe_close()

    def discard(self) -> None:
        """Drop everything queued (the destination is gone)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued_bytes = 0


class _Connection:
    """A client connection and the connection the proxy dialled to the target for it."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, "up")
        self.server = _Side(self, "down")
        self.pipes: dict[Direction, _Pipe] = {
            "up": _Pipe(proxy, "up", self.client, self.server),
            "down": _Pipe(proxy, "down", self.server, self.client),
        }
        self.dial: asyncio.Task[None] | None = None
        self.closed = False

    def peer(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    def side_made(self, side: _Side) -> None:
        if side is self.client:
            self.proxy._conns.add(self)
            self.proxy._accepted += 1
            self.dial = asyncio.get_running_loop().create_task(self._dial())
        else:
            self.pipes["up"].flush()

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: self.server, self.proxy.target_host, self.proxy.target_port
            )
        except OSError:
            self.server.lost = True
            self.abort()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.closed:
            return
        self.pipes[self.peer(side).out].discard()  # nothing can reach this side any more
        self.pipes[side.out].push_eof(_Eof(close=True, abort=exc is not None))
        if self.client.lost and self.server.lost:
            self._forget()

    def maybe_close(self) -> None:
        """Close both sockets once FIN went through in both directions."""
        if self.pipes["up"].eof_sent and self.pipes["down"].eof_sent:
            for side in (self.client, self.server):
                if side.transport is not None:
                    side.transport.close()

    def abort(self) -> None:
        """Close both sockets at once, with RST, dropping anything queued."""
        for pipe in self.pipes.values():
            pipe.discard()
        if self.dial is not None and not self.dial.done():
            self.dial.cancel()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.abort()
        self._forget()

    def _forget(self) -> None:
        if not self.closed:
            self.closed = True
            self.proxy._conns.discard(self)


class DelayProxy:
    """Forwards each connection accepted on ``(listen_host, listen_port)`` to the target, with a
    one-way delay and jitter per direction, partitions and resets (see the module docstring).

    ``listen_port=0`` picks a free port; ``address`` tells which once started. ``seed`` seeds
    the jitter. Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._delay: dict[Direction, tuple[float, float]] = {}
        self.set_delay(delay_ms, jitter_ms)
        self._rng = random.Random(seed)  # jitter, not security
        self._partitioned: frozenset[Direction] = frozenset()
        self._forwarded: dict[Direction, int] = {"up": 0, "down": 0}
        self._dropped: dict[Direction, int] = {"up": 0, "down": 0}
        self._accepted = 0
        self._resets = 0
        self._conns: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port = 0

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening (in a background thread with its own event loop)."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: _Connection(self).client,
                        self.listen_host,
                        self._listen_port,
                        reuse_address=True,
                    )
                )
                self._port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"DelayProxy-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection (abruptly), then end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        dials = [c.dial for c in conns if c.dial is not None]
        await asyncio.gather(*dials, return_exceptions=True)
        for _ in range(3):  # let the connection_lost callbacks run
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (once started)."""
        if not self._port:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def address(self) -> str:
        """``"host:port"`` to dial instead of the target."""
        return f"{self.listen_host}:{self.port}"

    # -- faults ---------------------------------------------------------------------------

    def set_delay(
        self, delay_ms: float, jitter_ms: float = 0.0, *, direction: Which = "both"
    ) -> None:
        """Set the one-way delay and jitter (uniform in ``±jitter_ms``) of new chunks."""
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        for d in _directions(direction):
            self._delay[d] = (delay_ms / 1000.0, jitter_ms / 1000.0)

    def partition(self, direction: Which = "both") -> None:
        """Blackhole ``direction``: its bytes are read and dropped, connections stay open, and
        new connections are accepted but get nothing through, until ``heal()``."""
        self._partitioned = self._partitioned | _directions(direction)

    def heal(self, direction: Which = "both") -> None:
        """End the blackhole for new data (data dropped meanwhile stays dropped)."""
        self._partitioned = self._partitioned - _directions(direction)

    @property
    def partitioned(self) -> frozenset[Direction]:
        """The directions currently blackholed."""
        return self._partitioned

    def reset_all(self) -> int:
        """Close every current connection abruptly (RST to both peers); return how many."""
        loop = self._loop
        if loop is None:
            return 0

        async def reset() -> int:
            conns = list(self._conns)
            for conn in conns:
                conn.abort()
            self._resets += len(conns)
            await asyncio.sleep(0)
            return len(conns)

        return asyncio.run_coroutine_threadsafe(reset(), loop).result(timeout=10)

    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return ProxyStats(
            bytes_forwarded=dict(self._forwarded),
            bytes_dropped=dict(self._dropped),
            connections_accepted=self._accepted,
            connections_open=len(self._conns),
            resets=self._resets,
        )

    # -- used by the connections, on the proxy's loop -------------------------------------

    def _blocked(self, direction: Direction) -> bool:
        return direction in self._partitioned

    def _sample_delay(self, direction: Direction) -> float:
        delay, jitter = self._delay[direction]
        if jitter:
            delay += self._rng.uniform(-jitter, jitter)
        return max(0.0, delay)

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop


def _directions(which: Which) -> frozenset[Direction]:
    if which == "both":
        return frozenset(("up", "down"))
    if which in ("up", "down"):
        return frozenset((which,))
    raise ValueError(f"direction must be 'both', 'up' or 'down', not {which!r}")
