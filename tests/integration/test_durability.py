"""Nothing lost: the state actor killed with SIGKILL, the Serve replica killed, the whole cluster restarted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from prewarm.client import ApiError, PrewarmClient
from prewarm.engine.registry import STATE_ACTOR_NAME
from prewarm.settings import Settings
from prewarm.testbed import Testbed

from .conftest import RAY_TEST_KWARGS, request_body, serve_on_free_port, service_settings, wait_final
from .test_service import report_rows


@pytest.fixture(scope="module")
def settings(cdn: Testbed) -> Settings:
    return service_settings(cdn)


@pytest.fixture
def running(settings: Settings) -> Iterator[PrewarmClient]:
    """The service on a fresh local Ray cluster for each test (one test restarts the cluster itself)."""
    from prewarm.api.service import stop_service

    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    try:
        yield PrewarmClient(base)
    finally:
        stop_service()


def slow_job(client: PrewarmClient, cdn: Testbed, tag: str, n: int = 150, timeout: float = 3,
             delay_ms: int = 250, until_results: bool = True) -> tuple[str, int]:
    """Start a job of slow objects and return once it has results (or, if not ``until_results``, once it
    is probing)."""
    urls = [cdn.url(f"/fault/delay/{delay_ms}/{tag}-{i}") for i in range(n)]
    req_id = client.prewarm(request_body(urls, timeout=timeout))["request_id"]
    deadline = time.monotonic() + 30
    while True:
        progress = client.progress(req_id)
        if (progress["download_count"] > 0) if until_results else progress["phase"] in ("probing", "warming"):
            return req_id, n * 3
        assert time.monotonic() < deadline and progress["status"] == "IN_PROGRESS", progress
        time.sleep(0.05)


def wait_api(client: PrewarmClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client.call("GET", "/healthz")
            return
        except (ApiError, OSError):
            time.sleep(0.2)
    raise AssertionError("the API did not come back")


def exact(client: PrewarmClient, req_id: str, total: int) -> dict[str, Any]:
    progress = wait_final(client, req_id)
    assert progress["status"] == "FINISHED", progress
    assert progress["total_count"] == progress["download_count"] == progress["success_count"] == total
    assert report_rows(client, req_id).empty
    return progress


def test_state_actor_killed_mid_job_reloads_and_counts_exactly(running: PrewarmClient, cdn: Testbed,
                                                               settings: Settings) -> None:
    cdn.reset()
    req_id, total = slow_job(running, cdn, "kill-state")
    state = ray.get_actor(STATE_ACTOR_NAME, namespace=settings.namespace)
    old_pid = ray.get(state.pid.remote())
    os.kill(old_pid, signal.SIGKILL)
    progress = exact(running, req_id, total)
    assert ray.get(state.pid.remote()) != old_pid
    assert progress["download_size"] == total * 1024


@pytest.mark.parametrize("kind", ["SERVE_REPLICA", "SERVE_PROXY_ACTOR"])
def test_serve_replica_or_proxy_killed_mid_job(running: PrewarmClient, cdn: Testbed, kind: str) -> None:
    cdn.reset()
    req_id, total = slow_job(running, cdn, f"kill-{kind}")
    victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(kind)]
    assert victims
    for actor in victims:
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
    wait_api(running)  # Serve's controller brings it back
    exact(running, req_id, total)


def test_whole_cluster_restart_keeps_finished_jobs_and_fails_running_ones(cdn: Testbed, settings: Settings) -> None:
    from prewarm.api.service import stop_service

    cdn.reset()
    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    client = PrewarmClient(base)
    done_id = client.prewarm(request_body([cdn.url("/obj/1kb/keep"), cdn.url("/fault/status/404/x")]))["request_id"]
    wait_final(client, done_id)
    before = (client.progress(done_id), client.summary(done_id), client.report(done_id))
    # 400 one-second objects: the job is still probing, far from done, when the cluster goes away.
    running_id, total = slow_job(client, cdn, "restart", n=400, timeout=5, delay_ms=1000, until_results=False)
    stop_service()  # the whole local cluster goes away, like `ray stop`

    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    try:
        client = PrewarmClient(base)
        progress, summary, report = client.progress(done_id), client.summary(done_id), client.report(done_id)
        drop = {"timestamp", "failure_pop_urls_report"}
        assert {k: v for k, v in progress.items() if k not in drop} == {
            k: v for k, v in before[0].items() if k not in drop
        }
        assert {k: v for k, v in summary.items() if k not in drop} == {
            k: v for k, v in before[1].items() if k not in drop
        }
        assert report == before[2] and b"http_404" in report
        failed = client.progress(running_id)
        assert failed["status"] == "FAILED" and "restarted" in failed["error_message"]
        assert failed["download_count"] == failed["total_count"] == total
    finally:
        stop_service()
