"""Scale-out on a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster).

Three fetcher nodes (custom resource ``prewarm_fetcher``) beside a head node that runs Serve, the state
actor and the coordinators: placement on distinct nodes, fewer nodes than asked, and the faults a
real cluster has (a fetcher killed, a node removed, a coordinator killed) with exact counts.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from prewarm.client import PrewarmClient
from prewarm.engine.cluster import FETCHER_RESOURCE
from prewarm.engine.registry import STATE_ACTOR_NAME, coordinator_name
from prewarm.testbed import Testbed

from .conftest import SPEC_POPS, origin_gets, request_body, serve_on_free_port, service_settings, wait_final
from .test_service import assert_warm, report_rows

NODE_ARGS: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 75 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "num_cpus": 2, "include_dashboard": False})
    for _ in range(3):
        c.add_node(**NODE_ARGS, resources={FETCHER_RESOURCE: 1})
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def served(cluster: Cluster, cdn: Testbed) -> Iterator[tuple[PrewarmClient, str]]:
    from prewarm.api.service import stop_service

    settings = service_settings(cdn, PREWARM_FETCHERS_PER_NODE="1")
    base = serve_on_free_port(settings, address=cluster.address)
    try:
        yield PrewarmClient(base), settings.namespace
    finally:
        stop_service()


def state(namespace: str) -> Any:
    return ray.get_actor(STATE_ACTOR_NAME, namespace=namespace)


def fetcher_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(FETCHER_RESOURCE)}


def wait_until(predicate: Any, timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job_fetchers(req_id: str, namespace: str) -> list[Any]:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == namespace and a["name"].startswith(f"prewarm-fetcher-{req_id}")]
    return [ray.get_actor(n, namespace=namespace) for n in names]


def assert_exact(client: PrewarmClient, req_id: str, total: int) -> dict[str, Any]:
    progress = wait_final(client, req_id, timeout_s=120)
    assert progress["status"] == "FINISHED", progress
    assert progress["total_count"] == progress["download_count"] == progress["success_count"] == total
    assert progress["failure_count"] == 0
    assert report_rows(client, req_id).empty
    summary = client.summary(req_id)
    assert sum(r["success"] for r in summary["pops"]) == total
    return progress


def test_fetchers_run_on_instance_count_distinct_nodes(served: tuple[PrewarmClient, str], cdn: Testbed) -> None:
    client, namespace = served
    cdn.reset()
    paths = [f"/obj/1kb/spread-{i}" for i in range(30)]
    urls = [cdn.url(p) for p in paths]
    req_id = client.prewarm(request_body(urls, instance_count=3))["request_id"]
    progress = assert_exact(client, req_id, 90)
    assert progress["nodes_used"] == 3
    nodes = ray.get(state(namespace).nodes.remote(req_id))
    assert len(nodes) == 3 and set(nodes) == fetcher_nodes()  # one fetcher per node, never the head
    assert origin_gets(cdn) == {(p, pop): 1 for p in paths for pop in SPEC_POPS}
    assert_warm(cdn, urls[:3], SPEC_POPS)


def test_more_instances_than_nodes_runs_on_the_nodes_there_are(served: tuple[PrewarmClient, str],
                                                               cdn: Testbed) -> None:
    client, namespace = served
    req_id = client.prewarm(request_body([cdn.url("/obj/1kb/five")], instance_count=5))["request_id"]
    progress = assert_exact(client, req_id, 3)
    assert progress["nodes_used"] == 3
    assert len(set(ray.get(state(namespace).nodes.remote(req_id)))) == 3


def slow_job(client: PrewarmClient, cdn: Testbed, tag: str, n: int = 120) -> tuple[str, int]:
    urls = [cdn.url(f"/fault/delay/300/{tag}-{i}") for i in range(n)]
    req_id = client.prewarm(request_body(urls, instance_count=3, timeout=3))["request_id"]
    wait_until(lambda: client.progress(req_id)["phase"] == "warming", what="warming")
    return req_id, n * len(SPEC_POPS)


def test_a_killed_fetcher_hands_its_lanes_on(served: tuple[PrewarmClient, str], cdn: Testbed) -> None:
    client, namespace = served
    req_id, total = slow_job(client, cdn, "killfetcher")
    victim = job_fetchers(req_id, namespace)[0]
    os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
    progress = assert_exact(client, req_id, total)
    assert progress["download_count"] == total


def test_a_removed_node_hands_its_lanes_on(served: tuple[PrewarmClient, str], cluster: Cluster,
                                           cdn: Testbed) -> None:
    client, _ = served
    req_id, total = slow_job(client, cdn, "removenode")
    worker = next(n for n in cluster.worker_nodes)
    cluster.remove_node(worker)
    try:
        assert_exact(client, req_id, total)
    finally:
        cluster.add_node(**NODE_ARGS, resources={FETCHER_RESOURCE: 1})
        cluster.wait_for_nodes()


def test_a_crashed_coordinator_is_restarted_and_resumes(served: tuple[PrewarmClient, str], cdn: Testbed) -> None:
    client, namespace = served
    req_id, total = slow_job(client, cdn, "coordcrash")
    wait_until(lambda: client.progress(req_id)["download_count"] > 0, what="first results")
    ray.kill(ray.get_actor(coordinator_name(req_id), namespace=namespace), no_restart=False)
    assert_exact(client, req_id, total)


def test_a_coordinator_crashed_while_probing_probes_again_and_resumes(served: tuple[PrewarmClient, str],
                                                                     cdn: Testbed) -> None:
    client, namespace = served
    urls = [cdn.url(f"/fault/delay/300/probecrash-{i}") for i in range(600)]
    req_id = client.prewarm(request_body(urls, instance_count=3, timeout=3))["request_id"]
    # Killed while the probe runs and before any of it answered (200 probes per lane at 32 at once: ~2 s).
    wait_until(lambda: client.progress(req_id)["phase"] == "probing", what="probing")
    assert client.progress(req_id)["download_count"] == 0
    ray.kill(ray.get_actor(coordinator_name(req_id), namespace=namespace), no_restart=False)
    progress = assert_exact(client, req_id, len(urls) * len(SPEC_POPS))
    # The restarted coordinator probed again: every URL's size is known (the first run had learnt none).
    assert progress["total_size"] == progress["download_size"] > 0


def test_a_coordinator_gone_for_good_fails_the_job_promptly(served: tuple[PrewarmClient, str],
                                                            cdn: Testbed) -> None:
    client, namespace = served
    req_id, total = slow_job(client, cdn, "coordgone", n=600)
    ray.kill(ray.get_actor(coordinator_name(req_id), namespace=namespace), no_restart=True)
    progress = wait_final(client, req_id, timeout_s=30)  # far less than the job's 3-minute timeout
    assert progress["status"] == "FAILED" and "coordinator died" in progress["error_message"]
    assert progress["download_count"] == progress["total_count"] == total
