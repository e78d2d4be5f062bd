"""Large objects without Ray: the byte budget, Range parts, skip_warm, wasted bytes, and how the report shows them.

``warm_pair`` runs here against scripted loopback servers (``tests.unit.test_wire``'s), so each flow's requests are
seen byte for byte.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from prewarm.core.pacing import ByteBudget, Pacer
from prewarm.core.report import REPORT_COLUMNS, failures_frame, report_csv, results_frame
from prewarm.core.results import ROW_FIELDS, TaskTable, full_row, result_row
from prewarm.engine.fetcher import WarmOptions, part_ranges, warm_pair
from prewarm.net.popclient import PopClient, cache_metrics, cached_error_seconds
from prewarm.schema import PrewarmRequest, RequestError, RetryRequest, request_error
from prewarm.settings import Settings
from tests.unit.test_verify_variants_retry import Clock
from tests.unit.test_wire import HOST, Server, serving, settings

SIZE = 10_000
RANGE = re.compile(rb"Range: bytes=(\d+)-(\d+)\r\n")


def test_byte_budget_pauses_for_what_was_overdrawn_and_allows_little_burst() -> None:
    clock = Clock()
    budget = ByteBudget(1000.0, clock=clock, burst_s=0.1)  # 1,000 bytes/s, at most 100 bytes banked
    assert budget.take(500) == pytest.approx(0.5)  # nothing banked at the start
    clock.now += 0.5
    assert budget.take(0) == 0.0
    clock.now += 10  # idle for long: only 100 bytes banked, not 10,000
    assert budget.take(100) == 0.0 and budget.take(100) == pytest.approx(0.1)
    budget.set_rate(None)
    assert budget.rate is None and budget.take(10**9) == 0.0
    budget.set_rate(2000.0)
    assert budget.rate == 2000.0


def test_byte_budget_over_many_reads_keeps_the_rate() -> None:
    clock = Clock()
    budget = ByteBudget(50_000.0, clock=clock)
    start, total = clock.now, 0
    for _ in range(200):  # reads of 16 KiB, each waiting as long as it is told to
        clock.now += budget.take(16_384)
        total += 16_384
    assert total / (clock.now - start) == pytest.approx(50_000, rel=0.01)


def test_part_ranges_cover_the_object_in_order() -> None:
    assert part_ranges(10, 4) == [(0, 3), (4, 7), (8, 9)]
    assert part_ranges(8, 4) == [(0, 3), (4, 7)]
    assert part_ranges(3, 4) == [(0, 2)]


def ranged(head: bytes, n: int) -> bytes:
    """An edge with a SIZE-byte object: a 206 for a Range, the whole object otherwise; HEAD answers Miss."""
    hit = b"Hit from cloudfront" if b"/warm" in head else b"Miss from cloudfront"
    match = RANGE.search(head)
    is_head = head.startswith(b"HEAD")
    if match:
        first, last = int(match[1]), int(match[2])
        body = b"" if is_head else b"p" * (last - first + 1)
        return (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n"
                b"X-Cache: %s\r\n\r\n" % (first, last, SIZE, last - first + 1, hit)) + body
    body = b"" if is_head else b"w" * SIZE
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Cache: %s\r\n\r\n" % (SIZE, hit) + body


def warm(paths: list[str], respond=ranged, sizes: dict[str, int] | None = None, **opts: object):
    settings_kw = {k: opts.pop(k) for k in list(opts) if k in Settings.__dataclass_fields__}

    async def main() -> tuple[list, Server]:
        async with serving(respond) as server:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(**settings_kw), {})
            base = f"http://{HOST}:{server.port}"
            options = WarmOptions(Pacer(), ByteBudget(), sizes={f"{base}{k}": v for k, v in (sizes or {}).items()},
                                  **opts)  # type: ignore[arg-type]
            try:
                rows = [await warm_pair(client, options, i, f"{base}{p}") for i, p in enumerate(paths)]
            finally:
                await client.close()
            return rows, server

    return asyncio.run(main())


def requests(server: Server) -> list[tuple[str, str]]:
    """(method, range or '') of every request the server saw, in order."""
    out = []
    for head in server.heads:
        match = RANGE.search(head)
        out.append((head.split(b" ", 1)[0].decode(), f"{match[1].decode()}-{match[2].decode()}" if match else ""))
    return out


def test_an_object_over_the_part_size_is_warmed_in_parts_from_its_head() -> None:
    """Size unknown: the GET's head tells it, the body is left unread, then each part is a Range GET and HEAD."""
    rows, server = warm(["/big"], part_bytes=4000, verify=True)
    row = rows[0]
    assert len(row) == ROW_FIELDS
    assert requests(server) == [("GET", ""), ("GET", "0-3999"), ("HEAD", "0-3999"), ("GET", "4000-7999"),
                                ("HEAD", "4000-7999"), ("GET", "8000-9999"), ("HEAD", "8000-9999")]
    (_, status, _, _, nbytes, _, _, error_class, _, verify, _, rounds, wasted, size, warm_, parts, layer,
     reached) = row
    assert (layer, reached) == ("", 4)  # no Server-Timing: a Miss is taken to have reached the origin (X-Cache)
    assert (status, error_class, size, warm_) == (206, "", SIZE, False)
    assert nbytes == SIZE and 0 <= wasted <= SIZE  # what the unread whole-object GET let in counts as wasted
    assert [p[0] for p in parts] == ["bytes=0-3999", "bytes=4000-7999", "bytes=8000-9999"]
    assert [(p[1], p[3], p[6], p[8]) for p in parts] == [
        (206, 4000, "", "Miss from cloudfront"), (206, 4000, "", "Miss from cloudfront"),
        (206, 2000, "", "Miss from cloudfront")]
    assert verify == "Miss from cloudfront" and rounds == 1


