"""The testbed's CloudFront tiers: regional edge caches, Origin Shield, request collapsing, error caching,
Server-Timing and the origin's concurrency log. Real nginx, real sockets, exact counts at the origin.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prewarm.testbed import Testbed, TestbedError, catalog_recs
from prewarm.testbed.origin import object_bytes

HOST = "www.example.com"
PRAGMA = {"Pragma": "server-timing"}
HIT, MISS, ERROR, REFRESH = ("Hit from cloudfront", "Miss from cloudfront", "Error from cloudfront",
                             "RefreshHit from cloudfront")
# Twelve test POPs in three RECs (rec_of overrides the catalogue for codes it does not know).
RECS = ("rec-a", "rec-b", "rec-c")
TEST_POPS = tuple(f"T{r[-1].upper()}{k}-C1" for r in RECS for k in range(1, 5))  # TA1-C1 .. TC4-C1
TEST_REC_OF = {pop: f"rec-{pop[1].lower()}" for pop in TEST_POPS}
LOCK_TIMEOUT = 1.0  # nginx's default is 5 s; lowered to keep the over-the-lock-timeout test short


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(address: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
          port: int = 80, timeout: float = 15.0) -> Reply:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Host": HOST, **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


def via(tb: Testbed, pop: str, path: str, **kw: object) -> Reply:
    return fetch(tb.pop_addresses[pop][0], path, **kw)  # type: ignore[arg-type]


def timing(reply: Reply) -> dict[str, str]:
    """Server-Timing as {metric: desc or dur or ""}."""
    out: dict[str, str] = {}
    for item in reply.headers["server-timing"].split(","):
        name, _, param = item.partition(";")
        out[name] = param.partition("=")[2].strip('"')
    return out


def names(reply: Reply) -> list[str]:
    return [item.partition(";")[0] for item in reply.headers["server-timing"].split(",")]


def origin_rows(tb: Testbed, path: str) -> list[tuple[str, str, str, str, int]]:
    """(edge, rec, shield, tier, count) of every GET of ``path`` at the origin, first seen first."""
    return [(r["edge"], r["rec"], r["shield"], r["tier"], r["count"]) for r in tb.origin_counts(tiers=True)["requests"]
            if r["path"] == path and r["method"] == "GET"]


def origin_total(tb: Testbed, path: str) -> int:
    return sum(row[-1] for row in origin_rows(tb, path))


def concurrently(calls: list[tuple[str, str]], tb: Testbed, headers: dict[str, str] | None = None) -> list[Reply]:
    """GET each (pop, path) at once, one thread each; the replies in order."""
    replies: list[Reply | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int, pop: str, path: str) -> None:
        start.wait()
        replies[i] = via(tb, pop, path, headers=headers)

    threads = [threading.Thread(target=run, args=(i, pop, path)) for i, (pop, path) in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in replies)
    return replies  # type: ignore[return-value]


@pytest.fixture(scope="module")
def rec_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """Twelve POPs in three RECs, errors cached as CloudFront does (for 1 s, not 10, to keep tests short)."""
    with Testbed(pops=TEST_POPS, tiers="rec", rec_of=TEST_REC_OF, cache_errors=True, error_ttl=1,
                 lock_timeout=LOCK_TIMEOUT, workdir=tmp_path_factory.mktemp("recs")) as tb:
        yield tb


@pytest.fixture
def recs(rec_bed: Testbed) -> Iterator[Testbed]:
    rec_bed.reset()
    yield rec_bed


SHIELD_POPS = ("FRA60-P1", "ARN54-C1", "CDG50-P1", "NRT51-P2", "IAD89-P1")  # eu-central-1 x2, eu-west-2, ...


@pytest.fixture(scope="module")
def shield_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """Catalogue POPs of four RECs behind the Origin Shield in us-east-1 (the REC of IAD89-P1)."""
    with Testbed(pops=SHIELD_POPS, tiers="shield", workdir=tmp_path_factory.mktemp("shield")) as tb:
        yield tb


@pytest.fixture
def shield(shield_bed: Testbed) -> Iterator[Testbed]:
    shield_bed.reset()
    yield shield_bed


@pytest.fixture(scope="module")
def flat_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A flat testbed with the cache lock on (as CloudFront collapses) and Server-Timing on every answer."""
    with Testbed(pops=("FLA1-C1", "FLB1-C1", "FLC1-C1"), collapse=True, lock_timeout=LOCK_TIMEOUT,
                 server_timing="always", workdir=tmp_path_factory.mktemp("flat")) as tb:
        yield tb


