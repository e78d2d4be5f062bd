"""POST /instances drives a real Ray autoscaler: Ray's fake multi-node provider adds and removes nodes.

The cluster is started with `ray start --head --autoscaling-config=...` in its own process group, on
127.0.0.1 and a free port, and only that process group is stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import yaml

from prewarm.client import PrewarmClient
from prewarm.testbed import Testbed

from .conftest import free_port, request_body, service_settings, wait_final

FAKE_CONFIG = Path(__file__).with_name("fake_autoscaling_cluster.yaml")


def fetcher_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("prewarm_fetcher"))


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    path = tmp_path_factory.mktemp("autoscaler") / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         f"--autoscaling-config={path}", "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket_to(port):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the fake autoscaling cluster did not start") from None
                time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=20)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def socket_to(port: int):  # type: ignore[no-untyped-def]
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=2)


def test_desired_capacity_scales_fetcher_nodes_up_and_down(autoscaling_cluster: str, cdn: Testbed) -> None:
    from prewarm.service import start_service, stop_service

    base = start_service(service_settings(cdn), port=free_port(), address=autoscaling_cluster)
    try:
        client = PrewarmClient(base)
        assert fetcher_nodes() == 0
        assert client.instances(desired=2)["status"] == "success"
        wait_for(lambda: fetcher_nodes() == 2, 120, "two fetcher nodes")
        answer = client.instances()
        assert answer["desiredcapacity"] == 2 and answer["fetcher_count"] == 2 and answer["alive_count"] == 3

        # A job on the scaled-out cluster runs its fetchers on those nodes.
        req_id = client.prewarm(request_body([cdn.url("/obj/1kb/autoscaled")], instance_count=2))["request_id"]
        progress = wait_final(client, req_id)
        assert progress["status"] == "FINISHED" and progress["nodes_used"] == 2

        client.instances(desired=0)
        wait_for(lambda: fetcher_nodes() == 0, 120, "the fetcher nodes to go")
        assert client.instances()["fetcher_count"] == 0
    finally:
        stop_service()
