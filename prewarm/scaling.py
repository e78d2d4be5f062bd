"""Asking the Ray autoscaler for fetcher nodes, and counting the nodes that are up.

Fetcher nodes are the node type that carries the ``prewarm_fetcher`` custom resource (one unit per node,
see cluster.yaml), so a request for N one-unit bundles of it can only be met by N distinct fetcher nodes:
the autoscaler adds nodes of that type until N exist, keeps them while the request stands even when idle,
and removes idle ones after ``idle_timeout_minutes`` once the request drops.
"""

from __future__ import annotations

from typing import Any

import ray

from prewarm.cluster import FETCHER_RESOURCE


def combined_ask(desired: int, running_jobs: dict[str, int]) -> int:
    """Fetcher nodes the cluster should have: the operator's DesiredCapacity, or more while jobs run.

    ``running_jobs`` maps a running request id to its ``instance_count``. The maximum, not the sum: a job
    runs its fetchers on up to ``instance_count`` distinct nodes and concurrent jobs share nodes, so the
    largest job bounds the nodes any of them can use; summing would over-provision for many small jobs.
    Negative inputs count as 0.
    """
    return max(0, desired, *running_jobs.values())


def request_fetcher_nodes(n: int) -> None:
    """Replace the cluster's standing autoscaler request with ``n`` fetcher nodes; ``n = 0`` clears it.

    Each call overrides the previous one (``request_resources`` is not additive), which is why callers pass
    ``combined_ask(...)`` rather than deltas. Without an autoscaler (a local cluster) the request is only
    recorded. Needs ``ray.init`` to have been called.
    """
    if n < 0:
        raise ValueError(f"fetcher node count must be >= 0, got {n}")
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{FETCHER_RESOURCE: 1} for _ in range(n)])


def _alive_nodes() -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


def fetcher_node_count() -> int:
    """Alive nodes that carry the fetcher resource (total, not available: busy nodes still count)."""
    return sum(1 for node in _alive_nodes() if node.get("Resources", {}).get(FETCHER_RESOURCE, 0) > 0)


def alive_node_count() -> int:
    """Alive nodes of any type, the head included."""
    return len(_alive_nodes())
