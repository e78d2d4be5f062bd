"""Large objects end to end: stalls and trickles, Range parts, the byte-rate cap and skip_warm, on real nginx edges.

This module's service has short body limits (a 1 s stall timeout, a 60 kB/s floor over 1 s) and a 4 MiB part size,
so each behaviour shows in seconds; its testbed logs every edge request, so a test sees what the edges served.
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from prewarm.analysis import load_results
from prewarm.client import ApiError, PrewarmClient
from prewarm.testbed import Testbed

from .conftest import origin_gets, request_body, running_service, wait_final

POPS = ["ATL56-C1", "FRA60-P1"]
HOST = "www.example.com"
MIB = 1024 * 1024
PART = 4 * MIB
HIT = "Hit from cloudfront"
VIEWER_ENCODING = "gzip, deflate, br"  # what the fetchers send: part of the edges' cache key
NAMESPACE: list[str] = []  # the module's service's Ray namespace, for reading results as the notebook does


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    with Testbed(pops=POPS, edge_log=True, workdir=tmp_path_factory.mktemp("cdn-large")) as tb:
        yield tb


@pytest.fixture(scope="module")
def service(cdn: Testbed) -> Iterator[PrewarmClient]:
    with running_service(cdn, PREWARM_STALL_TIMEOUT="1", PREWARM_MIN_RATE="60000", PREWARM_MIN_RATE_WINDOW="1",
                         PREWARM_RANGE_PART_BYTES=str(PART)) as (client, settings):
        NAMESPACE[:] = [settings.namespace]
        yield client


def body(urls: list[str], **fields: Any) -> dict[str, Any]:
    return request_body(urls, **{"pops": POPS, **fields})


def run(client: PrewarmClient, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    req_id = client.prewarm(payload)["request_id"]
    return req_id, wait_final(client, req_id)


def report(client: PrewarmClient, req_id: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(client.report(req_id)), keep_default_na=False)


def through_pop(cdn: Testbed, pop: str, path: str, method: str = "HEAD", byte_range: str | None = None
                ) -> tuple[int, dict[str, str], int]:
    """One request to a POP's address as a viewer would send it: (status, headers, body bytes)."""
    tls = ssl.create_default_context(cafile=cdn.ca_file)
    address = cdn.pop_addresses[pop][0]
    sock = tls.wrap_socket(socket.create_connection((address, 443), timeout=10), server_hostname=HOST)
    conn = http.client.HTTPConnection(address, 443, timeout=10)
    conn.sock = sock
    try:
        headers = {"Host": HOST, "Accept-Encoding": VIEWER_ENCODING, **({"Range": byte_range} if byte_range else {})}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, len(resp.read())
    finally:
        conn.close()


