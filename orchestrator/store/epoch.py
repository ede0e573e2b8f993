"""Redis rollback detection: an epoch counter that only grows while Redis keeps its data.

Redis is the one source of truth. If it comes back with older state than the control plane
last saw (restarted from an older AOF/RDB file, a replica without the latest writes promoted,
its data flushed or replaced), acknowledged submits and state changes may be gone, and nothing
in Redis says so. This module makes it visible. Its key is ``{p}epoch`` (see ``keys.py``).

Every control-plane process keeps one :class:`EpochGuard`. ``advance()`` INCRs the counter
(the scheduler calls it once per cycle: one command) and ``check()`` reads it (after the store
reconnects). Each guard remembers the highest value it has seen itself. While Redis keeps its
data the counter only grows, whoever INCRs it, so a value below that mark means Redis went back
in time: an INCR that answers no more than the mark, a GET that answers less, or no key at all.

On a rollback the guard logs it at CRITICAL, records it in the global event stream, and takes
the value it found as its new mark, so that it alarms once per incident, not on every call. A
new guard starts with a mark of 0 (its first read is its baseline), so restarting the control
plane alone never alarms.

The record is an entry of ``{p}events`` with the fields of ``emit`` in ``lua/_lib.lua``, so a
reader of the stream parses it like a job event: ``job`` "" (no job), ``state`` "0"
(JOB_STATE_UNSPECIFIED; not "", which ``JobStore`` would fail to parse as an integer),
``attempt`` "0", ``site`` "", ``msg`` the message, ``t`` the time in seconds; plus
``epoch_seen`` and ``epoch_now``.

Limits: a guard only catches a drop below what it saw itself. A process that neither advances
nor checks while others push the counter back above its mark after a rollback misses that
incident; the scheduler, which advances every cycle and so holds the highest mark, catches it at
its next cycle. A rollback before a guard's first read is its baseline. Each process that
notices an incident records it (one entry per process). The entry lives in Redis, so another
rollback can take it away; the CRITICAL log line is the lasting trace.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from orchestrator.errors import StoreUnavailableError
from orchestrator.store.keys import Keys
from orchestrator.store.store import EVENTS_MAXLEN, JobStore, unavailable_as_error

__all__ = ["EpochGuard", "Rollback", "epoch_key"]

log = logging.getLogger(__name__)


def epoch_key(prefix: str) -> str:
    """The epoch counter's key under ``prefix``."""
    return Keys(prefix).epoch


@dataclass(frozen=True, slots=True)
class Rollback:
    """Redis went back in time: it holds an older epoch than this process had seen."""

    key: str
    """The epoch key."""
    seen: int
    """The highest epoch this process had seen."""
    now: int
    """The epoch Redis holds now; 0 when the key is missing (INCR never makes 0)."""
    observer: str
    """Which process noticed (the guard's ``name``)."""
    at: float
    """When it was noticed (seconds since the epoch)."""
    message: str
    """What it means and what the operator should check."""

    @property
    def key_missing(self) -> bool:
        """Whether Redis has no epoch at all (its data was flushed or replaced)."""
        return self.now == 0


def _message(*, key: str, seen: int, now: int, observer: str) -> str:
    found = f"epoch {now}" if now else "no epoch key at all"
    return (
        f"Redis went back in time: {observer} had seen epoch {seen} at {key!r}, but Redis now "
        f"holds {found}. Redis has lost writes it had acknowledged: it was restarted from an "
        "older AOF/RDB file, a replica without the latest writes was promoted, or its data was "
        "flushed or replaced. Jobs submitted and state changes made since then may be gone, "
        "and sites may run attempts Redis no longer knows. Check which AOF/RDB file Redis "
        "loaded and whether a backup was restored (its log, INFO persistence), whether a "
        "failover happened (Sentinel or operator, INFO replication), and that it runs with "
        "appendonly yes and appendfsync always; then compare what the sites run and what "
        "clients were told with what Redis holds (sgctl sites, sgctl jobs). "
        f"This process now takes epoch {now} as its baseline."
    )


