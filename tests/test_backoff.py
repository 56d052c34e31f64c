"""Backoff delays: capped, exponential, fully jittered for links, bounded for device schedules."""

from __future__ import annotations

import random

from edgeagent.backoff import Backoff


def test_full_jitter_spreads_even_the_first_retry() -> None:
    firsts = [Backoff(1.0, 60.0, rng=random.Random(seed)).next_delay() for seed in range(200)]
    assert min(firsts) < 0.1 and max(firsts) > 0.9
    assert all(0.0 <= d <= 1.0 for d in firsts)


def test_ceiling_doubles_then_caps() -> None:
    b = Backoff(1.0, 10.0, rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(min(10.0, 1.0 * 2**b.failures))
        assert b.next_delay() <= ceilings[-1]
    assert ceilings == [1, 2, 4, 8, 10, 10, 10, 10]


def test_bounded_form_never_goes_below_the_minimum_and_reset_starts_over() -> None:
    b = Backoff(5.0, 30.0, full_jitter=False, rng=random.Random(2))
    delays = [b.next_delay() for _ in range(20)]
    assert all(5.0 <= d <= 30.0 for d in delays)
    b.reset()
    assert b.next_delay() == 5.0
