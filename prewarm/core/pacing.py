"""Origin protection: a job's ``max_rps`` cap, split over its fetchers and kept by each one's pacer.

Every request a fetcher sends for the job (warm-up GET, the size probes among them, verification HEAD, re-warm, and
each retry of one of those) waits for its pacer first, once it holds a connection slot. A pacer
releases requests evenly spaced (a virtual-schedule limiter, GCRA) with no burst allowance, and the
fetchers' first slots (and first after an idle spell, such as the size probe's end) are staggered by
``phase`` (fetcher i of n starts i/n of an interval late), so n fetchers together send like one client
at the cap rather than n requests at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Pacer:
    """Releases at most ``rate`` requests per second, evenly spaced; ``rate`` None means no cap."""

    def __init__(self, rate: float | None = None, clock: Callable[[], float] = time.monotonic,
                 phase: float = 0.0) -> None:
        self._interval = 0.0
        self._next: float | None = None  # no slot taken yet: the first one is offset by the phase
        self._phase = phase
        self._clock = clock
        self.set_rate(rate, phase)

    @property
    def rate(self) -> float | None:
        return None if not self._interval else 1.0 / self._interval

    def set_rate(self, rate: float | None, phase: float | None = None) -> None:
        """Change the cap (the coordinator re-splits it when fetchers die or finish their lanes);
        ``phase`` in [0, 1) is this pacer's place among the job's fetchers, for its first slot."""
        self._interval = 0.0 if not rate else 1.0 / rate
        if phase is not None:
            self._phase = phase % 1.0

    def reserve(self) -> float:
        """Claim the next slot; returns how long to wait for it (0 when it is now)."""
        if not self._interval:
            return 0.0
        now = self._clock()
        if self._next is None or now > self._next + self._interval:  # first, or idle: back to our turn
            slot = now + self._phase * self._interval
        else:
            slot = max(now, self._next)
        self._next = slot + self._interval
        return slot - now

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


def share_of(max_rps: float | None, n_fetchers: int) -> float | None:
    """Each fetcher's part of the job's cap when ``n_fetchers`` fetchers send requests at once."""
    if max_rps is None:
        return None
    return max_rps / max(1, n_fetchers)


class ByteBudget:
    """A job's byte-rate cap as one fetcher keeps its share: a token bucket of body bytes, ``rate`` None for none.

    Bytes are counted where they arrive (each read of a connection, ``take``); a connection that overdraws stops
    reading until the bucket has refilled, so the edge's sending slows through TCP's window. The bucket holds at
    most ``burst_s`` of the rate, so no window of a second sees much more than the cap.
    """

    def __init__(self, rate: float | None = None, clock: Callable[[], float] = time.monotonic,
                 burst_s: float = 0.05) -> None:
        self._clock = clock
        self._burst_s = burst_s
        self._rate = 0.0
        self._tokens = 0.0
        self._at = clock()
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return self._rate or None

    def set_rate(self, rate: float | None) -> None:
        """Change this fetcher's share (the coordinator re-splits the cap as fetchers finish their lanes)."""
        self._refill()
        self._rate = float(rate or 0.0)
        self._tokens = min(self._tokens, self._capacity)

    @property
    def _capacity(self) -> float:
        return self._rate * self._burst_s

    def _refill(self) -> None:
        now = self._clock()
        if self._rate:
            self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self, n: int) -> float:
        """Count ``n`` bytes that arrived; returns how long the reader should pause (0: go on)."""
        if not self._rate:
            return 0.0
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class AdaptiveLimit:
    """AIMD on concurrent first-tier fetches (those that reach the origin), as TCP and Netflix's concurrency-limits
    do: halve on a sign of an origin in trouble (a 5xx, a 429, a timeout, or a fetch over ``slow_factor`` times the
    fastest seen), at most once per ``cooldown_s``; otherwise grow by one for every ``limit`` healthy fetches, never
    above ``ceiling``. ``history`` keeps each change, for progress and tests."""

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic, cooldown_s: float = 0.5,
                 slow_factor: float = 4.0, start: int | None = None) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = min(self.ceiling, max(1, start if start is not None else self.ceiling))
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._slow_factor = slow_factor
        self._cut_at = -float("inf")
        self._healthy = 0
        self._fastest_ms: float | None = None
        self.history: list[tuple[float, int]] = [(clock(), self.limit)]

    def observe(self, overloaded: bool, latency_ms: float | None = None) -> int:
        """One first-tier fetch ended; returns the limit now."""
        if latency_ms is not None and latency_ms > 0 and not overloaded:
            fastest = self._fastest_ms = latency_ms if self._fastest_ms is None else min(self._fastest_ms, latency_ms)
            overloaded = latency_ms > max(self._slow_factor * fastest, fastest + 50.0)
        now = self._clock()
        if overloaded:
            self._healthy = 0
            if now - self._cut_at >= self._cooldown_s and self.limit > 1:
                self._cut_at = now
                self._set(max(1, self.limit // 2), now)
            return self.limit
        self._healthy += 1
        if self._healthy >= self.limit and self.limit < self.ceiling:
            self._healthy = 0
            self._set(self.limit + 1, now)
        return self.limit

    def _set(self, limit: int, now: float) -> None:
        self.limit = limit
        self.history.append((now, limit))