def test_a_known_size_goes_straight_to_parts() -> None:
    rows, server = warm(["/big"], sizes={"/big": SIZE}, part_bytes=6000)
    assert requests(server) == [("GET", "0-5999"), ("GET", "6000-9999")]
    assert rows[0][4] == SIZE and rows[0][12] == 0 and len(rows[0][15]) == 2


def test_a_failed_part_fails_the_pair_and_names_the_part() -> None:
    def respond(head: bytes, n: int) -> bytes:
        if b"bytes=4000-" in head:
            return b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
        return ranged(head, n)

    rows, _ = warm(["/big"], respond, sizes={"/big": SIZE}, part_bytes=4000, attempts=1)
    row = rows[0]
    assert (row[1], row[7]) == (503, "http_503") and row[8].startswith("part bytes=4000-7999: HTTP 503")
    assert [p[6] for p in row[15]] == ["", "http_503", ""]


def test_skip_warm_records_a_hit_as_already_warm_without_a_get() -> None:
    rows, server = warm(["/warm/a", "/cold/b"], skip_warm=True, verify=True)
    assert requests(server) == [("HEAD", ""), ("HEAD", ""), ("GET", ""), ("HEAD", "")]
    warm_row, cold_row = rows
    assert warm_row[14] is True and warm_row[4] == 0 and warm_row[9] == "Hit from cloudfront"
    assert warm_row[13] == SIZE and warm_row[11] == 0
    assert cold_row[14] is False and cold_row[4] == SIZE


def test_skip_warm_heads_each_part_and_gets_only_the_cold_ones() -> None:
    def respond(head: bytes, n: int) -> bytes:
        if b"bytes=0-" in head:  # the first part is cached at the edge already
            head = head.replace(b"/big", b"/warm")
        return ranged(head, n)

    rows, server = warm(["/big"], respond, sizes={"/big": SIZE}, part_bytes=6000, skip_warm=True)
    assert requests(server) == [("HEAD", "0-5999"), ("HEAD", "6000-9999"), ("GET", "6000-9999")]
    row = rows[0]
    assert row[14] is False and row[4] == 4000 and [p[3] for p in row[15]] == [0, 4000]


def rows_for(table: TaskTable) -> None:
    parts = (("bytes=0-3", 206, "Miss from cloudfront", 4, 1, 1.0, "", "", "Hit from cloudfront"),
             ("bytes=4-7", 503, "", 0, 2, 2.0, "http_503", "HTTP 503", ""))
    table.record([
        result_row(0, 200, "Miss from cloudfront", "a", 100, 1, 5.0, verify_x_cache="Hit from cloudfront"),
        result_row(1, 200, "Hit from cloudfront", "a", 0, 1, 1.0, verify_x_cache="Hit from cloudfront",
                   already_warm=True, size=100),
        result_row(2, 503, "", "a", 4, 3, 9.0, "http_503", "part bytes=4-7: HTTP 503", wasted=7, size=8,
                   parts=parts),
        (3, 0, "", "", 0, 1, 1.0, "stall", "no body byte", "", -1, 1),  # as stored before the new fields
    ])


