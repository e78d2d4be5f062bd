"""Pure parts of verification, cache-key variants, retry jobs and rate caps: no Ray, no sockets."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from prewarm.core.pacing import Pacer, share_of
from prewarm.core.plan import lane_tasks, per_fetcher_limits, plan_lanes
from prewarm.core.report import cold_pairs, pop_table, report_csv
from prewarm.core.results import TaskTable, is_hit, result_row
from prewarm.engine.store import Store
from prewarm.schema import PrewarmRequest, RetryRequest, request_error

HIT, MISS = "Hit from cloudfront", "Miss from cloudfront"
BASE = {"url_list": ["https://a.example/1"], "timeout": 1, "target_type": "pop", "pops": ["IAD89-P1"],
        "instance_count": 1}


def error_of(body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        PrewarmRequest.model_validate(body)
    return request_error(info.value).message


# -- the task grid with variants ----------------------------------------------------------------
def test_variant_grid_maps_tasks_to_url_pop_and_variant() -> None:
    table = TaskTable(["u0", "u1"], ["P1", "P2"], ["gzip", "br"])
    assert table.total == 8 and table.n_cols == 4
    t = table.task_id(1, 1, 0)
    assert t == 6
    assert (table.url_index(t), table.pop_index(t), table.variant_index(t)) == (1, 1, 0)


def test_verification_counts_apart_from_downloads() -> None:
    table = TaskTable(["u0", "u1"], ["P1"], ["gzip", "br"])
    table.record([
        result_row(0, 200, MISS, "a", 10, 1, 1.0, verify_x_cache=HIT, age=0, rounds=1),
        result_row(1, 200, MISS, "a", 10, 1, 1.0, verify_x_cache=MISS, rounds=3),
        result_row(2, 404, MISS, "a", 5, 1, 1.0, "http_404", "nope"),
    ])
    assert (table.done_count, table.success_count, table.failure_count) == (3, 2, 1)
    assert table.verified_hit_count == 1 and table.warm_ratio == 0.5
    assert list(table.cold_task_ids()) == [1]
    rows, count = cold_pairs(table, 10)
    assert count == 1 and rows == [{"url": "u0", "pop": "P1", "variant": "br", "x_cache": MISS}]
    assert table.failure_urls() == ["u1"]


def test_warm_ratio_is_none_without_verification_and_one_when_all_hit() -> None:
    table = TaskTable(["u0"], ["P1", "P2"])
    table.record([result_row(0, 200, MISS, "a", 1, 1, 1.0)])
    assert table.warm_ratio is None and table.verified_hit_count == 0
    table.record([result_row(1, 200, MISS, "a", 1, 1, 1.0, verify_x_cache="RefreshHit from cloudfront")])
    assert table.warm_ratio == 0.5  # two successes, one verified hit
    assert is_hit("RefreshHit from cloudfront") and is_hit(HIT) and not is_hit(MISS) and not is_hit("")


def test_all_failed_pops_over_variants() -> None:
    table = TaskTable(["u0", "u1"], ["P1", "P2"], ["gzip", "br"])
    rows = [result_row(table.task_id(u, 0, v), 503, error_class="http_503") for u in (0, 1) for v in (0, 1)]
    rows += [result_row(table.task_id(0, 1, 1), 200, MISS, "a", 1, 1, 1.0)]
    table.record(rows)
    assert table.all_failed_pops() == ["P1"]


def test_report_names_the_variant_and_pop_table_sums_variants() -> None:
    table = TaskTable(["u0"], ["P1"], ["Accept-Encoding: gzip", "Accept-Encoding: br"])
    table.record([result_row(0, 200, MISS, "a", 3, 1, 2.0, verify_x_cache=HIT),
                  result_row(1, 500, MISS, "a", 0, 3, 9.0, "http_500", "boom")])
    csv = report_csv(table, {}).decode().splitlines()
    assert csv[0].split(",")[:3] == ["url", "pop", "variant"]
    assert csv[1].startswith("u0,P1,Accept-Encoding: br,a,500")
    assert len(csv) == 2
    [row] = pop_table(table)
    assert (row["success"], row["failure"], row["bytes"]) == (1, 1, 3)


# -- retry jobs: a grid that holds only some tasks ------------------------------------------------
def test_keep_only_counts_only_the_selected_tasks() -> None:
    table = TaskTable(["u0", "u1", "u2"], ["P1", "P2"])
    table.keep_only([table.task_id(0, 1), table.task_id(2, 0)])
    assert table.total == 2 and table.done_count == 0
    table.record([result_row(table.task_id(1, 1), 200, MISS, "a", 1, 1, 1.0)])  # not part of the job
    assert table.done_count == 0
    rows = table.fail_unfinished("timeout", "late")
    assert sorted(r[0] for r in rows) == [1, 4]
    assert table.done_count == 2 and table.failure_urls() == ["u0", "u2"]
    assert len(report_csv(table, {}).decode().splitlines()) == 3
    assert table.all_failed_pops() == ["P1", "P2"]


# -- lanes over (POP, variant) columns -------------------------------------------------------------
def test_lanes_cover_every_column_once() -> None:
    n_cols = 3 * 2  # 3 POPs x 2 variants
    tasks = list(range(5 * n_cols))
    lanes = plan_lanes(tasks, n_cols, 2)
    ids = sorted(t for lane in lanes for t in lane_tasks(lane, n_cols))
    assert ids == tasks
    assert {lane.column for lane in lanes} == set(range(n_cols))


def test_pop_concurrency_cap_is_shared_by_its_variants() -> None:
    lanes = plan_lanes(list(range(4 * 4)), 4, 1)  # 2 POPs x 2 variants, one fetcher
    assert per_fetcher_limits(lanes, 4, 32, n_variants=2) == [16, 16, 16, 16]
    assert per_fetcher_limits(plan_lanes(list(range(8)), 2, 1), 2, 32) == [32, 32]


# -- pacing ---------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_spaces_requests_evenly_without_burst() -> None:
    clock = Clock()
    pacer = Pacer(10, clock=clock)
    waits = [pacer.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    clock.now += 10  # idle for long: no credit is saved up
    assert [pacer.reserve() for _ in range(2)] == pytest.approx([0.0, 0.1])
    pacer.set_rate(None)
    assert pacer.reserve() == 0.0 and pacer.rate is None


def test_fetchers_pacers_take_turns_at_the_start_and_after_idle() -> None:
    """Four fetchers sharing a cap of 40/s: together like one client at 40/s, never four at once."""
    clock = Clock()
    pacers = [Pacer(share_of(40, 4), clock=clock, phase=i / 4) for i in range(4)]

    def send_times(rounds: int) -> list[float]:
        start = clock.now
        return sorted(start + p.reserve() for _ in range(rounds) for p in pacers)

    first = send_times(3)
    assert [round(t - first[0], 3) for t in first] == [round(i * 0.025, 3) for i in range(12)]
    clock.now += 5  # idle (the probe ended, the warming starts): still one at a time
    again = send_times(2)
    assert [round(t - again[0], 3) for t in again] == [round(i * 0.025, 3) for i in range(8)]
    # Without phases the same pacers would send four at the same instant.
    together = [Pacer(10, clock=clock) for _ in range(4)]
    assert [p.reserve() for p in together] == [0.0] * 4


def test_share_of_splits_the_cap() -> None:
    assert share_of(100, 4) == 25 and share_of(None, 3) is None and share_of(10, 0) == 10


# -- request fields ---------------------------------------------------------------------------------
def test_new_fields_defaults() -> None:
    req = PrewarmRequest.model_validate(BASE)
    assert req.verify is True and req.until_hit == 0 and req.max_rps is None
    assert req.variant_headers() == [{}] and req.variant_labels() == [""]


def test_variants_combine_with_header() -> None:
    req = PrewarmRequest.model_validate({**BASE, "header": ["User-Agent: x"],
                                         "variants": [{"Accept-Encoding": "gzip"}, {"Accept-Encoding": "br"}]})
    assert req.variant_headers() == [{"User-Agent": "x", "Accept-Encoding": "gzip"},
                                     {"User-Agent": "x", "Accept-Encoding": "br"}]
    assert req.variant_labels() == ["Accept-Encoding: gzip", "Accept-Encoding: br"]


def test_a_variant_replaces_a_header_of_the_same_name_in_any_case() -> None:
    req = PrewarmRequest.model_validate({**BASE, "header": ["accept-encoding: identity", "User-Agent: x"],
                                         "variants": [{"Accept-Encoding": "gzip"}, {"user-agent": "m"}]})
    assert req.variant_headers() == [{"User-Agent": "x", "Accept-Encoding": "gzip"},
                                     {"accept-encoding": "identity", "user-agent": "m"}]


@pytest.mark.parametrize(("change", "field"), [
    ({"until_hit": 6}, "until_hit"), ({"until_hit": -1}, "until_hit"), ({"verify": "yes"}, "verify"),
    ({"variants": []}, "variants"), ({"variants": [{"Host": "x"}]}, "variants[0]"),
    ({"variants": [{"A": "1"}, {"a": "1"}]}, "variants"), ({"variants": "gzip"}, "variants"),
    ({"max_rps": 0}, "max_rps"), ({"max_rps": "5"}, "max_rps"), ({"max_rps": 5e-324}, "max_rps"),
    ({"variants": [{"Accept-Encoding": "gzip", "accept-encoding": "br"}]}, "variants"),
    ({"callback_url": "ftp://x/"}, "callback_url"), ({"callback_url": "http://"}, "callback_url"),
])
def test_bad_new_fields_name_the_field(change: dict, field: str) -> None:
    assert f"field '{field}'" in error_of({**BASE, **change})


def test_retry_request_refuses_inherited_fields_and_merges_overrides() -> None:
    with pytest.raises(ValidationError) as info:
        RetryRequest.model_validate({"retry_of": "8c2b8bde-1fd6-4f7e-9b57-16e1c4c3a3d7", "url_list": ["x"]})
    assert request_error(info.value).message.startswith("field 'url_list' cannot be given with retry_of")
    with pytest.raises(ValidationError) as info:
        RetryRequest.model_validate({"retry_of": "nope"})
    assert "field 'retry_of'" in request_error(info.value).message
    retry = RetryRequest.model_validate({"retry_of": "8C2B8BDE-1FD6-4F7E-9B57-16E1C4C3A3D7", "timeout": 3})
    req = retry.build({**BASE, "header": {"X-A": "1"}, "verify": False})
    assert req.retry_of == "8c2b8bde-1fd6-4f7e-9b57-16e1c4c3a3d7"
    assert (req.timeout, req.header, req.verify, req.url_list) == (3, {"X-A": "1"}, False, BASE["url_list"])


def test_a_retry_never_invalidates() -> None:
    """Invalidating would empty every edge of the URLs; the retry refetches them only where they failed."""
    retry = RetryRequest.model_validate({"retry_of": "8c2b8bde-1fd6-4f7e-9b57-16e1c4c3a3d7"})
    assert retry.build({**BASE, "need_invalidate": True}).need_invalidate is False
    with pytest.raises(ValidationError) as info:
        RetryRequest.model_validate({"retry_of": "8c2b8bde-1fd6-4f7e-9b57-16e1c4c3a3d7", "need_invalidate": True})
    assert request_error(info.value).message.startswith("field 'need_invalidate': a retry does not invalidate")


# -- the store keeps the verification fields, and upgrades an older file --------------------------
def test_store_upgrades_a_file_without_verification_columns(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "prewarm.sqlite3")
    db.executescript(
        "CREATE TABLE jobs (req_id TEXT PRIMARY KEY, meta TEXT NOT NULL, urls TEXT NOT NULL);"
        "CREATE TABLE results (req_id TEXT NOT NULL, task_id INTEGER NOT NULL, status INTEGER, x_cache TEXT,"
        " address TEXT, bytes INTEGER, attempts INTEGER, elapsed_ms REAL, error_class TEXT, error_message TEXT,"
        " PRIMARY KEY (req_id, task_id)) WITHOUT ROWID;"
        "INSERT INTO jobs VALUES ('a', '{}', '[\"u\"]');"
        "INSERT INTO results VALUES ('a', 0, 200, 'x', 'y', 1, 1, 1.0, '', '');"
    )
    db.commit()
    db.close()
    store = Store(tmp_path)
    store.save_results("a", [result_row(1, 200, MISS, "b", 2, 1, 1.0, verify_x_cache=HIT, age=4, rounds=2),
                             result_row(0, 500, error_class="http_500")])  # task 0 was stored first: kept
    [(_, _, _, rows)] = list(store.jobs())
    assert rows[0] == (0, 200, "x", "y", 1, 1, 1.0, "", "", "", -1, 0)  # an old per-task row, with defaults
    assert rows[1] == (1, 200, MISS, "b", 2, 1, 1.0, "", "", HIT, 4, 2, 0, -1, False, [], "", 0)  # a batch row
    assert len(rows) == 2