@pytest.fixture
def flat(flat_bed: Testbed) -> Iterator[Testbed]:
    flat_bed.reset()
    yield flat_bed


# -- grouping and shape --------------------------------------------------------------------------------
def test_rec_grouping_from_the_catalogue_and_rec_of() -> None:
    table = catalog_recs()
    assert len(table) == 13 and table["eu-central-1"] == ["ARN54-C1", "ARN56-P1", "FRA56-P4", "FRA60-P1"]
    tb = Testbed(tiers="rec")  # every catalogue POP has a REC
    assert tb.rec_of_pop("FRA60-P1") == "eu-central-1" and tb.rec_of_pop("IAD89-P1") == "us-east-1"
    assert tb.pops_of_rec("sa-east-1") == ["GRU1-C2", "GRU3-P1"] and len(tb.recs) == 13
    assert Testbed(pops=["FRA99-P9"], tiers="rec").rec_of_pop("FRA99-P9") == "eu-central-1"  # same airport
    assert Testbed(pops=["FRA60-P1"], rec_of={"FRA60-P1": "mine"}).rec_of_pop("FRA60-P1") == "mine"
    assert Testbed().collapse is False and Testbed(tiers="rec").collapse is True  # flat stays as it was
    assert Testbed(tiers="shield").origin_shield == "us-east-1"
    with pytest.raises(ValueError, match="rec_of"):
        Testbed(pops=["ZZZ1-C1"], tiers="rec")
    with pytest.raises(TestbedError, match="rec_of"):
        Testbed(pops=["ZZZ1-C1"]).rec_of_pop("ZZZ1-C1")
    for bad in ({"tiers": "mesh"}, {"server_timing": "sometimes"}, {"origin_shield": "us-east-1"},
                {"rec_of": {"FRA60-P1": "bad name"}}, {"lock_timeout": 0}):
        with pytest.raises(ValueError):
            Testbed(pops=["FRA60-P1"], **bad)  # type: ignore[arg-type]


def test_recs_listen_in_the_slot_and_state_round_trips(rec_bed: Testbed, tmp_path: Path) -> None:
    tb = rec_bed
    assert tb.recs == list(RECS) and all(tb.rec_of_pop(p) == TEST_REC_OF[p] for p in TEST_POPS)
    assert tb.rec_addresses == {rec: f"127.{tb.slot}.0.{16 + j}" for j, rec in enumerate(RECS)}
    assert tb.shield_address is None and tb.origin_shield is None
    tb.save_state(tmp_path / "state")
    attached = Testbed.from_state_dir(tmp_path / "state")
    assert (attached.tiers, attached.recs, attached.rec_addresses) == ("rec", tb.recs, tb.rec_addresses)
    assert (attached.cache_errors, attached.error_ttl, attached.lock_timeout) == (True, 1, LOCK_TIMEOUT)
    assert attached.origin_counts() == tb.origin_counts()


