"""What the benchmarks share: how a run starts (its command line, loopback only, a time bound), the reference
clients a figure is measured against, a job timed from POST to its webhook, and CPU read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

import prewarm
from prewarm.client import PrewarmClient
from prewarm.net.webhook import SIGNATURE_HEADER, verify_signature
from prewarm.schema import FINAL_STATUSES
from prewarm.testbed import TestbedError


def start_run(module: str, argv: list[str], max_minutes: float) -> None:
    """Print the command line and where ``prewarm`` comes from; no proxies; Ray on 127.0.0.1; an alarm that ends
    the run after ``max_minutes``. Call before Ray is imported."""
    pythonpath = os.environ.get("PYTHONPATH")
    print("command: " + (f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else "")
          + shlex.join([sys.executable, "-m", module, *argv]), flush=True)
    print(f"prewarm imported from {prewarm.__file__} (driver); started {time.strftime('%Y-%m-%d %H:%M:%S')}",
          flush=True)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(name, None)  # everything here is on loopback: never through a proxy
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"
    # Ray's node address is the machine's own (non-loopback) address unless clustering is off: then it is
    # 127.0.0.1 for the GCS, raylet, workers and agents alike (read when ray is first imported; inherited).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

    def out_of_time(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the run passed --max-minutes {max_minutes:g}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(max(1, int(max_minutes * 60)))


def cpu_spent(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per process name between two ``process_cpu`` snapshots, largest first."""
    spent: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        spent[name] = spent.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return dict(sorted(((n, c) for n, c in spent.items() if c > 0), key=lambda item: -item[1]))


class CpuWatch:
    """What each process spent between ``start`` and ``stop``, including processes that exit before ``stop``
    (a job's fetchers are killed as it ends): the Ray processes alive at the start are read every 0.1 s, and
    one that is gone at the end counts what it had spent when last read. A process both started and gone
    meanwhile is not seen."""

    def __init__(self) -> None:
        self.before = process_cpu()
        self._last = dict(self.before)
        self._ray = [pid for pid, (name, _) in self.before.items() if name.startswith("ray::")]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._done.wait(0.1):
            self._last.update(process_cpu(self._ray))

    def stop(self) -> dict[str, float]:
        """CPU seconds per process name, largest first."""
        self._done.set()
        self._thread.join()
        return cpu_spent(self.before, {**self._last, **process_cpu()})


def process_cpu(pids: Iterable[str] | None = None) -> dict[str, tuple[str, float]]:
    """pid -> (process name, CPU seconds so far) of every process on the machine (or of ``pids``), from
    ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[str, tuple[str, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")) if pids is None else pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        seen[pid] = (stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / tick)
    return seen


def warming_rate(progress: dict[str, Any], done_before: int, seconds: float) -> float:
    return (progress["download_count"] - done_before) / max(seconds, 1e-9)


def run_job(client: PrewarmClient, body: dict[str, Any], poll_s: float = 0.05,
            timeline: list[tuple[float, str]] | None = None,
            inbox: WebhookInbox | None = None) -> tuple[float, float | None, dict[str, Any]]:
    """(seconds from POST to the end, tasks per second over the warming phase or None, final progress).
    ``timeline`` collects (seconds after POST, phase/status) at each change seen by the poll.

    The warming phase's rate counts the tasks finished from the first poll that saw it to the end (the size
    probe runs the first task of each URL before it).

    With ``inbox`` the job ends when its webhook arrives; it is not polled unless ``timeline`` is asked for,
    and then 0.1 s apart until warming is seen (the warming rate is None unpolled). Without ``inbox``, the
    job is polled every ``poll_s`` until its status is final."""
    t0 = time.perf_counter()
    req_id = client.prewarm({**body, "callback_url": inbox.url} if inbox else body)["request_id"]
    warming_at = None
    done_at_warming = 0
    last = ""
    while inbox is None or timeline is not None:
        progress = client.progress(req_id)
        now = time.perf_counter()
        if timeline is not None and (seen := f"{progress['phase']}/{progress['status']}") != last:
            timeline.append((now - t0, seen))
            last = seen
        if warming_at is None and progress["phase"] == "warming":
            warming_at = now  # a job too short for a poll to see it warming counts whole
            done_at_warming = progress["download_count"]
        final = progress["status"] in FINAL_STATUSES
        if inbox is None and final:
            return now - t0, warming_rate(progress, done_at_warming, now - (warming_at or t0)), progress
        if inbox is not None and (final or warming_at is not None):
            break
        time.sleep(0.1 if inbox is not None else poll_s)
    ended = inbox.wait(req_id, timeout_s=body["timeout"] * 60 + 60)
    if ended is None:
        raise RuntimeError(f"no job-end webhook for {req_id}")
    progress = client.progress(req_id)
    if timeline is None:
        return ended - t0, None, progress
    timeline.append((ended - t0, f"webhook/{progress['status']}"))
    return ended - t0, warming_rate(progress, done_at_warming, ended - (warming_at or t0)), progress


class WebhookInbox:
    """A loopback receiver for job-end webhooks: when each signed summary arrived, by request id."""

    SECRET = "bench-webhook-secret"

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self._changed = threading.Condition()
        inbox = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = verify_signature(body, inbox.SECRET, self.headers.get(SIGNATURE_HEADER))
                self.send_response(204 if ok else 401)
                self.end_headers()
                if ok:
                    with inbox._changed:
                        inbox.arrived[json.loads(body)["request_id"]] = at
                        inbox._changed.notify_all()

            def log_message(self, *args: Any) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/job-end"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait(self, req_id: str, timeout_s: float) -> float | None:
        """When ``req_id``'s webhook arrived (perf_counter), or None if not within ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: req_id in self.arrived, timeout_s)
            return self.arrived.get(req_id)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


