"""Metrics reach Ray's Prometheus endpoint: fetches by POP and outcome, bytes, latency, jobs by status."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator

import pytest

from prewarm.client import PrewarmClient
from prewarm.testbed import Testbed

from .conftest import RAY_TEST_KWARGS, free_port, request_body, serve_on_free_port, service_settings, wait_final


@pytest.fixture(scope="module")
def metered(cdn: Testbed) -> Iterator[tuple[PrewarmClient, int]]:
    from prewarm.api.service import stop_service

    port = free_port()
    base = serve_on_free_port(service_settings(cdn), ray_init_kwargs={**RAY_TEST_KWARGS, "_metrics_export_port": port})
    try:
        yield PrewarmClient(base), port
    finally:
        stop_service()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_fetch_and_job_metrics_are_exported(metered: tuple[PrewarmClient, int], cdn: Testbed) -> None:
    client, port = metered
    cdn.reset()
    urls = [cdn.url(f"/obj/2kb/metric-{i}") for i in range(5)] + [cdn.url("/fault/status/500/broken")]
    req_id = client.prewarm(request_body(urls, pops=["DFW55-C3", "ATL56-C1"]))["request_id"]
    assert wait_final(client, req_id)["success_count"] == 10
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:  # Ray exports metrics every few seconds
        text = scrape(port)
        if (sample(text, "ray_prewarm_fetches_total", pop="DFW55-C3", outcome="ok") == 5
                and sample(text, "ray_prewarm_jobs_total", status="FINISHED") >= 1):
            break
        time.sleep(1)
    for pop in ("DFW55-C3", "ATL56-C1"):
        assert sample(text, "ray_prewarm_fetches_total", pop=pop, outcome="ok") == 5
        assert sample(text, "ray_prewarm_fetches_total", pop=pop, outcome="http_500") == 1
        assert sample(text, "ray_prewarm_bytes_total", pop=pop) >= 5 * 2048
        assert sample(text, "ray_prewarm_fetch_latency_ms_count", pop=pop) == 6
    assert sample(text, "ray_prewarm_jobs_total", status="FINISHED") == 1


def test_every_job_log_line_carries_the_request_id(metered: tuple[PrewarmClient, int], cdn: Testbed) -> None:
    import json
    from pathlib import Path

    import ray

    client, _ = metered
    req_id = client.prewarm(request_body([cdn.url("/obj/1kb/logged")], pops=["DFW55-C3"]))["request_id"]
    wait_final(client, req_id)
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    deadline = time.monotonic() + 30
    lines: list[dict] = []
    while time.monotonic() < deadline and not any("job ended" in line.get("message", "") for line in lines):
        lines = []
        for path in logs.glob("worker-*"):
            for raw in path.read_text(errors="replace").splitlines():
                if req_id in raw and raw.startswith("{"):
                    lines.append(json.loads(raw))
        time.sleep(0.5)
    mine = [line for line in lines if line.get("filename") in {"coordinator.py", "fetcher.py", "state.py"}]
    assert any("warming 1 tasks" in line["message"] for line in mine)
    assert any("job ended FINISHED" in line["message"] for line in mine)
    assert all(line.get("req_id") == req_id for line in mine), mine


def test_the_latency_histogram_samples_large_batches_while_the_counters_count_every_fetch(
        metered: tuple[PrewarmClient, int], cdn: Testbed) -> None:
    client, port = metered
    urls = [cdn.url(f"/obj/1kb/sampled-{i}") for i in range(400)]
    req_id = client.prewarm(request_body(urls, pops=["SIN2-C1"]))["request_id"]
    assert wait_final(client, req_id)["success_count"] == 400
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline and sample(text, "ray_prewarm_fetches_total", pop="SIN2-C1") < 400:
        text = scrape(port)
        time.sleep(1)
    assert sample(text, "ray_prewarm_fetches_total", pop="SIN2-C1", outcome="ok") == 400
    observed = sample(text, "ray_prewarm_fetch_latency_ms_count", pop="SIN2-C1")
    # Batches of more than 32 fetches are sampled (at most 32 and over 16 observations each); none is skipped.
    assert 0 < observed < 400
    assert sample(text, "ray_prewarm_fetch_latency_ms_bucket", pop="SIN2-C1", le="+Inf") == observed
