"""The event stream's pure parts (frames, the polling generator, SSE parsing) and GET /jobs' selection."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from prewarm.cli.commands import format_jobs
from prewarm.client import KEEP_ALIVE_EVENT, iter_sse
from prewarm.core.events import (
    DEFAULT_JOBS_LIMIT,
    KEEP_ALIVE,
    MAX_JOBS_LIMIT,
    check_limit,
    check_status,
    job_events,
    parse_since,
    select_jobs,
    sse_frame,
)


def test_sse_frame_is_one_message_of_compact_json() -> None:
    frame = sse_frame("progress", {"status": "IN_PROGRESS", "n": 1})
    assert frame == b'event: progress\ndata: {"status":"IN_PROGRESS","n":1}\n\n'


def test_sse_frame_splits_multiline_text_and_refuses_newlines_in_names() -> None:
    assert sse_frame("note", "a\nb\r\nc") == b"event: note\ndata: a\ndata: b\ndata: c\n\n"
    with pytest.raises(ValueError):
        sse_frame("bad\nname", {})


def lines(raw: bytes) -> list[bytes]:
    return raw.splitlines(keepends=True)


def test_iter_sse_reads_back_what_sse_frame_writes() -> None:
    raw = sse_frame("progress", {"a": 1}) + KEEP_ALIVE + sse_frame("note", "x\ny") + sse_frame("done", {"b": [2]})
    assert list(iter_sse(lines(raw))) == [("progress", '{"a":1}'), ("note", "x\ny"), ("done", '{"b":[2]}')]
    with_comments = list(iter_sse(lines(raw), comments=True))
    assert with_comments[1] == (KEEP_ALIVE_EVENT, "keep-alive")


def test_iter_sse_follows_the_sse_rules() -> None:
    raw = b"data:no-space\r\n\r\nevent: empty\n\nevent: x\ndata:  two spaces\nid: 7\nretry: 10\n\n"
    # Default event name, no data -> no dispatch, only one leading space dropped, unknown fields ignored.
    assert list(iter_sse(lines(raw))) == [("message", "no-space"), ("x", " two spaces")]


class Clock:
    """A clock that only moves when the generator sleeps: the generator's timing without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def progress_body(status: str, done: int, stamp: int) -> dict[str, Any]:
    return {"request_id": "r", "status": status, "download_count": done, "timestamp": f"t{stamp}"}


def run_events(bodies: list[dict[str, Any] | Exception | None], **kwargs: Any) -> tuple[list[bytes], Clock]:
    clock = Clock()
    feed = iter(bodies)
    summaries = 0

    async def progress() -> dict[str, Any] | None:
        item = next(feed)
        if isinstance(item, Exception):
            raise item
        return item

    async def summary() -> dict[str, Any]:
        nonlocal summaries
        summaries += 1
        return {"request_id": "r", "success_count": 3, "n": summaries}

    async def collect() -> list[bytes]:
        return [f async for f in job_events(progress, summary, clock=clock, sleep=clock.sleep, **kwargs)]

    return asyncio.run(collect()), clock


def parsed(frames: list[bytes]) -> list[tuple[str, Any]]:
    out = []
    for frame in frames:
        if frame == KEEP_ALIVE:
            out.append(("keep-alive", None))
            continue
        ((event, data),) = iter_sse(lines(frame))
        out.append((event, json.loads(data)))
    return out


def test_progress_only_on_change_then_final_progress_and_one_done() -> None:
    bodies = [progress_body("IN_PROGRESS", 0, 1), progress_body("IN_PROGRESS", 0, 2),  # only the time moved
              progress_body("IN_PROGRESS", 2, 3), progress_body("FINISHED", 3, 4)]
    frames, clock = run_events(bodies)
    events = parsed(frames)
    assert [e for e, _ in events] == ["progress", "progress", "progress", "done"]
    assert [d["download_count"] for _, d in events[:3]] == [0, 2, 3]
    assert events[2][1]["status"] == "FINISHED" and events[3][1] == {"request_id": "r", "success_count": 3, "n": 1}
    assert clock.sleeps == [1.0, 1.0, 1.0]  # one read per interval: at most one progress event per second


def test_first_body_given_is_sent_without_reading_again() -> None:
    frames, clock = run_events([progress_body("FINISHED", 1, 2)], first=progress_body("IN_PROGRESS", 0, 1))
    assert [e for e, _ in parsed(frames)] == ["progress", "progress", "done"]
    frames, clock = run_events([], first=progress_body("STOPPED", 0, 1))
    assert [e for e, _ in parsed(frames)] == ["progress", "done"] and clock.sleeps == []


def test_heartbeat_after_fifteen_seconds_of_silence() -> None:
    same = [progress_body("IN_PROGRESS", 1, i) for i in range(40)]
    frames, _ = run_events([*same, progress_body("TIMEOUT", 1, 99)], interval_s=1.0, heartbeat_s=15.0)
    kinds = [e for e, _ in parsed(frames)]
    assert kinds == ["progress", "keep-alive", "keep-alive", "progress", "done"]


