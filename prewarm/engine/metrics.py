"""Prometheus metrics through ``ray.util.metrics``: they appear on Ray's metrics endpoint and dashboard.

Recorded per batch: counters are added in one call per POP and outcome, and the latency histogram gets a
sample of the batch's fetches (``latency_sample``), not every one.
"""

from __future__ import annotations

from collections import Counter as Tally
from functools import cache
from typing import TYPE_CHECKING

from ray.util.metrics import Counter, Histogram

if TYPE_CHECKING:  # only a type here: importing progress at run time pulls numpy into every fetcher
    from prewarm.core.results import ResultRow

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
LATENCY_SAMPLES_PER_BATCH = 32
"""At most this many latency observations per batch: every fetch of a smaller batch, else evenly spaced ones.

Ray's metrics agent turns each histogram bucket count back into one Python ``record`` call per observation, so
one observation per fetch costs the agent a large share of a fetch's own CPU, on the same cores
(``bench/bench_fetcher.py`` prints it; figures in BENCHMARKS.md). The buckets, and so the quantiles, stay
representative; ``_count`` counts observations, not fetches (``prewarm_fetches`` counts those)."""


@cache
def _metrics() -> tuple[Counter, Counter, Histogram, Counter]:
    """Created lazily, in the process that records (metrics objects are per process)."""
    fetches = Counter("prewarm_fetches", "Fetches through a POP by outcome (ok or the error class).",
                      tag_keys=("pop", "outcome"))
    received = Counter("prewarm_bytes", "Bytes received through a POP.", tag_keys=("pop",))
    latency = Histogram("prewarm_fetch_latency_ms", "Fetch latency through a POP, retries included, in ms.",
                        boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("pop",))
    jobs = Counter("prewarm_jobs", "Jobs that ended, by final status.", tag_keys=("status",))
    return fetches, received, latency, jobs


def record_batch(pop: str, rows: list[ResultRow]) -> None:
    fetches, received, latency, _ = _metrics()
    outcomes = Tally(row[7] or "ok" for row in rows)
    for outcome, n in outcomes.items():
        fetches.inc(n, tags={"pop": pop, "outcome": outcome})
    total = sum(row[4] for row in rows)
    if total:
        received.inc(total, tags={"pop": pop})
    tags = {"pop": pop}
    for elapsed_ms in latency_sample(rows):
        latency.observe(elapsed_ms, tags=tags)


def latency_sample(rows: list[ResultRow], most: int = LATENCY_SAMPLES_PER_BATCH) -> list[float]:
    """The latencies of at most ``most`` of ``rows``, spaced evenly over the batch (all of a smaller one)."""
    step = -(-len(rows) // most)  # ceiling division: len(rows[::step]) <= most
    return [row[6] for row in rows[::step]] if rows else []


def record_job_end(status: str) -> None:
    _metrics()[3].inc(1, tags={"status": status})
