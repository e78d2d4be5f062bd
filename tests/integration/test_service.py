"""The whole API end to end: real HTTP to Serve on a local Ray cluster, against the testbed's edges."""

from __future__ import annotations

import io
import time
import uuid
from datetime import datetime, timedelta

import pandas as pd
import pytest

from prewarm.cli.demo import edge_x_cache
from prewarm.client import ApiError, PrewarmClient
from prewarm.core.catalog import load_catalog
from prewarm.schema import TIME_FORMAT
from prewarm.testbed import Testbed

from .conftest import SPEC_POPS, origin_gets, request_body, wait_final

HIT = "Hit from cloudfront"


def report_rows(client: PrewarmClient, req_id: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(client.report(req_id)), keep_default_na=False)


def assert_warm(cdn: Testbed, urls: list[str], pops: list[str]) -> None:
    for pop in pops:
        for address in cdn.pop_addresses[pop]:
            for url in urls:
                assert edge_x_cache(address, url, cdn.ca_file) == HIT, (pop, address, url)


def test_spec_example_warms_every_pop_exactly_once(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    paths = ["/obj/8kb/index.html", "/obj/2kb/css/bootstrap-icons.css"]
    urls = [cdn.url(p) for p in paths]
    accepted = service.prewarm(request_body(urls, timeout=5))
    assert accepted["status"] == "Success" and accepted["error_message"] == "" and accepted["error_urls"] == []
    uuid.UUID(accepted["request_id"])
    started = datetime.strptime(accepted["timestamp"], TIME_FORMAT)
    assert datetime.strptime(accepted["timeout_at"], TIME_FORMAT) - started == timedelta(minutes=5)

    progress = wait_final(service, accepted["request_id"])
    assert progress["status"] == "FINISHED"
    assert progress["total_count"] == progress["download_count"] == progress["success_count"] == 6
    assert progress["percentage_complete"] == 100 and progress["failure_count"] == 0
    assert progress["in_progress_task_count"] == progress["available_task_count"] == 0
    assert progress["download_size"] == progress["total_size"] == (8 + 2) * 1024 * 3
    assert progress["nodes_used"] == 1

    gets = origin_gets(cdn)
    assert gets == {(path, pop): 1 for path in paths for pop in SPEC_POPS}
    # SIN2-C1 has two addresses: nginx serves both from one cache, like one POP.
    assert_warm(cdn, urls, SPEC_POPS)

    summary = service.summary(accepted["request_id"])
    assert summary["failure_pops"] == [] and summary["failure_urls"] == []
    assert summary["failure_pop_urls_report"].endswith(f"/reports/{accepted['request_id']}.csv")
    assert {r["pop"]: (r["success"], r["failure"], r["bytes"]) for r in summary["pops"]} == {
        pop: (2, 0, 10 * 1024) for pop in SPEC_POPS
    }
    assert report_rows(service, accepted["request_id"]).empty


def test_absent_cf_domain_follows_the_hosts_cname(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    body = request_body([cdn.url("/obj/1kb/cname")], pops=["ATL56-C1"])
    del body["cf_domain"]
    progress = wait_final(service, service.prewarm(body)["request_id"])
    assert (progress["status"], progress["success_count"]) == ("FINISHED", 1)
    assert origin_gets(cdn) == {("/obj/1kb/cname", "ATL56-C1"): 1}


@pytest.mark.parametrize(
    ("target_type", "field", "names"),
    [
        ("region", "regions", ["apac", "JP"]),  # jp's POPs are also apac's
        ("country", "countries", ["singapore", "malaysia", "australia", "new_zealand"]),
        ("pop", "pops", ["atl56-c1", "ATL56-C1", "DFW55-C3"]),
        ("pop", "pops", []),
        ("region", "regions", []),
        ("country", "countries", []),
    ],
)
def test_target_types_do_no_duplicate_work(service: PrewarmClient, cdn: Testbed, target_type: str,
                                           field: str, names: list[str]) -> None:
    cdn.reset()
    catalog = load_catalog()
    if not names:
        expected = catalog.default_pops(target_type)
    elif target_type == "pop":
        expected = ["ATL56-C1", "DFW55-C3"]
    else:
        table = catalog.regions if target_type == "region" else catalog.countries
        expected = list(dict.fromkeys(p for n in names for p in table[n.lower()]))
    path = f"/obj/1kb/{target_type}-{len(names)}"
    body = request_body([cdn.url(path)], target_type=target_type, **{"pops": [], field: names})
    progress = wait_final(service, service.prewarm(body)["request_id"])
    assert progress["status"] == "FINISHED"
    assert progress["total_count"] == progress["success_count"] == len(expected)
    assert origin_gets(cdn) == {(path, pop): 1 for pop in expected}


def test_a_40_mib_object_at_1_mib_s_is_warmed_once_in_one_attempt(service: PrewarmClient, cdn: Testbed) -> None:
    """The body takes 40 s, far past PREWARM_FETCH_TIMEOUT (3 s here, the time to the response head): it is never
    cut for its length, so the origin sends it once and the edge holds it; bytes and rate show while it streams."""
    cdn.reset()
    path = "/fault/rate/1048576/obj/40mb/big.bin"
    req_id = service.prewarm(request_body([cdn.url(path)], pops=SPEC_POPS[:1], timeout=3))["request_id"]
    deadline = time.monotonic() + 30
    while True:
        moving = service.progress(req_id)
        if moving["bytes_received"] >= 8 * 1024 * 1024 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert moving["status"] == "IN_PROGRESS" and moving["download_count"] == 0
    assert moving["bytes_received"] >= 8 * 1024 * 1024
    assert 0.5 * 1024 * 1024 <= moving["byte_rate"] <= 2 * 1024 * 1024, moving["byte_rate"]
    progress = wait_final(service, req_id, timeout_s=120)
    assert progress["status"] == "FINISHED" and progress["success_count"] == 1 and progress["failure_count"] == 0
    assert progress["download_size"] == 40 * 1024 * 1024 and progress["bytes_wasted"] == 0
    assert progress["verified_hit_count"] == 1
    assert origin_gets(cdn) == {(path, SPEC_POPS[0]): 1}
    assert [(r["complete"], r["bytes"]) for r in cdn.origin_sent() if r["path"] == path] == [(1, 40 * 1024 * 1024)]
    assert_warm(cdn, [cdn.url(path)], SPEC_POPS[:1])
    summary = service.summary(req_id)
    assert summary["download_size"] == 40 * 1024 * 1024
    assert 0.5 * 1024 * 1024 <= summary["byte_rate"] <= 1.1 * 1024 * 1024


def test_faults_land_exactly_where_they_should(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    paths = {
        "ok": "/obj/1kb/fine",
        "404": "/fault/status/404/gone.js",
        "flaky": "/fault/fail-first/1/503/flaky.css",
        "reset": "/fault/reset/reset.bin",
        "truncated": "/fault/truncate/cut.bin",
        "slow": "/fault/delay/30000/slow.bin",  # every attempt times out (3 s)
    }
    urls = {k: cdn.url(p) for k, p in paths.items()}
    pops = [*SPEC_POPS, "ZZZ9-C9"]  # the last one does not resolve
    accepted = service.prewarm(request_body(list(urls.values()), pops=pops))
    req_id = accepted["request_id"]
    progress = wait_final(service, req_id)
    assert progress["status"] == "FINISHED"
    assert progress["total_count"] == progress["download_count"] == len(urls) * 3
    assert progress["success_count"] == 2 * 3  # ok and flaky (503 then 200) on every POP

    summary = service.summary(req_id)
    assert summary["failure_pops"] == ["ZZZ9-C9"]
    assert summary["failure_urls"] == [urls[k] for k in ("404", "reset", "truncated", "slow")]

    rows = report_rows(service, req_id)
    got = sorted(zip(rows["url"], rows["pop"], rows["error_class"], strict=True))
    expected = [("", "ZZZ9-C9", "pop_unavailable")]
    for key, error_class in (("404", "http_404"), ("reset", "http_502"), ("truncated", "truncated"),
                             ("slow", "fetch_timeout")):
        expected += [(urls[key], pop, error_class) for pop in SPEC_POPS]
    assert got == sorted(expected)
    assert "NXDOMAIN" in rows.loc[rows["pop"] == "ZZZ9-C9", "error_message"].item()
    assert set(rows.loc[rows["error_class"] == "http_502", "attempts"]) == {3}  # PREWARM_ATTEMPTS
    cut = rows[rows["error_class"] == "truncated"]
    assert set(cut["attempts"]) == {2}  # a body cut short: PREWARM_BODY_ATTEMPTS
    # At most half of 1 KiB, twice per POP (nginx may not pass on what it holds when the origin resets).
    assert 0 < summary["bytes_wasted"] == progress["bytes_wasted"] <= 3 * 2 * 512
    assert set(rows.loc[rows["error_class"] == "http_404", "status_code"]) == {404}

    gets = origin_gets(cdn)
    # The 404 was found by its size probe (the GET of URL i through resolved POP i mod 3: the 404 is URL 1)
    # and never sent to the other POPs.
    assert {k: v for k, v in gets.items() if k[0] == paths["404"]} == {(paths["404"], SPEC_POPS[1]): 1}
    # 503 then 200 through each POP (through its probe's POP, the probe's GET took them).
    assert {k: v for k, v in gets.items() if k[0] == paths["flaky"]} == {
        (paths["flaky"], pop): 2 for pop in SPEC_POPS
    }
    assert all(v == 1 for k, v in gets.items() if k[0] == paths["ok"])
    assert_warm(cdn, [urls["ok"], urls["flaky"]], SPEC_POPS)


def slow_urls(cdn: Testbed, tag: str, n: int, ms: int = 2500) -> list[str]:
    return [cdn.url(f"/fault/delay/{ms}/{tag}-{i}") for i in range(n)]


def test_timeout_and_stop_end_jobs_promptly_and_leave_others_alone(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    timing_out = service.prewarm(request_body(slow_urls(cdn, "t", 60), timeout=0.1))["request_id"]
    stopped = service.prewarm(request_body(slow_urls(cdn, "s", 60), timeout=5))["request_id"]
    survivor = service.prewarm(request_body(slow_urls(cdn, "v", 60, ms=400), timeout=5))["request_id"]
    quick = service.prewarm(request_body([cdn.url("/obj/1kb/quick")], timeout=5))["request_id"]

    time.sleep(1.5)
    t0 = time.monotonic()
    answer = service.instances(req_id=stopped, force_stop=True)
    assert answer["status"] == "success" and "STOPPED" in answer["message"]
    progress = service.progress(stopped)
    assert progress["status"] == "STOPPED" and time.monotonic() - t0 < 5
    assert progress["download_count"] == progress["total_count"] == 180
    assert service.progress(survivor)["status"] == "IN_PROGRESS"

    timed = wait_final(service, timing_out, timeout_s=40)
    assert timed["status"] == "TIMEOUT"
    assert timed["download_count"] == timed["total_count"] == 180
    assert "timeout" in timed["error_message"]
    rows = report_rows(service, timing_out)
    assert "timeout" in set(rows["error_class"])
    created = datetime.strptime(timed["created_at"], TIME_FORMAT)
    assert datetime.strptime(timed["last_update_time"], TIME_FORMAT) - created < timedelta(seconds=15)

    assert wait_final(service, quick)["status"] == "FINISHED"
    final = wait_final(service, survivor)
    assert (final["status"], final["success_count"]) == ("FINISHED", 180)
    assert set(report_rows(service, stopped)["error_class"]) <= {"stopped"}
    assert service.progress(stopped)["status"] == "STOPPED"


def post_error(client: PrewarmClient, body: object, path: str = "/prewarm") -> tuple[int, dict]:
    with pytest.raises(ApiError) as info:
        client.call("POST", path, body)
    return info.value.status, info.value.body


GOOD = request_body(["https://www.example.com/obj/1kb/x"])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({k: v for k, v in GOOD.items() if k != "url_list"}, "field 'url_list' is required"),
        ({**GOOD, "url_list": []}, "field 'url_list': must not be empty"),
        ({**GOOD, "url_list": "https://www.example.com/"}, "field 'url_list'"),
        ({**GOOD, "url_list": [1]}, "field 'url_list[0]'"),
        ({**GOOD, "timeout": 0}, "field 'timeout'"),
        ({**GOOD, "timeout": 1441}, "field 'timeout'"),
        ({**GOOD, "timeout": "5"}, "field 'timeout': must be a number"),
        ({**GOOD, "target_type": "planet"}, "field 'target_type'"),
        ({**GOOD, "target_type": "region", "regions": ["mars"]}, "field 'regions': unknown regions ['mars']"),
        ({**GOOD, "target_type": "country", "countries": ["x"]}, "field 'countries'"),
        ({**GOOD, "pops": ["ATL56"]}, "field 'pops': malformed POP code"),
        ({**GOOD, "instance_count": 0}, "field 'instance_count'"),
        ({**GOOD, "instance_count": 301}, "field 'instance_count'"),
        ({**GOOD, "header": ["X-A: a\r\nX-B: b"]}, "field 'header'"),
        ({**GOOD, "header": {"Host": "evil.example"}}, "field 'header': header 'Host' may not be set"),
        ({**GOOD, "need_invalidate": "no"}, "field 'need_invalidate'"),
        ({**GOOD, "cf_domain": "nothing.example.com"}, "field 'cf_domain'"),
        ([1, 2], "request body must be a JSON object"),
        (None, "request body must be a JSON object"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(service: PrewarmClient, body: object, words: str) -> None:
    status, answer = post_error(service, body)
    assert status == 400
    assert answer["status"] == "Failed" and words in answer["error_message"], answer
    assert answer["request_id"] == ""


def test_invalid_urls_are_listed_in_error_urls(service: PrewarmClient) -> None:
    bad = ["ftp://www.example.com/x", "https://www.example.com/a b", "www.example.com/rel"]
    status, answer = post_error(service, {**GOOD, "url_list": [GOOD["url_list"][0], *bad]})
    assert status == 400 and answer["error_urls"] == bad


def test_limits_and_malformed_json(service: PrewarmClient) -> None:
    import urllib.request

    request = urllib.request.Request(service.base_url + "/prewarm", data=b"{not json", method="POST")
    with pytest.raises(Exception) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400  # type: ignore[attr-defined]
    assert b"not valid JSON" in info.value.read()  # type: ignore[attr-defined]
    too_long = "https://www.example.com/" + "a" * 3000
    status, answer = post_error(service, {**GOOD, "url_list": [too_long]})
    assert status == 400 and "longer than 2048" in answer["error_message"] and answer["error_urls"] == [too_long]


def test_req_id_errors(service: PrewarmClient) -> None:
    for path in ("/prewarm", "/summary"):
        with pytest.raises(ApiError) as info:
            service.call("GET", path, req_id="not-a-uuid")
        assert info.value.status == 400 and "field 'req_id'" in info.value.body["error_message"]
        with pytest.raises(ApiError) as info:
            service.call("GET", path)
        assert info.value.status == 400 and "field 'req_id' is required" in info.value.body["error_message"]
        with pytest.raises(ApiError) as info:
            service.call("GET", path, req_id=str(uuid.uuid4()))
        assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        service.report("nope")
    assert info.value.status == 400


def test_instances(service: PrewarmClient) -> None:
    answer = service.instances(desired=2)
    assert answer["status"] == "success" and "2" in answer["message"]
    query = service.instances()
    assert query["desiredcapacity"] == 2 and query["alive_count"] == 1 and query["message"] == "query success"
    for body, status, words in (
        ({"DesiredCapacity": 301}, 400, "field 'DesiredCapacity'"),
        ({"DesiredCapacity": "2"}, 400, "field 'DesiredCapacity': must be a number"),
        ({"force_stop": True}, 400, "force_stop needs req_id"),
        ({"force_stop": True, "req_id": str(uuid.uuid4())}, 404, "no job"),
    ):
        got_status, answer = post_error(service, body, "/instances")
        assert got_status == status and words in answer["error_message"], answer
    # force_stop false stops nothing
    assert "stopped" not in service.call("POST", "/instances", {"DesiredCapacity": 0, "force_stop": False})[
        "message"
    ]


def test_health_and_openapi(service: PrewarmClient) -> None:
    assert service.call("GET", "/healthz")["status"] == "ok"
    spec = service.call("GET", "/openapi.json")
    assert {"/prewarm", "/summary", "/instances", "/healthz"} <= set(spec["paths"])
    assert "url_list" in str(spec["paths"]["/prewarm"]["post"]["requestBody"])
    assert b"swagger" in service.call("GET", "/docs").lower()


def test_max_concurrency_caps_fetches_per_pop(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    urls = [cdn.url(f"/fault/delay/400/cap-{i}") for i in range(8)]
    progress = wait_final(service, service.prewarm(
        request_body(urls, pops=["DFW55-C3"], max_concurrency=2, timeout=2))["request_id"])
    assert progress["status"] == "FINISHED" and progress["success_count"] == 8
    elapsed = (datetime.strptime(progress["last_update_time"], TIME_FORMAT)
               - datetime.strptime(progress["created_at"], TIME_FORMAT))
    # 8 GETs, each its URL's size probe (the only POP): 8 x 0.4 s over 2 connections.
    assert elapsed >= timedelta(seconds=1.5), elapsed
    status, answer = post_error(service, {**GOOD, "max_concurrency": 0})
    assert status == 400 and "field 'max_concurrency'" in answer["error_message"]


def test_redirects_are_not_followed(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    url = cdn.url("/fault/status/302/moved")
    req_id = service.prewarm(request_body([url], pops=["ATL56-C1", "DFW55-C3"]))["request_id"]
    assert wait_final(service, req_id)["failure_count"] == 2
    rows = report_rows(service, req_id)
    assert set(rows["error_class"]) == {"http_302"} and set(rows["attempts"]) == {1}
    # One GET per POP (ATL's was the size probe: URL 0 through POP 0); a 302 is not cached; nothing else sent.
    assert origin_gets(cdn) == {("/fault/status/302/moved", "ATL56-C1"): 1, ("/fault/status/302/moved", "DFW55-C3"): 1}
    assert cdn.origin_counts()["total"] == 2


def test_callback_url_needs_a_webhook_secret(service: PrewarmClient, cdn: Testbed) -> None:
    with pytest.raises(ApiError) as info:
        service.prewarm(request_body([cdn.url("/obj/1kb/x")], callback_url="http://127.0.0.1:9/hook"))
    assert info.value.status == 400
    assert info.value.body["error_message"].startswith("field 'callback_url'") and "SECRET" in info.value.message