def test_a_failed_read_or_a_vanished_job_ends_with_an_error_event() -> None:
    frames, _ = run_events([progress_body("IN_PROGRESS", 0, 1), RuntimeError("state actor gone")])
    events = parsed(frames)
    assert [e for e, _ in events] == ["progress", "error"] and "state actor gone" in events[1][1]["error_message"]
    frames, _ = run_events([None])
    assert [e for e, _ in parsed(frames)] == ["error"]


@dataclass
class FakeJob:
    name: str
    status: str
    created_at: datetime


T0 = datetime(2024, 4, 16, 3, 0, tzinfo=UTC)
JOBS = [FakeJob("a", "FINISHED", T0), FakeJob("b", "IN_PROGRESS", T0 + timedelta(minutes=2)),
        FakeJob("c", "FINISHED", T0 + timedelta(minutes=1)), FakeJob("d", "TIMEOUT", T0 + timedelta(minutes=3))]


def names(jobs: list[FakeJob]) -> list[str]:
    return [j.name for j in jobs]


def test_select_jobs_newest_first_filtered_and_limited() -> None:
    assert names(select_jobs(JOBS)) == ["d", "b", "c", "a"]
    assert names(select_jobs(JOBS, status="FINISHED")) == ["c", "a"]
    assert names(select_jobs(JOBS, limit=2)) == ["d", "b"]
    assert names(select_jobs(JOBS, since=T0 + timedelta(minutes=1))) == ["d", "b", "c"]  # at or after
    assert names(select_jobs(JOBS, status="FINISHED", since=T0 + timedelta(seconds=1), limit=5)) == ["c"]
    assert select_jobs(JOBS, status="STOPPED") == []


def test_parse_since_takes_the_spec_format_and_iso_8601() -> None:
    assert parse_since("2024-04-16 03:12:21.046535") == datetime(2024, 4, 16, 3, 12, 21, 46535, tzinfo=UTC)
    assert parse_since("2024-04-16T03:12:21Z") == datetime(2024, 4, 16, 3, 12, 21, tzinfo=UTC)
    assert parse_since("2024-04-16T05:12:21+02:00") == datetime(2024, 4, 16, 3, 12, 21, tzinfo=UTC)
    assert parse_since("2024-04-16T05:12:21.5 02:00") == datetime(2024, 4, 16, 3, 12, 21, 500000, tzinfo=UTC)
    assert parse_since("2024-04-16") == datetime(2024, 4, 16, tzinfo=UTC)
    assert parse_since("2024-04-16 03:12") == datetime(2024, 4, 16, 3, 12, tzinfo=UTC)
    moment = parse_since("2024-04-16T03:12:21-05:00")
    assert moment is not None and moment.tzinfo == UTC
    assert moment == datetime(2024, 4, 16, 3, 12, 21, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_since(None) is None and parse_since("") is None


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "16/04/2024", "2024-04-16 25:00:00.0", "1713237141",
                                   "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+01:00"])
def test_parse_since_rejects_other_text_naming_the_field(value: str) -> None:
    with pytest.raises(ValueError, match="field 'since'"):
        parse_since(value)


def test_status_and_limit_checks_name_their_field() -> None:
    assert check_status(None) is None and check_status("finished") == "FINISHED"
    with pytest.raises(ValueError, match="field 'status'"):
        check_status("DONE")
    assert check_limit(None) == DEFAULT_JOBS_LIMIT and check_limit(1) == 1 and check_limit(MAX_JOBS_LIMIT) == 1000
    for bad in (0, -1, MAX_JOBS_LIMIT + 1, True):
        with pytest.raises(ValueError, match="field 'limit'"):
            check_limit(bad)


def test_format_jobs_table() -> None:
    job = {"request_id": "r1", "status": "FINISHED", "phase": "done", "download_count": 6, "total_count": 6,
           "percentage_complete": 100, "success_count": 5, "failure_count": 1,
           "created_at": "2024-04-16 03:10:21.405303"}
    text = format_jobs([job, {**job, "request_id": "r0", "status": "IN_PROGRESS"}])
    header, rule, first, second = text.splitlines()
    assert header.split() == ["request_id", "status", "phase", "done", "%", "ok", "failed", "created_at", "(UTC)"]
    assert set(rule) <= {"-", " "}
    assert first.split() == ["r1", "FINISHED", "done", "6/6", "100", "5", "1", "2024-04-16", "03:10:21.405303"]
    assert second.split()[:2] == ["r0", "IN_PROGRESS"]
    assert format_jobs([]) == "no jobs"


def test_cli_parses_the_jobs_and_watch_commands() -> None:
    from prewarm.cli.commands import build_parser

    args = build_parser().parse_args(["jobs", "--status", "FINISHED", "--limit", "5", "--since", "2024-04-16",
                                      "--json"])
    assert (args.status, args.limit, args.since, args.json) == ("FINISHED", 5, "2024-04-16", True)
    args = build_parser().parse_args(["watch", "4f780687-9774-48cd-bd7d-db836abf45af"])
    assert args.req_id.startswith("4f78") and not args.no_events and args.func.__name__ == "_watch"
    assert build_parser().parse_args(["submit", "--watch", "--no-events", "https://x/"]).no_events
