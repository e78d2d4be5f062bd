"""The work plan: tasks -> lanes (POP, share of the URLs), each owned by one fetcher -> batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Lane:
    """A POP and a share of the URLs; exactly one fetcher owns it, so the POP's pool lives there."""

    lane_id: int
    pop_index: int
    url_indices: tuple[int, ...]
    owner: int


def plan_lanes(task_ids: Sequence[int], n_pops: int, n_fetchers: int) -> list[Lane]:
    """Split the tasks so every fetcher gets lanes and every POP is spread evenly over fetchers.

    With at least as many POPs as fetchers, a lane is a POP's whole share of the tasks; otherwise each
    POP's URLs are cut into enough shares to give every fetcher work. ``task_ids`` may be any subset
    (a resumed job plans only what is left).
    """
    if n_fetchers < 1:
        raise ValueError("need at least one fetcher")
    if n_pops == 0:
        return []
    per_pop: list[list[int]] = [[] for _ in range(n_pops)]
    for task in sorted(int(t) for t in task_ids):
        per_pop[task % n_pops].append(task // n_pops)
    active = [p for p in range(n_pops) if per_pop[p]]
    if not active:
        return []
    shares = max(1, math.ceil(n_fetchers / len(active)))
    lanes: list[Lane] = []
    for share in range(shares):
        for pop in active:
            urls = per_pop[pop]
            size = math.ceil(len(urls) / shares)
            part = tuple(urls[share * size : (share + 1) * size])
            if part:
                lanes.append(Lane(len(lanes), pop, part, owner=len(lanes) % n_fetchers))
    return lanes


def lane_batches(lane: Lane, n_pops: int, batch_size: int) -> Iterator[list[int]]:
    """Task ids of the lane in batches: one actor call carries a whole batch, never one URL."""
    ids = [u * n_pops + lane.pop_index for u in lane.url_indices]
    for start in range(0, len(ids), batch_size):
        yield ids[start : start + batch_size]


def interleave_by_node(fetchers_by_node: Sequence[Sequence[object]]) -> list[object]:
    """Order fetchers so that consecutive owners sit on different nodes (POPs spread over nodes)."""
    out: list[object] = []
    for row in range(max((len(f) for f in fetchers_by_node), default=0)):
        out.extend(f[row] for f in fetchers_by_node if row < len(f))
    return out


def per_fetcher_limits(lanes: Sequence[Lane], n_pops: int, max_concurrency: int) -> list[int]:
    """Each POP's concurrency cap split over the fetchers that hold its lanes (at least 1 each)."""
    holders: list[set[int]] = [set() for _ in range(n_pops)]
    for lane in lanes:
        holders[lane.pop_index].add(lane.owner)
    return [max(1, max_concurrency // max(1, len(h))) for h in holders]