# -- POP -> REC -> origin -------------------------------------------------------------------------------
def test_a_miss_goes_pop_rec_origin_and_the_rec_serves_its_other_pops(recs: Testbed) -> None:
    tb, path = recs, "/obj/2kb/tiers/a"
    a1, a2, b1 = "TA1-C1", "TA2-C1", "TB1-C1"
    first = via(tb, a1, path, headers=PRAGMA)
    assert first.status == 200 and first.body == object_bytes("tiers/a", 2048)
    assert first.headers["x-cache"] == MISS and "age" not in first.headers
    assert names(first) == ["cdn-upstream-layer", "cdn-upstream-dns", "cdn-upstream-connect", "cdn-upstream-fbl",
                            "cdn-cache-miss", "cdn-pop", "cdn-rid", "cdn-downstream-fbl"]
    st = timing(first)
    assert st["cdn-upstream-layer"] == "REC" and st["cdn-pop"] == a1 and st["cdn-upstream-dns"] == "0"
    assert st["cdn-rid"] == first.headers["x-amz-cf-id"]
    assert all(int(st[m]) >= 0 for m in ("cdn-upstream-connect", "cdn-upstream-fbl", "cdn-downstream-fbl"))
    assert not any(h.startswith("x-tb-") for h in first.headers)  # the tiers' own headers stay inside
    assert origin_rows(tb, path) == [(a1, "rec-a", "", "REC", 1)]

    second = via(tb, a2, path, headers=PRAGMA)  # another POP of the same REC: the REC's cache
    assert second.headers["x-cache"] == HIT and 0 <= int(second.headers["age"]) <= 2
    assert second.body == first.body and second.headers["x-amz-cf-pop"] == a2
    assert names(second) == ["cdn-cache-hit", "cdn-pop", "cdn-rid", "cdn-hit-layer", "cdn-downstream-fbl"]
    assert timing(second)["cdn-hit-layer"] == "REC" and timing(second)["cdn-pop"] == a2
    again = via(tb, a2, path, headers=PRAGMA)  # now in that POP's own cache
    assert again.headers["x-cache"] == HIT and timing(again)["cdn-hit-layer"] == "EDGE"
    assert origin_total(tb, path) == 1

    other = via(tb, b1, path, headers=PRAGMA)  # a POP of another REC: to the origin again
    assert other.headers["x-cache"] == MISS and timing(other)["cdn-upstream-layer"] == "REC"
    assert origin_rows(tb, path) == [(a1, "rec-a", "", "REC", 1), (b1, "rec-b", "", "REC", 1)]
    head = via(tb, "TC1-C1", "/obj/1kb/tiers/head", method="HEAD")  # a HEAD goes up as a GET
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "1024"
    assert origin_rows(tb, "/obj/1kb/tiers/head") == [("TC1-C1", "rec-c", "", "REC", 1)]
    sent = {(r["edge"], r["rec"], r["shield"], r["tier"], r["range"], r["bytes"]) for r in tb.origin_sent()
            if r["path"] == path}
    assert sent == {(a1, "rec-a", "", "REC", "", 2048), (b1, "rec-b", "", "REC", "", 2048)}


def test_a_range_is_cached_per_range_in_the_rec_too(recs: Testbed) -> None:
    tb, path = recs, "/obj/1mb/tiers/range.bin"
    wanted = {"Range": "bytes=100-199"}
    first = via(tb, "TA1-C1", path, headers=wanted)
    assert first.status == 206 and first.body == object_bytes("tiers/range.bin", 1 << 20)[100:200]
    second = via(tb, "TA3-C1", path, headers=wanted)
    assert second.status == 206 and second.headers["x-cache"] == HIT and second.body == first.body
    assert via(tb, "TA3-C1", path, headers={"Range": "bytes=0-9"}).headers["x-cache"] == MISS
    assert [(r["range"], r["edge"], r["tier"]) for r in tb.origin_sent() if r["path"] == path] == [
        ("bytes=100-199", "TA1-C1", "REC"), ("bytes=0-9", "TA3-C1", "REC")]


def test_purge_one_pop_or_one_rec(recs: Testbed) -> None:
    tb, path = recs, "/obj/1kb/tiers/purge"
    via(tb, "TA1-C1", path)
    via(tb, "TA2-C1", path)
    assert via(tb, "TA1-C1", path).headers["x-cache"] == HIT
    tb.purge("TA1-C1")  # that POP only: the REC still has it
    back = via(tb, "TA1-C1", path, headers=PRAGMA)
    assert back.headers["x-cache"] == HIT and timing(back)["cdn-hit-layer"] == "REC"
    assert via(tb, "TA2-C1", path, headers=PRAGMA).headers["x-cache"] == HIT
    tb.purge("rec-a")  # the REC: its POPs that never had it go to the origin
    assert via(tb, "TA3-C1", path).headers["x-cache"] == MISS
    assert via(tb, "TA2-C1", path, headers=PRAGMA).headers["x-cache"] == HIT  # still in that POP
    assert origin_total(tb, path) == 2
    tb.purge()
    assert via(tb, "TA2-C1", path).headers["x-cache"] == MISS and origin_total(tb, path) == 3
    with pytest.raises(TestbedError, match="no cache named"):
        tb.purge("rec-z")


