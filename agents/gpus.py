"""Simulated GPU inventory: which GPU slots of which type each running attempt holds.

A site can have 100,000 GPUs of a type, so slots are handed out lazily: each pool keeps a
high-water mark (every index below it has been handed out at least once) and a min-heap of
returned indices, which are reused lowest first. Memory is proportional to the GPUs in use,
never to the size of the site.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orchestrator.errors import OrchestratorError

__all__ = ["GpuAllocation", "GpuInventory", "InsufficientGpusError"]


class InsufficientGpusError(OrchestratorError):
    """Not enough free GPUs of the wanted type (or no such type at the site)."""

    def __init__(self, gpu_type: str, wanted: int, free: int) -> None:
        if gpu_type:
            detail = f"need {wanted} {gpu_type} GPUs, {free} free"
        else:
            detail = f"need {wanted} GPUs of one type, no type has that many free"
        super().__init__(detail)
        self.gpu_type = gpu_type
        self.wanted = wanted
        self.free = free


@dataclass(frozen=True)
class GpuAllocation:
    """GPU slots held by one attempt."""

    gpu_type: str
    """GPU type; empty for an attempt without GPUs."""
    slots: tuple[int, ...]
    """Slot indices within the type's pool, ascending."""

    @property
    def cuda_visible_devices(self) -> str:
        """The slots as ``CUDA_VISIBLE_DEVICES`` (``"0,1,2"``; empty for none)."""
        return ",".join(str(slot) for slot in self.slots)


_NO_GPUS = GpuAllocation("", ())


class _Pool:
    __slots__ = ("allocated", "count", "high_water", "returned")

    def __init__(self, count: int) -> None:
        self.count = count
        self.high_water = 0
        self.returned: list[int] = []  # min-heap
        self.allocated: set[int] = set()

    @property
    def free(self) -> int:
        return self.count - len(self.allocated)

    def take(self, n: int) -> tuple[int, ...]:
        slots: list[int] = []
        while len(slots) < n and self.returned:
            slots.append(heapq.heappop(self.returned))
        fresh = n - len(slots)
        slots.extend(range(self.high_water, self.high_water + fresh))
        self.high_water += fresh
        self.allocated.update(slots)
        return tuple(sorted(slots))

    def claim(self, slots: Iterable[int]) -> None:
        slots = list(slots)
        bad = [slot for slot in slots if not 0 <= slot < self.count or slot in self.allocated]
        if bad or len(set(slots)) != len(slots):
            raise ValueError(f"GPU slots {bad or slots} cannot be claimed")
        for slot in sorted(slots):
            if slot >= self.high_water:
                for free in range(self.high_water, slot):
                    heapq.heappush(self.returned, free)
                self.high_water = slot + 1
            else:  # below the high-water mark and not allocated: it is among the returned
                self.returned.remove(slot)
                heapq.heapify(self.returned)
            self.allocated.add(slot)

    def give_back(self, slots: Iterable[int]) -> None:
        slots = list(slots)
        missing = [slot for slot in slots if slot not in self.allocated]
        if missing or len(set(slots)) != len(slots):
            raise ValueError(f"GPU slots {missing or slots} are not allocated")
        for slot in slots:
            self.allocated.remove(slot)
            heapq.heappush(self.returned, slot)


class GpuInventory:
    """Free and allocated GPU slots by type, for one site."""

    def __init__(self, pools: Mapping[str, int]) -> None:
        """``pools`` maps GPU type to count, in the site's order (which breaks ties)."""
        self._pools = {gpu_type: _Pool(count) for gpu_type, count in pools.items()}

    @property
    def types(self) -> tuple[str, ...]:
        """GPU types of the site, in the site's order."""
        return tuple(self._pools)

    def free(self, gpu_type: str) -> int:
        """Free GPUs of ``gpu_type`` (0 for a type the site does not have)."""
        pool = self._pools.get(gpu_type)
        return pool.free if pool else 0

    def free_counts(self) -> dict[str, int]:
        """Free GPUs by type, in the site's order."""
        return {gpu_type: pool.free for gpu_type, pool in self._pools.items()}

    def choose_type(self, count: int, *, required: str = "", suggested: str = "") -> str:
        """The GPU type an attempt needing ``count`` GPUs should use.

        ``required`` (the job's own ``gpu_type``) wins, then ``suggested`` (the scheduler's choice
        in the assignment), then the first type with ``count`` free. Returns "" when ``count`` is
        0. Raises ``InsufficientGpusError`` when the chosen type lacks ``count`` free GPUs.
        """
        if count <= 0:
            return ""
        gpu_type = required or suggested
        if gpu_type:
            if self.free(gpu_type) < count:
                raise InsufficientGpusError(gpu_type, count, self.free(gpu_type))
            return gpu_type
        for name, pool in self._pools.items():
            if pool.free >= count:
                return name
        raise InsufficientGpusError(
            "", count, max((p.free for p in self._pools.values()), default=0)
        )

    def allocate(self, gpu_type: str, count: int) -> GpuAllocation:
        """Take ``count`` slots of ``gpu_type``; raises ``InsufficientGpusError`` if short."""
        if count <= 0:
            return _NO_GPUS
        pool = self._pools.get(gpu_type)
        if pool is None or pool.free < count:
            raise InsufficientGpusError(gpu_type, count, pool.free if pool else 0)
        return GpuAllocation(gpu_type, pool.take(count))

    def claim(self, allocation: GpuAllocation) -> None:
        """Take exactly ``allocation``'s slots (an attempt re-adopted after a restart keeps the
        GPUs it runs on). ``ValueError`` if one is out of range or already taken."""
        if not allocation.slots:
            return
        pool = self._pools.get(allocation.gpu_type)
        if pool is None:
            raise ValueError(f"unknown GPU type {allocation.gpu_type!r}")
        pool.claim(allocation.slots)

    def release(self, allocation: GpuAllocation) -> None:
        """Return an allocation's slots. Releasing slots that are not allocated is an error."""
        if not allocation.slots:
            return
        pool = self._pools.get(allocation.gpu_type)
        if pool is None:
            raise ValueError(f"unknown GPU type {allocation.gpu_type!r}")
        pool.give_back(allocation.slots)
