"""Dispatchers: each owns the long-lived gRPC streams to many sites.

A dispatcher takes the sites whose id hashes to its index (``crc32(id) % count``), holds one
``AgentService.Connect`` stream per site, sends batches of assignments from the site's outbox
and cancels, and records what the agent answers (acks, status, heartbeats) in the store.
Nothing durable lives here: after a restart, in-flight assignments are sent again and the agent
drops duplicates by ``(job_id, attempt)``; unacknowledged status updates are resent by the agent.

With ``DispatcherOptions.tls`` each stream is mutual TLS: the dispatcher presents the control
plane's certificate and accepts only an agent certificate naming ``site_server_name(site)``,
whatever the registered endpoint's host (an agent of another site at that address fails the
handshake). The files are read for every new stream, so replaced certificates need no restart.
The registry is the truth about a site: an agent whose hello names another site or jurisdiction
is refused before anything about the site is recorded.

An idle site costs next to nothing between its heartbeats:

- A site's sender looks at its outbox and cancels when the store announces new work or cancels
  for it (the notify channel), when its stream opens, and after a full batch. Whenever the
  listener has (re)subscribed, and as a safety net every ``sweep_seconds``, one pipelined read
  finds the connected sites that have work waiting, and their senders look (announcements made
  while the listener was not subscribed are lost).
- The registry is re-read only when ``sites_version()`` changed (checked every
  ``refresh_seconds``), and in full every ``full_refresh_seconds`` whatever it says.
- The heartbeats of every site held are recorded together, one store call per
  ``heartbeat_batch_seconds`` for all the sites that beat meanwhile. A site's lease renewal is
  sent only once its heartbeat is recorded: the lease counts from when the agent sent the
  heartbeat, so it always ends before the store could find the site silent for long enough to
  move its work. Renewals go out at most every eighth of the lease, not after every heartbeat
  (a stream write costs the dispatcher more than reading the heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from opentelemetry.util.types import AttributeValue

from orchestrator._pb.agent.v1 import agent_pb2, agent_pb2_grpc
from orchestrator._pb.orchestrator.v1 import types_pb2
from orchestrator.background import cancel_and_wait
from orchestrator.config import ControlPlaneConfig, TlsFiles
from orchestrator.crashpoints import crash_point
from orchestrator.errors import InvalidSpecError, StoreUnavailableError
from orchestrator.security.certs import site_server_name
from orchestrator.security.tls import channel_credentials, channel_options_for
from orchestrator.states import JobState
from orchestrator.store import Ack, Assignment, HeldAttempt, JobStore, StatusReport
from orchestrator.tracing import (
    get_tracer,
    recordable_traces,
    span_traceparent,
    start_span_from,
    tracing_active,
)

__all__ = ["Dispatcher", "DispatcherOptions", "owner_of"]

log = logging.getLogger(__name__)
tracer = get_tracer(__name__)

_BATCH = 500
_MIN_BACKOFF = 0.2
_MAX_BACKOFF = 5.0
_Writer = Callable[[agent_pb2.ControlMessage], Awaitable[None]]
_MAX_MESSAGE = 64 * 1024 * 1024


def _some(items: Sequence[object], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]"


def owner_of(site_id: str, count: int) -> int:
    """Index of the dispatcher that owns ``site_id`` among ``count`` dispatchers."""
    return zlib.crc32(site_id.encode()) % count


@dataclass(frozen=True)
class DispatcherOptions:
    """Knobs of one dispatcher."""

    index: int = 0
    """This dispatcher's index among ``count``."""
    count: int = 1
    """How many dispatchers share the sites."""
    dispatcher_id: str = "dispatcher-0"
    """Name recorded on the sites it holds, for operators."""
    heartbeat_interval_seconds: float = 5.0
    """Heartbeat period asked of agents."""
    lease_seconds: float = 0.0
    """Lease period given to agents: one stops its attempts itself when no renewal came for
    this long (0: the agent's own default). Keep it under the scheduler's ``lost_after`` minus
    the kill grace (``ControlPlaneConfig.lease_seconds`` is)."""
    kill_grace_seconds: float = 3.0
    """SIGTERM-to-SIGKILL grace sent with cancels."""
    refresh_seconds: float = 2.0
    """How often the site registry's version is checked (one read); the registry is re-read
    for sites to connect or drop only when it changed."""
    full_refresh_seconds: float = 60.0
    """Longest between two re-reads of the registry, changed or not (a safety net)."""
    sweep_seconds: float = 10.0
    """How often the connected sites with work waiting are found without a notification (a
    safety net, in case an announcement of new work or cancels got lost): one pipelined read
    for all of them."""
    heartbeat_batch_seconds: float = 0.1
    """How long heartbeats gather before the store records them all in one call; each lease
    renewal waits for its heartbeat's record, so a renewal comes up to this much later."""
    tls: TlsFiles | None = None
    """The control plane's client certificate and key, and the CA agents' certificates chain
    to (mutual TLS, read for every new stream). None: plaintext."""

    @classmethod
    def from_config(cls, config: ControlPlaneConfig, *, index: int) -> DispatcherOptions:
        """Dispatcher ``index`` of the control plane ``config`` describes, named after it
        and this process."""
        return cls(
            index=index,
            count=config.dispatchers,
            dispatcher_id=f"dispatcher-{index}@{os.getpid()}",
            heartbeat_interval_seconds=config.heartbeat_interval_seconds,
            kill_grace_seconds=config.kill_grace_seconds,
            lease_seconds=config.lease_seconds,
            tls=None if config.security.insecure else config.security.agent_tls,
        )


