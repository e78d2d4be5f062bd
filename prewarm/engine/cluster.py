"""Placement: which nodes run a request's fetchers, and how many fetchers each node gets."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import ray

FETCHER_RESOURCE = "prewarm_fetcher"
"""Custom resource that marks fetcher nodes in cluster.yaml; when no node has it, every node is used."""

ON_HEAD = {"node:__internal_head__": 0.001}
"""Resources that pin an actor to the head node: the API and the coordinators stay there, off the fetcher
nodes the autoscaler adds and removes."""


@dataclass(frozen=True)
class NodeSlot:
    node_id: str
    fetchers: int


def choose_nodes(nodes: list[dict[str, Any]], instance_count: int, fetchers_per_node: int,
                 salt: str = "") -> list[NodeSlot]:
    """Pick up to ``instance_count`` distinct alive nodes, fetcher-marked ones only when any exist.

    The starting node rotates with ``salt`` (the request id) so concurrent jobs spread over the cluster.
    Each node gets ``fetchers_per_node`` fetchers, or as many as it has CPUs when that is 0.
    """
    alive = [n for n in nodes if n.get("Alive")]
    eligible = sorted(_marked(alive) or alive, key=lambda n: n["NodeID"])
    if not eligible:
        return []
    start = zlib.crc32(salt.encode()) % len(eligible)
    ordered = eligible[start:] + eligible[:start]
    slots = []
    for node in ordered[: max(1, instance_count)]:
        per_node = fetchers_per_node or int(node.get("Resources", {}).get("CPU", 1)) or 1
        slots.append(NodeSlot(node["NodeID"], max(1, per_node)))
    return slots


def _marked(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get(FETCHER_RESOURCE, 0) > 0]


def fetcher_nodes_exist(nodes: list[dict[str, Any]]) -> bool:
    """Whether any alive node is marked as a fetcher node (then fetchers run only there)."""
    return bool(_marked(nodes))


def node_counts() -> tuple[int, int]:
    """(alive nodes, alive nodes marked as fetcher nodes)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive), len(_marked(alive))


def combined_ask(desired: int, running_instance_counts: list[int]) -> int:
    """Fetcher nodes to ask the autoscaler for: the operator's desired capacity, or more while jobs run.

    The maximum, not the sum: a job runs on up to ``instance_count`` nodes and jobs share nodes.
    """
    return max([desired, *running_instance_counts])


def request_fetcher_nodes(count: int) -> None:
    """Ask the Ray autoscaler for ``count`` fetcher nodes (one ``prewarm_fetcher`` bundle each); 0 clears it.

    On a cluster without an autoscaler this only records the request.
    """
    from ray.autoscaler.sdk import request_resources

    if count < 0:
        raise ValueError(f"cannot ask for {count} fetcher nodes")
    request_resources(bundles=[{FETCHER_RESOURCE: 1}] * count)  # replaces any earlier ask
