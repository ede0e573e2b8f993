"""Fair share over time: many cycles of ``place`` on one site with tenants of unlimited demand.

Dominant resource fairness decides who goes next each cycle; these simulations check that it
converges to the weighted share, even when one tenant's jobs were all submitted first (plain
submit order would hand that tenant the whole site).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import pytest

from orchestrator.scheduler.model import JobRequest, SiteView, Snapshot, TenantView
from orchestrator.scheduler.placement import place

GPUS = 64


@dataclass
class Running:
    tenant: str
    gpus: int
    ends: int


def simulate(weights: dict[str, float], *, cycles: int = 400, seed: int = 1) -> dict[str, float]:
    """Each tenant's GPU share of the site, averaged over the second half of the run."""
    rng = random.Random(seed)
    names = sorted(weights)
    backlog: dict[str, deque[JobRequest]] = {t: deque() for t in names}
    made = dict.fromkeys(names, 0)
    running: list[Running] = []
    totals = dict.fromkeys(names, 0.0)
    for cycle in range(cycles):
        running = [r for r in running if r.ends > cycle]
        for rank, t in enumerate(names):
            while len(backlog[t]) < 20:  # unlimited demand
                gpus = rng.choice([1, 2, 4, 8])
                made[t] += 1
                backlog[t].append(
                    JobRequest(
                        job_id=f"{t}-{made[t]:05d}",
                        attempt=1,
                        tenant=t,
                        # the first tenant's work was all submitted before anyone else's
                        submit_order=rank * 1e9 + made[t],
                        gpus=gpus,
                        gpu_type="H100",
                        cpus=gpus,
                        memory_mb=1024,
                    )
                )
        used = {t: sum(r.gpus for r in running if r.tenant == t) for t in names}
        site = SiteView(
            site_id="narvik",
            jurisdiction="NO",
            accepting=True,
            total_gpus={"H100": GPUS},
            total_cpus=4 * GPUS,
            total_memory_mb=1 << 30,
            used_gpus={"H100": sum(used.values())},
            used_cpus=sum(used.values()),
            used_memory_mb=1024 * len(running),
        )
        tenants = {
            t: TenantView(t, weight=weights[t], used_gpus=used[t], used_cpus=used[t]) for t in names
        }
        window = [j for t in names for j in backlog[t]]
        result = place(Snapshot(window, [site], tenants))
        placed = {d.job_id for d in result.decisions}
        for t in names:
            for j in [j for j in backlog[t] if j.job_id in placed]:
                backlog[t].remove(j)
                running.append(Running(t, j.gpus, cycle + rng.randint(1, 10)))
        if cycle >= cycles // 2:
            for t in names:
                totals[t] += sum(r.gpus for r in running if r.tenant == t) / GPUS
    half = cycles - cycles // 2
    return {t: totals[t] / half for t in names}


@pytest.mark.parametrize("seed", [1, 2])
def test_equal_weights_converge_to_equal_shares(seed: int) -> None:
    shares = simulate({"a": 1.0, "b": 1.0}, seed=seed)
    assert sum(shares.values()) > 0.9  # the site stays busy
    assert shares["a"] / sum(shares.values()) == pytest.approx(0.5, abs=0.05)


def test_weight_two_gets_about_twice_the_share() -> None:
    shares = simulate({"a": 1.0, "b": 2.0})
    assert shares["b"] / shares["a"] == pytest.approx(2.0, rel=0.1)


def test_three_tenants_split_evenly() -> None:
    shares = simulate({"a": 1.0, "b": 1.0, "c": 1.0}, cycles=300)
    for t in "abc":
        assert shares[t] / sum(shares.values()) == pytest.approx(1 / 3, abs=0.04)
