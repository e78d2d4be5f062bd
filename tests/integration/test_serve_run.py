"""``serve run`` with the app factory's ``serve_app:app``: Ray's own entry point serves the same API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from prewarm.client import PrewarmClient
from prewarm.testbed import Testbed

from .conftest import free_port, origin_gets, request_body, wait_final

REPO = Path(__file__).resolve().parents[2]


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve run exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("serve run did not serve /healthz in time")


def test_serve_run_serves_serve_app(cdn: Testbed, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(
        f"http_options:\n  host: 127.0.0.1\n  port: {port}\n"
        "applications:\n  - name: prewarm\n    import_path: serve_app:app\n    route_prefix: /\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(cdn.env(), PREWARM_NAMESPACE=f"prewarm-serve-run-{uuid.uuid4().hex[:8]}",
               PREWARM_STATE_DIR=tempfile.mkdtemp(prefix="prewarm-state-"), PREWARM_FETCH_TIMEOUT="3")
    serve = str(Path(sys.executable).with_name("serve"))
    proc = subprocess.Popen([serve, "run", str(config)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc)
        cdn.reset()
        client = PrewarmClient(base)
        paths = ["/obj/1kb/serve-run-a", "/obj/1kb/serve-run-b"]
        req_id = client.prewarm(request_body([cdn.url(p) for p in paths], pops=["ATL56-C1"]))["request_id"]
        progress = wait_final(client, req_id, timeout_s=180)
        assert (progress["status"], progress["success_count"], progress["verified_hit_count"]) == ("FINISHED", 2, 2)
        assert origin_gets(cdn) == {(p, "ATL56-C1"): 1 for p in paths}
    finally:
        proc.send_signal(signal.SIGINT)  # serve run's Ctrl-C: shut the app down, then its local Ray
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
