"""The fetcher actor: owns lanes of one request, keeps a pool per POP, reports results per batch."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

import ray

from prewarm.fetch import PopClient, preload_trust_store
from prewarm.metrics import record_batch
from prewarm.pacing import Pacer
from prewarm.progress import NO_X_CACHE, ResultRow, is_hit, one_piece
from prewarm.registry import get_state_actor
from prewarm.settings import Settings

Row = TypeVar("Row")


class Fetcher:
    """Fetches batches of (task id, URL) through one POP each; one actor call per batch, never per URL.

    After a successful GET it verifies the pair (a HEAD through the same POP address, reading X-Cache)
    and re-warms a cold pair up to ``until_hit`` times. Every request waits for the job's pacer share.
    """

    def __init__(self, req_id: str, settings: Settings) -> None:
        self._req_id = req_id
        self._settings = settings
        self._variant_headers: list[dict[str, str]] = [{}]
        self._verify = False
        self._until_hit = 0
        self._clients: dict[tuple[str, int, int], tuple[PopClient, WorkerPool]] = {}
        self._pacer = Pacer()
        self._state = get_state_actor(settings)
        preload_trust_store(settings.ca_bundle)  # while the fetcher waits for its job, not in it

    def bind(self, variant_headers: list[dict[str, str]], verify: bool = False, until_hit: int = 0) -> str:
        """Take the job's fetch options (a fetcher may be started before its job arrives); returns the node id.

        Called once, before any batch.
        """
        self._variant_headers = variant_headers or [{}]
        self._verify = verify
        self._until_hit = until_hit
        return self.node_id()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def _client(self, pop: str, addresses: list[str], limit: int, variant: int = 0) -> tuple[PopClient, WorkerPool]:
        """The connections and workers for a (POP, variant) at a concurrency cap: the lane's share of the POP's
        cap, the same for its size probes and its other tasks, so they share one pool."""
        key = (pop, variant, limit)
        held = self._clients.get(key)
        if held is None or held[0].addresses != addresses:
            client = PopClient(pop, addresses, self._settings, self._variant_headers[variant], limit)
            held = self._clients[key] = (client, WorkerPool(client.concurrency))
        return held

    async def fetch_batch(
        self, pop: str, addresses: list[str], tasks: Sequence[tuple[int, str]], deadline: float, limit: int,
        variant: int = 0, rps: float | None = None, phase: float = 0.0,
    ) -> int:
        """Fetch every task of the batch, hand the results to the state actor, return how many.

        ``limit`` is this fetcher's share of the job's per-POP concurrency cap, ``rps`` its share of
        the job's request-rate cap (None: no cap) and ``phase`` its place among the job's fetchers.
        """
        return len(await self._run(pop, addresses, tasks, deadline, limit, variant, rps, phase))

    async def probe_batch(
        self, pop: str, addresses: list[str], tasks: Sequence[tuple[int, str]], deadline: float, limit: int,
        variant: int = 0, rps: float | None = None, phase: float = 0.0,
    ) -> tuple[ProbeRow, ...]:
        """``fetch_batch`` for the size probe: each task is its URL's first, and what its GET learnt goes back
        to the coordinator too: the object's size, or the 4xx that spares sending the URL to every other POP."""
        rows = await self._run(pop, addresses, tasks, deadline, limit, variant, rps, phase)
        return one_piece((row[0], row[1], row[4], row[7], row[8]) for row in rows)

    async def _run(
        self, pop: str, addresses: list[str], tasks: Sequence[tuple[int, str]], deadline: float, limit: int,
        variant: int, rps: float | None, phase: float,
    ) -> list[ResultRow]:
        self._pacer.set_rate(rps, phase)
        client, workers = self._client(pop, addresses, limit, variant)
        warm = partial(warm_pair, client, self._pacer, self._verify, self._until_hit, deadline)
        rows = await workers.run(tasks, warm)
        await self._state.record.remote(self._req_id, one_piece(rows))
        record_batch(pop, rows)
        return rows

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client, _ in self._clients.values()), return_exceptions=True)