def test_the_table_counts_wasted_bytes_warm_pairs_and_keeps_parts() -> None:
    table = TaskTable([f"https://h/{i}" for i in range(4)], ["P1"])
    rows_for(table)
    assert (table.done_count, table.success_count, table.bytes_wasted, table.already_warm_count) == (4, 2, 7, 1)
    assert list(table.parts) == [2] and table.parts[2][1][6] == "http_503"
    assert full_row((3, 0, "", "", 0, 1, 1.0, "x", "y")) == (3, 0, "", "", 0, 1, 1.0, "x", "y", "", -1, 0, 0, -1,
                                                           False, (), "", 0)


def test_the_report_has_a_row_per_part_and_an_outcome() -> None:
    table = TaskTable([f"https://h/{i}" for i in range(4)], ["P1"])
    rows_for(table)
    failed = failures_frame(table)
    assert list(failed.columns) == REPORT_COLUMNS
    assert list(zip(failed["url"], failed["part"], failed["error_class"], failed["outcome"], strict=True)) == [
        ("https://h/2", "bytes=4-7", "http_503", "failed"), ("https://h/3", "", "stall", "failed")]
    everything = results_frame(table)
    assert list(zip(everything["url"], everything["part"], everything["ok"], everything["outcome"],
                    strict=True)) == [
        ("https://h/0", "", True, "warmed"), ("https://h/1", "", True, "already_warm"),
        ("https://h/2", "bytes=0-3", True, "warmed"), ("https://h/2", "bytes=4-7", False, "failed"),
        ("https://h/3", "", False, "failed")]
    assert b"bytes=4-7" in report_csv(table, {})
    assert np.array_equal(table.already_warm, [False, True, False, False])


BASE = {"url_list": ["https://h.example/a"], "timeout": 1, "target_type": "pop", "pops": ["ATL56-C1"],
        "instance_count": 1}


@pytest.mark.parametrize(("field", "value"), [("max_bytes_per_s", 0), ("max_bytes_per_s", -5),
                                              ("max_bytes_per_s", "fast"), ("max_bytes_per_s", True),
                                              ("skip_warm", "yes"), ("skip_warm", 1)])
def test_bad_large_object_fields_name_the_field(field: str, value: object) -> None:
    with pytest.raises(Exception) as caught:
        PrewarmRequest.model_validate({**BASE, field: value})
    error: RequestError = request_error(caught.value)  # type: ignore[arg-type]
    assert f"field '{field}'" in error.message
    with pytest.raises(Exception) as caught:
        RetryRequest.model_validate({"retry_of": "6f1e2d3c-0000-4000-8000-000000000000", field: value})
    assert f"field '{field}'" in request_error(caught.value).message  # type: ignore[arg-type]


def test_large_object_fields_are_optional() -> None:
    plain = PrewarmRequest.model_validate(BASE)
    assert plain.max_bytes_per_s is None and plain.skip_warm is False
    given = PrewarmRequest.model_validate({**BASE, "max_bytes_per_s": 1.5e6, "skip_warm": True})
    assert given.max_bytes_per_s == 1.5e6 and given.skip_warm is True


def test_large_object_settings() -> None:
    s = Settings.from_env({})
    assert (s.stall_timeout_s, s.min_rate, s.body_attempts, s.range_part_bytes) == (30.0, 4096.0, 2, 30 * 1024**3)
    s = Settings.from_env({"PREWARM_STALL_TIMEOUT": "5", "PREWARM_MIN_RATE": "0", "PREWARM_BODY_ATTEMPTS": "1",
                           "PREWARM_RANGE_PART_BYTES": "4194304", "PREWARM_MIN_RATE_WINDOW": "10"})
    assert (s.stall_timeout_s, s.min_rate, s.body_attempts, s.range_part_bytes, s.min_rate_window_s) == (
        5.0, 0.0, 1, 4194304, 10.0)
    for name, value in (("PREWARM_STALL_TIMEOUT", "0"), ("PREWARM_BODY_ATTEMPTS", "0"),
                        ("PREWARM_RANGE_PART_BYTES", "0"), ("PREWARM_MIN_RATE", "-1")):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: value})


def server_timing(value: str | None) -> dict[str, str]:
    """A full reading of CloudFront's Server-Timing (each metric's desc or dur), to check the quick one against."""
    metrics: dict[str, str] = {}
    for metric in (value or "").split(","):
        name, *params = metric.split(";")
        if name.strip():
            values = dict(p.strip().partition("=")[::2] for p in params)
            metrics[name.strip().lower()] = (values.get("desc") or values.get("dur") or "").strip('"')
    return metrics


