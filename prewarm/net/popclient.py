"""One pinned HTTP fetch with retries: the URL's own host in Host and SNI, the POP's address on the wire.

A ``PopClient`` keeps one keep-alive pool per POP address and dials that address itself, so it sends
exactly what a viewer would (Host, SNI, certificate checked against the URL's host) while connecting only
to the edge that DNS gave for the POP. The HTTP/1.1 exchange is :mod:`prewarm.net.wire`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any

from prewarm.core.results import is_hit
from prewarm.net.wire import (
    ByteGate,
    Limits,
    Pool,
    Target,
    WireError,
    build_head,
    exchange,
    header_block,
    target_of,
)
from prewarm.settings import Settings

DEFAULT_HEADERS = {"Accept-Encoding": "gzip, deflate, br", "User-Agent": "cdn-prewarm/0.1", "Pragma": "server-timing"}
"""``Pragma: server-timing`` asks CloudFront for its ``Server-Timing`` metrics (which tier answered) even where the
distribution's response headers policy does not send them; it is not part of any cache key."""
ERROR_TTL_S = 10.0
"""How long CloudFront caches an error answer by default (its error caching minimum TTL), unless the origin's
``max-age`` says longer."""
BODY_CLASSES = frozenset({"stall", "too_slow", "truncated"})
"""A body cut short after its head: retried at most ``PREWARM_BODY_ATTEMPTS`` times, since each try is billed."""
RETRYABLE_CLASSES = frozenset({"connection", "connect_timeout", "fetch_timeout"}) | BODY_CLASSES
OVERLOAD_CLASSES = frozenset({"connect_timeout", "fetch_timeout", "timeout", "stall", "too_slow"})
"""Failures that say the origin (or the path to it) is struggling, as a 5xx or 429 does."""
SERVED_UNKNOWN, SERVED_ORIGIN, SERVED_TIER, SERVED_EDGE, SERVED_ORIGIN_BY_X_CACHE, SERVED_CACHE_BY_X_CACHE = range(6)
"""Who answered a GET: the origin (``Server-Timing`` cdn-cache-miss), a tier above the POP (cdn-hit-layer REC or
Origin Shield), the POP itself; or, where the edge sent no ``Server-Timing``, only what ``X-Cache`` says (a Miss
taken as the origin's answer, a Hit as some cache's)."""
REACHED_ORIGIN = frozenset({SERVED_ORIGIN, SERVED_ORIGIN_BY_X_CACHE})
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$", re.IGNORECASE)


@dataclass(slots=True)
class FetchResult:
    status: int = 0
    x_cache: str = ""
    address: str = ""
    nbytes: int = 0
    attempts: int = 0
    elapsed_ms: float = 0.0
    error_class: str = ""
    error_message: str = ""
    content_length: int | None = None
    retry_after: float | None = None
    age: int | None = None
    """The answer's ``Age`` (seconds the edge has held the object); None when absent or not an integer."""
    wasted: int = 0
    """Body bytes of attempts that failed after bytes arrived: received (and billed) without warming anything."""
    size: int | None = None
    """The whole object's size: ``Content-Length`` of a 200, the total of a 206's ``Content-Range``."""
    oversize: bool = False
    """The head announced more than ``max_body``: nothing was read, the caller fetches it in ranges."""
    hit_layer: str = ""
    """``Server-Timing``'s ``cdn-hit-layer`` (EDGE, REC, Origin Shield): which tier answered from its cache."""
    cache_metric: str = ""
    """``Server-Timing``'s ``hit``, ``miss`` or ``refresh`` (``cdn-cache-*``); empty without the header."""
    cached_error_s: float | None = None
    """An error the edge may now hold in its cache: how long until that copy expires (None: not a cached error)."""
    troubled: bool = False
    """An attempt answered what an origin in trouble answers (a 5xx, a 429, a timeout), retried or not."""
    exchange_ms: float = 0.0
    """The last attempt's own time, from sending to its answer's end (no wait for a slot or the rate cap)."""

    @property
    def overloaded(self) -> bool:
        return self.status >= 500 or self.status == 429 or self.error_class in OVERLOAD_CLASSES

    @property
    def served_by(self) -> int:
        """Who answered, as ``SERVED_*``: by ``Server-Timing`` where the edge sent it, else by ``X-Cache``."""
        if self.cache_metric:
            if self.cache_metric == "miss":
                return SERVED_ORIGIN
            return SERVED_EDGE if self.hit_layer in ("", "EDGE") else SERVED_TIER
        value = self.x_cache.lower()
        return SERVED_ORIGIN_BY_X_CACHE if value.startswith("miss") else (
            SERVED_CACHE_BY_X_CACHE if is_hit(value) else SERVED_UNKNOWN)

    @property
    def ok(self) -> bool:
        return not self.error_class

    @property
    def retryable(self) -> bool:
        return self.error_class in RETRYABLE_CLASSES or self.status == 429 or self.status >= 500


