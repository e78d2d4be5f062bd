"""`prewarm serve` starts a local cluster with Serve on the given port, and SIGTERM/SIGINT stop it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prewarm.client import ApiError, PrewarmClient
from prewarm.testbed import Testbed

from .conftest import free_port, request_body, wait_final

PREWARM = str(Path(sys.executable).with_name("prewarm"))


def ray_processes_of(session_pid: int) -> list[int]:
    """Processes still in the serve command's process group (Ray's daemons are started from it)."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, pgid in (line.split() for line in out.splitlines()) if int(pgid) == session_pid]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_a_job_and_stops_cleanly(cdn: Testbed, tmp_path: Path, stop_signal: signal.Signals) -> None:
    port = free_port()
    env = {**os.environ, **cdn.env(), "PREWARM_STATE_DIR": str(tmp_path), "PREWARM_NAMESPACE": "serve-cmd"}
    proc = subprocess.Popen([PREWARM, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        client = PrewarmClient(f"http://127.0.0.1:{port}", timeout_s=10)
        deadline = time.monotonic() + 120
        while True:
            try:
                assert client.call("GET", "/healthz")["status"] == "ok"
                break
            except (OSError, ApiError):  # not listening yet, or the proxy is up before the app's routes
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "prewarm serve did not come up"
                time.sleep(0.5)
        req_id = client.prewarm(request_body([cdn.url("/obj/1kb/served")], pops=["DFW55-C3"]))["request_id"]
        assert wait_final(client, req_id)["status"] == "FINISHED"

        proc.send_signal(stop_signal)
        output, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, output
        assert "shutting down" in output
        deadline = time.monotonic() + 30
        while ray_processes_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ray_processes_of(proc.pid) == []
        with pytest.raises(OSError):
            client.call("GET", "/healthz")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREWARM_API_KEYS"}
    out = subprocess.run([PREWARM, "serve", "--host", "0.0.0.0", "--port", str(free_port())], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "PREWARM_API_KEYS" in out.stderr