POPS = ["IAD89-P1", "SFO5-P1", "FRA56-P4", "NRT51-P2", "SIN2-P1", "LHR61-P3", "DFW56-P1", "CDG50-P1",
        "SYD1-C1", "GRU1-C2"]


def warm(address: str, host: str, path: str) -> None:
    """GET until the POP answers from cache, so both clients measure hits only."""
    for _ in range(5):
        conn = http.client.HTTPConnection(address, 80, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200 and resp.getheader("X-Cache") == "Hit from cloudfront":
                return
        finally:
            conn.close()
        time.sleep(0.05)
    raise TestbedError(f"{path} never became a cache hit at {address}")


def wrk_rps(address: str, host: str, path: str, seconds: float = 10.0, connections: int = 64,
            threads: int = 2) -> float:
    """Requests/second that ``wrk -t<threads> -c<connections> -d<seconds>s`` reports."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-H", f"Host: {host}",
            f"http://{address}{path}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw non-2xx answers:\n{out}")
    m = _RPS_RE.search(out)
    if m is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    return float(m.group(1))


async def raw_aiohttp_rps(address: str, host: str, path: str, seconds: float, connections: int = 64) -> float:
    """Requests/second of ``connections`` keep-alive loops in one aiohttp session (plain HTTP)."""
    url = f"http://{address}{path}"
    loop = asyncio.get_running_loop()
    done = 0
    failures = 0
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    async with aiohttp.ClientSession(connector=connector, headers={"Host": host}) as session:
        stop_at = loop.time() + seconds

        async def worker() -> None:
            nonlocal done, failures
            while loop.time() < stop_at:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        done += 1
                    else:
                        failures += 1

        start = loop.time()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = loop.time() - start
    if failures:
        raise RuntimeError(f"{failures} non-200 answers from {url}")
    return done / elapsed


_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")


def wait_for_standby(namespace: str, want: int, timeout_s: float) -> dict[int, str]:
    """The standby's fetchers once ``want`` of them answer (or what answered within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    found: dict[int, str] = {}
    while time.monotonic() < deadline:
        found = standby_fetchers(namespace)
        if len(found) >= want:
            return found
        time.sleep(0.5)
    return found


def standby_fetchers(namespace: str, timeout_s: float = 10.0) -> dict[int, str]:
    """pid -> actor name of every ``prewarm-fetcher-...`` actor alive now (the standby's, between jobs)."""
    import ray

    found: dict[int, str] = {}
    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("prewarm-fetcher-") and a["namespace"] == namespace]
    for a in names:
        with contextlib.suppress(Exception):
            actor = ray.get_actor(a["name"], namespace=a["namespace"])
            found[int(ray.get(actor.pid.remote(), timeout=timeout_s))] = a["name"]
    return found
