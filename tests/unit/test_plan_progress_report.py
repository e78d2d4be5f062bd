import io
from collections import Counter, deque

import pandas as pd

from prewarm.core.plan import (
    batch_up,
    interleave_by_node,
    lane_of_tasks,
    lane_tasks,
    per_fetcher_limits,
    plan_lanes,
    probe_plan,
    released_by_probe,
)
from prewarm.core.report import REPORT_COLUMNS, pop_table, report_csv
from prewarm.core.results import TaskTable, counts, percentage, result_row
from prewarm.engine.cluster import FETCHER_RESOURCE, choose_nodes, combined_ask, fetcher_nodes_exist


def test_the_probe_runs_one_task_of_each_url_on_the_fetcher_of_its_lane() -> None:
    for n_urls, n_pops, n_variants, n_fetchers in [(5000, 4, 1, 2), (5000, 1, 1, 2), (10, 3, 2, 2), (7, 2, 1, 6),
                                                   (3, 5, 1, 2), (1, 1, 1, 1), (2500, 3, 2, 4)]:
        n_cols = n_pops * n_variants
        lanes = plan_lanes(range(n_urls * n_cols), n_cols, n_fetchers)
        limits = per_fetcher_limits(lanes, n_cols, 32, n_variants)
        plan = probe_plan(lanes, lane_of_tasks(lanes, n_urls * n_cols, n_cols), n_cols, limits, batch_size=1024)
        probed = sorted(t for chunk in plan for t in chunk.task_ids)
        # One task per URL, in column u mod n_cols: with one variant, through POP u mod n_pops.
        assert probed == [u * n_cols + u % n_cols for u in range(n_urls)]
        for chunk in plan:
            assert 0 < len(chunk.task_ids) <= 1024
            for t in chunk.task_ids:
                u, col = divmod(t, n_cols)
                assert col == chunk.column
                # The fetcher, and the cap share, of the lane that holds the task.
                (lane,) = [la for la in lanes if la.column == col and u in la.url_indices]
                assert (chunk.owner, chunk.limit) == (lane.owner, limits[lane.column])
    # 4 POPs on 2 fetchers: each fetcher probes through its two POPs, at the whole cap of each: half the URLs.
    lanes = plan_lanes(range(5000 * 4), 4, 2)
    plan = probe_plan(lanes, lane_of_tasks(lanes, 5000 * 4, 4), 4, per_fetcher_limits(lanes, 4, 32), 1024)
    assert {(c.column, c.owner, c.limit) for c in plan} == {(0, 0, 32), (1, 1, 32), (2, 0, 32), (3, 1, 32)}
    assert sum(len(c.task_ids) for c in plan if c.owner == 0) == 2500
    # One POP on 2 fetchers: both probe through it, each at half its cap, each half of the URLs.
    lanes = plan_lanes(range(5000), 1, 2)
    plan = probe_plan(lanes, lane_of_tasks(lanes, 5000, 1), 1, per_fetcher_limits(lanes, 1, 32), 1024)
    assert {c.limit for c in plan} == {16}
    assert [sum(len(c.task_ids) for c in plan if c.owner == f) for f in (0, 1)] == [2500, 2500]


def test_a_partial_grid_probes_each_url_once_among_the_tasks_it_holds() -> None:
    # A retry job (or a resumed one): URL 0 holds columns 1 and 2, URL 1 column 0 alone, URL 2 nothing.
    lanes = plan_lanes([1, 2, 3], 3, 2)
    plan = probe_plan(lanes, lane_of_tasks(lanes, 9, 3), 3, per_fetcher_limits(lanes, 3, 32), 1024)
    assert sorted(t for c in plan for t in c.task_ids) == [1, 3]  # URL 0: cols [1, 2][0 mod 2]; URL 1: col 0
    lanes = plan_lanes([1, 2, 3, 5], 3, 2)  # URL 1 now holds columns 0 and 2: its probe is the second, [0, 2][1 mod 2]
    plan = probe_plan(lanes, lane_of_tasks(lanes, 9, 3), 3, per_fetcher_limits(lanes, 3, 32), 1024)
    assert sorted(t for c in plan for t in c.task_ids) == [1, 5]