def sent(cdn: Testbed, path: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(edge, range) -> (complete bodies, bytes) the origin sent for ``path``."""
    return {(row["edge"], row["range"]): (row["complete"], row["bytes"])
            for row in cdn.origin_sent() if row["path"] == path}


def test_a_stalled_body_fails_as_a_stall_after_the_body_attempts_with_its_bytes_counted(
        service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    path = "/fault/stall/200000/8000/obj/1mb/stall.bin"  # 200 kB, then 8 s of silence (the stall timeout is 1 s)
    req_id, progress = run(service, body([cdn.url(path)], pops=POPS[:1], verify=False))
    assert progress["status"] == "FINISHED" and progress["failure_count"] == 1
    rows = report(service, req_id)
    assert list(rows["error_class"]) == ["stall"] and list(rows["attempts"]) == [2]  # PREWARM_BODY_ATTEMPTS
    assert "no body byte for 1 s" in rows["error_message"].item()
    # The edge passes on what the origin sent before its silence (less what nginx still buffers): twice.
    assert 2 * (200_000 - 32_768) <= progress["bytes_wasted"] <= 2 * 200_000
    assert service.summary(req_id)["bytes_wasted"] == progress["bytes_wasted"]
    assert origin_gets(cdn) == {(path, POPS[0]): 2}  # each attempt a miss: a viewer that hung up left it cold


def test_a_trickle_under_the_floor_fails_as_too_slow(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    # 30 kB/s, never silent, under the 60 kB/s floor (nginx sends the head once it holds ~20 kB: after ~0.7 s)
    path = "/fault/rate/30000/obj/1mb/trickle.bin"
    req_id, progress = run(service, body([cdn.url(path)], pops=POPS[:1], verify=False))
    rows = report(service, req_id)
    assert list(rows["error_class"]) == ["too_slow"] and list(rows["attempts"]) == [2]
    assert "under the floor of 60000 bytes/s" in rows["error_message"].item()
    assert 0 < progress["bytes_wasted"] < 2 * (3 * 30000 + 65536)


def test_an_object_over_the_part_size_is_warmed_in_range_parts(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    path = "/obj/10mb/patch.bin"
    ranges = ["bytes=0-4194303", "bytes=4194304-8388607", "bytes=8388608-10485759"]
    req_id, progress = run(service, body([cdn.url(path)], timeout=2))
    assert progress["status"] == "FINISHED" and progress["success_count"] == 2 and progress["failure_count"] == 0
    assert progress["download_size"] == 2 * 10 * MIB and progress["total_size"] == 2 * 10 * MIB
    assert progress["verified_hit_count"] == 2
    # Each part once per POP from the origin, and each part a Hit at each POP afterwards.
    origin = sent(cdn, path)
    for pop in POPS:
        for part in ranges:
            assert origin[(pop, part)][0] == 1, (pop, part, origin)
            status, headers, _ = through_pop(cdn, pop, path, "HEAD", part)
            assert status == 206 and headers["x-cache"] == HIT, (pop, part)
    # Each part is its own row in the results, named.
    frame = service_results(service, req_id)
    assert sorted(zip(frame["pop"], frame["part"], strict=True)) == sorted((p, r) for p in POPS for r in ranges)
    assert set(frame["status_code"]) == {206} and set(frame["outcome"]) == {"warmed"}
    assert list(frame.groupby("pop")["bytes"].sum()) == [10 * MIB, 10 * MIB]


def service_results(service: PrewarmClient, req_id: str) -> pd.DataFrame:
    """Every finished pair of a job (successes too) from the state actor, as the notebook reads it."""
    return load_results(req_id, namespace=NAMESPACE[0])


def windows(rows: list[dict[str, Any]], seconds: float = 2.0) -> list[int]:
    """Body bytes the edges finished sending in each ``seconds`` window that starts at a request's end."""
    ends = sorted((row["time"], row["bytes"]) for row in rows)
    return [sum(b for t, b in ends if start <= t < start + seconds) for start, _ in ends]


def test_max_bytes_per_s_holds_in_every_window(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    urls = [cdn.url(f"/obj/64kb/capped-{i}") for i in range(160)]  # 10 MiB per POP, 20 MiB in all
    common = {"verify": False, "max_concurrency": 4, "timeout": 2}
    _, first = run(service, body(urls, **common))  # fills the edges: both jobs below read cached objects
    assert first["success_count"] == 320

    def job_rows(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
        before = len(cdn.edge_log())
        began = time.monotonic()
        _, progress = run(service, payload)
        assert progress["status"] == "FINISHED" and progress["success_count"] == 320
        return [r for r in cdn.edge_log()[before:] if r["method"] == "GET"], time.monotonic() - began

    cap = 4 * MIB
    # The edge logs a request when its last byte is in the socket, which may be before we read it: at each end of
    # a window it may be one object per connection (8 connections) ahead of our reads, plus each fetcher's
    # small bucket (50 ms of its share).
    slack = 2 * 8 * 64 * 1024 + cap // 20
    control, _ = job_rows(body(urls, **common))
    assert max(windows(control)) > 2 * cap + slack  # uncapped, the same job goes far faster than the cap
    capped, seconds = job_rows(body(urls, max_bytes_per_s=cap, **common))
    assert len(capped) == 320
    assert max(windows(capped)) <= 2 * cap + slack, max(windows(capped))  # every 2-second window
    assert seconds >= 20 * MIB / cap * 0.9  # and it still moved everything, at about the cap


def test_skip_warm_downloads_nothing_for_warm_pairs_and_still_fetches_cold_ones(
        service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    warm_paths = [f"/obj/256kb/skip-{i}" for i in range(3)]
    cold_path = "/obj/256kb/skip-cold"
    _, first = run(service, body([cdn.url(p) for p in warm_paths]))
    assert first["success_count"] == 6 and first["verified_hit_count"] == 6
    counts_before = cdn.origin_counts()["total"]
    log_before = len(cdn.edge_log())

    req_id, progress = run(service, body([cdn.url(p) for p in [*warm_paths, cold_path]], skip_warm=True))
    assert progress["status"] == "FINISHED" and progress["success_count"] == 8
    assert progress["already_warm_count"] == 6 and service.summary(req_id)["already_warm_count"] == 6
    assert progress["download_size"] == 2 * 256 * 1024  # only the cold pair's bodies
    edges = Counter((r["pop"], r["uri"], r["method"]) for r in cdn.edge_log()[log_before:])
    for pop in POPS:
        for path in warm_paths:
            assert edges[(pop, path, "HEAD")] == 1 and edges[(pop, path, "GET")] == 0
        assert edges[(pop, cold_path, "GET")] == 1  # the cold pair: its HEAD, the GET, then its verification
        assert edges[(pop, cold_path, "HEAD")] == 2
    new = cdn.origin_counts()["total"] - counts_before
    assert new == 2  # the cold URL's miss at each POP; nothing for the warm pairs
    frame = service_results(service, req_id)
    outcome = dict(zip(zip(frame["url"], frame["pop"], strict=True), frame["outcome"], strict=True))
    assert outcome[(cdn.url(cold_path), POPS[0])] == "warmed"
    assert outcome[(cdn.url(warm_paths[0]), POPS[1])] == "already_warm"


@pytest.mark.parametrize(("field", "value"), [("max_bytes_per_s", 0), ("max_bytes_per_s", -1.5),
                                              ("max_bytes_per_s", "1MB"), ("skip_warm", "yes"), ("skip_warm", 0)])
def test_bad_large_object_fields_are_a_400_naming_the_field(service: PrewarmClient, cdn: Testbed, field: str,
                                                             value: Any) -> None:
    with pytest.raises(ApiError) as caught:
        service.prewarm(body([cdn.url("/obj/1kb/x")], **{field: value}))
    assert caught.value.status == 400 and f"field '{field}'" in str(caught.value)
