"""Live job events as Server-Sent Events, and the selection behind ``GET /jobs``.

Pure core: no Ray and no sockets. The API hands ``job_events`` two async callables (progress and summary
of one job) and streams what it yields; ``select_jobs`` and ``parse_since`` are what the state actor and
the API use to answer ``GET /jobs``. Both are unit-tested without a cluster.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from prewarm.schema import FINAL_STATUSES, STATUSES, TIME_FORMAT

PROGRESS_INTERVAL_S = 1.0  # a progress event at most this often (the stream polls the state actor this often)
HEARTBEAT_S = 15.0  # a comment after this much silence keeps proxies and idle timers from closing the stream
KEEP_ALIVE = b": keep-alive\n\n"
MAX_JOBS_LIMIT = 1000
DEFAULT_JOBS_LIMIT = 100
# Fields of a progress body that change on every read without the job having changed.
_VOLATILE = frozenset({"timestamp"})
_OFFSET_LOST_PLUS = re.compile(r"^(.*T.*\d) (\d{2}(:?\d{2})?)$")  # '+00:00' whose '+' a query string made ' '

ProgressFn = Callable[[], Awaitable[dict[str, Any] | None]]
SummaryFn = Callable[[], Awaitable[dict[str, Any]]]


def sse_frame(event: str, data: Any) -> bytes:
    """One SSE message: ``event:`` then ``data:`` lines, blank line last. Non-strings are sent as JSON.

    SSE ends a field at a newline, so a multi-line payload is split into several ``data:`` lines (the
    client joins them back with newlines); compact JSON has none.
    """
    if any(c in event for c in "\r\n"):
        raise ValueError("an SSE event name cannot contain a newline")
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = [f"event: {event}", *(f"data: {line}" for line in text.replace("\r\n", "\n").split("\n"))]
    return ("\n".join(lines) + "\n\n").encode()


def _changed(body: dict[str, Any], last: dict[str, Any] | None) -> bool:
    if last is None:
        return True
    return any(body.get(k) != last.get(k) for k in body.keys() | last.keys() if k not in _VOLATILE)


async def job_events(progress: ProgressFn, summary: SummaryFn, *, first: dict[str, Any] | None = None,
                     interval_s: float = PROGRESS_INTERVAL_S, heartbeat_s: float = HEARTBEAT_S,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> AsyncIterator[bytes]:
    """Poll one job every ``interval_s``: a ``progress`` frame when something changed, then one ``done``.

    Polling (not pushing) keeps the state actor unchanged and bounds the event rate by construction: one
    read per interval, so at most one progress event per interval. The last progress event always carries
    the final status (a status change is a change), then ``done`` carries the summary and the stream ends.
    A failed read ends the stream with an ``error`` event, so a client can fall back to polling.
    ``first`` is a progress body already read (the API reads one to answer 404 before streaming).
    """
    last: dict[str, Any] | None = None
    last_sent = clock()
    body = first
    while True:
        try:
            if body is None:
                body = await progress()
            if body is None:  # the job is gone (it existed when the stream started)
                yield sse_frame("error", {"error_message": "the job is no longer known"})
                return
            if _changed(body, last):
                yield sse_frame("progress", body)
                last, last_sent = body, clock()
            if body.get("status") in FINAL_STATUSES:
                yield sse_frame("done", await summary())
                return
        except Exception as exc:  # the state actor unreachable: say so rather than cut the stream silently
            yield sse_frame("error", {"error_message": f"{type(exc).__name__}: {str(exc)[:300]}"})
            return
        if clock() - last_sent >= heartbeat_s:
            yield KEEP_ALIVE
            last_sent = clock()
        await sleep(interval_s)
        body = None


# -- GET /jobs ------------------------------------------------------------------------------------------


class JobLike(Protocol):
    status: str
    created_at: datetime


J = TypeVar("J", bound=JobLike)


def check_status(value: str | None) -> str | None:
    """A ``status`` filter: one of STATUSES (any case), or None; ValueError naming the field otherwise."""
    if value is None or value == "":
        return None
    status = value.strip().upper()
    if status not in STATUSES:
        raise ValueError(f"field 'status': {value[:40]!r} is not one of {', '.join(STATUSES)}")
    return status


def check_limit(value: int | None) -> int:
    """A ``limit``: 1..MAX_JOBS_LIMIT, DEFAULT_JOBS_LIMIT when absent; ValueError naming the field otherwise."""
    if value is None:
        return DEFAULT_JOBS_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOBS_LIMIT:
        raise ValueError(f"field 'limit': must be a whole number from 1 to {MAX_JOBS_LIMIT}")
    return value


def parse_since(value: str | None) -> datetime | None:
    """A ``since`` timestamp: the spec's format (UTC) or ISO 8601; naive times are UTC. None when absent.

    A '+' in an unencoded query string arrives as a space, so ``...T03:00:00 02:00`` is read as ``+02:00``.
    """
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    try:
        moment = datetime.strptime(text, TIME_FORMAT)
    except ValueError:
        fixed = _OFFSET_LOST_PLUS.sub(r"\1+\2", text)
        try:
            moment = datetime.fromisoformat(fixed)
        except ValueError:
            raise ValueError(f"field 'since': {value[:60]!r} is not a timestamp (use '2024-04-16 03:12:21.046535' "
                             "in UTC, or ISO 8601)") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # an offset that moves the moment past year 1 or 9999
        raise ValueError(f"field 'since': {value[:60]!r} is out of range") from None


def select_jobs(jobs: Iterable[J], status: str | None = None, limit: int | None = None,
                since: datetime | None = None) -> list[J]:
    """Jobs with ``status`` created at or after ``since``, newest first, at most ``limit`` of them.

    Filtering and sorting happen on the jobs themselves, so only the returned ones get a progress body.
    """
    chosen = [j for j in jobs if (status is None or j.status == status) and (since is None or j.created_at >= since)]
    chosen.sort(key=lambda j: j.created_at, reverse=True)
    return chosen if limit is None else chosen[:limit]
