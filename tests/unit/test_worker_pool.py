"""``WorkerPool``: the workers behind a fetcher's batches (every item once, never more than the cap at once,
shared by the batches in flight, each batch ending on its own)."""

from __future__ import annotations

import asyncio

import pytest

from prewarm.engine.fetcher import WorkerPool


def items(first: int, n: int) -> list[tuple[int, str]]:
    return [(i, f"http://www.example.com/{i}") for i in range(first, first + n)]


class Tracker:
    """A job per item that finishes out of order and counts how many run at once and how often each ran."""

    def __init__(self) -> None:
        self.running = self.peak = 0
        self.ran: list[int] = []

    async def one(self, index: int, url: str) -> tuple[int, str]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.001 * (index % 3))
        self.running -= 1
        self.ran.append(index)
        return index, url


def test_a_batch_runs_every_item_once_within_the_cap() -> None:
    tracker = Tracker()
    rows = asyncio.run(WorkerPool(4).run(items(0, 50), tracker.one))
    assert sorted(rows) == items(0, 50)
    assert sorted(tracker.ran) == list(range(50))
    assert tracker.peak == 4


def test_batches_in_flight_share_the_cap_and_each_gets_its_own_rows() -> None:
    tracker = Tracker()

    async def main() -> list[list[tuple[int, str]]]:
        pool = WorkerPool(4)
        return await asyncio.gather(*(pool.run(items(100 * b, 30), tracker.one) for b in range(3)))

    batches = asyncio.run(main())
    assert [sorted(rows) for rows in batches] == [items(0, 30), items(100, 30), items(200, 30)]
    assert sorted(tracker.ran) == sorted(i for b in range(3) for i in range(100 * b, 100 * b + 30))
    assert tracker.peak == 4  # three batches in flight, never more than the pool's cap at once


def test_a_batch_started_later_runs_on_a_worker_freed_while_the_first_is_still_busy() -> None:
    async def main() -> None:
        pool = WorkerPool(2)
        release = asyncio.Event()

        async def first_job(index: int, url: str) -> int:
            if index == 1:
                await release.wait()  # holds one worker until the second batch is done
            return index

        async def quick(index: int, url: str) -> int:
            return index

        first = asyncio.ensure_future(pool.run([(1, "a"), (2, "b")], first_job))
        await asyncio.sleep(0)
        assert await asyncio.wait_for(pool.run([(3, "c")], quick), 2) == [3]
        assert not first.done()
        release.set()
        assert sorted(await first) == [1, 2]

    asyncio.run(main())


def test_a_failing_item_fails_only_its_batch() -> None:
    async def main() -> None:
        pool = WorkerPool(2)

        async def broken(index: int, url: str) -> int:
            if index == 3:
                raise RuntimeError("boom")
            await asyncio.sleep(0)
            return index

        async def fine(index: int, url: str) -> int:
            await asyncio.sleep(0)
            return index

        bad = asyncio.ensure_future(pool.run(items(0, 10), broken))
        good = asyncio.ensure_future(pool.run(items(10, 10), fine))
        with pytest.raises(RuntimeError, match="boom"):
            await bad
        assert sorted(await good) == list(range(10, 20))

    asyncio.run(main())


def test_fewer_items_than_the_cap_and_none() -> None:
    async def one(index: int, url: str) -> int:
        return index

    assert sorted(asyncio.run(WorkerPool(16).run([(1, "a"), (2, "b")], one))) == [1, 2]
    assert asyncio.run(WorkerPool(16).run([], one)) == []
