"""The work plan: tasks -> lanes (column, share of the URLs), each owned by one fetcher -> batches.

A column is a (POP, variant) pair of the task grid (see ``progress``); with one variant, a POP.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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


def lane_tasks(lane: Lane, n_cols: int) -> list[int]:
    """The task ids a lane holds."""
    return [u * n_cols + lane.column for u in lane.url_indices]


def batch_up(batches: deque[list[int]], task_ids: Sequence[int], batch_size: int) -> None:
    """Append tasks to a lane's queue of batches (one actor call carries a whole batch, never one URL), the
    last batch filled up first, so that tasks arriving a few at a time still travel in full batches."""
    task_ids = list(task_ids)
    if batches and len(batches[-1]) < batch_size:
        room = batch_size - len(batches[-1])
        batches[-1].extend(task_ids[:room])
        task_ids = task_ids[room:]
    batches.extend(task_ids[s : s + batch_size] for s in range(0, len(task_ids), batch_size))


@dataclass(frozen=True)
class ProbeChunk:
    """Probe tasks of one lane (a column: POP and variant), run by its owner at the lane's share of the POP's cap."""

    column: int
    owner: int
    limit: int
    task_ids: list[int]


def lane_of_tasks(lanes: Sequence[Lane], n_tasks: int, n_cols: int) -> np.ndarray:
    """Task id -> the id of the lane that holds it; -1 for a task no lane holds (not the job's, or done)."""
    lane_of = np.full(n_tasks, -1, dtype=np.int32)
    for lane in lanes:
        lane_of[np.asarray(lane.url_indices, dtype=np.int64) * n_cols + lane.column] = lane.lane_id
    return lane_of


def probe_plan(lanes: Sequence[Lane], lane_of: np.ndarray, n_cols: int, limits: Sequence[int],
               batch_size: int) -> list[ProbeChunk]:
    """The size probe over a job's lanes (``lane_of``: ``lane_of_tasks`` of them): one task per URL, run before
    its others, in chunks of at most ``batch_size``.

    URL ``u``'s probe is its task in column ``cols[u mod len(cols)]`` of the columns the lanes hold for it
    (the whole grid with one variant: POP ``u mod n``), run by the fetcher whose lane holds that task. So the
    probe is spread over the POPs and fetchers as the warming is and uses the warming's own pools, and a probe
    is a task's warm-up GET, not an extra request: the URL's other tasks follow once its chunk has answered
    (``released_by_probe``).
    """
    held = lane_of.reshape(-1, n_cols) >= 0
    counts = held.sum(axis=1)
    urls = np.flatnonzero(counts)
    held, counts = held[urls], counts[urls]
    nth = (urls % counts + 1)[:, None]  # the probe's column is the URL's nth held one
    columns = np.argmax(held & (np.cumsum(held, axis=1) == nth), axis=1)
    tasks = urls * n_cols + columns
    chunks: list[ProbeChunk] = []
    for lane_id, mine in _by_lane(lane_of[tasks], tasks).items():
        lane = lanes[lane_id]
        chunks += [ProbeChunk(lane.column, lane.owner, limits[lane.column], mine[s : s + batch_size])
                   for s in range(0, len(mine), batch_size)]
    return chunks


def released_by_probe(lane_of: np.ndarray, url_indices: Sequence[int], probe_column: int,
                      n_cols: int) -> dict[int, list[int]]:
    """What finished size probes let go: the probed URLs' tasks in every other column a lane holds, as lane id
    -> URL indices (in URL order). The probe's own column is left out: its task was the probe."""
    urls = np.asarray(url_indices, dtype=np.int64)
    cols = np.array([c for c in range(n_cols) if c != probe_column], dtype=np.int64)
    tasks = (urls[:, None] * n_cols + cols[None, :]).ravel()
    return {lane_id: [t // n_cols for t in mine] for lane_id, mine in _by_lane(lane_of[tasks], tasks).items()}


def _by_lane(lane_ids: np.ndarray, tasks: np.ndarray) -> dict[int, list[int]]:
    """Tasks grouped by the lane that holds them, in their order; tasks no lane holds (id -1) are dropped."""
    held = lane_ids >= 0
    lane_ids, tasks = lane_ids[held], tasks[held]
    order = np.argsort(lane_ids, kind="stable")
    lane_ids, tasks = lane_ids[order], tasks[order]
    bounds = np.flatnonzero(np.diff(lane_ids)) + 1
    return {int(group[0]): part.tolist()
            for group, part in zip(np.split(lane_ids, bounds), np.split(tasks, bounds), strict=True) if len(group)}


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


def column_groups(pop_groups: Sequence[int], n_variants: int) -> np.ndarray:
    """Column -> its tier group: columns whose POPs share a cache tier above them (a REC, or the Origin Shield)
    and that hold the same variant (each variant is its own cache key) are one group."""
    n_groups = max(pop_groups, default=-1) + 1
    return np.asarray([v * n_groups + g for g in pop_groups for v in range(n_variants)], dtype=np.int64)


def released_in_group(lane_of: np.ndarray, url_indices: Sequence[int], done_column: int, col_group: np.ndarray,
                      n_cols: int) -> dict[int, list[int]]:
    """What a first fetch in its group lets go: the URLs' tasks in the other columns of ``done_column``'s group
    (their tier above now holds the object), as lane id -> URL indices."""
    cols = np.flatnonzero(col_group == col_group[done_column])
    cols = cols[cols != done_column]
    if not len(cols) or not len(url_indices):
        return {}
    urls = np.asarray(url_indices, dtype=np.int64)
    tasks = (urls[:, None] * n_cols + cols[None, :]).ravel()
    return {lane_id: [t // n_cols for t in mine] for lane_id, mine in _by_lane(lane_of[tasks], tasks).items()}


def group_firsts(lane_of: np.ndarray, url_indices: Sequence[int], probe_column: int, col_group: np.ndarray,
                 n_cols: int) -> dict[int, list[int]]:
    """The first fetch of every other group, for URLs whose probe went through ``probe_column``: in each group the
    URL's nth held column (n = URL index mod the columns it holds there, spreading them), as lane id -> task ids.
    The probe itself is its own group's first."""
    urls = np.asarray(url_indices, dtype=np.int64)
    chosen: list[np.ndarray] = []
    for group in np.unique(col_group):
        if group == col_group[probe_column] or not len(urls):
            continue
        cols = np.flatnonzero(col_group == group)
        held = lane_of[urls[:, None] * n_cols + cols[None, :]] >= 0
        counts = held.sum(axis=1)
        has = counts > 0
        if not has.any():
            continue
        mine, held, counts = urls[has], held[has], counts[has]
        nth = (mine % counts + 1)[:, None]
        pick = cols[np.argmax(held & (np.cumsum(held, axis=1) == nth), axis=1)]
        chosen.append(mine * n_cols + pick)
    if not chosen:
        return {}
    tasks = np.concatenate(chosen)
    return _by_lane(lane_of[tasks], tasks)


def cap_share(cap: int, n_fetchers: int, owner: int) -> int:
    """Fetcher ``owner``'s share of a job-wide concurrency cap: the cap split over the fetchers, the remainder to
    the first ones, so the shares add up to the cap while it is at least the fetchers (below, each keeps one)."""
    n = max(1, n_fetchers)
    return max(1, cap // n + (1 if owner % n < cap % n else 0))
