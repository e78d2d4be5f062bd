"""``latency_sample``: the fetches of a batch whose latency the histogram observes (all of a small batch, an
evenly spaced few of a large one), so that Ray's metrics agent does not replay one observation per fetch."""

from __future__ import annotations

from itertools import pairwise

import pytest

from prewarm.core.results import ResultRow, result_row
from prewarm.engine.metrics import LATENCY_SAMPLES_PER_BATCH, latency_sample


def rows_with_latencies(n: int) -> list[ResultRow]:
    return [result_row(i, 200, elapsed_ms=float(i)) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 7, LATENCY_SAMPLES_PER_BATCH])
def test_a_batch_within_the_cap_is_observed_whole(n: int) -> None:
    assert latency_sample(rows_with_latencies(n)) == [float(i) for i in range(n)]


def test_a_full_batch_is_sampled_evenly_from_its_first_fetch_on() -> None:
    assert latency_sample(rows_with_latencies(1024)) == [float(i) for i in range(0, 1024, 32)]


@pytest.mark.parametrize("n", [LATENCY_SAMPLES_PER_BATCH + 1, 64, 65, 1000, 1025, 5000])
def test_a_large_batch_gives_at_most_the_cap_and_at_least_half_of_it(n: int) -> None:
    sample = latency_sample(rows_with_latencies(n))
    assert LATENCY_SAMPLES_PER_BATCH // 2 < len(sample) <= LATENCY_SAMPLES_PER_BATCH
    gaps = {b - a for a, b in pairwise(sample)}
    assert len(gaps) == 1  # evenly spaced
    assert sample[-1] >= n - gaps.pop()  # reaching the end of the batch
