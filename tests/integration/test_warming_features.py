"""Warming that sticks, end to end through real HTTP on the testbed: verification and until_hit,
cache-key variants, retry_of, the signed job-end webhook, and the max_rps cap."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest

from prewarm.cli.demo import edge_x_cache
from prewarm.client import ApiError, PrewarmClient
from prewarm.net.webhook import SIGNATURE_HEADER, verify_signature
from prewarm.testbed import Testbed

from .conftest import RAY_TEST_KWARGS, origin_gets, request_body, serve_on_free_port, service_settings, wait_final

HIT, MISS = "Hit from cloudfront", "Miss from cloudfront"
POPS = ["ATL56-C1", "DFW55-C3"]
SECRET = "test-webhook-secret"
NAMESPACE: dict[str, str] = {}


@pytest.fixture(scope="module")
def service(cdn: Testbed) -> Iterator[PrewarmClient]:
    """The service with a webhook secret and a short webhook back-off, so a retried delivery is quick."""
    from prewarm.api.service import stop_service

    settings = service_settings(cdn, PREWARM_WEBHOOK_SECRET=SECRET, PREWARM_WEBHOOK_BACKOFF_BASE="0.2")
    NAMESPACE["name"] = settings.namespace
    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    try:
        yield PrewarmClient(base)
    finally:
        stop_service()


def body(urls: list[str], **fields: Any) -> dict[str, Any]:
    return request_body(urls, pops=POPS, **fields)


def report_rows(client: PrewarmClient, req_id: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(client.report(req_id)), keep_default_na=False)


def run(client: PrewarmClient, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    req_id = client.prewarm(payload)["request_id"]
    return req_id, wait_final(client, req_id)


# -- verification ---------------------------------------------------------------------------------
def test_a_warm_job_verifies_every_pair_as_a_hit(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    paths = [f"/obj/2kb/verify-{i}" for i in range(5)]
    req_id, progress = run(service, body([cdn.url(p) for p in paths]))
    assert progress["status"] == "FINISHED" and progress["success_count"] == progress["total_count"] == 10
    assert progress["download_count"] == 10  # verification is not counted as downloads
    assert progress["verified_hit_count"] == 10 and progress["warm_ratio"] == 1.0
    summary = service.summary(req_id)
    assert summary["warm_ratio"] == 1.0 and summary["cold_pairs"] == [] and summary["cold_pair_count"] == 0
    # One GET per pair reached the origin: the verification HEADs were all answered from the edge cache.
    assert origin_gets(cdn) == {(p, pop): 1 for p in paths for pop in POPS}


def test_an_uncacheable_object_is_listed_cold_and_until_hit_rewarms_it(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    warm, cold = "/obj/1kb/stays-warm", "/fault/nocache/obj/1kb/never-cached"
    req_id, progress = run(service, body([cdn.url(warm), cdn.url(cold)], until_hit=2))
    assert progress["status"] == "FINISHED" and progress["success_count"] == 4
    assert progress["verified_hit_count"] == 2 and progress["warm_ratio"] == 0.5
    summary = service.summary(req_id)
    assert summary["cold_pair_count"] == 2
    assert sorted((c["url"], c["pop"], c["x_cache"]) for c in summary["cold_pairs"]) == [
        (cdn.url(cold), pop, MISS) for pop in POPS
    ]
    gets = origin_gets(cdn)
    # The uncacheable object: per POP 1 GET (at POP 1 the size probe: URL i is probed through POP i mod 2) + 3
    # verification HEADs (sent on as GETs by the edge) + 2 re-warm GETs; the cacheable one: one GET per POP.
    assert gets[(warm, POPS[0])] == gets[(warm, POPS[1])] == 1
    assert gets[(cold, POPS[0])] == gets[(cold, POPS[1])] == 1 + 3 + 2
    rows = {(r.url, r.pop): r for r in all_results(req_id).itertuples()}
    assert rows[(cdn.url(cold), POPS[1])].rounds == 3 and rows[(cdn.url(warm), POPS[1])].rounds == 1
    assert rows[(cdn.url(cold), POPS[1])].verify_x_cache == MISS


def all_results(req_id: str) -> pd.DataFrame:
    """Every task with its outcome, from the state actor (the CSV report holds failures only)."""
    import ray

    from prewarm.engine.registry import STATE_ACTOR_NAME

    actor = ray.get_actor(STATE_ACTOR_NAME, namespace=NAMESPACE["name"])
    return ray.get(actor.results.remote(req_id), timeout=30)


def test_verify_false_sends_no_heads(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    req_id, progress = run(service, body([cdn.url("/fault/nocache/obj/1kb/unverified")], verify=False))
    assert progress["success_count"] == 2 and progress["verified_hit_count"] == 0
    assert progress["warm_ratio"] is None
    assert service.summary(req_id)["cold_pairs"] == []
    assert sum(origin_gets(cdn).values()) == 2  # one GET per POP (one of them the size probe), nothing more


# -- cache-key variants ---------------------------------------------------------------------------
def test_two_encodings_are_two_tasks_each_and_both_reach_the_origin(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    paths = ["/obj/1kb/variant-a", "/obj/1kb/variant-b"]
    variants = [{"Accept-Encoding": "gzip"}, {"Accept-Encoding": "br"}]
    req_id, progress = run(service, body([cdn.url(p) for p in paths], variants=variants))
    assert progress["status"] == "FINISHED"
    assert progress["total_count"] == progress["success_count"] == 2 * 2 * 2
    assert progress["verified_hit_count"] == 8
    encodings = Counter((r["path"], r["edge"], r["encoding"]) for r in cdn.origin_counts()["by_encoding"]
                        if r["method"] == "GET" for _ in range(r["count"]))
    for path in paths:
        for pop in POPS:
            # One GET per (URL, POP, variant), the size probe's included (URL i in column i mod 4).
            assert encodings[(path, pop, "gzip")] == 1 and encodings[(path, pop, "br")] == 1
    # Each variant is its own cached object at every POP.
    for pop in POPS:
        address = cdn.pop_addresses[pop][0]
        for path in paths:
            assert edge_x_cache(address, cdn.url(path), cdn.ca_file, accept_encoding="gzip") == HIT
            assert edge_x_cache(address, cdn.url(path), cdn.ca_file, accept_encoding="br") == HIT
    summary = service.summary(req_id)
    assert {p["pop"]: p["success"] for p in summary["pops"]} == {pop: 4 for pop in POPS}


def test_a_failed_variant_is_named_in_the_report(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    url = cdn.url("/fault/status/404/obj/1kb/gone")
    req_id, progress = run(service, body([url], variants=[{"Accept-Encoding": "gzip"}, {"Accept-Encoding": "br"}]))
    assert progress["failure_count"] == 4
    rows = report_rows(service, req_id)
    assert sorted(zip(rows["pop"], rows["variant"], strict=True)) == sorted(
        (pop, f"Accept-Encoding: {enc}") for pop in POPS for enc in ("gzip", "br")
    )


# -- the size probe -------------------------------------------------------------------------------
def test_a_urls_other_pops_are_warmed_as_soon_as_its_own_probe_answers(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    # URL 0 is probed through POPS[0] and answers after 2 s (PREWARM_FETCH_TIMEOUT, the time to the head, is 3 s
    # here); URL 1 through POPS[1] at once. URL 1's GET through POPS[0] must not wait for URL 0's probe: each
    # probe lets its own URL go on.
    slow, fast = "/fault/delay/2000/obj/1kb/slow-probe", "/obj/1kb/fast-probe"
    _, progress = run(service, body([cdn.url(slow), cdn.url(fast)], verify=False))
    assert progress["status"] == "FINISHED" and progress["success_count"] == 4
    assert progress["total_size"] == progress["download_size"] == 4 * 1024  # the probes' sizes, once per pair
    seen = {(path, edge): t for t, method, path, edge in cdn.origin_log() if method == "GET"}
    assert origin_gets(cdn) == {(p, pop): 1 for p in (slow, fast) for pop in POPS}
    assert seen[(fast, POPS[0])] - seen[(slow, POPS[0])] < 1.0  # not after the slow probe's 2 s
    assert seen[(slow, POPS[1])] - seen[(slow, POPS[0])] >= 1.9  # URL 0's other POP waited for its probe
    for pop in POPS:
        for path in (slow, fast):
            assert edge_x_cache(cdn.pop_addresses[pop][0], cdn.url(path), cdn.ca_file) == HIT


# -- retry only what failed -----------------------------------------------------------------------
def test_retry_of_reruns_exactly_the_failed_pairs(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    # Fails the first 3 requests of the path, whichever edge sends them: the size probe (URL 0, so through the
    # first POP) takes all 3 attempts and fails; the second POP's GET, sent after the probe, succeeds.
    flaky, good = "/obj/1kb/flaky", "/obj/1kb/fine"
    cdn.add_fault({"path": flaky, "status": 503, "count": 3, "per_edge": False})
    urls = [cdn.url(flaky), cdn.url(good)]
    first_id, first = run(service, body(urls, header={"X-Custom": "kept"}, verify=False))
    assert first["status"] == "FINISHED" and first["failure_count"] == 1 and first["success_count"] == 3
    assert {(r.url, r.pop) for r in report_rows(service, first_id).itertuples()} == {(cdn.url(flaky), POPS[0])}
    before = origin_gets(cdn)

    retry = service.prewarm({"retry_of": first_id, "timeout": 1})
    assert retry["status"] == "Success"
    progress = wait_final(service, retry["request_id"])
    assert progress["status"] == "FINISHED"
    assert progress["total_count"] == progress["success_count"] == 1
    summary = service.summary(retry["request_id"])
    assert summary["retry_of"] == first_id and summary["failure_urls"] == []
    assert [p["pop"] for p in summary["pops"]] == [POPS[0]]
    after = origin_gets(cdn)
    new = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert new == {(flaky, POPS[0]): 1}  # one GET, the pair's own (its size probe), and nothing else
    assert edge_x_cache(cdn.pop_addresses[POPS[0]][0], cdn.url(flaky), cdn.ca_file) == HIT


def test_retry_of_refuses_unknown_running_and_clean_jobs(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    with pytest.raises(ApiError) as info:
        service.prewarm({"retry_of": "2b1e1c1e-0000-4000-8000-000000000000"})
    assert info.value.status == 400 and "field 'retry_of'" in info.value.body["error_message"]
    clean_id, _ = run(service, body([cdn.url("/obj/1kb/clean")], verify=False))
    with pytest.raises(ApiError) as info:
        service.prewarm({"retry_of": clean_id})
    assert info.value.status == 400 and "no failed or unfinished tasks" in info.value.body["error_message"]
    slow = service.prewarm(body([cdn.url("/fault/delay/3000/obj/1kb/slow")]))["request_id"]
    with pytest.raises(ApiError) as info:
        service.prewarm({"retry_of": slow})
    assert info.value.status == 400 and "still IN_PROGRESS" in info.value.body["error_message"]
    with pytest.raises(ApiError) as info:
        service.prewarm({"retry_of": clean_id, "url_list": [cdn.url("/x")]})
    assert info.value.status == 400 and info.value.body["error_message"].startswith("field 'url_list'")
    with pytest.raises(ApiError) as info:
        service.prewarm({"retry_of": clean_id, "need_invalidate": True})
    assert info.value.status == 400 and info.value.body["error_message"].startswith("field 'need_invalidate'")
    # "retry_of": null (a stored request sent again, a client that always sends the field) is a plain job.
    plain = service.prewarm(body([cdn.url("/obj/1kb/clean")], verify=False, retry_of=None))["request_id"]
    assert wait_final(service, plain)["status"] == "FINISHED"
    wait_final(service, slow)


# -- the job-end webhook --------------------------------------------------------------------------
class Receiver:
    """A local webhook receiver: answers ``codes`` in turn (then 200) and keeps every delivery."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = list(codes)
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.deliveries.append((dict(self.headers), data))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_webhook_delivers_one_signed_summary_after_retrying_a_500(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    receiver = Receiver([500])
    try:
        req_id, progress = run(service, body([cdn.url("/obj/1kb/hooked")], callback_url=receiver.url))
        wait_for(lambda: (service.summary(req_id).get("webhook") or {}).get("delivered"))
        assert len(receiver.deliveries) == 2  # the 500, then the delivery
        headers, payload = receiver.deliveries[-1]
        assert verify_signature(payload, SECRET, headers.get(SIGNATURE_HEADER))
        assert not verify_signature(payload, "another-secret", headers.get(SIGNATURE_HEADER))
        sent = json.loads(payload)
        assert sent["request_id"] == req_id and sent["status"] == "FINISHED" == progress["status"]
        assert sent["success_count"] == 2 and sent["failure_pop_urls_report"].endswith(f"/reports/{req_id}.csv")
        webhook = service.summary(req_id)["webhook"]
        assert webhook["attempts"] == 2 and webhook["last_status"] == 200 and webhook["url"] == receiver.url
        time.sleep(1.0)
        assert len(receiver.deliveries) == 2  # nothing more once delivered
    finally:
        receiver.close()


def test_callback_url_is_validated(service: PrewarmClient, cdn: Testbed) -> None:
    with pytest.raises(ApiError) as info:
        service.prewarm(body([cdn.url("/obj/1kb/x")], callback_url="not a url"))
    assert info.value.status == 400 and "field 'callback_url'" in info.value.body["error_message"]


# -- origin protection ----------------------------------------------------------------------------
def test_max_rps_holds_across_fetchers(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    cap = 30.0
    # Uncacheable objects: every request the service sends reaches the origin and is timed there.
    paths = [f"/fault/nocache/obj/1kb/paced-{i}" for i in range(100)]
    _, progress = run(service, body([cdn.url(p) for p in paths], max_rps=cap, verify=False, timeout=3))
    assert progress["status"] == "FINISHED" and progress["success_count"] == 2 * len(paths)
    times = sorted(t for t, _, path, _ in cdn.origin_log() if path.startswith("/fault/nocache/obj/1kb/paced-"))
    assert len(times) == 200  # a GET per (URL, POP), 100 of them the size probes (each URL through one POP)
    # Over any 5-second window within 110% of the cap (an uncapped job sends all 200 in under a second).
    worst = max(sum(1 for u in times if t <= u < t + 5.0) for t in times)
    assert worst <= cap * 5 * 1.1, worst
    assert times[-1] - times[0] >= 199 / (cap * 1.1) - 1.0  # the cap, not the machine, set the pace