def test_server_timing_is_read_as_cloudfront_writes_it() -> None:
    miss = ('cdn-upstream-layer;desc="REC",cdn-upstream-dns;dur=0,cdn-upstream-connect;dur=1,cdn-upstream-fbl;dur=3,'
            'cdn-cache-miss,cdn-pop;desc="ATL56-C1",cdn-rid;desc="abc==",cdn-downstream-fbl;dur=4')
    metrics = server_timing(miss)
    assert metrics["cdn-upstream-layer"] == "REC" and metrics["cdn-pop"] == "ATL56-C1" and "cdn-cache-miss" in metrics
    assert metrics["cdn-upstream-fbl"] == "3" and "cdn-hit-layer" not in metrics
    hit = server_timing('cdn-cache-hit,cdn-pop;desc="FRA60-P1",cdn-hit-layer;desc="Origin Shield"')
    assert hit["cdn-hit-layer"] == "Origin Shield" and hit["cdn-cache-hit"] == ""
    assert server_timing(None) == {} and server_timing(" , ;") == {}
    for value in (miss, 'cdn-cache-hit,cdn-pop;desc="FRA60-P1",cdn-hit-layer;desc="Origin Shield"',
                  'cdn-cache-refresh,cdn-hit-layer;desc="EDGE"', "cdn-pop;desc=\"X\""):
        parsed = server_timing(value)  # the quick reading agrees with the full parse
        metric = next((m.removeprefix("cdn-cache-") for m in parsed if m.startswith("cdn-cache-")), "")
        assert cache_metrics(value) == (metric, parsed.get("cdn-hit-layer", ""))


def test_a_cached_errors_ttl_is_waited_out() -> None:
    # CloudFront's default error TTL (10 s) less Age, plus a second for Age's whole seconds
    assert cached_error_seconds("Error from cloudfront", None, None) == 11.0
    assert cached_error_seconds("Error from cloudfront", "max-age=30", 12) == 19.0
    assert cached_error_seconds("Hit from cloudfront", "public, s-maxage=4", None) == 11.0  # never under 10 s
    assert cached_error_seconds("Error from cloudfront", "no-store", None) is None
    assert cached_error_seconds("Miss from cloudfront", None, None) is None  # an edge that caches no errors
    assert cached_error_seconds("Error from cloudfront", "max-age=5", 60) == 1.0


def test_hit_layers_add_up_to_the_verified_pairs() -> None:
    table = TaskTable([f"https://h/{i}" for i in range(4)], ["P1"])
    table.record([
        result_row(0, 200, "Miss", "a", 1, 1, 1.0, verify_x_cache="Hit from cloudfront", hit_layer="EDGE",
                   served_by=1),
        result_row(1, 200, "Hit", "a", 1, 1, 1.0, verify_x_cache="Hit from cloudfront", hit_layer="REC"),
        result_row(2, 200, "Miss", "a", 1, 1, 1.0, verify_x_cache="Miss from cloudfront", served_by=1),
        result_row(3, 200, "Miss", "a", 1, 1, 1.0, hit_layer="EDGE"),  # not verified: not counted
    ])
    assert table.hit_layers() == {"": 1, "EDGE": 1, "REC": 1} and table.origin_fetches == 2
    assert list(results_frame(table)["hit_layer"]) == ["EDGE", "REC", "", "EDGE"]


def test_a_retry_waits_until_a_cached_error_expires() -> None:
    """A 503 the edge says it serves as an error copy is retried only once that copy may have expired (capped by
    PREWARM_RETRY_AFTER_CAP); a 503 without such a sign is retried at once."""
    import time

    def respond(cached: bool):
        def answer(head: bytes, n: int) -> bytes:
            if n == 1:
                x_cache = b"Error from cloudfront" if cached else b"Miss from cloudfront"
                return b"HTTP/1.1 503 Busy\r\nX-Cache: %s\r\nAge: 2\r\nContent-Length: 0\r\n\r\n" % x_cache
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Cache: Miss from cloudfront\r\n\r\nk"
        return answer

    async def main(cached: bool) -> tuple[float, int]:
        async with serving(respond(cached)) as server:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(retry_after_cap_s=0.4, backoff_base_s=0.001), {})
            try:
                began = time.monotonic()
                r = await client.fetch(f"http://{HOST}:{server.port}/x")
                assert r.ok
                return time.monotonic() - began, r.attempts
            finally:
                await client.close()

    waited, attempts = asyncio.run(main(True))
    assert attempts == 2 and 0.4 <= waited < 1.0  # 10 s less Age 2 plus 1, capped at 0.4 s
    quick, attempts = asyncio.run(main(False))
    assert attempts == 2 and quick < 0.2
