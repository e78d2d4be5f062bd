import io
from collections import Counter

import pandas as pd

from prewarm.cluster import FETCHER_RESOURCE, choose_nodes, combined_ask, fetcher_nodes_exist
from prewarm.plan import even_chunk_size, interleave_by_node, lane_batches, plan_lanes, probe_plan
from prewarm.progress import TaskTable, counts, percentage, result_row
from prewarm.report import REPORT_COLUMNS, pop_table, report_csv


def test_probe_chunks_are_at_most_the_batch_size_and_even_over_fetchers() -> None:
    for n_items, batch, fetchers in [(5000, 1024, 2), (5000, 256, 2), (10, 1024, 3), (1, 1024, 4), (7, 2, 2),
                                     (1_000_000, 1024, 6), (0, 1024, 2)]:
        size = even_chunk_size(n_items, batch, fetchers)
        chunks = [min(size, n_items - s) for s in range(0, n_items, size)]
        per_fetcher = [sum(chunks[f::fetchers]) for f in range(fetchers)]
        assert 1 <= size <= batch and sum(chunks) == n_items
        assert max(per_fetcher) - min(per_fetcher) <= size, (n_items, batch, fetchers, per_fetcher)
        if n_items >= batch * fetchers:  # enough work for every fetcher: all get the same number of chunks
            assert len(chunks) % fetchers == 0, (n_items, batch, fetchers, len(chunks))
    assert even_chunk_size(5000, 1024, 2) == 834  # 6 chunks, 3 per fetcher (not 5 of 1,024: 3 and 2)


def test_the_probe_sends_each_url_once_through_pop_i_mod_n_at_the_pops_cap() -> None:
    for n_urls, n_pops, n_fetchers in [(5000, 4, 2), (5000, 1, 2), (10, 3, 2), (7, 2, 6), (3, 5, 2), (1, 1, 1)]:
        plan = probe_plan(n_urls, n_pops, n_fetchers, batch_size=1024, max_concurrency=32)
        seen = sorted(u for chunk in plan for u in chunk.url_indices)
        assert seen == list(range(n_urls))  # every URL exactly once
        for chunk in plan:
            assert all(u % n_pops == chunk.pop for u in chunk.url_indices) and len(chunk.url_indices) <= 1024
            on_pop = {c.owner for c in plan if c.pop == chunk.pop}
            assert chunk.limit == max(1, 32 // len(on_pop))  # the POP never sees more than its cap at once
    # 4 POPs on 2 fetchers: a POP's URLs stay on one fetcher (its pool), two POPs each, all of the cap.
    plan = probe_plan(5000, 4, 2, 1024, 32)
    assert {(c.pop, c.owner) for c in plan} == {(0, 0), (1, 1), (2, 0), (3, 1)} and {c.limit for c in plan} == {32}
    assert sum(len(c.url_indices) for c in plan if c.owner == 0) == 2500
    # One POP on 2 fetchers: both probe through it, each at half the cap, the same share of URLs.
    plan = probe_plan(5000, 1, 2, 1024, 32)
    assert {c.limit for c in plan} == {16}
    assert [sum(len(c.url_indices) for c in plan if c.owner == f) for f in (0, 1)] == [2502, 2498]


def test_lanes_cover_every_task_once() -> None:
    for n_urls, n_pops, n_fetchers in [(10, 3, 2), (7, 1, 4), (100, 16, 6), (1, 2, 8), (5, 5, 5)]:
        lanes = plan_lanes(range(n_urls * n_pops), n_pops, n_fetchers)
        tasks = [t for lane in lanes for batch in lane_batches(lane, n_pops, 3) for t in batch]
        assert sorted(tasks) == list(range(n_urls * n_pops))
        assert all(0 <= lane.owner < n_fetchers for lane in lanes)
        assert all(len(b) <= 3 for lane in lanes for b in lane_batches(lane, n_pops, 3))


def test_every_fetcher_gets_work_and_pops_spread_evenly() -> None:
    lanes = plan_lanes(range(100), 1, 4)  # one POP, four fetchers: four shares of the URLs
    assert sorted(lane.owner for lane in lanes) == [0, 1, 2, 3]
    lanes = plan_lanes(range(80), 8, 4)  # eight POPs over four fetchers: two each
    assert Counter(lane.owner for lane in lanes) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_only_the_given_tasks_are_planned() -> None:
    lanes = plan_lanes([0, 1, 4, 5, 7], 2, 1)
    tasks = sorted(t for lane in lanes for b in lane_batches(lane, 2, 10) for t in b)
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