# -- Origin Shield ---------------------------------------------------------------------------------------
def test_with_origin_shield_every_rec_goes_through_the_shield(shield: Testbed) -> None:
    tb, path = shield, "/obj/1kb/tiers/shielded"
    assert tb.origin_shield == "us-east-1" and tb.shield_address == tb.rec_addresses["us-east-1"]
    first = via(tb, "FRA60-P1", path, headers=PRAGMA)  # POP -> REC eu-central-1 -> shield -> origin
    assert first.headers["x-cache"] == MISS and timing(first)["cdn-upstream-layer"] == "Origin Shield"
    assert origin_rows(tb, path) == [("FRA60-P1", "eu-central-1", "us-east-1", "Origin Shield", 1)]
    same_rec = via(tb, "ARN54-C1", path, headers=PRAGMA)
    assert same_rec.headers["x-cache"] == HIT and timing(same_rec)["cdn-hit-layer"] == "REC"
    for pop in ("CDG50-P1", "NRT51-P2", "IAD89-P1"):  # other RECs, and the shield's own POP: the shield's cache
        r = via(tb, pop, path, headers=PRAGMA)
        assert r.headers["x-cache"] == HIT and timing(r)["cdn-hit-layer"] == "Origin Shield", pop
    assert origin_total(tb, path) == 1  # one origin fetch for all
    own = via(tb, "IAD89-P1", "/obj/1kb/tiers/own", headers=PRAGMA)  # the shield's own POP: two hops
    assert timing(own)["cdn-upstream-layer"] == "Origin Shield"
    assert origin_rows(tb, "/obj/1kb/tiers/own") == [("IAD89-P1", "us-east-1", "us-east-1", "Origin Shield", 1)]


def test_a_shield_in_a_region_without_testbed_pops_is_its_own_tier(tmp_path: Path) -> None:
    with Testbed(pops=("FRA60-P1", "CDG50-P1"), tiers="shield", origin_shield="eu-west-1",
                 workdir=tmp_path / "tb") as tb:
        assert tb.recs == ["eu-central-1", "eu-west-2"] and tb.shield_address == f"127.{tb.slot}.0.3"
        path = "/obj/1kb/tiers/standalone"
        assert timing(via(tb, "FRA60-P1", path, headers=PRAGMA))["cdn-upstream-layer"] == "Origin Shield"
        r = via(tb, "CDG50-P1", path, headers=PRAGMA)
        assert r.headers["x-cache"] == HIT and timing(r)["cdn-hit-layer"] == "Origin Shield"
        assert origin_rows(tb, path) == [("FRA60-P1", "eu-central-1", "eu-west-1", "Origin Shield", 1)]
        tb.purge("eu-west-1")
        assert via(tb, "CDG50-P1", "/obj/1kb/tiers/standalone").headers["x-cache"] == HIT  # the REC's copy


# -- collapsing --------------------------------------------------------------------------------------------
def test_concurrent_gets_through_one_pop_make_one_origin_fetch(recs: Testbed) -> None:
    tb, path = recs, "/fault/delay/300/obj/1kb/tiers/collapse"
    replies = concurrently([("TA1-C1", path)] * 6, tb)
    assert all(r.status == 200 and r.body == object_bytes("tiers/collapse", 1024) for r in replies)
    assert sorted(r.headers["x-cache"] for r in replies) == [HIT] * 5 + [MISS]  # the waiters got the stored copy
    assert origin_rows(tb, path) == [("TA1-C1", "rec-a", "", "REC", 1)]


def test_concurrent_gets_through_twelve_pops_make_one_fetch_per_rec(recs: Testbed) -> None:
    tb, path = recs, "/fault/delay/300/obj/1kb/tiers/fan-out"
    replies = concurrently([(pop, path) for pop in TEST_POPS], tb)
    assert all(r.status == 200 for r in replies)
    rows = origin_rows(tb, path)
    assert sorted((rec, n) for _, rec, _, _, n in rows) == [(rec, 1) for rec in RECS]


def test_a_flat_fan_out_collapses_per_pop_only(flat: Testbed) -> None:
    tb, path = flat, "/fault/delay/300/obj/1kb/tiers/flat"
    replies = concurrently([(pop, path) for pop in tb.pops for _ in range(3)], tb)
    assert all(r.status == 200 for r in replies)
    assert sorted((edge, n) for edge, *_, n in origin_rows(tb, path)) == [(pop, 1) for pop in sorted(tb.pops)]