async def warm_pair(client: PopClient, pacer: Pacer, verify: bool, until_hit: int, deadline: float, task_id: int,
                    url: str) -> ResultRow:
    """GET the pair; then verify it and re-warm it while cold, through the address that answered.

    A function, not a ``Fetcher`` method: in the actor's process Ray wraps every method of the class in a
    tracing shim (one more coroutine per call, one more frame each time the fetch resumes); as a method, this
    and the pacer lookup cost ~1 us more of CPU per fetch.
    """
    pace = pacer.wait if pacer.rate else None  # no cap: nothing to await per request
    r = await client.fetch(url, "GET", deadline, pace=pace)
    verify_x_cache, age, rounds = "", -1, 1
    if verify and r.ok:
        for round_ in range(until_hit + 1):
            check = await client.fetch(url, "HEAD", deadline, address=r.address, pace=pace)
            # An answer without X-Cache is not a Hit: it gets a name, so it is listed as cold.
            verify_x_cache = (check.x_cache or NO_X_CACHE) if check.ok else f"verify failed: {check.error_class}"
            age = check.age if check.ok and check.age is not None else -1
            if is_hit(verify_x_cache) or round_ == until_hit:
                break
            await client.fetch(url, "GET", deadline, address=r.address, pace=pace)
            rounds += 1
    return (task_id, r.status, r.x_cache, r.address, r.nbytes, r.attempts, round(r.elapsed_ms, 1),
            r.error_class, r.error_message, verify_x_cache, age, rounds)


class WorkerPool(Generic[Row]):
    """At most ``concurrency`` worker coroutines draining one queue, fed by every batch of one pool.

    A lane keeps a few batches in flight to the same POP pool. With a set of workers per batch they queued on
    the pool's semaphore (twice the cap of coroutines for the cap's slots) and each batch drained to no work
    at its end; both cost CPU per fetch. Here the next batch's items start as soon as a worker is free. Each
    batch still ends on its own: ``run`` returns that batch's rows, in the order they finished.
    """

    def __init__(self, concurrency: int) -> None:
        self.concurrency = max(1, concurrency)
        self._queue: deque[tuple[_Batch[Row], int, str]] = deque()
        self._workers: set[asyncio.Task[None]] = set()  # held so that running workers are not collected
        self._active = 0  # workers still draining: counted when they stop, before their task is done

    async def run(self, items: Sequence[tuple[int, str]], one: Callable[[int, str], Awaitable[Row]]) -> list[Row]:
        """``one`` over every (id, URL) of a batch; if one raises, the batch raises and its other items are
        dropped (as is every item not yet started of a batch whose caller was cancelled)."""
        if not items:
            return []
        batch: _Batch[Row] = _Batch(one, len(items), asyncio.get_running_loop().create_future())
        self._queue.extend((batch, task_id, url) for task_id, url in items)
        for _ in range(min(self.concurrency - self._active, len(items))):
            self._active += 1
            worker = asyncio.ensure_future(self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return await batch.done

    async def _work(self) -> None:
        try:
            await self._drain()
        finally:
            self._active -= 1

    async def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch, task_id, url = queue.popleft()
            if batch.done.done():
                continue
            try:
                row = await batch.one(task_id, url)
            except Exception as exc:
                if not batch.done.done():
                    batch.done.set_exception(exc)
                continue
            except BaseException:  # this worker is cancelled: its batch cannot complete
                if not batch.done.done():
                    batch.done.cancel()
                raise
            batch.rows.append(row)
            if len(batch.rows) == batch.size and not batch.done.done():
                batch.done.set_result(batch.rows)


class _Batch(Generic[Row]):
    __slots__ = ("done", "one", "rows", "size")

    def __init__(self, one: Callable[[int, str], Awaitable[Row]], size: int, done: asyncio.Future[list[Row]]) -> None:
        self.one = one
        self.size = size
        self.done = done
        self.rows: list[Row] = []


# num_cpus=0: a fetcher waits on the network; placement, not CPU accounting, decides where it runs.
FetcherActor = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1000)(Fetcher)


ProbeRow = tuple[int, int, int, str, str]
"""(task_id, status_code, bytes, error_class, error_message) of one size probe's GET."""