class _Heartbeats:
    """Records the heartbeats of every site one dispatcher holds together: one store call per
    ``window`` seconds for all the sites that beat meanwhile (the newest heartbeat of each).
    Each site's link is then told that its heartbeat is recorded, or why it could not be."""

    def __init__(self, store: JobStore, *, dispatcher_id: str, window: float) -> None:
        self._store = store
        self._dispatcher_id = dispatcher_id
        self._window = window
        self._pending: dict[str, tuple[_SiteLink, int, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, link: _SiteLink, session: int, seq: int) -> None:
        """Heartbeat ``seq`` came on the link's stream ``session``: record it soon."""
        self._pending[link.site_id] = (link, session, seq)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._record(), name="record heartbeats")

    async def close(self) -> None:
        """Drop what was not recorded yet (its streams are gone)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        self._pending.clear()

    async def _record(self) -> None:
        while self._pending:
            await asyncio.sleep(self._window)
            batch, self._pending = self._pending, {}
            try:
                back = await self._store.record_heartbeats(
                    list(batch), dispatcher_id=self._dispatcher_id
                )
            except StoreUnavailableError as exc:
                for link, session, _ in batch.values():
                    link.heartbeat_failed(session, exc.message)
                continue
            except Exception:  # the streams end, as each would have alone; this task goes on
                log.exception("recording the heartbeats of %d site(s) failed", len(batch))
                for link, session, _ in batch.values():
                    link.heartbeat_failed(session, "store error (see the log)")
                continue
            for (link, session, seq), was_lost in zip(batch.values(), back, strict=True):
                link.heartbeat_recorded(session, seq, was_lost=was_lost)


class _SiteLink:
    """One site's stream, reconnecting with backoff until stopped."""

    def __init__(
        self,
        store: JobStore,
        site: types_pb2.Site,
        opts: DispatcherOptions,
        heartbeats: _Heartbeats,
    ) -> None:
        self.store = store
        self.site = site
        self.opts = opts
        self.heartbeats = heartbeats
        self.wake = asyncio.Event()
        """Set when the sender has something to do (see ``notify``, ``heartbeat_recorded``)."""
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.greeted = False
        """Whether the last stream got as far as the agent's hello."""
        self._stream = 0
        """Number of the current stream (heartbeats recorded for an older one are dropped)."""
        self._look = False
        """The store announced work or cancels: look at the outbox and cancels."""
        self._renew: int | None = None
        """The newest recorded heartbeat whose lease renewal is not sent yet."""
        self._renewed_at = 0.0
        """When the last renewal was written (monotonic): one comes at most every eighth of
        the lease, not after every heartbeat (see ``heartbeat_recorded``)."""
        self._failed: BaseException | None = None
        """Why the current stream must end (its heartbeat could not be recorded, or the site
        was declared lost while it was up)."""

    def notify(self) -> None:
        """New work or cancels for the site: have the sender look."""
        self._look = True
        self.wake.set()

    def heartbeat_recorded(self, session: int, seq: int, *, was_lost: bool) -> None:
        """Heartbeat ``seq`` of stream ``session`` is in the store: renew the agent's lease."""
        if session != self._stream or not self.connected:
            return
        if was_lost:
            # declared lost while this stream was up (heartbeats did not reach the store in
            # time): its attempts moved on, so no renewal; a new stream reconciles what the
            # agent holds
            self._failed = ConnectionError(
                f"site {self.site_id} was declared lost while connected; reconnecting"
            )
        elif (self._renew is None or seq > self._renew) and self._renewal_due():
            self._renew = seq
        else:
            return
        self.wake.set()

    def _renewal_due(self) -> bool:
        """Whether the agent's lease wants renewing: an eighth of it has passed since the last
        renewal (or the lease is the agent's own default, unknown here). What is left of the
        agent's lease never drops below the lease less an eighth of it and a heartbeat: with
        the defaults (52 s, 5 s) every other heartbeat is renewed and some 40 s are always
        left; a short lease (the fault harness's 2.7 s against 0.3 s heartbeats) is renewed
        every other heartbeat too, with some 2 s left. (A quarter would save a third of the
        renewals, a tenth of a thousand idle sites' cost, but then a 1.2 s partition of the
        fault harness stops attempts: what is left of a short lease is its margin for blips.)"""
        lease = self.opts.lease_seconds
        return lease <= 0 or time.monotonic() - self._renewed_at >= lease / 8

    def heartbeat_failed(self, session: int, why: str) -> None:
        """The heartbeat of stream ``session`` could not be recorded: end that stream (no
        renewal for it; the agent's lease runs out unless a new stream's heartbeat is)."""
        if session == self._stream and self._failed is None:
            self._failed = StoreUnavailableError(f"heartbeat not recorded: {why}")
            self.wake.set()

    @property
    def site_id(self) -> str:
        return self.site.id

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"site-link-{self.site_id}")

    async def stop(self) -> None:
        if self.task is not None:
            await cancel_and_wait(self.task)

    async def _run(self) -> None:
        # Reconnect quickly: a site silent for long is declared lost and its agent stops its
        # jobs, so the wait between tries stays well under the agent's lease, and starts over
        # after every stream that got as far as the hello.
        lease = self.opts.lease_seconds
        longest = min(_MAX_BACKOFF, lease / 4) if lease > 0 else _MAX_BACKOFF
        backoff = _MIN_BACKOFF
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.info(
                    "site %s: stream ended: %s %s", self.site_id, exc.code().name, exc.details()
                )
            except (ConnectionError, asyncio.InvalidStateError) as exc:
                log.info("site %s: stream ended: %s", self.site_id, exc)
            except StoreUnavailableError as exc:
                log.warning("site %s: %s", self.site_id, exc)
            except InvalidSpecError as exc:  # unreadable TLS files, a site id without a name
                log.error("site %s: cannot connect: %s", self.site_id, exc)
            except Exception:
                log.exception("site %s: stream failed", self.site_id)
            finally:
                if self.connected:
                    # connected (what connected_sites reports) stays set until the store has
                    # the disconnect too, so the two never disagree for a reader that waits
                    try:
                        with contextlib.suppress(StoreUnavailableError):
                            await self.store.record_disconnect(
                                self.site_id, dispatcher_id=self.opts.dispatcher_id
                            )
                    finally:
                        self.connected = False
            if self.greeted:
                backoff = _MIN_BACKOFF
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max(longest, _MIN_BACKOFF))

    def _channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 20_000),
        ]
        endpoint = self.site.endpoint
        if self.opts.tls is None:
            return grpc.aio.insecure_channel(endpoint, options=options)
        options += channel_options_for(site_server_name(self.site_id))
        return grpc.aio.secure_channel(endpoint, channel_credentials(self.opts.tls), options)

    def _check_hello(self, hello: agent_pb2.AgentHello) -> None:
        """Refuse an agent that is not the registered site; the registry is the truth."""
        if hello.site_id != self.site_id:
            raise ConnectionError(
                f"agent at {self.site.endpoint} is site {hello.site_id!r}, not {self.site_id!r}"
            )
        if hello.jurisdiction != self.site.jurisdiction:
            log.error(
                "site %s: refusing the agent at %s: it says jurisdiction %s but the registry "
                "says %s",
                self.site_id, self.site.endpoint, hello.jurisdiction, self.site.jurisdiction,
            )  # fmt: skip
            raise ConnectionError(
                f"agent at {self.site.endpoint} claims jurisdiction {hello.jurisdiction!r}; "
                f"site {self.site_id} is registered in {self.site.jurisdiction!r}"
            )

    async def _session(self) -> None:
        self.greeted = False
        self._stream += 1
        session = self._stream
        self._look, self._renew, self._failed = False, None, None
        async with self._channel() as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect()
            write_lock = asyncio.Lock()

            async def write(msg: agent_pb2.ControlMessage) -> None:
                async with write_lock:
                    await call.write(msg)

            await write(
                agent_pb2.ControlMessage(
                    hello=agent_pb2.ControlHello(
                        site_id=self.site_id,
                        dispatcher_id=self.opts.dispatcher_id,
                        heartbeat_interval_seconds=self.opts.heartbeat_interval_seconds,
                        lease_seconds=self.opts.lease_seconds,
                    )
                )
            )
            first = await call.read()
            if not isinstance(first, agent_pb2.AgentMessage) or not first.HasField("hello"):
                raise ConnectionError(f"site {self.site_id}: agent sent no hello")
            hello = first.hello
            self._check_hello(hello)
            self.greeted = True
            # Heard from it: record that first (a site back from LOST becomes usable, and the
            # lost-site check leaves it alone), then settle what it holds, then renew its lease.
            await self.store.record_heartbeat(self.site_id, dispatcher_id=self.opts.dispatcher_id)
            await self._reconcile(hello, write)
            self._renewed_at = time.monotonic()
            await write(
                agent_pb2.ControlMessage(
                    lease=agent_pb2.LeaseRenewal(heartbeat_seq=hello.heartbeat_seq)
                )
            )
            self.connected = True
            log.info("site %s: connected to %s", self.site_id, self.site.endpoint)
            reader = asyncio.create_task(self._read(call, write, session))
            sender = asyncio.create_task(self._send(write))
            try:
                done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raise what ended the session
            finally:
                for task in (reader, sender):
                    await cancel_and_wait(task)
                call.cancel()

    async def _reconcile(self, hello: agent_pb2.AgentHello, write: _Writer) -> None:
        """Tell the agent what to do with the attempts it holds (see reconcile.lua)."""
        held = [HeldAttempt(h.job_id, h.attempt, JobState(h.state)) for h in hello.held]
        result = await self.store.reconcile(self.site_id, held)
        if result.stop or result.requeued:
            log.warning(
                "site %s: reconciled: stopping %d stale attempt(s) %s; %d job(s) the agent "
                "does not hold were requeued %s",
                self.site_id, len(result.stop), _some(result.stop), len(result.requeued),
                _some(result.requeued),
            )  # fmt: skip

        def refs(items: Sequence[tuple[str, int]]) -> list[agent_pb2.AttemptRef]:
            return [agent_pb2.AttemptRef(job_id=j, attempt=a) for j, a in items]

        await write(
            agent_pb2.ControlMessage(
                reconcile=agent_pb2.Reconcile(
                    keep=refs(result.keep), stop=refs(result.stop), forget=refs(result.forget)
                )
            )
        )

    async def _send(self, write: _Writer) -> None:
        """Send what the site's stream carries from the control plane: lease renewals once
        heartbeats are recorded, and assignments and cancels whenever told to look (see
        ``notify``; also at once, the stream being new, and after a full batch)."""
        self._look = True  # a new stream: in-flight assignments and all cancels go again
        resend = True
        sent_cancels: set[tuple[str, int]] = set()
        while True:
            if self._failed is not None:
                raise self._failed
            seq, self._renew = self._renew, None
            if seq is not None:
                renewal = agent_pb2.LeaseRenewal(heartbeat_seq=seq)
                self._renewed_at = time.monotonic()
                await write(agent_pb2.ControlMessage(lease=renewal))
            if self._look:
                self._look = False
                if await self._look_at_outbox(write, resend, sent_cancels):
                    self._look = True  # a full batch: more may wait
                resend = False
            if self._look or self._renew is not None or self._failed is not None:
                continue
            self.wake.clear()
            await self.wake.wait()

    async def _look_at_outbox(
        self, write: _Writer, resend: bool, sent_cancels: set[tuple[str, int]]
    ) -> bool:
        """Send the outbox's assignments (and, with ``resend``, the in-flight ones again) and
        the cancels not sent on this stream yet; whether a full batch went."""
        work = await self.store.take_work(self.site_id, limit=_BATCH, resend=resend)
        batch, cancels = work.assignments, work.cancels
        if batch:
            crash_point("dispatcher.after_take")
            await write(agent_pb2.ControlMessage(dispatch=self._dispatch_batch(batch)))
            crash_point("dispatcher.after_send")
        new = [c for c in cancels if c not in sent_cancels]
        sent_cancels.intersection_update(cancels)
        if new:
            msg = agent_pb2.CancelBatch(
                cancels=[
                    agent_pb2.Cancel(
                        job_id=job_id,
                        attempt=attempt,
                        grace_seconds=self.opts.kill_grace_seconds,
                        reason="cancel requested",
                    )
                    for job_id, attempt in new
                ]
            )
            await write(agent_pb2.ControlMessage(cancel=msg))
            crash_point("dispatcher.after_cancel_sent")
            sent_cancels.update(new)
        return len(batch) >= _BATCH

    def _dispatch_batch(self, batch: Sequence[Assignment]) -> agent_pb2.DispatchBatch:
        """The message for a batch, with a ``dispatcher.dispatch`` span in each job's trace.

        One span per trace, not per job: the jobs of one ``SubmitJobs`` call share a trace,
        and one span in it lists those of them in this batch (``job.ids``; a job alone in its
        trace gets ``job.id`` and ``job.attempt``). Only where the trace could record it (see
        ``wants_span``); otherwise each assignment carries the job's own traceparent, so the
        agent's spans still join the job's trace.
        """
        out = agent_pb2.DispatchBatch()
        traced = recordable_traces(batch, lambda a: a.traceparent, active=tracing_active())
        parents: dict[str, str] = {}  # the job's traceparent -> the dispatch span's
        for tp, group in traced.items():
            attributes: dict[str, AttributeValue] = {"site.id": self.site_id}
            if len(group) == 1:
                attributes.update({"job.id": group[0].job_id, "job.attempt": group[0].attempt})
            else:
                attributes.update({"job.count": len(group), "job.ids": [a.job_id for a in group]})
            with start_span_from(tracer, "dispatcher.dispatch", tp, attributes=attributes) as span:
                parents[tp] = span_traceparent(span)
        for a in batch:
            item = out.assignments.add(
                job_id=a.job_id,
                attempt=a.attempt,
                traceparent=parents.get(a.traceparent, a.traceparent),
                gpu_type=a.gpu_type,
            )
            item.spec.ParseFromString(a.spec)
        return out

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall[agent_pb2.ControlMessage, agent_pb2.AgentMessage],
        write: _Writer,
        session: int,
    ) -> None:
        while True:
            msg = await call.read()
            if not isinstance(msg, agent_pb2.AgentMessage):
                raise ConnectionError(f"site {self.site_id}: agent closed the stream")
            kind = msg.WhichOneof("kind")
            if kind == "acks":
                # Only refusals go to the store. An accepted assignment stays in the site's
                # in-flight set until the agent reports it RUNNING (status.lua takes it out):
                # were the stream to break before that, it is sent again, and the agent, which
                # dedups on (job, attempt), keeps the one it has. Recording every acceptance
                # would cost a store call and a record read per job for nothing else.
                refused = [
                    Ack(a.job_id, a.attempt, False, a.reason)
                    for a in msg.acks.acks
                    if not a.accepted
                ]
                if refused:
                    codes = await self.store.record_acks(self.site_id, refused)
                    for ack, code in zip(refused, codes, strict=True):
                        log.warning(
                            "site %s refused %s/%d: %s (%s)",
                            self.site_id, ack.job_id, ack.attempt, ack.reason, code,
                        )  # fmt: skip
            elif kind == "status":
                updates = msg.status.updates
                reports = [
                    StatusReport(
                        job_id=u.job_id,
                        attempt=u.attempt,
                        state=JobState(u.state),
                        exit_code=u.exit_code if u.has_exit_code else None,
                        message=u.message,
                    )
                    for u in updates
                ]
                await self.store.apply_status(self.site_id, reports)
                crash_point("dispatcher.after_status_applied")
                seen = agent_pb2.StatusAck(seqs=[u.seq for u in updates])
                await write(agent_pb2.ControlMessage(status_ack=seen))
            elif kind == "heartbeat":
                # recorded with the other sites' soon; the sender then renews the lease
                self.heartbeats.add(self, session, msg.heartbeat.seq)


