"""The per-destination byte-rate cap."""

from __future__ import annotations

import time

import pytest

from edgeagent.sync.pacing import TokenBucket


def test_within_burst_goes_at_once_then_waits_for_refill() -> None:
    bucket = TokenBucket(1000, burst_bytes=1000)
    assert bucket.delay_for(600) == 0.0
    bucket.spend(600)
    # 400 left; 1000 more bytes need 600 more tokens at 1000 B/s.
    assert bucket.delay_for(1000) == pytest.approx(0.6, abs=0.05)


def test_a_batch_larger_than_the_burst_is_let_through_and_paid_back() -> None:
    bucket = TokenBucket(1000, burst_bytes=1000)
    assert bucket.delay_for(5000) == 0.0  # never stuck behind its own size
    bucket.spend(5000)
    assert bucket.delay_for(100) == pytest.approx(4.1, abs=0.05)  # the debt is paid first


def test_an_idle_bucket_holds_no_more_than_its_burst() -> None:
    """After a quiet night, a catch-up gets one burst at once, then the rate: not the night's worth of tokens."""
    bucket = TokenBucket(1000, burst_bytes=100)
    time.sleep(0.3)  # idle long enough to earn 300 bytes, were the bucket not capped
    assert bucket.delay_for(100) == 0.0
    bucket.spend(100)
    assert bucket.delay_for(100) >= 0.09