_HIT_LAYER = 'cdn-hit-layer;desc="'


def cache_metrics(value: str) -> tuple[str, str]:
    """(``hit``, ``miss``, ``refresh`` or "", the ``cdn-hit-layer``) from CloudFront's ``Server-Timing``, found
    without parsing every metric: a fetch reads these two, and a full parse cost more than the rest of a cached
    fetch's header handling."""
    metric = ("miss" if "cdn-cache-miss" in value else "hit" if "cdn-cache-hit" in value
              else "refresh" if "cdn-cache-refresh" in value else "")
    at = value.find(_HIT_LAYER)
    if at < 0:
        return metric, ""
    start = at + len(_HIT_LAYER)
    end = value.find('"', start)
    return metric, value[start:end if end >= 0 else None]


_MAX_AGE = re.compile(r"(?:^|[,\s])(?:s-maxage|max-age)\s*=\s*\"?(\d+)", re.IGNORECASE)


def cached_error_seconds(x_cache: str, cache_control: str | None, age: int | None) -> float | None:
    """How long an error answer may stay in the edge's cache: CloudFront caches errors (``X-Cache`` says Error, or
    Hit when served from cache) for ``max-age`` or else 10 s, less the ``Age`` it has been held (the whole TTL
    when the edge sends none), plus a second, since ``Age`` is whole seconds. None for an answer that says it was
    not cached (``no-store``) or is no error copy."""
    value = x_cache.strip().lower()
    if not (value.startswith("error") or value.startswith("hit") or value.startswith("refreshhit")):
        return None
    control = (cache_control or "").lower()
    if "no-store" in control:
        return None
    match = _MAX_AGE.search(control)
    ttl = max(ERROR_TTL_S, float(match[1])) if match else ERROR_TTL_S
    return max(0.0, ttl - (age or 0)) + 1.0


def range_header(first: int, last: int) -> str:
    """The ``Range`` header line for bytes ``first`` to ``last`` (inclusive)."""
    return f"Range: bytes={first}-{last}\r\n"


@cache
def _pinned_resolver_class() -> type:
    """Built on first use, so that a fetcher process (which never uses aiohttp) does not import it."""
    import socket

    from aiohttp.abc import AbstractResolver, ResolveResult

    class PinnedResolver(AbstractResolver):
        """Resolves every name to one fixed address: the POP edge (for aiohttp clients pinned like ours)."""

        def __init__(self, address: str) -> None:
            self._address = address
            self._family = socket.AF_INET6 if ":" in address else socket.AF_INET

        async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
            return [
                ResolveResult(
                    hostname=host, host=self._address, port=port, family=self._family,
                    proto=0, flags=socket.AI_NUMERICHOST,
                )
            ]

        async def close(self) -> None:
            return None

    PinnedResolver.__module__ = __name__
    return PinnedResolver


def __getattr__(name: str) -> Any:
    if name == "PinnedResolver":
        return _pinned_resolver_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_AGE_S = 2**31 - 1  # RFC 9111 5.1: an Age too large to represent is taken as the largest one


def age_seconds(value: str | None) -> int | None:
    """``Age`` as whole seconds; None when absent or not a non-negative integer (delta-seconds)."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return None
    return MAX_AGE_S if len(value) > 10 else min(int(value), MAX_AGE_S)


@cache
def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The process's one client context per trust store, shared by every ``PopClient``: loading a trust store is
    costly CPU at a job's start, once per POP otherwise. A bundle changed later is read by the next fetcher."""
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()


