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


def plan_lanes(url_indices: Sequence[int], n_pops: int, n_fetchers: int) -> list[Lane]:
    """Split the work so every fetcher gets lanes and every POP is spread evenly over fetchers.

    With at least as many POPs as fetchers, a lane is a whole POP; otherwise each POP's URLs are cut
    into enough shares to give every fetcher work.
    """
    if n_fetchers < 1:
        raise ValueError("need at least one fetcher")
    urls = tuple(url_indices)
    if not urls or n_pops == 0:
        return []
    shares = max(1, min(len(urls), math.ceil(n_fetchers / n_pops)))
    size = math.ceil(len(urls) / shares)
    lanes: list[Lane] = []
    for share in range(shares):
        part = urls[share * size : (share + 1) * size]
        if not part:
            continue
        for pop in range(n_pops):
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
