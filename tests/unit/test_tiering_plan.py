"""Tiered warming without Ray: tier groups over columns, who goes first, who waits, and the adaptive origin limit."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prewarm.core.catalog import load_catalog
from prewarm.core.pacing import AdaptiveLimit
from prewarm.core.plan import cap_share, column_groups, group_firsts, lane_of_tasks, plan_lanes, released_in_group
from prewarm.engine.fetcher import OriginGate
from prewarm.net.popclient import FetchResult
from prewarm.schema import PrewarmRequest, request_error
from prewarm.settings import Settings


def test_column_groups_follow_the_pops_tier_and_the_variant() -> None:
    # POPs 0, 1 in REC 0; POP 2 in REC 1; two variants: each (REC, variant) is a group
    groups = column_groups([0, 0, 1], 2)
    assert list(groups) == [0, 2, 0, 2, 1, 3]


def grid(n_urls: int, n_cols: int, n_fetchers: int = 2) -> tuple[np.ndarray, list]:
    lanes = plan_lanes(range(n_urls * n_cols), n_cols, n_fetchers)
    return lane_of_tasks(lanes, n_urls * n_cols, n_cols), lanes


def test_a_probe_releases_its_group_and_names_each_other_groups_first() -> None:
    n_cols = 6  # POPs 0-2 in REC 0, 3-5 in REC 1
    col_group = column_groups([0, 0, 0, 1, 1, 1], 1)
    lane_of, lanes = grid(4, n_cols)
    released = released_in_group(lane_of, [0, 2], 1, col_group, n_cols)
    got = sorted((lanes[lane].column, u) for lane, urls in released.items() for u in urls)
    assert got == [(0, 0), (0, 2), (2, 0), (2, 2)]  # the probe's REC, other POPs, for both URLs
    firsts = group_firsts(lane_of, [0, 1, 2], 1, col_group, n_cols)
    tasks = sorted(t for ts in firsts.values() for t in ts)
    # one task per URL in REC 1, spread over its POPs by URL index: URL u through POP 3 + u mod 3
    assert tasks == [0 * n_cols + 3, 1 * n_cols + 4, 2 * n_cols + 5]
    assert all(lanes[lane].column == t % n_cols for lane, ts in firsts.items() for t in ts)


def test_one_group_for_shield_has_no_other_first() -> None:
    col_group = column_groups([0, 0, 0], 1)
    lane_of, _ = grid(3, 3)
    assert group_firsts(lane_of, [0, 1, 2], 0, col_group, 3) == {}
    released = released_in_group(lane_of, [1], 0, col_group, 3)
    assert sorted(u for urls in released.values() for u in urls) == [1, 1]


def test_tasks_no_lane_holds_are_left_out() -> None:
    n_cols = 4
    col_group = column_groups([0, 0, 1, 1], 1)
    lanes = plan_lanes([0 * 4 + 0, 0 * 4 + 1, 0 * 4 + 3], n_cols, 1)  # URL 0 without POP 2 (a retry job)
    lane_of = lane_of_tasks(lanes, 4, n_cols)
    firsts = group_firsts(lane_of, [0], 0, col_group, n_cols)
    assert [t for ts in firsts.values() for t in ts] == [3]


def test_catalogue_recs() -> None:
    catalog = load_catalog()
    assert catalog.rec_of("ATL56-C1") == "us-east-1" and catalog.rec_of("FRA60-P1") == "eu-central-1"
    assert catalog.rec_of("FRA99-P9") == "eu-central-1"  # not catalogued: a catalogued POP at its airport
    assert catalog.rec_of("ZZZ9-C9") is None


def test_adaptive_limit_halves_on_trouble_and_grows_back() -> None:
    now = [0.0]
    limit = AdaptiveLimit(8, clock=lambda: now[0], cooldown_s=0.5)
    assert limit.limit == 8
    limit.observe(True)
    assert limit.limit == 4
    limit.observe(True)  # within the cooldown: one cut per burst of trouble
    assert limit.limit == 4
    now[0] = 1.0
    limit.observe(True)
    assert limit.limit == 2
    for _ in range(40):  # healthy: one more per limit's worth of successes, up to the ceiling
        limit.observe(False, 20.0)
    assert limit.limit == 8
    now[0] = 2.0
    limit.observe(False, 20.0 * 10)  # a first byte ten times the fastest seen: the origin is struggling
    assert limit.limit == 4
    assert [n for _, n in limit.history] == [8, 4, 2, 3, 4, 5, 6, 7, 8, 4]


def test_origin_gate_never_lets_more_through_than_its_limit() -> None:
    async def main() -> tuple[int, list[int]]:
        gate = OriginGate(4)
        running, peak, limits = 0, 0, []

        async def one(fail: bool) -> None:
            nonlocal running, peak
            await gate.acquire()
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            gate.release(FetchResult(status=200, x_cache="Miss from cloudfront", attempts=2 if fail else 1,
                                     troubled=fail, exchange_ms=10.0))
            limits.append(gate.limit.limit)

        await asyncio.gather(*(one(i < 6) for i in range(40)))
        return peak, limits

    peak, limits = asyncio.run(main())
    assert peak <= 4 and min(limits) < 4 and limits[-1] == 4  # cut by the 503s, back up to its share


def test_cache_hits_among_first_tier_fetches_do_not_make_the_origin_look_slow() -> None:
    # A restarted job, or one whose URLs are partly at the edge already: some first-tier fetches are 2 ms Hits,
    # the rest 300 ms origin fetches. Only the origin's answers say how it is: its limit stays at its share.
    gate = OriginGate(16)
    for i in range(200):
        hit = i % 3 == 0
        gate.release(FetchResult(status=200, x_cache="Hit from cloudfront" if hit else "Miss from cloudfront",
                                 attempts=1, exchange_ms=2.0 if hit else 300.0))
    assert gate.limit.limit == 16 and gate.low == 16
    # The same answers counted alike (the old gate) would have cut it to one: the test can fail.
    limit = AdaptiveLimit(16, cooldown_s=0.0)
    for i in range(200):
        limit.observe(False, 2.0 if i % 3 == 0 else 300.0)
    assert limit.limit == 1


@pytest.mark.parametrize(("value", "ok"), [("auto", True), ("REC", True), ("shield", True), ("off", True),
                                           ("tiered", False), (1, False)])
def test_tiering_values(value: object, ok: bool) -> None:
    body = {"url_list": ["https://h.example/a"], "timeout": 1, "target_type": "pop", "pops": ["ATL56-C1"],
            "instance_count": 1, "tiering": value}
    if ok:
        assert PrewarmRequest.model_validate(body).tiering == str(value).lower()
    else:
        with pytest.raises(Exception) as caught:
            PrewarmRequest.model_validate(body)
        assert "field 'tiering'" in request_error(caught.value).message  # type: ignore[arg-type]


def test_origin_settings() -> None:
    assert Settings.from_env({}).origin_shield is None and Settings.from_env({}).max_origin_concurrency == 64
    assert Settings.from_env({"PREWARM_ORIGIN_SHIELD": "1"}).origin_shield is True
    assert Settings.from_env({"PREWARM_ORIGIN_SHIELD": "0"}).origin_shield is False
    with pytest.raises(ValueError, match="PREWARM_ORIGIN_SHIELD"):
        Settings.from_env({"PREWARM_ORIGIN_SHIELD": "maybe"})


def test_cap_shares_add_up_to_the_cap() -> None:
    assert [cap_share(16, 2, i) for i in range(2)] == [8, 8]
    assert [cap_share(3, 2, i) for i in range(2)] == [2, 1]  # not 1 + 1
    assert [cap_share(7, 3, i) for i in range(3)] == [3, 2, 2]
    assert [cap_share(1, 2, i) for i in range(2)] == [1, 1]  # under the fetchers: each keeps one