class Dispatcher:
    """Holds the streams of the sites this dispatcher owns."""

    def __init__(self, store: JobStore, options: DispatcherOptions | None = None) -> None:
        self.store = store
        self.opts = options or DispatcherOptions()
        self.links: dict[str, _SiteLink] = {}
        self._heartbeats = _Heartbeats(
            store,
            dispatcher_id=self.opts.dispatcher_id,
            window=self.opts.heartbeat_batch_seconds,
        )

    def connected_sites(self) -> list[str]:
        """Ids of the sites whose stream is up."""
        return sorted(s for s, link in self.links.items() if link.connected)

    async def refresh(self) -> None:
        """Start links for owned sites, restart ones whose endpoint changed, stop removed ones."""
        records = await self.store.site_records()
        owned = {
            r.site.id: r.site
            for r in records
            if owner_of(r.site.id, self.opts.count) == self.opts.index and r.site.endpoint
        }
        for site_id in list(self.links):
            link = self.links[site_id]
            if site_id not in owned or owned[site_id].endpoint != link.site.endpoint:
                await link.stop()
                del self.links[site_id]
        for site_id, site in owned.items():
            if site_id not in self.links:
                link = _SiteLink(self.store, site, self.opts, self._heartbeats)
                link.start()
                self.links[site_id] = link

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Keep the owned sites connected until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        listener = asyncio.create_task(self._listen(stop))
        sweeper = asyncio.create_task(self._sweep(stop))
        version: int | None = None  # of the registry last read
        full_at = 0.0
        try:
            while not stop.is_set():
                try:
                    # the version first: a change while the records are read shows next time
                    current = await self.store.sites_version()
                    if current != version or loop.time() >= full_at:
                        await self.refresh()
                        version, full_at = current, loop.time() + self.opts.full_refresh_seconds
                except StoreUnavailableError as exc:
                    log.warning("dispatcher %s: %s", self.opts.dispatcher_id, exc)
                except Exception:
                    log.exception("dispatcher %s: refresh failed", self.opts.dispatcher_id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.opts.refresh_seconds)
        finally:
            await cancel_and_wait(sweeper)
            await cancel_and_wait(listener)
            for link in self.links.values():
                await link.stop()
            self.links.clear()
            await self._heartbeats.close()

    async def _sweep(self, stop: asyncio.Event) -> None:
        """Every ``sweep_seconds``, have the senders of the connected sites that have work
        waiting look (a safety net for announcements that got lost)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.opts.sweep_seconds)
            if stop.is_set():
                return
            try:
                await self._wake_waiting()
            except StoreUnavailableError as exc:
                log.warning("dispatcher %s: %s", self.opts.dispatcher_id, exc)
            except Exception:
                log.exception("dispatcher %s: sweep failed", self.opts.dispatcher_id)

    async def _wake_waiting(self) -> None:
        """Have the senders of the connected sites that have work waiting look (one read)."""
        connected = [site_id for site_id, link in self.links.items() if link.connected]
        for site_id in await self.store.sites_with_work(connected):
            link = self.links.get(site_id)
            if link is not None:
                link.notify()

    async def _listen(self, stop: asyncio.Event) -> None:
        """Wake a site's sender when the store announces new work or cancels for it, and, once
        subscribed, those of the sites with work waiting (what was announced before the
        subscription is not delivered)."""
        while not stop.is_set():
            pubsub = self.store.client.pubsub()
            try:
                await pubsub.subscribe(self.store.keys.notify_channel)
                while not stop.is_set():
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        await self._wake_waiting()
                        continue
                    if msg["type"] != "message":
                        continue
                    data = msg["data"]
                    site_id = data.decode() if isinstance(data, bytes) else str(data)
                    target = self.links.get(site_id)
                    if target is not None:
                        target.notify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - resubscribe after any connection trouble
                log.debug("dispatcher notify channel: %s", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
