"""The fetcher actor: owns lanes of one request, keeps a pool per POP, reports results per batch."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

import ray

from prewarm.core.entries import RANGE_MARK, split_entry
from prewarm.core.pacing import AdaptiveLimit, ByteBudget, Pacer
from prewarm.core.results import NO_X_CACHE, PartRow, ResultRow, is_hit, one_piece
from prewarm.engine.metrics import record_batch
from prewarm.engine.registry import get_state_actor
from prewarm.net.popclient import (
    REACHED_ORIGIN,
    SERVED_CACHE_BY_X_CACHE,
    SERVED_EDGE,
    SERVED_ORIGIN,
    SERVED_TIER,
    SERVED_UNKNOWN,
    FetchResult,
    PopClient,
    Slots,
    preload_trust_store,
)
from prewarm.net.wire import ByteGate
from prewarm.settings import Settings

Row = TypeVar("Row")


class Fetcher:
    """Fetches batches of (task id, URL) through one POP each; one actor call per batch, never per URL.

    After a successful GET it verifies the pair (a HEAD through the same POP address, reading X-Cache)
    and re-warms a cold pair up to ``until_hit`` times. Every request waits for the job's pacer share, and every
    body is read under the job's byte-rate share.
    """

    def __init__(self, req_id: str, settings: Settings) -> None:
        self._req_id = req_id
        self._settings = settings
        self._variant_headers: list[dict[str, str]] = [{}]
        self._verify = False
        self._until_hit = 0
        self._skip_warm = False
        self._clients: dict[tuple[str, int, int], tuple[PopClient, WorkerPool]] = {}
        self._pacer = Pacer()
        self._budget = ByteBudget()
        self._state = get_state_actor(settings)
        self._reporter: asyncio.Task[None] | None = None
        self._origin: OriginGate | None = None
        preload_trust_store(settings.ca_bundle)  # while the fetcher waits for its job, not in it

    def bind(self, variant_headers: list[dict[str, str]], verify: bool = False, until_hit: int = 0,
             skip_warm: bool = False) -> str:
        """Take the job's fetch options (a fetcher may be started before its job arrives); returns the node id.

        Called once, before any batch.
        """
        self._variant_headers = variant_headers or [{}]
        self._verify = verify
        self._until_hit = until_hit
        self._skip_warm = skip_warm
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
        variant: int = 0, rps: float | None = None, phase: float = 0.0, bps: float | None = None,
        sizes: Mapping[str, int] | None = None, origin_limit: int | None = None,
    ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Fetch every task of the batch, hand the results to the state actor; return how many, the tasks whose GET
        the origin answered and those a tier above the POP served, by ``Server-Timing`` (for learning which POPs
        share a regional edge cache).

        ``limit`` is this fetcher's share of the job's per-POP concurrency cap, ``rps`` its share of the job's
        request-rate cap and ``bps`` of its byte-rate cap (None: no cap), ``phase`` its place among the job's
        fetchers, ``sizes`` the known sizes of the batch's URLs that are warmed in parts, ``origin_limit`` (tiering
        off: any GET may reach the origin) this fetcher's share of ``max_origin_concurrency``.
        """
        rows = await self._run(pop, addresses, tasks, deadline, limit, variant, rps, phase, bps, sizes,
                               self._origin_gate(origin_limit))
        return (len(rows), one_piece(row[0] for row in rows if row[17] == SERVED_ORIGIN),
                one_piece(row[0] for row in rows if row[17] == SERVED_TIER))

    async def probe_batch(
        self, pop: str, addresses: list[str], tasks: Sequence[tuple[int, str]], deadline: float, limit: int,
        variant: int = 0, rps: float | None = None, phase: float = 0.0, bps: float | None = None,
        origin_limit: int | None = None,
    ) -> tuple[ProbeRow, ...]:
        """``fetch_batch`` for first-tier fetches (the size probe, and a tier's first fetch of a URL): each task is
        its URL's first in its tier, and what its GET learnt goes back to the coordinator too: the object's size,
        or the 4xx that spares sending the URL to every other POP. ``origin_limit``: this fetcher's share of the
        job's ``max_origin_concurrency``."""
        rows = await self._run(pop, addresses, tasks, deadline, limit, variant, rps, phase, bps, None,
                               self._origin_gate(origin_limit))
        return one_piece((row[0], row[1], row[13] if row[13] >= 0 else row[4], row[7], row[8], row[17]) for row in rows)

    async def _run(
        self, pop: str, addresses: list[str], tasks: Sequence[tuple[int, str]], deadline: float, limit: int,
        variant: int, rps: float | None, phase: float, bps: float | None, sizes: Mapping[str, int] | None,
        origin: OriginGate | None = None,
    ) -> list[ResultRow]:
        self._pacer.set_rate(rps, phase)
        self._budget.set_rate(bps)
        if self._reporter is None:
            self._reporter = asyncio.ensure_future(self._report_bytes())
        client, workers = self._client(pop, addresses, limit, variant)
        opts = WarmOptions(self._pacer, self._budget, self._verify, self._until_hit, self._skip_warm,
                           self._settings.range_part_bytes, deadline, sizes or {}, origin)
        rows = await workers.run(tasks, partial(warm_pair, client, opts))
        await self._state.record.remote(self._req_id, one_piece(rows))
        record_batch(pop, rows)
        return rows

    async def first_batch(
        self, pop: str, addresses: list[str], tasks: Sequence[tuple[int, str]], deadline: float, limit: int,
        variant: int = 0, rps: float | None = None, phase: float = 0.0, bps: float | None = None,
        origin_limit: int | None = None,
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``fetch_batch`` for a tier group's first fetch of each URL, under the origin gate: the tasks that failed
        (their group's REC may not hold the URL) and those a tier above the POP served (``Server-Timing``), the
        two things the coordinator learns from; everything else went to the state actor."""
        rows = await self._run(pop, addresses, tasks, deadline, limit, variant, rps, phase, bps, None,
                               self._origin_gate(origin_limit))
        return (one_piece(row[0] for row in rows if row[7]),
                one_piece(row[0] for row in rows if row[17] == SERVED_TIER))

    def _origin_gate(self, origin_limit: int | None) -> OriginGate | None:
        """The fetcher's one gate for fetches that may reach the origin, at its current share (None: not gated)."""
        if origin_limit is None:
            return None
        if self._origin is None:
            self._origin = OriginGate(origin_limit)
        else:
            self._origin.set_ceiling(origin_limit)
        return self._origin

    def bytes_received(self) -> int:
        """Body bytes this fetcher has read for its job, those of fetches still running included."""
        return sum(client.bytes_received() for client, _ in self._clients.values())

    async def _report_bytes(self) -> None:
        """Tell the state actor, every ``BYTES_REPORT_S`` while they change, how many body bytes this fetcher has
        read (a result arrives only when its batch ends, and a batch of large objects takes minutes) and its
        first-tier concurrency limit now (``OriginGate``)."""
        last: tuple[int, int | None, int | None] = (-1, None, None)
        while True:
            await asyncio.sleep(BYTES_REPORT_S)
            origin = self._origin
            now = (self.bytes_received(), *((None, None) if origin is None else (origin.limit.limit, origin.low)))
            if now != last:
                last = now
                with contextlib.suppress(Exception):
                    self._state.live_bytes.remote(self._req_id, os.getpid(), *now)

    async def close(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        await asyncio.gather(*(client.close() for client, _ in self._clients.values()), return_exceptions=True)


BYTES_REPORT_S = 1.0
CACHE_ANSWERS = frozenset({SERVED_EDGE, SERVED_TIER, SERVED_CACHE_BY_X_CACHE})
"""Who answered when a cache did: such an answer's time says nothing about the origin."""


class OriginGate:
    """A fetcher's share of the job's ``max_origin_concurrency``: slots for first-tier fetches, as many as an
    ``AdaptiveLimit`` allows (cut when the origin shows trouble, raised while healthy, never above the share)."""

    def __init__(self, ceiling: int) -> None:
        self.limit = AdaptiveLimit(ceiling)
        self.slots = Slots(self.limit.limit)
        self._debt = 0  # slots to withhold as fetches end, after the limit was cut
        self.low = self.limit.limit  # the lowest the limit has been

    def set_ceiling(self, ceiling: int) -> None:
        self.limit.ceiling = max(1, ceiling)
        if self.limit.limit > self.limit.ceiling:
            self._resize(self.limit.limit, self.limit.ceiling)
            self.limit.limit = self.limit.ceiling

    async def acquire(self) -> None:
        if not self.slots.take():
            await self.slots.acquire()

    def release(self, result: FetchResult | None) -> None:
        """A first-tier fetch ended (``result`` None: it raised); the limit learns from it."""
        before = self.limit.limit
        if result is not None and (result.troubled or result.served_by not in CACHE_ANSWERS):
            # Only an answer the origin gave says how the origin is: a cache's fast Hit set as the baseline made every
            # 300 ms origin fetch after it look slow, and cut the limit to one.
            small = result.nbytes < 256 * 1024 and result.attempts == 1  # its exchange's time: about its first byte's
            self.limit.observe(result.troubled, result.exchange_ms if small and result.ok else None)
        if self._debt:
            self._debt -= 1
        else:
            self.slots.release()
        self._resize(before, self.limit.limit)
        self.low = min(self.low, self.limit.limit)

    def _resize(self, before: int, after: int) -> None:
        for _ in range(after - before):  # raised: new slots, to waiters first
            if self._debt:
                self._debt -= 1
            else:
                self.slots.release()
        if after < before:
            self._debt += before - after




@dataclass(frozen=True, slots=True)
class WarmOptions:
    """What a job asks of each pair's warm-up, the same for every batch: bound per batch with its deadline."""

    pacer: Pacer
    budget: ByteBudget
    verify: bool = False
    until_hit: int = 0
    skip_warm: bool = False
    part_bytes: int = 30 * 1024**3
    deadline: float | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)  # object sizes known above part_bytes, by URL
    origin: OriginGate | None = None  # first-tier fetches (those that reach the origin) hold one of its slots


async def warm_pair(client: PopClient, opts: WarmOptions, task_id: int, url: str) -> ResultRow:
    """Warm one pair: GET it whole (or, above the part size, as ``Range`` parts); then verify it and re-warm it
    while cold, through the address that answered. With ``skip_warm`` a HEAD first: a Hit is already warm.

    A function, not a ``Fetcher`` method: in the actor's process Ray wraps every method of the class in a
    tracing shim (one more coroutine per call, one more frame each time the fetch resumes).
    """
    pace = opts.pacer.wait if opts.pacer.rate else None  # no cap: nothing to await per request
    gate = opts.budget if opts.budget.rate else None
    if RANGE_MARK in url:
        plain, byte_range = split_entry(url)
        if byte_range is not None:
            return await warm_range(client, opts, task_id, plain, byte_range, pace, gate)
    deadline = opts.deadline
    size = opts.sizes.get(url) if opts.sizes else None
    address: str | None = None
    skipped: FetchResult | None = None
    if opts.skip_warm and (size is None or size <= opts.part_bytes):
        skipped = await client.fetch(url, "HEAD", deadline, pace=pace)
        if skipped.ok and is_hit(skipped.x_cache):
            return already_warm_row(task_id, skipped)
        if skipped.ok:  # cold: warm it through the address that answered, knowing its size
            address = skipped.address
            size = skipped.content_length
    origin = opts.origin
    if origin is not None:
        await origin.acquire()
    r: FetchResult | None = None
    try:
        if size is not None and size > opts.part_bytes:
            return await warm_parts(client, opts, task_id, url, size, address, skipped)
        r = await client.fetch(url, "GET", deadline, address=address, pace=pace, gate=gate, max_body=opts.part_bytes)
        if r.oversize and r.size is not None:  # larger than one cacheable object: the head said so, nothing read
            return await warm_parts(client, opts, task_id, url, r.size, r.address, r)
    finally:
        if origin is not None:
            origin.release(r)
    assert r is not None
    verify_x_cache, age, rounds, layer = "", -1, 1, r.hit_layer
    if opts.verify and r.ok:
        verify_x_cache, age, rounds, layer = await verify_pair(client, opts, url, r.address, None, pace, gate)
    size = r.size if r.size is not None else (r.nbytes if r.ok else -1)
    return (task_id, r.status, r.x_cache, r.address, r.nbytes, r.attempts, round(r.elapsed_ms, 1), r.error_class,
            r.error_message, verify_x_cache, age, rounds, r.wasted, size, False, (), layer, r.served_by)


async def warm_range(client: PopClient, opts: WarmOptions, task_id: int, url: str, byte_range: tuple[int, int],
                     pace: Callable[[], Awaitable[None]] | None, gate: ByteGate | None) -> ResultRow:
    """Warm the bytes of ``url`` a player asks for (an entry ``<url>#bytes=a-b``, from a manifest): a ``Range``
    GET, expecting a 206 of exactly them, then verified with the same range, as the edge caches it."""
    origin = opts.origin
    if origin is not None:
        await origin.acquire()
    r: FetchResult | None = None
    try:
        r = await client.fetch(url, "GET", opts.deadline, pace=pace, gate=gate, byte_range=byte_range)
    finally:
        if origin is not None:
            origin.release(r)
    verify_x_cache, age, rounds, layer = "", -1, 1, r.hit_layer
    if opts.verify and r.ok:
        verify_x_cache, age, rounds, layer = await verify_pair(client, opts, url, r.address, byte_range, pace, gate)
    size = byte_range[1] - byte_range[0] + 1 if r.ok else -1
    return (task_id, r.status, r.x_cache, r.address, r.nbytes, r.attempts, round(r.elapsed_ms, 1), r.error_class,
            r.error_message, verify_x_cache, age, rounds, r.wasted, size, False, (), layer, r.served_by)


async def verify_pair(client: PopClient, opts: WarmOptions, url: str, address: str,
                      byte_range: tuple[int, int] | None, pace: Callable[[], Awaitable[None]] | None,
                      gate: ByteGate | None) -> tuple[str, int, int, str]:
    """HEAD the pair (or one part) through ``address`` and re-warm it while cold: (x_cache, age, GETs sent, the
    tier that answered the HEAD from its cache)."""
    verify_x_cache, age, rounds, layer = "", -1, 1, ""
    for round_ in range(opts.until_hit + 1):
        check = await client.fetch(url, "HEAD", opts.deadline, address=address, pace=pace, byte_range=byte_range)
        # An answer without X-Cache is not a Hit: it gets a name, so it is listed as cold.
        verify_x_cache = (check.x_cache or NO_X_CACHE) if check.ok else f"verify failed: {check.error_class}"
        age = check.age if check.ok and check.age is not None else -1
        layer = check.hit_layer
        if is_hit(verify_x_cache) or round_ == opts.until_hit:
            break
        await client.fetch(url, "GET", opts.deadline, address=address, pace=pace, gate=gate, byte_range=byte_range)
        rounds += 1
    return verify_x_cache, age, rounds, layer


def already_warm_row(task_id: int, head: FetchResult) -> ResultRow:
    """A pair whose HEAD was a Hit: warm already, nothing downloaded; the HEAD is its verification."""
    size = head.content_length if head.content_length is not None else -1
    return (task_id, head.status, head.x_cache, head.address, 0, head.attempts, round(head.elapsed_ms, 1), "", "",
            head.x_cache, head.age if head.age is not None else -1, 0, 0, size, True, (), head.hit_layer,
            SERVED_UNKNOWN)


def part_ranges(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """``Range`` parts (first, last byte, inclusive) of at most ``part_bytes`` covering an object of ``size``."""
    return [(first, min(first + part_bytes, size) - 1) for first in range(0, size, part_bytes)]


async def warm_parts(client: PopClient, opts: WarmOptions, task_id: int, url: str, size: int, address: str | None,
                     first: FetchResult | None) -> ResultRow:
    """Warm an object larger than CloudFront caches whole, as ``Range`` parts one after another, each its own GET
    (and verification); with ``skip_warm`` each part is HEADed first. ``first``: the answer that told the size
    (an unread oversize GET, or the HEAD), whose bytes count as wasted and attempts as the pair's."""
    pace = opts.pacer.wait if opts.pacer.rate else None
    gate = opts.budget if opts.budget.rate else None
    parts: list[PartRow] = []
    wasted = first.nbytes + first.wasted if first is not None else 0
    elapsed = first.elapsed_ms if first is not None else 0.0
    attempts = first.attempts if first is not None else 0
    rounds, age, warm, layer, served = 1, -1, True, "", SERVED_UNKNOWN
    for byte_range in part_ranges(size, opts.part_bytes):
        label = f"bytes={byte_range[0]}-{byte_range[1]}"
        if opts.skip_warm:
            head = await client.fetch(url, "HEAD", opts.deadline, address=address, pace=pace, byte_range=byte_range)
            if head.ok and is_hit(head.x_cache):
                address = address or head.address
                layer = layer or head.hit_layer
                parts.append((label, head.status, head.x_cache, 0, head.attempts, round(head.elapsed_ms, 1), "", "",
                              head.x_cache))
                attempts, elapsed = attempts + head.attempts, elapsed + head.elapsed_ms
                continue
        warm = False
        r = await client.fetch(url, "GET", opts.deadline, address=address, pace=pace, gate=gate,
                               byte_range=byte_range)
        address = address or r.address
        wasted += r.wasted
        served = served if served in REACHED_ORIGIN else r.served_by  # a part the origin sent shows
        attempts, elapsed = attempts + r.attempts, elapsed + r.elapsed_ms
        verify_x_cache = ""
        if opts.verify and r.ok:
            verify_x_cache, age, part_rounds, part_layer = await verify_pair(client, opts, url, r.address, byte_range,
                                                                             pace, gate)
            rounds = max(rounds, part_rounds)
            layer = layer if layer and layer != "EDGE" else part_layer  # a part not held at the edge shows
        parts.append((label, r.status, r.x_cache, r.nbytes, r.attempts, round(r.elapsed_ms, 1), r.error_class,
                      r.error_message, verify_x_cache))
    failed = next((p for p in parts if p[6]), None)
    cold = next((p for p in parts if p[8] and not is_hit(p[8])), None)
    verify = parts[0][8] if warm else (cold or parts[0])[8] if opts.verify else ""
    status, x_cache = (failed[1], failed[2]) if failed else (parts[0][1], parts[0][2])
    error_class, message = (failed[6], f"part {failed[0]}: {failed[7]}") if failed else ("", "")
    return (task_id, status, x_cache, address or "", sum(p[3] for p in parts), attempts, round(elapsed, 1),
            error_class, message, verify, age, rounds if not warm else 0, wasted, size, warm, tuple(parts), layer,
            served)


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


ProbeRow = tuple[int, int, int, str, str, int]
"""(task_id, status_code, size, error_class, error_message, served_by) of one first-tier GET."""