def test_each_probe_chunk_lets_go_its_urls_other_tasks_once_to_the_lanes_that_hold_them() -> None:
    for n_urls, n_cols, n_fetchers in [(10, 4, 2), (7, 1, 3), (25, 3, 4), (3, 5, 2)]:
        lanes = plan_lanes(range(n_urls * n_cols), n_cols, n_fetchers)
        lane_of = lane_of_tasks(lanes, n_urls * n_cols, n_cols)
        plan = probe_plan(lanes, lane_of, n_cols, per_fetcher_limits(lanes, n_cols, 32), 4)
        released: list[int] = []
        for chunk in plan:
            urls = [t // n_cols for t in chunk.task_ids]
            for lane_id, got in released_by_probe(lane_of, urls, chunk.column, n_cols).items():
                lane = lanes[lane_id]
                assert lane.column != chunk.column and set(got) <= set(lane.url_indices) and got == sorted(got)
                released += [u * n_cols + lane.column for u in got]
        probed = [t for chunk in plan for t in chunk.task_ids]
        # Every task is either its URL's probe or let go by that probe, exactly once.
        assert sorted(released + probed) == list(range(n_urls * n_cols))
    # A retry job's partial grid: only the tasks the lanes hold are let go.
    lanes = plan_lanes([1, 2, 3, 5], 3, 1)  # URL 0: columns 1, 2; URL 1: columns 0, 2
    lane_of = lane_of_tasks(lanes, 6, 3)
    assert {lanes[i].column: got for i, got in released_by_probe(lane_of, [0, 1], 1, 3).items()} == {0: [1], 2: [0, 1]}
    assert released_by_probe(lane_of, [], 1, 3) == {} and released_by_probe(lane_of_tasks(lanes, 6, 1), [0], 0, 1) == {}


def test_tasks_are_batched_in_full_batches_as_they_arrive() -> None:
    batches: deque[list[int]] = deque()
    batch_up(batches, range(5), 3)
    assert list(batches) == [[0, 1, 2], [3, 4]]
    batch_up(batches, [5, 6, 7, 8], 3)  # the short batch is filled up first
    assert list(batches) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    batch_up(batches, [], 3)
    assert len(batches) == 3


def test_lanes_cover_every_task_once() -> None:
    for n_urls, n_pops, n_fetchers in [(10, 3, 2), (7, 1, 4), (100, 16, 6), (1, 2, 8), (5, 5, 5)]:
        lanes = plan_lanes(range(n_urls * n_pops), n_pops, n_fetchers)
        tasks = [t for lane in lanes for t in lane_tasks(lane, n_pops)]
        assert sorted(tasks) == list(range(n_urls * n_pops))
        assert all(0 <= lane.owner < n_fetchers for lane in lanes)


def test_every_fetcher_gets_work_and_pops_spread_evenly() -> None:
    lanes = plan_lanes(range(100), 1, 4)  # one POP, four fetchers: four shares of the URLs
    assert sorted(lane.owner for lane in lanes) == [0, 1, 2, 3]
    lanes = plan_lanes(range(80), 8, 4)  # eight POPs over four fetchers: two each
    assert Counter(lane.owner for lane in lanes) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_only_the_given_tasks_are_planned() -> None:
    lanes = plan_lanes([0, 1, 4, 5, 7], 2, 1)
    tasks = sorted(t for lane in lanes for t in lane_tasks(lane, 2))
    assert tasks == [0, 1, 4, 5, 7]
    assert plan_lanes([], 2, 3) == []


def test_interleave_by_node() -> None:
    assert interleave_by_node([["a1", "a2"], ["b1"], ["c1", "c2"]]) == ["a1", "b1", "c1", "a2", "c2"]


def test_choose_nodes_prefers_marked_nodes_and_caps_count() -> None:
    nodes = [
        {"NodeID": "head", "Alive": True, "Resources": {"CPU": 2}},
        {"NodeID": "w1", "Alive": True, "Resources": {"CPU": 4, FETCHER_RESOURCE: 1}},
        {"NodeID": "w2", "Alive": True, "Resources": {"CPU": 2, FETCHER_RESOURCE: 1}},
        {"NodeID": "w3", "Alive": False, "Resources": {"CPU": 2, FETCHER_RESOURCE: 1}},
    ]
    slots = choose_nodes(nodes, 5, 0, "x")
    assert {s.node_id for s in slots} == {"w1", "w2"}
    assert {s.node_id: s.fetchers for s in slots} == {"w1": 4, "w2": 2}
    assert len(choose_nodes(nodes, 1, 3, "x")) == 1
    assert choose_nodes(nodes, 1, 3, "x")[0].fetchers == 3
    unmarked = [{"NodeID": "n", "Alive": True, "Resources": {"CPU": 2}}]
    assert [s.node_id for s in choose_nodes(unmarked, 2, 0)] == ["n"]
    assert fetcher_nodes_exist(nodes) and not fetcher_nodes_exist(unmarked)
    assert not fetcher_nodes_exist([{**nodes[3]}])  # a dead fetcher node does not count


def row(task: int, ok: bool = True, nbytes: int = 100, ms: float = 10.0, pop_err: str = "http_404"):
    if ok:
        return result_row(task, 200, "Miss from cloudfront", "127.0.0.2", nbytes, 1, ms, rounds=1)
    return result_row(task, 404, "Miss from cloudfront", "127.0.0.2", 0, 1, ms, pop_err, "HTTP 404 Not Found", rounds=1)


def test_task_table_counts_each_task_once() -> None:
    table = TaskTable(["u0", "u1", "u2"], ["P1", "P2"])
    assert table.total == 6
    assert table.record([row(0), row(1), row(2, ok=False)]) == 3
    assert table.record([row(0), row(1, ok=False)]) == 0  # a retried batch: first result wins
    assert (table.done_count, table.success_count, table.failure_count) == (3, 2, 1)
    assert table.download_size == 200
    assert table.failure_urls() == ["u1"]
    assert [r[0] for r in table.fail_unfinished("timeout", "deadline")] == [3, 4, 5]
    assert table.failure_urls() == ["u1", "u2"]
    assert table.done_count == 6


def test_all_failed_pops() -> None:
    table = TaskTable(["u0", "u1"], ["P1", "P2"])
    table.record([row(0), row(1, ok=False), row(2), row(3, ok=False)])
    assert table.all_failed_pops() == ["P2"]


def test_progress_arithmetic() -> None:
    assert percentage(0, 0) == 100
    assert percentage(2, 3) == 66
    assert percentage(3, 3) == 100
    assert counts(total=10, done=3, dispatched=5) == (2, 5)
    assert counts(total=10, done=6, dispatched=5) == (0, 4)


def test_report_has_exactly_the_failed_rows() -> None:
    table = TaskTable(["https://a/0", "https://a/1"], ["P1", "P2"])
    table.record([row(0), row(1, ok=False), row(2, ok=False, pop_err="connection"), row(3)])
    frame = pd.read_csv(io.BytesIO(report_csv(table, {"BAD1-C1": "NXDOMAIN"})), keep_default_na=False)
    assert list(frame.columns) == REPORT_COLUMNS
    assert frame[["url", "pop", "error_class"]].values.tolist() == [
        ["", "BAD1-C1", "pop_unavailable"],
        ["https://a/0", "P2", "http_404"],
        ["https://a/1", "P1", "connection"],
    ]
    assert frame.loc[1, "status_code"] == 404


def test_pop_table() -> None:
    table = TaskTable(["a", "b", "c"], ["P1", "P2"])
    table.record([row(0, ms=10), row(2, ms=20), row(4, ms=30), row(1, ok=False)])
    rows = {r["pop"]: r for r in pop_table(table)}
    assert rows["P1"] == {"pop": "P1", "success": 3, "failure": 0, "bytes": 300, "p50_ms": 20.0, "p95_ms": 29.0}
    assert rows["P2"]["failure"] == 1 and rows["P2"]["p50_ms"] is None


def test_autoscaler_ask_is_the_largest_need() -> None:
    assert combined_ask(0, []) == 0
    assert combined_ask(2, [1, 5, 3]) == 5  # jobs share nodes: the largest job sets the need
    assert combined_ask(4, [1]) == 4