def test_an_object_slower_than_the_lock_timeout_is_fetched_by_every_waiter(flat: Testbed) -> None:
    """nginx's proxy_cache_lock_timeout (here 1 s): a waiter then goes upstream itself, uncached."""
    tb, path, n = flat, "/fault/delay/2500/obj/1kb/tiers/too-slow", 4
    start = time.monotonic()
    replies = concurrently([("FLA1-C1", path)] * n, tb)
    assert all(r.status == 200 for r in replies) and time.monotonic() - start < 6
    assert origin_total(tb, path) == n
    assert tb.origin_concurrency()["peak"] == n  # the waiters' fetches overlapped the first one
    assert via(tb, "FLA1-C1", path).headers["x-cache"] == HIT  # the first fetch was stored


# -- errors --------------------------------------------------------------------------------------------------
def test_a_503_is_cached_for_its_ttl_then_fetched_again(recs: Testbed) -> None:
    tb, path = recs, "/fault/status/503/obj/1kb/tiers/down"
    first = via(tb, "TB1-C1", path, headers=PRAGMA)
    assert first.status == 503 and first.headers["x-cache"] == ERROR and "age" not in first.headers
    assert timing(first)["cdn-upstream-layer"] == "REC" and "cdn-cache-miss" in names(first)
    cached = via(tb, "TB1-C1", path, headers=PRAGMA)  # an error served from the cache is still an Error
    assert cached.status == 503 and cached.headers["x-cache"] == ERROR and "age" in cached.headers
    assert "cdn-cache-hit" in names(cached) and timing(cached)["cdn-hit-layer"] == "EDGE"
    from_rec = via(tb, "TB2-C1", path, headers=PRAGMA)
    assert from_rec.status == 503 and timing(from_rec)["cdn-hit-layer"] == "REC"
    assert origin_total(tb, path) == 1
    time.sleep(2.2)  # error_ttl=1 (CloudFront's default is 10 s); nginx counts whole seconds: 1 s is 1-2 s
    again = via(tb, "TB1-C1", path)
    assert again.status == 503 and again.headers["x-cache"] == ERROR and origin_total(tb, path) == 2
    # The origin's max-age sets the time instead (here longer than the error TTL).
    marked = "/fault/max-age/30/fault/status/503/obj/1kb/tiers/marked"
    assert via(tb, "TB1-C1", marked).headers["cache-control"] == "max-age=30"
    time.sleep(2.2)
    assert via(tb, "TB1-C1", marked).headers["x-cache"] == ERROR and origin_total(tb, marked) == 1


@pytest.mark.parametrize(("path", "cached"), [
    ("/fault/status/404/obj/1kb/tiers/gone", True),  # always cached
    ("/fault/status/403/obj/1kb/tiers/forbidden", False),  # cached only with max-age ...
    ("/fault/max-age/30/fault/status/403/obj/1kb/tiers/forbidden", True),  # ... as here
    ("/fault/max-age/30/fault/status/429/obj/1kb/tiers/busy", False),  # not a code CloudFront caches
    ("/fault/nocache/fault/status/404/obj/1kb/tiers/nostore", False),  # 404 with no-store
])
def test_which_errors_are_cached(recs: Testbed, path: str, cached: bool) -> None:
    tb = recs
    for _ in range(2):
        assert via(tb, "TC1-C1", path).headers["x-cache"] == ERROR
    assert origin_total(tb, path) == (1 if cached else 2)


def test_a_416_is_never_cached(recs: Testbed) -> None:
    tb, path = recs, "/obj/1kb/tiers/short"
    for _ in range(2):
        r = via(tb, "TC2-C1", path, headers={"Range": "bytes=5000-"})
        assert r.status == 416 and r.headers["x-cache"] == ERROR
    tb.add_fault({"path": "/obj/1kb/tiers/416-marked", "status": 416, "max_age": 60})  # even marked max-age
    for _ in range(2):
        assert via(tb, "TC2-C1", "/obj/1kb/tiers/416-marked").status == 416
    assert origin_total(tb, path) == 2 and origin_total(tb, "/obj/1kb/tiers/416-marked") == 2


def test_an_expired_object_is_revalidated_refresh_hit(recs: Testbed) -> None:
    tb, path = recs, "/obj/1kb/tiers/refresh"
    tb.add_fault({"path": path, "max_age": 1})
    assert via(tb, "TA4-C1", path).headers["x-cache"] == MISS
    time.sleep(2.2)  # max-age=1: nginx counts whole seconds, so the object expires after 1-2 s
    r = via(tb, "TA4-C1", path, headers=PRAGMA)  # POP -> REC -> origin, both with If-None-Match: 304
    assert r.status == 200 and r.body == object_bytes("tiers/refresh", 1024)
    assert r.headers["x-cache"] == REFRESH and "cdn-cache-refresh" in names(r)
    assert origin_total(tb, path) == 2 and [b for p, b in ((s["path"], s["bytes"]) for s in tb.origin_sent())
                                            if p == path] == [1024]  # the 304 sent no body


