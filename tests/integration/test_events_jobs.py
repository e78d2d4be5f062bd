"""Live events (GET /prewarm/events) and the job list (GET /jobs) over real HTTP through Serve's proxy,
and the CLI's ``submit --watch``, ``watch`` and ``jobs`` on top of them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from typing import Any

import pytest

from prewarm.cli.progressbar import follow
from prewarm.client import ApiError, PrewarmClient
from prewarm.schema import FINAL_STATUSES, TIME_FORMAT
from prewarm.testbed import Testbed

from .conftest import SPEC_POPS, request_body, wait_final


def slow_job(service: PrewarmClient, cdn: Testbed, tag: str, ms: tuple[int, ...] = (600, 1500, 2500),
             **fields: Any) -> str:
    """A job that runs for a few seconds: each URL answers after its delay (under the 3 s fetch timeout)."""
    urls = [cdn.url(f"/fault/delay/{d}/{tag}-{uuid.uuid4().hex[:6]}-{i}") for i, d in enumerate(ms)]
    return service.prewarm(request_body(urls, **fields))["request_id"]


def quick_job(service: PrewarmClient, cdn: Testbed, tag: str) -> dict[str, Any]:
    return service.prewarm(request_body([cdn.url(f"/obj/1kb/{tag}-{uuid.uuid4().hex[:6]}")], pops=["ATL56-C1"]))


def receive(service: PrewarmClient, req_id: str) -> tuple[list[tuple[float, str, dict[str, Any]]], float]:
    """Every event of the stream with its time of receipt (from opening it), and when the stream closed."""
    t0 = time.monotonic()
    got = [(time.monotonic() - t0, event, data) for event, data in service.events(req_id, read_timeout_s=30)]
    return got, time.monotonic() - t0


def test_event_stream_of_a_running_job(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    req_id = slow_job(service, cdn, "sse")
    got, closed_at = receive(service, req_id)
    events = [e for _, e, _ in got]
    assert events.count("done") == 1 and events[-1] == "done", events
    assert set(events) == {"progress", "done"}, events
    progress = [(t, d) for t, e, d in got if e == "progress"]
    assert progress and progress[-1][1]["status"] == "FINISHED"
    assert all(d["status"] == "IN_PROGRESS" for _, d in progress[:-1])
    done_counts = [d["download_count"] for _, d in progress]
    assert done_counts == sorted(done_counts)
    # At most one progress event a second (receipt times, loosely) ...
    assert len(progress) <= closed_at + 2, (len(progress), closed_at)
    # ... and streamed as they happen, not buffered to the end by the proxy.
    assert progress[0][0] < got[-1][0] - 1.0, got

    summary = got[-1][2]
    final = service.progress(req_id)
    assert summary["request_id"] == req_id and summary["status"] == final["status"] == "FINISHED"
    assert summary["success_count"] == final["success_count"] == progress[-1][1]["success_count"] == 9
    assert summary["failure_pop_urls_report"].endswith(f"/reports/{req_id}.csv")
    assert {k: v for k, v in summary.items() if k != "timestamp"} == {
        k: v for k, v in service.summary(req_id).items() if k != "timestamp"}
    # The same body as GET /prewarm, field for field.
    assert set(progress[-1][1]) == set(final)


def test_event_stream_of_an_ended_job_and_its_raw_shape(service: PrewarmClient, cdn: Testbed) -> None:
    req_id = quick_job(service, cdn, "ended")["request_id"]
    wait_final(service, req_id)
    request = urllib.request.Request(f"{service.base_url}/prewarm/events?req_id={req_id}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        raw = resp.read().decode()  # returns: the service closes the stream after done
    frames = raw.split("\n\n")
    assert frames[-1] == "" and len(frames) == 3, raw
    assert frames[0].startswith("event: progress\ndata: {") and frames[1].startswith("event: done\ndata: {")
    done = json.loads(frames[1].split("data: ", 1)[1])
    assert done["status"] == "FINISHED" and done["success_count"] == 1


@pytest.mark.parametrize(("req_id", "status", "words"), [
    ("not-a-uuid", 400, "field 'req_id'"),
    (None, 400, "field 'req_id' is required"),
    (str(uuid.uuid4()), 404, "no job"),
])
def test_event_stream_errors_are_json_before_streaming(service: PrewarmClient, req_id: str | None, status: int,
                                                       words: str) -> None:
    with pytest.raises(ApiError) as info:
        service.call("GET", "/prewarm/events", req_id=req_id)
    assert info.value.status == status and words in info.value.body["error_message"]
    assert info.value.body["status"] == "Failed"
    if req_id is not None:
        with pytest.raises(ApiError) as info:
            next(service.events(req_id))
        assert info.value.status == status


def test_follow_falls_back_to_polling_when_the_stream_breaks(service: PrewarmClient, cdn: Testbed) -> None:
    req_id = slow_job(service, cdn, "break", ms=(1500, 2500))
    out = io.StringIO()
    # Events come at most once a second: a 0.3 s read timeout breaks the stream after the first one.
    progress, summary = follow(service, req_id, stream=out, tty=False, poll_s=0.2, read_timeout_s=0.3)
    assert summary is None  # polled to the end
    assert progress["status"] == "FINISHED" and progress["success_count"] == 6
    assert "6/6 100%" in out.getvalue().splitlines()[-1]
    progress, summary = follow(service, req_id, stream=out, tty=False)  # an ended job: straight to done
    assert summary is not None and summary["success_count"] == progress["success_count"] == 6


def test_jobs_lists_newest_first_with_filters_and_limit(service: PrewarmClient, cdn: Testbed) -> None:
    first = quick_job(service, cdn, "list-a")
    time.sleep(0.01)
    second = quick_job(service, cdn, "list-b")
    time.sleep(0.01)
    third = quick_job(service, cdn, "list-c")
    stopped = slow_job(service, cdn, "list-d", ms=(2500,) * 20, timeout=5)
    service.instances(req_id=stopped, force_stop=True)
    ids = [first["request_id"], second["request_id"], third["request_id"]]
    for req_id in ids:
        wait_final(service, req_id)
    since = first["timestamp"]

    answer = service.jobs(since=since)
    assert [j["request_id"] for j in answer["jobs"]] == [stopped, *reversed(ids)]
    assert answer["count"] == 4 and datetime.strptime(answer["timestamp"], TIME_FORMAT)
    listed = answer["jobs"][1]
    assert {k: v for k, v in listed.items() if k != "timestamp"} == {
        k: v for k, v in service.progress(ids[2]).items() if k != "timestamp"}

    everything = service.jobs(limit=1000)["jobs"]
    created = [datetime.strptime(j["created_at"], TIME_FORMAT) for j in everything]
    assert created == sorted(created, reverse=True) and len(everything) >= 4

    assert [j["request_id"] for j in service.jobs(status="STOPPED", since=since)["jobs"]] == [stopped]
    assert [j["request_id"] for j in service.jobs(status="FINISHED", since=since)["jobs"]] == ids[::-1]
    assert [j["request_id"] for j in service.jobs(since=since, limit=2)["jobs"]] == [stopped, ids[2]]
    assert service.jobs(limit=1)["count"] == 1
    # ISO 8601 works too, and "since" is inclusive: the second job's own creation time keeps it.
    iso = datetime.strptime(second["timestamp"], TIME_FORMAT).isoformat() + "Z"
    assert [j["request_id"] for j in service.jobs(since=iso)["jobs"]] == [stopped, ids[2], ids[1]]
    offset = datetime.strptime(second["timestamp"], TIME_FORMAT).isoformat() + "+00:00"
    assert [j["request_id"] for j in service.jobs(since=offset, status="finished")["jobs"]] == [ids[2], ids[1]]
    future = service.jobs(since="2999-01-01T00:00:00Z")
    assert future["jobs"] == [] and future["count"] == 0


@pytest.mark.parametrize(("query", "field"), [
    ({"status": "DONE"}, "status"), ({"status": "finished,failed"}, "status"),
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "ten"}, "limit"), ({"limit": -5}, "limit"),
    ({"since": "yesterday"}, "since"), ({"since": "2024-02-30 00:00:00.0"}, "since"),
])
def test_jobs_bad_values_are_400_naming_the_field(service: PrewarmClient, query: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as info:
        service.call("GET", "/jobs", **query)
    assert info.value.status == 400 and f"field '{field}'" in info.value.body["error_message"], info.value.body


def test_openapi_documents_both_endpoints(service: PrewarmClient) -> None:
    paths = service.call("GET", "/openapi.json")["paths"]
    assert "text/event-stream" in paths["/prewarm/events"]["get"]["responses"]["200"]["content"]
    assert {p["name"] for p in paths["/jobs"]["get"]["parameters"]} == {"status", "limit", "since"}


# -- the CLI ----------------------------------------------------------------------------------------------


def run_cli(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter, as CI would run it (stderr is a pipe: not a TTY)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREWARM_")}
    return subprocess.run([sys.executable, "-m", "prewarm.cli", *argv], capture_output=True, text=True,
                          timeout=timeout_s, env=env, check=False)


def test_cli_submit_watch_follows_the_event_stream(service: PrewarmClient, cdn: Testbed) -> None:
    tag = uuid.uuid4().hex[:8]
    urls = [cdn.url(f"/fault/delay/1200/{tag}-a"), cdn.url(f"/obj/2kb/{tag}/b.css")]
    # A poll interval of 10 minutes: were the stream not used, this would not end within the timeout.
    proc = run_cli("submit", "--url", service.base_url, "--timeout", "2", "--cf-domain", "www.example.com",
                   "--pops", ",".join(SPEC_POPS), "--poll", "600", "--watch", "--json", *urls, timeout_s=90)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == out["progress"]["status"] == out["summary"]["status"] == "FINISHED"
    assert out["summary"]["success_count"] == out["progress"]["success_count"] == 6
    assert out["submit"]["request_id"] == out["request_id"]
    assert "\r" not in proc.stderr and "6/6 100%" in proc.stderr.splitlines()[-1]

    watched = run_cli("watch", out["request_id"], "--url", service.base_url, "--poll", "600", timeout_s=60)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.splitlines()[0].endswith(": FINISHED, 6 succeeded, 0 failed")
    polled = run_cli("watch", out["request_id"], "--url", service.base_url, "--no-events", "--json")
    assert polled.returncode == 0 and json.loads(polled.stdout)["summary"]["success_count"] == 6
    missing = run_cli("watch", str(uuid.uuid4()), "--url", service.base_url)
    assert missing.returncode == 2 and "no job" in missing.stderr


def test_cli_jobs_table_and_json(service: PrewarmClient, cdn: Testbed) -> None:
    accepted = quick_job(service, cdn, "cli-jobs")
    wait_final(service, accepted["request_id"])
    as_json = run_cli("jobs", "--url", service.base_url, "--since", accepted["timestamp"], "--json")
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["count"] == 1 and answer["jobs"][0]["request_id"] == accepted["request_id"]
    table = run_cli("jobs", "--url", service.base_url, "--status", "FINISHED", "--limit", "2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["request_id", "status", "phase"] and 2 < len(lines) <= 2 + 2
    assert all(line.split()[1] == "FINISHED" for line in lines[2:])
    bad = run_cli("jobs", "--url", service.base_url, "--limit", "0")
    assert bad.returncode == 2 and "field 'limit'" in bad.stderr
    assert all(j["status"] in FINAL_STATUSES for j in answer["jobs"])