def preload_trust_store(ca_bundle: str | None) -> None:
    """Load the trust store ahead of the first client (a fetcher does so while it waits for its job). A bundle that
    cannot be loaded is left to the first ``PopClient``, which fails the job's batch with the reason."""
    with contextlib.suppress(OSError, ssl.SSLError):
        ssl_context(ca_bundle)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def backoff_delay(attempt: int, base: float, retry_after: float | None, cap: float) -> float:
    """Exponential backoff with full jitter, at least what ``Retry-After`` asked for (capped)."""
    delay = base * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class PopClient:
    """Keep-alive connection pools to one POP, with a cap on concurrent fetches through it.

    The POP's addresses are dialled directly (the resolver's job is done before a client exists), the
    URL's host goes in ``Host`` and SNI (:mod:`prewarm.net.wire`: a fetcher is CPU-bound on small cached objects,
    so the request path is our own; BENCHMARKS.md has the figures against aiohttp).
    """

    def __init__(self, pop: str, addresses: list[str], settings: Settings, headers: dict[str, str],
                 limit: int | None = None) -> None:
        self.pop = pop
        self.addresses = list(addresses)
        self._settings = settings
        self._headers = {**DEFAULT_HEADERS, **headers}
        self._ssl = ssl_context(settings.ca_bundle)
        self._pools: dict[str, Pool] = {}
        self._block = header_block(self._headers)  # every header after Host, built once
        self._next = 0
        self._limits = Limits(head_s=settings.fetch_timeout_s, stall_s=settings.stall_timeout_s,
                              min_rate=settings.min_rate, rate_window_s=settings.min_rate_window_s)
        self.concurrency = max(1, limit or settings.max_concurrency)
        self.slots = Slots(self.concurrency)
        self.received = 0  # body bytes of finished exchanges (with those in flight: ``bytes_received``)
        self._clock_offset: float | None = None  # loop clock - wall clock, read once (two reads per fetch cost)

    def _pool(self, address: str) -> Pool:
        pool = self._pools.get(address)
        if pool is None:
            pool = Pool(address, self._ssl, self._settings.connect_timeout_s, max_idle=max(64, self.concurrency))
            self._pools[address] = pool
        return pool

    def bytes_received(self) -> int:
        """Every body byte this client has read, those of exchanges still in flight included."""
        return self.received + sum(pool.body_bytes_in_flight() for pool in self._pools.values())

    async def fetch(self, url: str, method: str = "GET", deadline: float | None = None,
                    address: str | None = None, pace: Callable[[], Awaitable[None]] | None = None,
                    gate: ByteGate | None = None, byte_range: tuple[int, int] | None = None,
                    max_body: int | None = None) -> FetchResult:
        """Fetch ``url`` through this POP, retrying transient failures on the POP's next address.

        ``address`` pins every attempt to one of the POP's addresses (verifying the edge that answered).
        ``pace`` (the job's rate cap) is awaited before every attempt, once a connection slot is held, so
        neither retries nor requests queued for a slot can exceed the cap; ``gate`` (the job's byte-rate cap) is
        what the body is read under. ``deadline`` (the job's, wall clock) bounds every attempt and its body.
        ``byte_range`` asks for bytes first..last (inclusive) and expects a 206 for exactly them; ``max_body``:
        an answer announcing a longer body is not read (``oversize``, with its ``size``).
        """
        start = time.monotonic()
        try:
            target = target_of(url)
        except ValueError as exc:
            result = _failed(FetchResult(attempts=1), "connection", f"ValueError: {exc}")
            result.elapsed_ms = (time.monotonic() - start) * 1000
            return result
        extra = "" if byte_range is None else range_header(*byte_range)
        if byte_range is not None:
            max_body = byte_range[1] - byte_range[0] + 1  # an edge that ignores the range sends no 30 GB here
        head = build_head(method, target, self._block, extra)
        first = self._next
        self._next += 1
        settings = self._settings
        attempts, body_attempts = settings.attempts, settings.body_attempts
        body_failures = wasted = 0
        troubled = False
        slots = self.slots
        if not slots.take():  # a free slot is taken without awaiting (the common case)
            await slots.acquire()
        try:
            for attempt in range(1, attempts + 1):
                edge = address or self.addresses[(first + attempt - 1) % len(self.addresses)]
                if pace is not None:  # time spent held back by the cap is not the fetch's latency
                    paced_at = time.monotonic()
                    await pace()
                    start += time.monotonic() - paced_at
                sent_at = time.monotonic()
                result = await self._once(target, head, method, edge, deadline, gate, max_body, byte_range)
                result.exchange_ms = (time.monotonic() - sent_at) * 1000
                result.attempts = attempt
                if not result.error_class:
                    break
                troubled = troubled or result.overloaded
                if not result.status or result.oversize:  # a body cut short (an error page is no bill of note)
                    wasted += result.nbytes
                if result.error_class in BODY_CLASSES:
                    body_failures += 1
                if not result.retryable or attempt == attempts or body_failures >= body_attempts:
                    break
                delay = backoff_delay(attempt, settings.backoff_base_s, result.retry_after, settings.retry_after_cap_s)
                if result.cached_error_s is not None:  # a retry before the cached error expires gets it again
                    delay = max(delay, min(result.cached_error_s, settings.retry_after_cap_s))
                if deadline is not None and time.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
        finally:
            slots.release()
        result.wasted = wasted
        result.troubled = troubled
        result.elapsed_ms = (time.monotonic() - start) * 1000
        return result

    async def _once(self, target: Target, head: bytes, method: str, address: str, deadline: float | None,
                    gate: ByteGate | None, max_body: int | None, byte_range: tuple[int, int] | None) -> FetchResult:
        result = FetchResult(address=address)
        offset = self._clock_offset
        if offset is None:
            offset = self._clock_offset = asyncio.get_running_loop().time() - time.time()
        end = math.inf if deadline is None else deadline + offset
        try:
            resp = await exchange(self._pool(address), target, head, method == "HEAD", self._limits, end, gate,
                                  max_body)
        except WireError as exc:
            self.received += exc.nbytes
            result.nbytes = exc.nbytes
            return _failed(result, exc.error_class, exc.message)
        self.received += resp.nbytes
        result.status = status = resp.status
        result.x_cache = x_cache = resp.header("x-cache") or ""
        result.content_length = resp.content_length
        result.nbytes = resp.nbytes
        result.age = age_seconds(resp.header("age"))
        timing = resp.header("server-timing")
        if timing:
            result.cache_metric, result.hit_layer = cache_metrics(timing)
        if not 200 <= status < 300:
            result.retry_after = retry_after_seconds(resp.header("retry-after"))
            if status >= 400:
                result.cached_error_s = cached_error_seconds(x_cache, resp.header("cache-control"), result.age)
            return _failed(result, f"http_{status}", f"HTTP {status} {resp.reason}".strip())
        result.size = resp.content_length if status == 200 else _range_total(resp.header("content-range"))
        result.oversize = resp.oversize
        if byte_range is not None:
            return _check_range(result, resp.header("content-range"), byte_range, resp.oversize)
        return result
    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


