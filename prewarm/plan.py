"""The work plan: tasks -> lanes (column, share of the URLs), each owned by one fetcher -> batches.

A column is a (POP, variant) pair of the task grid (see ``progress``); with one variant, a POP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Lane:
    """A column and a share of the URLs; exactly one fetcher owns it, so the POP's pool lives there."""

    lane_id: int
    column: int
    url_indices: tuple[int, ...]
    owner: int


def plan_lanes(task_ids: Sequence[int], n_cols: int, n_fetchers: int) -> list[Lane]:
    """Split the tasks so every fetcher gets lanes and every column is spread evenly over fetchers.

    With at least as many columns as fetchers, a lane is a column's whole share of the tasks; otherwise
    each column's URLs are cut into enough shares to give every fetcher work. ``task_ids`` may be any
    subset (a resumed job plans only what is left; a retry job holds only some tasks).
    """
    if n_fetchers < 1:
        raise ValueError("need at least one fetcher")
    if n_cols == 0:
        return []
    per_col: list[list[int]] = [[] for _ in range(n_cols)]
    for task in sorted(int(t) for t in task_ids):
        per_col[task % n_cols].append(task // n_cols)
    active = [p for p in range(n_cols) if per_col[p]]
    if not active:
        return []
    shares = max(1, math.ceil(n_fetchers / len(active)))
    lanes: list[Lane] = []
    for share in range(shares):
        for col in active:
            urls = per_col[col]
            size = math.ceil(len(urls) / shares)
            part = tuple(urls[share * size : (share + 1) * size])
            if part:
                lanes.append(Lane(len(lanes), col, part, owner=len(lanes) % n_fetchers))
    return lanes


def lane_batches(lane: Lane, n_cols: int, batch_size: int) -> Iterator[list[int]]:
    """Task ids of the lane in batches: one actor call carries a whole batch, never one URL."""
    ids = [u * n_cols + lane.column for u in lane.url_indices]
    for start in range(0, len(ids), batch_size):
        yield ids[start : start + batch_size]


@dataclass(frozen=True)
class ProbeChunk:
    """URLs whose size probe goes through one POP on one fetcher, at that fetcher's share of the POP's cap."""

    pop: int
    owner: int
    limit: int
    url_indices: list[int]


def probe_plan(lanes: Sequence[Lane], n_pops: int, n_variants: int, limits: Sequence[int],
               batch_size: int) -> list[ProbeChunk]:
    """The size probe over a job's lanes (planned on its whole task grid): URL ``i`` once, through POP
    ``i mod n_pops``, by the fetcher whose lane then warms it there (first variant), at that lane's share of the
    POP's cap, in chunks of at most ``batch_size``.

    So the probe is spread over the POPs and fetchers as the warming is, and opens the very pools the warming
    uses. Through the first POP alone it ran at one POP's concurrency before anything was warmed.
    """
    chunks: list[ProbeChunk] = []
    for lane in lanes:
        pop, variant = divmod(lane.column, n_variants)
        if variant:
            continue
        mine = [u for u in lane.url_indices if u % n_pops == pop]
        chunks += [ProbeChunk(pop, lane.owner, limits[lane.column], mine[s : s + batch_size])
                   for s in range(0, len(mine), batch_size)]
    return chunks


def interleave_by_node(fetchers_by_node: Sequence[Sequence[object]]) -> list[object]:
    """Order fetchers so that consecutive owners sit on different nodes (POPs spread over nodes)."""
    out: list[object] = []
    for row in range(max((len(f) for f in fetchers_by_node), default=0)):
        out.extend(f[row] for f in fetchers_by_node if row < len(f))
    return out


def per_fetcher_limits(lanes: Sequence[Lane], n_cols: int, max_concurrency: int, n_variants: int = 1) -> list[int]:
    """Each column's share of its POP's concurrency cap (at least 1).

    A fetcher keeps one pool per column it holds, so the POP's cap is split over the distinct
    (fetcher, column) pairs of that POP's columns: the POP never sees more than the cap at once.
    """
    pools: list[set[tuple[int, int]]] = [set() for _ in range(max(1, n_cols // max(1, n_variants)))]
    for lane in lanes:
        pools[lane.column // n_variants].add((lane.owner, lane.column))
    return [max(1, max_concurrency // max(1, len(pools[c // n_variants]))) for c in range(n_cols)]
