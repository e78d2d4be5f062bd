"""The state actor's class used directly (no Ray: reads ask no coordinator, and no watch loop runs): a retry
job's totals before and after its plan, a retry of a retry, and where its tasks are
stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from prewarm.core.results import result_row
from prewarm.engine.state import State
from prewarm.settings import Settings

URLS = [f"https://www.example.com/{i}.css" for i in range(3)]
NOW = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


def new_job(state: State, req_id: str, urls: list[str], pops: list[str], variants: int = 1,
            selected: list[tuple[int, str, int]] | None = None) -> None:
    request = {"url_list": urls, "instance_count": 1,
               "variants": [{"Accept-Encoding": e} for e in ("gzip", "br")[:variants]] if variants > 1 else None}
    state.create_job(req_id, request, pops, "d111111abcdef8.cloudfront.net", NOW, NOW + timedelta(minutes=5),
                     selected=selected)


def test_total_count_before_the_plan_counts_variants_and_a_retry_selection() -> None:
    state = State(Settings(persist=False))
    new_job(state, "two-variants", URLS, ["ATL56-C1", "DFW55-C3"], variants=2)
    assert state.jobs["two-variants"].table is None
    assert state.progress("two-variants")["total_count"] == 3 * 2 * 2
    new_job(state, "retry", URLS[:2], ["ATL56-C1", "DFW55-C3"], selected=[(0, "ATL56-C1", 0), (1, "DFW55-C3", 0)])
    assert state.progress("retry")["total_count"] == 2


def test_a_retry_job_total_size_counts_only_the_pairs_it_holds() -> None:
    state = State(Settings(persist=False))
    new_job(state, "retry", URLS[:2], ["ATL56-C1", "DFW55-C3"], selected=[(0, "ATL56-C1", 0), (1, "DFW55-C3", 0)])
    state.set_plan("retry", ["ATL56-C1", "DFW55-C3"], {})
    state.set_sizes("retry", np.array([1000, 30], dtype=np.int64))
    assert state.jobs["retry"].total_size == 1000 + 30  # not (1000 + 30) x 2 POPs
    new_job(state, "plain", URLS, ["ATL56-C1", "DFW55-C3"], variants=2)
    state.set_plan("plain", ["ATL56-C1", "DFW55-C3"], {})
    state.set_sizes("plain", np.array([1, 10, 100], dtype=np.int64))
    assert state.jobs["plain"].total_size == 111 * 4


def test_a_retry_of_a_retry_takes_only_the_pairs_it_held_at_an_unresolvable_pop() -> None:
    state = State(Settings(persist=False))
    # The retry job held (0, ATL) and (1, DFW); DFW could not be resolved this time, ATL succeeded.
    new_job(state, "retry", URLS[:2], ["ATL56-C1", "DFW55-C3"], selected=[(0, "ATL56-C1", 0), (1, "DFW55-C3", 0)])
    state.set_plan("retry", ["ATL56-C1"], {"DFW55-C3": "NXDOMAIN"})
    state.set_sizes("retry", np.array([10, 10], dtype=np.int64))
    state.record("retry", [result_row(0, 200, x_cache="Miss from cloudfront", address="127.0.0.1", nbytes=10,
                                      attempts=1)])
    state.finish("retry", "FINISHED")
    source = state.retry_source("retry")
    assert source["selected"] == [(0, "DFW55-C3", 0)]  # not (0, DFW): that pair succeeded in the first job
    assert source["request"]["url_list"] == [URLS[1]] and source["target_pops"] == ["DFW55-C3"]


def test_a_retry_jobs_tasks_are_stored_once_beside_its_urls(tmp_path: Path) -> None:
    settings = Settings(persist=True, state_dir=str(tmp_path))
    state = State(settings)
    selected = [(0, "ATL56-C1", 0), (1, "DFW55-C3", 0)]
    new_job(state, "retry", URLS[:2], ["ATL56-C1", "DFW55-C3"], selected=selected)
    state.finish("retry", "STOPPED")
    (_, meta, urls, _), = list(state.store.jobs())
    assert urls == URLS[:2] and [tuple(t) for t in meta["selected"]] == selected
    stored_meta = state.store._db.execute("SELECT meta FROM jobs").fetchone()[0]  # type: ignore[union-attr]
    assert "selected" not in stored_meta  # the many metadata updates do not rewrite it
    reloaded = State(settings)
    assert reloaded.jobs["retry"].selected == selected and reloaded.progress("retry")["total_count"] == 2


def test_the_size_probe_sets_sizes_and_a_restarted_coordinator_sees_whether_it_ended() -> None:
    state = State(Settings(persist=False))
    new_job(state, "probed", URLS, ["ATL56-C1", "DFW55-C3"])
    state.set_plan("probed", ["ATL56-C1", "DFW55-C3"], {})
    point = state.resume_point("probed")
    assert point["phase"] == "queued" and list(point["pending"]) == list(range(6))
    state.set_phase("probed", "probing")
    # The probes' own GETs (URL i through POP i mod 2, task i * 2 + i % 2), recorded by the fetchers, and the
    # other task of URL 2, whose probe answered 404, failed by the coordinator.
    state.record("probed", [result_row(0, 200, nbytes=1000, attempts=1), result_row(3, 200, nbytes=30, attempts=1),
                            result_row(4, 404, error_class="http_404", message="Not Found", attempts=1),
                            result_row(5, 404, error_class="http_404", message="size probe through ATL56-C1")])
    assert state.resume_point("probed")["phase"] == "probing"  # a coordinator restarted now probes again
    state.set_sizes("probed", np.array([1000, 30, 0], dtype=np.int64))
    state.set_phase("probed", "warming")
    assert state.jobs["probed"].total_size == 2 * (1000 + 30)
    point = state.resume_point("probed")
    assert point["phase"] == "warming" and list(point["pending"]) == [1, 2]  # what the warming then fetches
    assert state.jobs["probed"].table.failure_count == 2  # type: ignore[union-attr]