# -- Server-Timing -------------------------------------------------------------------------------------------
def test_server_timing_only_with_pragma_by_default(recs: Testbed) -> None:
    tb, path = recs, "/obj/1kb/tiers/pragma"
    assert "server-timing" not in via(tb, "TB3-C1", path).headers
    assert "server-timing" not in via(tb, "TB3-C1", path, headers={"Pragma": "no-cache"}).headers
    both = via(tb, "TB3-C1", path, headers={"Pragma": "no-cache, server-timing"})
    assert names(both) == ["cdn-cache-hit", "cdn-pop", "cdn-rid", "cdn-hit-layer", "cdn-downstream-fbl"]
    assert timing(both)["cdn-pop"] == "TB3-C1"


def test_server_timing_always_and_off(flat: Testbed, tmp_path: Path) -> None:
    r = via(flat, "FLB1-C1", "/obj/1kb/tiers/always")  # no Pragma
    assert timing(r)["cdn-upstream-layer"] == "EDGE" and "cdn-cache-miss" in names(r)
    assert origin_rows(flat, "/obj/1kb/tiers/always") == [("FLB1-C1", "", "", "EDGE", 1)]
    hit = via(flat, "FLB1-C1", "/obj/1kb/tiers/always")
    assert timing(hit)["cdn-hit-layer"] == "EDGE" and hit.headers["x-cache"] == HIT
    with Testbed(pops=["OFF1-C1"], server_timing="off", workdir=tmp_path / "off") as off:
        assert "server-timing" not in via(off, "OFF1-C1", "/obj/1kb/x", headers=PRAGMA).headers
        assert "Server-Timing" not in (tmp_path / "off" / "nginx" / "nginx.conf").read_text()


def test_a_flat_testbed_keeps_its_shape(clean_testbed: Testbed) -> None:
    tb = clean_testbed
    r = via(tb, "FRA60-P1", "/obj/1kb/tiers/flat-shape", headers=PRAGMA)
    assert timing(r)["cdn-upstream-layer"] == "EDGE" and tb.recs == [] and tb.rec_addresses == {}
    assert "server-timing" not in via(tb, "FRA60-P1", "/obj/1kb/tiers/flat-other").headers
    row = next(r for r in tb.origin_counts()["requests"] if r["path"] == "/obj/1kb/tiers/flat-shape")
    assert set(row) == {"method", "path", "edge", "count", "bytes", "complete"}  # as before: no tier keys
    assert origin_rows(tb, "/obj/1kb/tiers/flat-shape") == [("FRA60-P1", "", "", "EDGE", 1)]  # unless asked
    assert tb.rec_of_pop("FRA60-P1") == "eu-central-1"  # the grouping it would use


# -- the origin's concurrency log --------------------------------------------------------------------------
def test_concurrency_log(recs: Testbed) -> None:
    tb = recs
    before = time.time()
    paths = [f"/fault/delay/400/obj/1kb/tiers/c{i}" for i in range(3)]
    concurrently([("TA1-C1", p) for p in paths], tb)
    via(tb, "TB1-C1", "/obj/1kb/tiers/after")
    log = tb.origin_concurrency()
    assert log["peak"] == 3 and log["in_flight"] == 0
    reqs = log["requests"]
    assert [r["path"] for r in reqs[3:]] == ["/obj/1kb/tiers/after"] and sorted(r["path"] for r in reqs[:3]) == paths
    assert all(before <= r["start"] < r["end"] <= time.time() for r in reqs)
    assert all(r["end"] - r["start"] >= 0.39 for r in reqs[:3])
    assert {(r["edge"], r["rec"], r["tier"]) for r in reqs[:3]} == {("TA1-C1", "rec-a", "REC")}
    levels = [n for _, n in log["samples"]]
    assert levels[:3] == [1, 2, 3] and levels[-2:] == [1, 0] and len(levels) == 8
    assert [t for t, _ in log["samples"]] == sorted(t for t, _ in log["samples"])
    tb.reset()
    assert tb.origin_concurrency() == {"requests": [], "samples": [], "peak": 0, "in_flight": 0}
