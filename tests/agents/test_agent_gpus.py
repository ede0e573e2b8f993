"""The simulated GPU inventory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.gpus import GpuAllocation, GpuInventory, InsufficientGpusError


def test_large_pools_allocate_lazily_and_reuse_lowest_slots() -> None:
    inv = GpuInventory({"H100": 60_000, "GB200": 40_000})
    a = inv.allocate("H100", 3)
    b = inv.allocate("H100", 2)
    assert a.slots == (0, 1, 2)
    assert b.slots == (3, 4)
    assert a.cuda_visible_devices == "0,1,2"
    assert inv.free_counts() == {"H100": 59_995, "GB200": 40_000}
    inv.release(a)
    c = inv.allocate("H100", 4)
    assert c.slots == (0, 1, 2, 5)
    everything = inv.allocate("GB200", 40_000)
    assert len(everything.slots) == 40_000
    with pytest.raises(InsufficientGpusError, match="need 1 GB200 GPUs, 0 free"):
        inv.allocate("GB200", 1)
    with pytest.raises(ValueError, match="not allocated"):
        inv.release(GpuAllocation("H100", (59_999,)))  # never handed out


def test_choose_type_prefers_the_job_then_the_scheduler_then_the_first_that_fits() -> None:
    inv = GpuInventory({"H100": 4, "GB200": 2})
    assert inv.choose_type(0) == ""
    assert inv.choose_type(2, required="GB200", suggested="H100") == "GB200"
    assert inv.choose_type(2, suggested="GB200") == "GB200"
    assert inv.choose_type(2) == "H100"
    inv.allocate("H100", 3)
    assert inv.choose_type(2) == "GB200"
    with pytest.raises(InsufficientGpusError, match="need 3 GPUs of one type"):
        inv.choose_type(3)
    with pytest.raises(InsufficientGpusError, match="need 1 A100 GPUs, 0 free"):
        inv.choose_type(1, required="A100")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=5)), max_size=40))
def test_allocations_never_overlap_and_counts_add_up(ops: list[tuple[bool, int]]) -> None:
    size = 12
    inv = GpuInventory({"H100": size})
    held: list[tuple[int, ...]] = []
    for take, n in ops:
        if take:
            if inv.free("H100") >= n:
                held.append(inv.allocate("H100", n).slots)
            else:
                with pytest.raises(InsufficientGpusError):
                    inv.allocate("H100", n)
        elif held:
            slots = held.pop(n % len(held))
            inv.release(GpuAllocation("H100", slots))
        in_use = [slot for slots in held for slot in slots]
        assert len(in_use) == len(set(in_use))
        assert all(0 <= slot < size for slot in in_use)
        assert inv.free("H100") == size - len(in_use)
