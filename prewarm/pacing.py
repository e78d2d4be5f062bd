"""Origin protection: a job's ``max_rps`` cap, split over its fetchers and kept by each one's pacer.

Every request a fetcher sends for the job (size probe, warm-up GET, verification HEAD, re-warm) waits
for its pacer first. A pacer releases requests evenly spaced (a virtual-schedule limiter, GCRA) with
no burst allowance, so the sum over fetchers never exceeds the cap in any window longer than one
interval, whatever the fetchers' timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Pacer:
    """Releases at most ``rate`` requests per second, evenly spaced; ``rate`` None means no cap."""

    def __init__(self, rate: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 0.0
        self._next = 0.0
        self._clock = clock
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return None if not self._interval else 1.0 / self._interval

    def set_rate(self, rate: float | None) -> None:
        """Change the cap (the coordinator re-splits it when fetchers die or finish their lanes)."""
        self._interval = 0.0 if not rate else 1.0 / rate

    def reserve(self) -> float:
        """Claim the next slot; returns how long to wait for it (0 when it is now)."""
        if not self._interval:
            return 0.0
        now = self._clock()
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
