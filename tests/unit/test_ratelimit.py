"""Token-bucket rate limiting: the burst, the refill, the wait it tells callers, bounded keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import InvalidSpecError
from orchestrator.security.ratelimit import RateLimiter


def test_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate_per_second=2.0, burst=3)
    assert [limiter.acquire("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", now=100.0) == pytest.approx(0.5)
    assert limiter.acquire("a", now=100.25) == pytest.approx(0.25)  # a refused call takes nothing
    assert limiter.acquire("a", now=100.5) == 0.0
    assert limiter.acquire("a", now=100.5) == pytest.approx(0.5)
    assert limiter.acquire("a", now=200.0) == 0.0  # refills to the burst, not beyond
    assert [limiter.acquire("a", now=200.0) for _ in range(3)][-1] > 0


def test_keys_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(rate_per_second=1.0, burst=1)
    assert limiter.acquire("tenant:acme/alice", now=0.0) == 0.0
    assert limiter.acquire("tenant:acme/alice", now=0.0) > 0
    assert limiter.acquire("partner:jv/ops", now=0.0) == 0.0


def test_a_clock_going_back_refills_nothing() -> None:
    limiter = RateLimiter(rate_per_second=1.0, burst=1)
    assert limiter.acquire("a", now=50.0) == 0.0
    assert limiter.acquire("a", now=10.0) == pytest.approx(1.0)
    assert limiter.acquire("a", now=50.5) == pytest.approx(0.5)
    assert limiter.acquire("a", now=51.0) == 0.0


def test_memory_is_bounded_by_evicting_the_least_recently_used() -> None:
    limiter = RateLimiter(rate_per_second=1.0, burst=1, max_keys=100)
    limiter.acquire("keep", now=0.0)
    for i in range(10_000):
        limiter.acquire(f"k{i}", now=0.0)
        if i % 50 == 0:
            limiter.acquire("keep", now=0.0)  # recently used: stays, still empty
    assert len(limiter) == 100
    assert limiter.acquire("keep", now=0.0) > 0
    assert limiter.acquire("k0", now=0.0) == 0.0  # forgotten: starts full


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys", "field"),
    [
        (0.0, 1, 1, "rate_per_second"),
        (-1.0, 1, 1, "rate_per_second"),
        (float("nan"), 1, 1, "rate_per_second"),
        (1.0, 0, 1, "burst"),
        (1.0, 1, 0, "max_keys"),
    ],
)
def test_bad_settings(rate: float, burst: int, max_keys: int, field: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        RateLimiter(rate, burst, max_keys=max_keys)
    assert err.value.field == field


def test_the_default_clock_is_used_without_now() -> None:
    limiter = RateLimiter(rate_per_second=0.001, burst=2)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 900


rates = st.floats(min_value=0.1, max_value=1000.0)
bursts = st.integers(min_value=1, max_value=50)
gaps = st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=300)


@settings(max_examples=200)
@given(rate=rates, burst=bursts, gaps=gaps)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limiter = RateLimiter(rate, burst)
    times, t = [], 1000.0
    for gap in gaps:
        t += gap
        times.append(t)
    granted = [now for now in times if limiter.acquire("k", now=now) == 0.0]
    for i, start in enumerate(granted):  # over every interval [start, end]
        for j in range(i, len(granted)):
            count = j - i + 1
            assert count <= burst + rate * (granted[j] - start) + 1e-6


@settings(max_examples=200)
@given(rate=rates, burst=bursts, gaps=gaps)
def test_waiting_as_told_is_enough(rate: float, burst: int, gaps: list[float]) -> None:
    limiter = RateLimiter(rate, burst)
    t = 1000.0
    for gap in gaps:
        t += gap
        wait = limiter.acquire("k", now=t)
        assert wait >= 0.0
        if wait:
            assert wait <= 1.0 / rate + 1e-9
            assert limiter.acquire("k", now=t + wait) == 0.0
            t += wait


@settings(max_examples=100)
@given(rate=rates, burst=bursts, n=st.integers(1, 200))
def test_an_idle_key_grants_its_full_burst(rate: float, burst: int, n: int) -> None:
    limiter = RateLimiter(rate, burst)
    grants = sum(limiter.acquire("k", now=5.0) == 0.0 for _ in range(n))
    assert grants == min(n, burst)