class Slots:
    """A counting semaphore for one event loop whose free path takes no await and builds no waiter.

    ``asyncio.Semaphore`` scans its waiters on every acquire; a fetcher takes and gives back a slot per
    fetch, almost always free, so that scan was a measurable share of a cached fetch's CPU.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free slot now if there is one nobody waits for; the caller then owns it until ``release``."""
        if self.free and not self.waiters:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot (first come, first served); the caller then owns it until ``release``."""
        if self.take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # a release handed its slot straight to this waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            elif waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


def _failed(result: FetchResult, error_class: str, message: str) -> FetchResult:
    result.error_class = error_class
    result.error_message = message[:500]
    return result


def _range_total(content_range: str | None) -> int | None:
    """The object size a 206's ``Content-Range`` names; None when absent or unknown (``*``)."""
    match = _CONTENT_RANGE.match((content_range or "").strip())
    return int(match[3]) if match and match[3] != "*" else None


def _check_range(result: FetchResult, content_range: str | None, wanted: tuple[int, int],
                 oversize: bool) -> FetchResult:
    """A range request's answer must be a 206 of exactly the bytes asked for."""
    if result.status != 206:
        result.size = result.content_length
        return _failed(result, "range_unsupported", f"asked for bytes={wanted[0]}-{wanted[1]}, the edge answered "
                       f"{result.status} with {'the whole object' if oversize else 'a body'} instead of a 206")
    match = _CONTENT_RANGE.match((content_range or "").strip())
    if match is None or (int(match[1]), int(match[2])) != wanted:
        return _failed(result, "range_mismatch", f"asked for bytes={wanted[0]}-{wanted[1]}, the edge answered "
                       f"Content-Range {content_range!r}")
    return result