class EpochGuard:
    """One process's view of the epoch: advances it, checks it, reports a rollback once.

    ``client`` is the store's Redis client and ``prefix`` its key prefix (see
    :meth:`for_store`); ``name`` says which process this is in the messages (default: its pid).
    Both calls raise ``StoreUnavailableError`` when Redis cannot be reached.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "sg:", name: str = "") -> None:
        self._client = client
        self._events_key = Keys(prefix).events
        self.key = epoch_key(prefix)
        self.name = name or f"pid {os.getpid()}"
        self._seen = 0
        self._incidents = 0
        self._last: Rollback | None = None

    @classmethod
    def for_store(cls, store: JobStore, *, name: str = "") -> EpochGuard:
        """A guard on the store's client and key prefix."""
        return cls(store.client, prefix=store.prefix, name=name)

    @property
    def seen(self) -> int:
        """The highest epoch seen since the last incident (0 before the first read)."""
        return self._seen

    @property
    def last_rollback(self) -> Rollback | None:
        """The last incident this guard noticed (by ``advance`` or ``check``), if any."""
        return self._last

    async def advance(self) -> int:
        """INCR the epoch and return it; an answer not above the mark is a rollback (reported,
        see :attr:`last_rollback`)."""
        mark = self.mark()
        with unavailable_as_error():
            value = int(await self._client.incr(self.key))
        return await self.advanced(value, mark)

    def mark(self) -> tuple[int, int]:
        """What an epoch INCR'd elsewhere (``advanced``) is compared with: take it before that
        command goes out, as a concurrent call of this guard may raise it before the answer is
        read."""
        return self._seen, self._incidents

    async def advanced(self, value: int, mark: tuple[int, int]) -> int:
        """Take ``value``, the answer of an INCR of :attr:`key` made by another call (a script
        that reads more at once), as ``advance`` takes its own; ``mark`` is ``mark()`` from
        before it went out. Returns ``value``."""
        floor, incidents = mark
        if value <= floor:
            await self._rolled_back(floor, value, incidents)
        else:
            self._seen = max(self._seen, value)
        return value

    async def check(self) -> Rollback | None:
        """Read the epoch: a value below the mark, or no key when one was seen, is a rollback,
        returned (and logged and recorded) once; later calls compare with the new value."""
        floor, incidents = self._seen, self._incidents
        with unavailable_as_error():
            raw = await self._client.get(self.key)
        value = int(raw) if raw is not None else 0
        if value < floor:
            return await self._rolled_back(floor, value, incidents)
        self._seen = max(self._seen, value)
        return None

    async def _rolled_back(self, floor: int, value: int, incidents: int) -> Rollback | None:
        if incidents != self._incidents:
            # A concurrent call of this guard already reported this incident and lowered the
            # mark; this answer is one more value after it.
            self._seen = max(self._seen, value)
            return None
        self._incidents += 1
        self._seen = value
        rollback = Rollback(
            key=self.key,
            seen=floor,
            now=value,
            observer=self.name,
            at=time.time(),
            message=_message(key=self.key, seen=floor, now=value, observer=self.name),
        )
        self._last = rollback
        log.critical("%s", rollback.message)
        await self._record(rollback)
        return rollback

    async def _record(self, rollback: Rollback) -> None:
        # the fields of emit() in lua/_lib.lua, then the two epochs
        fields: dict[FieldT, EncodableT] = {
            "job": "",
            "state": "0",
            "attempt": "0",
            "site": "",
            "msg": rollback.message,
            "t": f"{rollback.at:.6f}",
            "epoch_seen": str(rollback.seen),
            "epoch_now": str(rollback.now),
        }
        try:
            with unavailable_as_error():
                await self._client.xadd(
                    self._events_key,
                    fields,
                    maxlen=EVENTS_MAXLEN,
                    approximate=True,
                )
        except StoreUnavailableError as exc:
            log.error("could not record the Redis rollback in %s: %s", self._events_key, exc)
