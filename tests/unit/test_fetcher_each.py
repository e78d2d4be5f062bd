"""``each``: the worker pool behind a fetcher's batches (every item once, never more than the cap at once)."""

from __future__ import annotations

import asyncio

from prewarm.fetcher import each


def test_each_runs_every_item_once_within_the_cap() -> None:
    running = peak = 0

    async def one(index: int, url: str) -> tuple[int, str]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (index % 3))  # finish out of order
        running -= 1
        return index, url

    items = [(i, f"http://www.example.com/{i}") for i in range(50)]
    rows = asyncio.run(each(items, 4, one))
    assert sorted(rows) == items
    assert peak == 4


def test_each_with_fewer_items_than_the_cap_and_with_none() -> None:
    async def one(index: int, url: str) -> int:
        return index

    assert sorted(asyncio.run(each([(1, "a"), (2, "b")], 16, one))) == [1, 2]
    assert asyncio.run(each([], 16, one)) == []
