"""``prewarm submit`` as a subprocess against the real service on the testbed: exit codes, JSON, inputs."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prewarm.client import PrewarmClient
from prewarm.testbed import Testbed

from .conftest import SPEC_POPS, free_port, origin_gets, wait_final

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


@pytest.fixture(scope="module", autouse=True)
def own_ray_cluster() -> Iterator[None]:
    """Make the ``service`` fixture start its own cluster: ray.init() without an address joins any local one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", "local")
        yield


def run_cli(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter, as CI would run it (stderr is a pipe: not a TTY)."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREWARM_")}
    return subprocess.run([sys.executable, "-m", "prewarm.cli", *argv], input=stdin, capture_output=True,
                          text=True, timeout=timeout_s, env={**base_env, **(env or {})}, check=False)


def submit(service: PrewarmClient, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("submit", "--url", service.base_url, "--timeout", "2", "--cf-domain", "www.example.com",
                   "--poll", "0.2", *argv, stdin=stdin)


def result_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def urlset(urls: list[str]) -> bytes:
    body = "".join(f"<url><loc>{u}</loc></url>" for u in urls)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset {NS}>{body}</urlset>\n'.encode()


@pytest.fixture
def sitemap_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 serving ``tmp_path/www``: a remote home for nested sitemaps."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_submit_expand_warms_a_manifest_and_prints_what_it_added(service: PrewarmClient, cdn: Testbed) -> None:
    from prewarm.testbed import media

    cdn.reset()
    path = "/media/dash/vod-8/template.mpd"
    proc = submit(service, cdn.url(path), "--pops", "ATL56-C1", "--expand", "--first-seconds", "4",
                  "--max-bandwidth", "1300000", "--watch")
    assert proc.returncode == 0, proc.stderr
    expected = media.expected(path, max_bandwidth=1_300_000, first_seconds=4)
    assert f"{len(expected)} succeeded, 0 failed" in proc.stdout
    assert f"expanded: 1 manifest(s) read, {len(expected) - 1} URL(s) added" in proc.stdout


def test_clean_job_exits_0_with_the_final_json(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    name = unique("clean")
    paths = [f"/obj/2kb/{name}/a.css", f"/obj/4kb/{name}/b.js", f"/obj/1kb/{name}/c.html"]
    proc = submit(service, *(cdn.url(p) for p in paths), "--pops", "ATL56-C1,SIN2-C1", "--pops", "DFW55-C3",
                  "-H", "X-Prewarm-Test: yes", "--watch", "--json")
    assert proc.returncode == 0, proc.stderr
    out = result_json(proc)
    assert out["status"] == out["progress"]["status"] == out["summary"]["status"] == "FINISHED"
    assert out["submit"]["status"] == "Success" and out["request_id"] == out["submit"]["request_id"]
    progress = out["progress"]
    assert progress["total_count"] == progress["download_count"] == progress["success_count"] == 9
    assert progress["failure_count"] == 0 and progress["download_size"] == (2 + 4 + 1) * 1024 * 3
    assert {r["pop"]: (r["success"], r["failure"]) for r in out["summary"]["pops"]} == {
        pop: (3, 0) for pop in SPEC_POPS}
    assert origin_gets(cdn) == {(p, pop): 1 for p in paths for pop in SPEC_POPS}
    # Not a TTY: plain progress lines, the last one complete; no carriage returns.
    assert "\r" not in proc.stderr
    assert "9/9 100%" in proc.stderr.splitlines()[-1]


def test_job_with_a_failure_exits_1_and_prints_the_table(service: PrewarmClient, cdn: Testbed) -> None:
    name = unique("fail")
    ok_url, missing = cdn.url(f"/obj/1kb/{name}/ok.js"), cdn.url(f"/fault/status/404/{name}/x")
    proc = submit(service, ok_url, missing, "--pops", ",".join(SPEC_POPS), "--watch")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(": FINISHED, 3 succeeded, 3 failed")
    assert {line.split()[0] for line in lines if line.split()[:1] and line.split()[0] in SPEC_POPS} == set(SPEC_POPS)
    assert "failed URLs (1):" in proc.stdout and f"  {missing}" in lines
    assert lines[-1].startswith("report: ") and lines[-1].endswith(".csv")
    # The report named there is the real one.
    req_id = lines[0].split()[1].rstrip(":")
    assert missing in service.report(req_id).decode()


def test_urls_from_stdin_and_status_commands_via_env(service: PrewarmClient, cdn: Testbed) -> None:
    name = unique("stdin")
    urls = [cdn.url(f"/obj/1kb/{name}/{i}.css") for i in range(3)]
    listing = f"# release 42\n\n{urls[0]}\n  {urls[1]}  # hero\n{urls[2]}\n{urls[0]}\n"
    proc = submit(service, "--file", "-", "--pops", "SIN2-C1", "--json", stdin=listing)
    assert proc.returncode == 0, proc.stderr
    req_id = result_json(proc)["request_id"]
    progress = wait_final(service, req_id)
    assert (progress["status"], progress["total_count"], progress["success_count"]) == ("FINISHED", 3, 3)

    env = {"PREWARM_URL": service.base_url}
    status = run_cli("status", req_id, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["success_count"] == 3
    summary = run_cli("summary", req_id, env=env)
    assert summary.returncode == 0 and json.loads(summary.stdout)["pops"][0]["pop"] == "SIN2-C1"


def test_sitemaps_gz_and_index_local_and_http(service: PrewarmClient, cdn: Testbed, tmp_path: Path,
                                             sitemap_server: tuple[str, Path]) -> None:
    name = unique("sitemap")
    local = [cdn.url(f"/obj/1kb/{name}/local-{i}.html") for i in range(3)]
    remote = [cdn.url(f"/obj/1kb/{name}/remote-{i}.html") for i in range(2)]
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "pages.xml.gz").write_bytes(gzip.compress(urlset(local)))
    base, root = sitemap_server
    (root / "remote.xml.gz").write_bytes(gzip.compress(urlset([*remote, local[0]])))
    index = tmp_path / "sitemap_index.xml"
    index.write_text(f'<sitemapindex {NS}><sitemap><loc>maps/pages.xml.gz</loc></sitemap>'
                     f'<sitemap><loc>{base}/remote.xml.gz</loc></sitemap></sitemapindex>')

    proc = submit(service, "--sitemap", str(tmp_path / "maps" / "pages.xml.gz"), "--pops", "ATL56-C1",
                  "--watch", "--json")
    assert proc.returncode == 0, proc.stderr
    assert result_json(proc)["progress"]["success_count"] == 3

    proc = submit(service, "--sitemap", str(index), "--pops", "DFW55-C3", "--watch", "--json")
    assert proc.returncode == 0, proc.stderr
    progress = result_json(proc)["progress"]
    assert (progress["total_count"], progress["success_count"]) == (5, 5)

    proc = submit(service, "--sitemap", f"{base}/absent.xml", "--pops", "DFW55-C3")
    assert proc.returncode == 2 and "absent.xml" in proc.stderr and "404" in proc.stderr


def test_api_and_usage_errors_exit_2(service: PrewarmClient, cdn: Testbed) -> None:
    proc = submit(service, cdn.url("/obj/1kb/x"), "--pops", "ATL56-C1,not a pop!", "--watch", "--json")
    assert proc.returncode == 2
    assert "malformed POP code" in proc.stderr and "HTTP 400" in proc.stderr
    body = result_json(proc)
    assert body["status"] == "Failed" and "pops" in body["error_message"] and body["http_status"] == 400

    proc = submit(service, "ftp://www.example.com/x", "--pops", "ATL56-C1")
    assert proc.returncode == 2 and "url_list" in proc.stderr

    proc = run_cli("submit", "--url", f"http://127.0.0.1:{free_port()}", cdn.url("/obj/1kb/x"))
    assert proc.returncode == 2 and "cannot reach the prewarm service" in proc.stderr

    proc = run_cli("submit", "--url", service.base_url, "--pops", "ATL56-C1", "--regions", "eu", cdn.url("/x"))
    assert proc.returncode == 2 and "only one of" in proc.stderr


def test_prewarm_serve_prints_its_own_lines_and_names_rays_log_once(tmp_path: Path) -> None:
    """``prewarm serve`` on a cluster of its own: the terminal shows the service's lines, no Ray JSON log lines,
    no Serve INFO lines and no raylet notes at shutdown; Ray's lines are in the file the output names."""
    import signal
    import time
    import urllib.request

    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREWARM_")},
           "PREWARM_STATE_DIR": str(tmp_path), "PREWARM_NAMESPACE": unique("quiet")}
    proc = subprocess.Popen([sys.executable, "-m", "prewarm.cli", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("Ctrl-C stops it" in line for line in lines):  # its signal handlers are in place then
            assert proc.poll() is None and time.monotonic() < deadline, (lines, proc.stderr.read())  # type: ignore
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
        reader.join(timeout=10)
        out = "".join(lines)
        err = proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    terminal = out + err
    assert f"prewarm service listening on http://127.0.0.1:{port}" in out and "shutting down" in out
    for noise in ('"levelname"', "(raylet)", "INFO ", "Started a local Ray instance", "serve --"):
        assert noise not in terminal, terminal
    logs = list((tmp_path / "logs").glob("serve-*.log"))
    assert len(logs) == 1 and str(logs[0]) in out and terminal.count(str(logs[0])) == 1
    assert "Started a local Ray instance" in logs[0].read_text()
