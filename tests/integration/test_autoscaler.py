"""Fetcher nodes come and go through a real Ray autoscaler, with Ray's fake multi-node provider.

The cluster: ``ray start --head --block --autoscaling-config=tests/integration/fake_autoscaling_cluster.yaml`` with
``RAY_FAKE_CLUSTER=1``, in its own process group, on 127.0.0.1 with free ports and its own ``--temp-dir``.
``ray.cluster_utils.AutoscalingCluster`` is not used: it runs a bare ``ray stop --force`` (which kills
every Ray cluster on the machine) and reads an example.yaml the pip wheel does not ship.
Token auth is off for this cluster (``RAY_AUTH_MODE=disabled``) so the fake nodes the autoscaler spawns and
this test process connect without a token file; the test process itself keeps its environment.
Teardown stops only this cluster: its process group, then any process still carrying its marker variable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
import yaml

from prewarm.client import PrewarmClient
from prewarm.engine.cluster import node_counts, request_fetcher_nodes
from prewarm.testbed import Testbed

from .conftest import free_port, request_body, serve_on_free_port, service_settings, wait_final

FAKE_CONFIG = Path(__file__).with_name("fake_autoscaling_cluster.yaml")


def alive_node_count() -> int:
    return node_counts()[0]


def fetcher_node_count() -> int:
    return node_counts()[1]
MARKER = "PREWARM_TEST_CLUSTER"
"""Environment variable set on the cluster's processes; every descendant inherits it, so teardown can find them."""
IDLE_TIMEOUT_S = 0.05 * 60


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def marked_pids(marker_value: str) -> list[int]:
    """Processes whose environment carries this cluster's marker (never another cluster's processes)."""
    needle = f"{MARKER}={marker_value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def stop_cluster(proc: subprocess.Popen[bytes], marker_value: str, grace_s: float = 5, timeout_s: float = 30) -> None:
    """SIGTERM the head's process group, SIGKILL it after ``grace_s``, then SIGKILL any marked straggler.

    The grace is short on purpose: SIGTERM stops the raylets and fake nodes at once, but ``ray start --block``,
    the GCS and the monitor linger for 15 s and more, and nothing of this throwaway cluster needs a clean exit.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + timeout_s
    while left := marked_pids(marker_value):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of the test cluster would not die: {left}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def autoscaling_cluster() -> Iterator[str]:
    """A fake autoscaling cluster: a 2-CPU head and 0..3 fetcher nodes; yields its GCS address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Short path: Ray's unix sockets live under it and must stay below the 107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="prw-", dir="/tmp")
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    config["provider"]["gcs_address"] = address
    config_path = Path(temp_dir) / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    marker_value = uuid.uuid4().hex
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "disabled", MARKER: marker_value}
    proc = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", f"--object-store-memory={100 * 1024 * 1024}", f"--temp-dir={temp_dir}",
         f"--autoscaling-config={config_path}", "--include-dashboard=false", "--disable-usage-stats",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the fake autoscaling cluster did not start (logs in {temp_dir})") from None
                time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        stop_cluster(proc, marker_value)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_request_fetcher_nodes_scales_up_holds_and_releases(autoscaling_cluster: str) -> None:
    ray.init(address=autoscaling_cluster, log_to_driver=False)
    try:
        assert fetcher_node_count() == 0 and alive_node_count() == 1
        request_fetcher_nodes(2)
        wait_for(lambda: fetcher_node_count() == 2, 90, "two fetcher nodes")
        assert alive_node_count() == 3
        fetchers = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("prewarm_fetcher")]
        assert all(n["Labels"].get("prewarm-role") == "fetcher" for n in fetchers)
        # Idle nodes that the standing request needs are kept past the idle timeout, and not overshot.
        time.sleep(IDLE_TIMEOUT_S + 3)
        assert fetcher_node_count() == 2
        request_fetcher_nodes(0)
        wait_for(lambda: fetcher_node_count() == 0, 90, "the fetcher nodes to go after the request is cleared")
        assert alive_node_count() == 1
    finally:
        if ray.is_initialized():
            request_fetcher_nodes(0)
        ray.shutdown()


def test_desired_capacity_scales_fetcher_nodes_up_and_down(autoscaling_cluster: str, cdn: Testbed) -> None:
    """The same path through the API: POST /instances, a job on the new nodes, scale back to zero."""
    from prewarm.api.service import stop_service

    base = serve_on_free_port(service_settings(cdn), address=autoscaling_cluster)
    try:
        client = PrewarmClient(base)
        wait_for(lambda: fetcher_node_count() == 0, 90, "no fetcher nodes left from an earlier test")
        assert client.instances(desired=2)["status"] == "success"
        wait_for(lambda: fetcher_node_count() == 2, 90, "two fetcher nodes")
        answer = client.instances()
        assert answer["desiredcapacity"] == 2 and answer["fetcher_count"] == 2 and answer["alive_count"] == 3

        # A job on the scaled-out cluster runs its fetchers on those nodes.
        req_id = client.prewarm(request_body([cdn.url("/obj/1kb/autoscaled")], instance_count=2))["request_id"]
        progress = wait_final(client, req_id)
        assert progress["status"] == "FINISHED" and progress["nodes_used"] == 2

        client.instances(desired=0)
        wait_for(lambda: fetcher_node_count() == 0, 90, "the fetcher nodes to go")
        assert client.instances()["fetcher_count"] == 0
    finally:
        stop_service()
