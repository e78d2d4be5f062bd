"""Tiered warming on a testbed with regional edge caches: 12 POPs in 3 RECs (the catalogue's grouping), errors
cached as CloudFront caches them, Server-Timing on request. Exact counts at the origin for each tiering mode."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from prewarm.client import ApiError, PrewarmClient
from prewarm.core.catalog import load_catalog
from prewarm.testbed import Testbed

from .conftest import request_body, running_service, wait_final

RECS = {"us-east-1": ["ATL56-C1", "IAD89-P1", "IAD89-P2", "YUL62-C1"],
        "eu-central-1": ["ARN54-C1", "ARN56-P1", "FRA56-P4", "FRA60-P1"],
        "ap-southeast-1": ["SIN2-C1", "SIN2-P1", "SIN2-P2", "SIN52-C2"]}
POPS = [pop for pops in RECS.values() for pop in pops]


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    assert all(load_catalog().rec_of(pop) == rec for rec, pops in RECS.items() for pop in pops)
    with Testbed(pops=POPS, tiers="rec", cache_errors=True, workdir=tmp_path_factory.mktemp("cdn-tiers")) as tb:
        yield tb


@pytest.fixture(scope="module")
def service(cdn: Testbed) -> Iterator[PrewarmClient]:
    # A retry may wait out a cached error's 10 s TTL; no boto3 lookup for "auto" (no Origin Shield here).
    with running_service(cdn, PREWARM_RETRY_AFTER_CAP="12", PREWARM_ORIGIN_SHIELD="0") as (client, _):
        yield client


def run(client: PrewarmClient, urls: list[str], **fields: Any) -> tuple[str, dict[str, Any]]:
    req_id = client.prewarm(request_body(urls, **{"pops": POPS, "timeout": 3, **fields}))["request_id"]
    return req_id, wait_final(client, req_id, timeout_s=180)


def origin_gets_by_url(cdn: Testbed) -> Counter[str]:
    counts: Counter[str] = Counter()
    for row in cdn.origin_counts()["requests"]:
        if row["method"] == "GET":
            counts[row["path"]] += row["count"]
    return counts


@pytest.mark.parametrize("tiering", ["rec", "shield"])
def test_origin_fetches_per_url_follow_the_tiering(service: PrewarmClient, cdn: Testbed, tiering: str) -> None:
    """``rec``: one first fetch per REC, then the REC's other POPs (served by their REC); ``shield`` on a testbed
    without a shield: one first fetch in all, then every other POP (their RECs each fetch once: 3). A URL that
    404s is fetched once (its size probe) and sent to no other POP."""
    cdn.reset()
    paths = [f"/obj/4kb/{tiering}-{i}" for i in range(5)]
    gone = f"/fault/status/404/{tiering}-gone"
    req_id, progress = run(service, [cdn.url(p) for p in [*paths, gone]], tiering=tiering)
    assert progress["status"] == "FINISHED" and progress["success_count"] == 5 * 12
    assert progress["tiering"] == tiering and service.summary(req_id)["tiering"] == tiering
    gets = origin_gets_by_url(cdn)
    assert gets[gone] == 1
    # Without a shield tier every REC fetches once whatever the order; what tiering changes is who waits.
    assert {p: gets[p] for p in paths} == {p: 3 for p in paths}
    by_tier = Counter(row["tier"] for row in cdn.origin_counts(tiers=True)["requests"] if row["path"] in paths)
    assert set(by_tier) == {"REC"}
    assert progress["origin_fetches"] == 5 * 3 + 1  # the GETs that answered cdn-cache-miss, the 404 among them
    summary = service.summary(req_id)
    assert summary["hit_layers"] == {"EDGE": 5 * 12}  # verified afterwards: every POP holds it
    assert sum(summary["hit_layers"].values()) == summary["verified_hit_count"]


def test_rec_fetches_a_slow_object_once_per_rec(service: PrewarmClient, cdn: Testbed) -> None:
    """A slow object (1.5 s before the origin's head) through 12 POPs in 3 RECs: with ``rec`` each REC fetches it
    once and its other POPs wait for that, so at most 3 origin requests are ever in flight (what ``off`` costs past
    the lock timeout is measured by bench/bench_tiers.py)."""
    cdn.reset()
    slow = "/fault/delay/1500/obj/8kb/slow-rec"
    _, progress = run(service, [cdn.url(slow)], tiering="rec")
    assert progress["success_count"] == 12
    assert origin_gets_by_url(cdn)[slow] == 3
    peak = cdn.origin_concurrency()["peak"]
    assert peak <= 3


@pytest.mark.parametrize(("tiering", "cap"), [("rec", 4), ("off", 3)])
def test_max_origin_concurrency_holds_at_the_origin(service: PrewarmClient, cdn: Testbed, tiering: str,
                                                    cap: int) -> None:
    """With rec only the first-tier fetches can reach the origin; with off any GET may: either way, at most the
    cap at once (3 over two fetchers: 2 + 1)."""
    cdn.reset()
    paths = [f"/fault/delay/150/obj/2kb/capped-{tiering}-{i}" for i in range(24)]
    _, progress = run(service, [cdn.url(p) for p in paths], tiering=tiering, max_origin_concurrency=cap)
    assert progress["status"] == "FINISHED" and progress["success_count"] == 24 * 12
    seen = cdn.origin_concurrency()
    assert 1 <= seen["peak"] <= cap, seen["peak"]
    assert sum(origin_gets_by_url(cdn)[p] for p in paths) == 24 * 3


def test_the_origin_limit_falls_under_503s_and_recovers(service: PrewarmClient, cdn: Testbed) -> None:
    """The origin's first 8 answers are 503 (not cacheable): the fetchers' first-tier limits are cut, then grow
    back to their share of max_origin_concurrency while the origin answers well."""
    cdn.reset()
    paths = [f"/fault/delay/150/obj/2kb/aimd-{i}" for i in range(40)]
    cdn.add_fault({"path": "/fault/delay/150/obj/2kb/aimd-*", "status": 503, "count": 8, "per_edge": False,
                   "headers": {"Cache-Control": "no-store"}})
    req_id = service.prewarm(request_body([cdn.url(p) for p in paths], pops=POPS, timeout=3, tiering="rec",
                                          max_origin_concurrency=8))["request_id"]
    limits: list[int] = []
    while (progress := service.progress(req_id))["status"] == "IN_PROGRESS":
        if progress["origin_concurrency_limit"] is not None:
            limits.append(progress["origin_concurrency_limit"])
        time.sleep(0.1)
    assert progress["status"] == "FINISHED" and progress["success_count"] == 40 * 12
    summary = service.summary(req_id)
    assert 2 <= summary["origin_concurrency_low"] < 8  # fell (each fetcher's share is 4; at least 1 each)
    assert limits and limits[-1] == 8  # and grew back to the cap
    assert cdn.origin_concurrency()["peak"] <= 8


def test_objects_the_edges_hold_already_do_not_make_the_origin_look_slow(service: PrewarmClient,
                                                                         cdn: Testbed) -> None:
    """A job whose first URLs every POP holds (an earlier job warmed them) and whose others take the origin 300 ms:
    the Hits' 2 ms are no baseline for the origin, so its limit is never cut (it was, to 1, and such a job, or a
    coordinator restarted mid-probe, crawled at one origin fetch at a time)."""
    cdn.reset()
    paths = [f"/fault/delay/300/obj/2kb/partly-warm-{i}" for i in range(24)]
    _, first = run(service, [cdn.url(p) for p in paths[:8]], tiering="rec", max_origin_concurrency=8)
    assert first["status"] == "FINISHED" and first["success_count"] == 8 * 12
    req_id, progress = run(service, [cdn.url(p) for p in paths], tiering="rec", max_origin_concurrency=8)
    assert progress["status"] == "FINISHED" and progress["success_count"] == 24 * 12
    assert service.summary(req_id)["origin_concurrency_low"] == 8
    assert sum(origin_gets_by_url(cdn)[p] for p in paths) == 24 * 3  # the warm ones from the first job only


def test_an_expanded_manifest_reaches_the_origin_once_per_rec(service: PrewarmClient, cdn: Testbed) -> None:
    """``expand`` with rec tiering: every playlist, key, init segment and segment (byte ranges included) a player
    fetches comes from the origin once per REC, and every POP holds it afterwards."""
    from prewarm.testbed import media

    cdn.reset()
    shapes = ["/media/hls/vod-3/master.m3u8", "/media/hls/vod-3/byterange.m3u8"]
    expected = set().union(*(media.expected(p) for p in shapes))
    _, progress = run(service, [cdn.url(p) for p in shapes], tiering="rec", expand=True, verify=True)
    assert progress["status"] == "FINISHED" and progress["failure_count"] == 0
    assert progress["total_count"] == progress["verified_hit_count"] == len(expected) * 12
    sent: Counter[tuple[str, str]] = Counter()
    for row in cdn.origin_sent():
        sent[(row["path"], row["range"].removeprefix("bytes="))] += row["complete"]
    assert sent == Counter({(p, f"{r[0]}-{r[1]}" if r else ""): 3 for p, r in expected})


def test_a_cached_503_is_retried_once_its_ttl_has_passed(service: PrewarmClient, cdn: Testbed) -> None:
    """The origin answers one 503; the POP and its REC cache it for CloudFront's 10 s. A retry at once would get the
    cached 503 again (three attempts in 10 s: the pair would fail); waiting out the TTL, the second attempt warms."""
    cdn.reset()
    path = "/obj/2kb/flaky-once"
    cdn.add_fault({"path": path, "status": 503, "count": 1, "per_edge": False})
    began = time.monotonic()
    req_id, progress = run(service, [cdn.url(path)], pops=POPS[:1], tiering="off")
    assert progress["status"] == "FINISHED" and progress["success_count"] == 1, (
        service.report(req_id).decode(), cdn.origin_log())
    assert time.monotonic() - began >= 9
    assert origin_gets_by_url(cdn)[path] == 2  # the 503, then the object: no request inside the error's TTL


def test_hit_layer_says_which_tier_holds_a_pair(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    url = cdn.url("/obj/2kb/layers")
    run(service, [url], tiering="rec")
    cdn.purge(POPS[1])  # that POP is cold now; its REC still holds the object
    req_id, progress = run(service, [url], tiering="rec", skip_warm=True)
    assert progress["already_warm_count"] == 12
    assert service.summary(req_id)["hit_layers"] == {"EDGE": 11, "REC": 1}


@pytest.mark.parametrize(("field", "value"), [("tiering", "regional"), ("tiering", 3),
                                              ("max_origin_concurrency", 0), ("max_origin_concurrency", 2.5),
                                              ("max_origin_concurrency", "4")])
def test_bad_tiering_fields_are_a_400_naming_the_field(service: PrewarmClient, cdn: Testbed, field: str,
                                                       value: Any) -> None:
    with pytest.raises(ApiError) as caught:
        service.prewarm(request_body([cdn.url("/obj/1kb/x")], pops=POPS, **{field: value}))
    assert caught.value.status == 400 and f"field '{field}'" in str(caught.value)
