"""The job book without Ray: transitions, the watchdog's rules at a given time, retry refusals, and reads that
only read."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest

from prewarm.core.jobs import (
    DEADLINE_GRACE,
    STALE_AFTER,
    JobBook,
    RetryRefused,
    Watch,
    progress_body,
    summary_with_links,
)
from prewarm.core.results import result_row
from prewarm.engine.state import State
from prewarm.settings import Settings

URLS = [f"https://www.example.com/{i}.js" for i in range(2)]
POPS = ["ATL56-C1", "DFW55-C3"]
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def book_with(req_id: str = "a", max_active: int = 1, silence_s: float = 60.0) -> JobBook:
    book = JobBook(max_active, silence_s)
    book.create(req_id, {"url_list": URLS}, POPS, "d1.cloudfront.net", NOW, NOW + timedelta(minutes=1))
    return book


def test_admission_holds_to_the_cap_and_a_closed_job_frees_its_slot() -> None:
    book = book_with("a")
    book.create("b", {"url_list": URLS}, POPS, "d1.cloudfront.net", NOW, NOW + timedelta(minutes=1))
    assert book.admit("a") == (True, True) and book.jobs["a"].phase == "resolving"
    assert book.admit("a") == (True, False)  # admitted already
    assert book.admit("b") == (False, False) and book.jobs["b"].phase == "queued"
    assert book.close("a", "STOPPED") is not None
    book.mark_closed("a", "STOPPED", "stopped")
    assert book.admit("b") == (True, True)


def test_close_fails_the_unfinished_once_and_the_first_close_wins() -> None:
    book = book_with()
    book.set_plan("a", POPS, {})
    book.record("a", [result_row(0, 200, nbytes=5, attempts=1)])
    failed = book.close("a", "TIMEOUT", "too late")
    assert sorted(r[0] for r in failed) == [1, 2, 3] and {r[7] for r in failed} == {"timeout"}
    book.mark_closed("a", "TIMEOUT", "too late")
    assert book.close("a", "FINISHED") is None and book.jobs["a"].status == "TIMEOUT"
    assert book.jobs["a"].summary is not None and book.jobs["a"].summary["failure_count"] == 3


def test_the_watchdog_rules_at_a_given_time() -> None:
    book = book_with(silence_s=20)
    job = book.jobs["a"]
    job.last_update = job.last_checkin = job.last_liveness_check = NOW
    assert book.overdue(NOW + STALE_AFTER) == []  # quiet, but not for longer than STALE_AFTER
    quiet = book.overdue(NOW + STALE_AFTER + timedelta(seconds=1))
    assert [(o.req_id, o.rule, o.status) for o in quiet] == [("a", Watch.QUIET, "FAILED")]
    assert book.overdue(NOW + STALE_AFTER + timedelta(seconds=2)) == []  # asked just now: not again yet
    silent = book.overdue(NOW + timedelta(seconds=21))
    assert [(o.rule, o.status) for o in silent] == [(Watch.SILENT, "FAILED")] and "20 s" in silent[0].message
    late = book.overdue(job.timeout_at + DEADLINE_GRACE + timedelta(seconds=1))
    assert [(o.rule, o.status) for o in late] == [(Watch.DEADLINE, "TIMEOUT")]
    book.close("a", "TIMEOUT")
    book.mark_closed("a", "TIMEOUT", "")
    assert book.overdue(job.timeout_at + timedelta(hours=1)) == []  # an ended job is never overdue


def test_a_retry_is_refused_by_field_and_the_refusal_crosses_a_process_boundary() -> None:
    book = book_with()
    for req_id, why in (("nope", "no job nope"), ("a", "job a is still IN_PROGRESS")):
        with pytest.raises(RetryRefused) as caught:
            book.retry_selection(req_id)
        assert caught.value.field == "retry_of" and str(caught.value).startswith(f"field 'retry_of': {why}")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value) and copy.field == "retry_of"


def test_reads_only_read_and_the_watch_step_closes_an_overdue_job() -> None:
    state = State(Settings(persist=False), watch=False)
    state.create_job("late", {"url_list": URLS}, POPS, "d1.cloudfront.net", NOW, NOW + timedelta(minutes=1))
    assert state.progress("late")["status"] == "IN_PROGRESS"  # long past its deadline: a read changes nothing
    assert state.summary("late")["status"] == "IN_PROGRESS" and state.list_jobs()[0]["status"] == "IN_PROGRESS"
    assert not state.quiet(None)
    found = state.watch_step(NOW + timedelta(minutes=1) + DEADLINE_GRACE + timedelta(seconds=1))
    assert [o.rule for o in found] == [Watch.DEADLINE]
    assert state.progress("late")["status"] == "TIMEOUT" and state.quiet(None)
    assert state.summary("late")["failure_count"] == len(URLS) * len(POPS)


def test_one_place_decides_the_report_link() -> None:
    book = book_with()
    job = book.jobs["a"]
    assert summary_with_links(job, None)["failure_pop_urls_report"] == ""  # made without the service's address
    job.api_base = "http://api:8000/"
    assert summary_with_links(job, None)["failure_pop_urls_report"] == "http://api:8000/reports/a.csv"
    assert summary_with_links(job, "https://s3/x.csv")["failure_pop_urls_report"] == "https://s3/x.csv"
    assert progress_body(job, NOW)["timestamp"] == "2026-12-07 12:00:00.000000"
