"""The service's body byte rate for large cached objects over HTTPS against eight parallel ``curl`` processes.

Side by side in one run, on the same testbed edges and the same cached objects: ``--urls`` (25) distinct
``/obj/<size>mb/...`` objects (8 MiB) through ``--pops`` (2) POPs over HTTPS, 50 (URL, POP) pairs = 400 MiB.

- Warm-up: one service job fetches every pair, then a ``curl -I`` per pair checks ``X-Cache: Hit from cloudfront``
  (a GET pass and a second check for any pair that is not a hit).
- The service: the same URLs and POPs, ``instance_count: 1``, ``verify: false`` (a verification HEAD moves no
  body), defaults otherwise; timed from the POST to its signed job-end webhook (job start, size probe and
  report included, as ``bench_service.py`` times a job); byte rate = the job's ``download_size`` / time.
- curl: ``--curls`` (8) processes at once, each with its share of the same pairs on one command line (the
  POP's address pinned with ``--resolve``, ``--cacert`` the testbed's CA, HTTP/1.1, keep-alive within the
  process, no ``--compressed``, body to /dev/null, ``-w '%{size_download}'`` checked); timed from the start of
  the first to the end of the last; byte rate = the body bytes / time. curl sends the service's
  ``Accept-Encoding`` and ``User-Agent``, so both read the same cache entries (the edge's cache key holds the
  encoding; neither side decodes, and the testbed's bodies are not compressed).
- ``--repeat N`` (3): both sides N times, alternating, each after ``--pause-s`` of rest (the next job's
  standby processes start after a job: the pause keeps their start-up out of the other side's time) and a wait
  of at most ``--quiet-s`` for a quiet half second. Every run is printed, then best against best and the median
  ratio. Each line also gives the client's CPU (the fetchers' or the curls') and nginx's in core-seconds per
  GiB, the service's other processes' and the rest of the machine's CPU in cores, and when the fetchers were
  busy after the POST (the rate inside that window leaves the job's start and end out).
- ``--rss`` (the same as ``--size-mb 256 --urls 2`` plus the RSS table): every fetcher process's RSS is read
  from /proc every 0.1 s while the job streams; per fetcher the RSS at rest before the POST, the peak and the
  last sample, and whether it stayed flat (peak - rest < ``--flat-mib``, 32).
- ``--diag``: curl at two more concurrencies (one process per POP, one per pair); single-process clients on the
  same pairs, each in its own Python process: ``stream`` (asyncio.open_connection with TLS, ``reader.read`` of
  ``--read-kib``), ``buffered`` (an ``asyncio.BufferedProtocol`` whose ``get_buffer`` hands out one
  preallocated buffer), ``wire`` (the service's own ``PopClient``, no Ray, at the curl layout's concurrency)
  and ``wire32`` (``PopClient`` at the service's cap, 32 per POP), each under the standard asyncio loop and
  under uvloop; and the same job over cached 1 KiB objects (what a job costs apart from its bytes).
- ``--profile``: one more job with ``py-spy record --native`` attached to each fetcher (``--profile-python``:
  ``--nonblocking``, Python frames only); prints each thread's busy / GIL-wait / idle samples and the busy
  samples' top frames (self and inclusive). py-spy is taken from this venv, /tmp/spyvenv or PATH.

Talks only to 127.0.0.0/8 (testbed, Ray, Serve, the webhook inbox); stops by itself within ``--max-minutes``.

Ray's node address is 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set before ray is imported).

    PYTHONPATH=. .venv/bin/python -m bench.bench_bytes [--repeat 3] [--rss] [--diag] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.common import start_run, wait_for_standby

MIB = 1024 * 1024
GIB = 1024 * MIB
HOST = "www.example.com"
POPS = ["IAD89-P1", "SFO5-P1", "FRA56-P4", "NRT51-P2"]
HIT = "Hit from cloudfront"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def _where() -> dict[str, str]:
    """Run in a Ray worker: which prewarm package it imports."""
    import prewarm as p

    return {"prewarm": p.__file__, "cwd": os.getcwd(), "pid": str(os.getpid())}


# -- /proc ---------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, float, int] | None:
    """(comm, CPU seconds, RSS bytes) of ``pid``, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X") or int(fields[21]) == 0:
        return None  # exited, not yet reaped: no memory left to read
    return (stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / TICK,
            int(fields[21]) * PAGE)


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat: everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


def wait_quiet(max_wait_s: float, cores: float = 0.25, window_s: float = 0.5) -> float:
    """Wait (at most ``max_wait_s``) for a ``window_s`` in which the machine is busy less than ``cores``; the
    busy cores of the last window (this machine is shared: someone else's test run shows here)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy()
        time.sleep(window_s)
        busy = (machine_busy() - before) / window_s
        if busy < cores or time.monotonic() >= deadline:
            return busy


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            out[int(p)] = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def my_tree(root: int | None = None) -> list[int]:
    """This process's descendants (its Ray cluster, the testbed, curl): not someone else's processes."""
    root = os.getpid() if root is None else root
    ppid = parents()
    mine = []
    for pid in ppid:
        p, seen = pid, 0
        while p > 1 and seen < 64:
            p, seen = ppid.get(p, 0), seen + 1
            if p == root:
                mine.append(pid)
                break
    return sorted(mine)


def fetcher_pids_from_proc() -> list[int]:
    """This run's Ray fetcher processes by their title (``ray::Fetcher...``), for when no actor name answers."""
    return [p for p in my_tree() if cmdline(p).startswith("ray::Fetcher")]


def nginx_pids(workdir: str) -> list[int]:
    """The testbed's nginx master (its command line names the workdir) and its workers."""
    masters = [int(p) for p in os.listdir("/proc") if p.isdigit()
               and cmdline(int(p)).startswith("nginx") and workdir in cmdline(int(p))]
    pids = list(masters)
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in masters:
            pids.append(int(p))
    return pids


def cpu_of(pids: list[int]) -> float:
    return sum(s[1] for s in map(proc_stat, pids) if s is not None)


class ProcWatch:
    """Every ``period`` s, (time, CPU s, RSS bytes) of each watched pid, until ``stop``; new fetchers found
    by their title are added once a second (a job without standby fetchers starts its own)."""

    def __init__(self, pids: list[int], period: float = 0.1, find_new: bool = True) -> None:
        self.samples: dict[int, list[tuple[float, float, int]]] = {pid: [] for pid in pids}
        self._period = period
        self._find_new = find_new
        self._done = threading.Event()
        self._read()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        now = time.perf_counter()
        for pid, rows in self.samples.items():
            if rows and rows[-1][0] < 0:
                continue  # gone
            s = proc_stat(pid)
            rows.append((now, s[1], s[2]) if s is not None else (-1.0, 0.0, 0))

    def _follow(self) -> None:
        last_scan = time.perf_counter()
        while not self._done.wait(self._period):
            self._read()
            if self._find_new and time.perf_counter() - last_scan > 1.0:
                last_scan = time.perf_counter()
                for pid in fetcher_pids_from_proc():
                    self.samples.setdefault(pid, [])

    def stop(self) -> dict[int, list[tuple[float, float, int]]]:
        self._done.set()
        self._thread.join()
        self._read()
        return {pid: [r for r in rows if r[0] >= 0] for pid, rows in self.samples.items()}


# -- the service side ----------------------------------------------------------------------------------






def busy_window(samples: dict[int, list[tuple[float, float, int]]], t0: float,
                t1: float) -> tuple[float, float] | None:
    """(first, last) sample time within (``t0``, ``t1``] at which any fetcher had spent CPU since the previous
    sample, after ``t0``: where the job's fetchers worked, to the sampling period."""
    first = last = None
    for rows in samples.values():
        for (_, c0, _), (t, c1, _) in itertools.pairwise(rows):
            if c1 > c0 and t0 < t <= t1:
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
    return None if first is None or last is None else (first - t0, last - t0)


def service_run(client: Any, body: dict[str, Any], inbox: Any, namespace: str, nginx: list[int],
                expected_bytes: int, pause_s: float, period: float, quiet_s: float) -> dict[str, Any]:
    """One timed job; its rate, CPU and every fetcher's RSS samples."""
    from bench.common import run_job

    time.sleep(pause_s)
    fetchers = wait_for_standby(namespace, 2, timeout_s=30)
    quiet = wait_quiet(quiet_s)
    watch = ProcWatch(sorted(fetchers), period=period)
    others = ProcWatch([os.getpid(), *(p for p in my_tree() if p not in fetchers and p not in nginx)], period=0.1,
                       find_new=False)
    nginx_before, machine_before = cpu_of(nginx), machine_busy()
    posted = time.perf_counter()
    elapsed, _, progress = run_job(client, body, inbox=inbox)
    nginx_cpu, machine_cpu = cpu_of(nginx) - nginx_before, machine_busy() - machine_before
    samples = watch.stop()
    service_cpu = sum(rows[-1][1] - rows[0][1] for rows in others.stop().values() if len(rows) > 1)
    if progress["status"] != "FINISHED" or progress["success_count"] != progress["total_count"]:
        raise RuntimeError(f"timed job did not warm every pair: {progress}")
    if progress["download_size"] != expected_bytes:
        raise RuntimeError(f"job moved {progress['download_size']} body bytes, expected {expected_bytes}")
    client_cpu = sum(rows[-1][1] - rows[0][1] for rows in samples.values() if len(rows) > 1)
    return {"seconds": elapsed, "bytes": progress["download_size"], "client_cpu": client_cpu, "nginx_cpu": nginx_cpu,
            "machine_cpu": machine_cpu, "quiet": quiet, "samples": samples, "names": fetchers,
            "service_cpu": service_cpu, "busy": busy_window(samples, posted, posted + elapsed), "period": period}


# -- the curl side -------------------------------------------------------------------------------------


def curl_groups(urls: list[str], pops: list[str], addresses: dict[str, str], n: int) -> list[tuple[str, list[str]]]:
    """(POP address, URLs) per curl process: ``n`` processes split evenly over the POPs (one --resolve each),
    each POP's URLs dealt round-robin over its processes."""
    per_pop = max(1, n // len(pops))
    groups: list[tuple[str, list[str]]] = []
    for pop in pops:
        shares: list[list[str]] = [[] for _ in range(per_pop)]
        for i, url in enumerate(urls):
            shares[i % per_pop].append(url)
        groups.extend((addresses[pop], share) for share in shares if share)
    return groups


def curl_args(address: str, urls: list[str], ca_file: str, head_only: bool = False) -> list[str]:
    from prewarm.net.popclient import DEFAULT_HEADERS

    args = ["curl", "-s", "--http1.1", "--noproxy", "*", "--max-time", "120", "--cacert", ca_file,
            "--resolve", f"{HOST}:443:{address}", "-w", "%{http_code} %{size_download} %header{x-cache}\\n"]
    for name, value in DEFAULT_HEADERS.items():
        args += ["-H", f"{name}: {value}"]
    if head_only:
        args.append("-I")
    for url in urls:
        args += ["-o", "/dev/null", url]
    return args


def curl_run(groups: list[tuple[str, list[str]]], ca_file: str, size: int, nginx: list[int],
             pause_s: float, quiet_s: float = 0.0) -> dict[str, Any]:
    time.sleep(pause_s)
    quiet = wait_quiet(quiet_s) if quiet_s else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    nginx_before, machine_before = cpu_of(nginx), machine_busy()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(curl_args(a, us, ca_file), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a, us in groups]
    outs = [p.communicate(timeout=180) for p in procs]
    elapsed = time.perf_counter() - t0
    nginx_cpu, machine_cpu = cpu_of(nginx) - nginx_before, machine_busy() - machine_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = 0
    for p, (out, err), (_, us) in zip(procs, outs, groups, strict=True):
        lines = out.split("\n")[: len(us)]
        bad = [ln for ln in lines if not ln.startswith("200 ") or int(ln.split()[1]) != size or HIT not in ln]
        if p.returncode != 0 or len(lines) != len(us) or bad:
            raise RuntimeError(f"curl exit {p.returncode}, {bad[:3] or lines[:3]}: {err[-300:]}")
        total += sum(int(ln.split()[1]) for ln in lines)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": elapsed, "bytes": total, "client_cpu": cpu, "nginx_cpu": nginx_cpu, "machine_cpu": machine_cpu,
            "quiet": quiet}


def check_cached(groups: list[tuple[str, list[str]]], ca_file: str) -> list[tuple[str, str, str]]:
    """(address, URL, X-Cache) of every pair a HEAD does not find cached."""
    cold = []
    for address, urls in groups:
        out = subprocess.run(curl_args(address, urls, ca_file, head_only=True), capture_output=True, text=True,
                             timeout=60).stdout.split("\n")
        for url, line in zip(urls, out, strict=False):
            if HIT not in line:
                cold.append((address, url, line))
    return cold


# -- diagnostic clients (each run in its own process: ``--client KIND``) -----------------------------------


def _parse_head(head: bytes) -> tuple[int, int]:
    status = int(head[9:12])
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if m is None:
        raise RuntimeError(f"no Content-Length: {head[:200]!r}")
    return status, int(m.group(1))


async def _stream_conn(address: str, urls: list[str], heads: dict[str, bytes], ctx: ssl.SSLContext,
                       read_size: int) -> int:
    reader, writer = await asyncio.open_connection(address, 443, ssl=ctx, server_hostname=HOST,
                                                   limit=max(2 * read_size, 64 * 1024))
    got = 0
    try:
        for url in urls:
            writer.write(heads[url])
            status, remaining = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if status != 200:
                raise RuntimeError(f"{url}: HTTP {status}")
            while remaining:
                chunk = await reader.read(min(read_size, remaining))
                if not chunk:
                    raise RuntimeError(f"{url}: body cut off")
                remaining -= len(chunk)
                got += len(chunk)
    finally:
        writer.close()
    return got


class _CountingProtocol(asyncio.BufferedProtocol):
    """Counts Content-Length bodies read into one preallocated buffer (``get_buffer``/``buffer_updated``)."""

    def __init__(self, size: int) -> None:
        self._view = memoryview(bytearray(size))
        self._head = b""
        self._remaining = -1  # -1: reading a head
        self._length = 0
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._remaining < 0:
            self._head += bytes(self._view[:nbytes])
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            _, self._length = _parse_head(self._head[:end])
            self._remaining = self._length - (len(self._head) - end - 4)
            self._head = b""
        else:
            self._remaining -= nbytes
        if self._remaining <= 0:
            self._remaining = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self._length)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(RuntimeError(f"connection lost: {exc}"))


async def _buffered_conn(address: str, urls: list[str], heads: dict[str, bytes], ctx: ssl.SSLContext,
                         read_size: int) -> int:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(lambda: _CountingProtocol(read_size), address, 443, ssl=ctx,
                                                    server_hostname=HOST)
    got = 0
    try:
        for url in urls:
            proto.waiter = loop.create_future()
            transport.write(heads[url])
            got += await proto.waiter
    finally:
        transport.close()
    return got


async def _wire(spec: dict[str, Any], limit: int) -> int:
    from prewarm.net.popclient import PopClient
    from prewarm.settings import Settings

    settings = Settings.from_env({"PREWARM_CA_BUNDLE": spec["ca"], "PREWARM_ALLOW_PRIVATE_EDGES": "1"})
    by_address: dict[str, list[str]] = defaultdict(list)
    for address, urls in spec["groups"]:
        by_address[address].extend(urls)
    clients = [(PopClient(f"pop-{i}", [a], settings, {}, limit), us) for i, (a, us) in enumerate(by_address.items())]
    results = await asyncio.gather(*(c.fetch(u) for c, us in clients for u in us))
    for c, _ in clients:
        await c.close()
    bad = [r for r in results if not r.ok or r.nbytes != spec["size"]]
    if bad:
        raise RuntimeError(f"PopClient: {bad[:3]}")
    return sum(r.nbytes for r in results)


def client_main(kind: str, loop_kind: str, spec_file: str) -> int:
    """``--client KIND``: one diagnostic client over the spec's pairs; prints one JSON line."""
    from prewarm.net.popclient import DEFAULT_HEADERS
    from prewarm.net.wire import build_head, header_block, target_of

    spec = json.loads(Path(spec_file).read_text())
    block = header_block(DEFAULT_HEADERS)
    heads = {u: build_head("GET", target_of(u), block) for _, us in spec["groups"] for u in us}
    ctx = ssl.create_default_context(cafile=spec["ca"])
    read_size = spec["read_kib"] * 1024
    per_pop = len(spec["groups"]) // max(1, len({a for a, _ in spec["groups"]}))

    async def run() -> int:
        if kind == "stream":
            parts = [_stream_conn(a, us, heads, ctx, read_size) for a, us in spec["groups"]]
        elif kind == "buffered":
            parts = [_buffered_conn(a, us, heads, ctx, read_size) for a, us in spec["groups"]]
        elif kind == "wire":
            return await _wire(spec, per_pop)
        elif kind == "wire32":
            return await _wire(spec, 32)
        else:
            raise ValueError(kind)
        return sum(await asyncio.gather(*parts))

    if loop_kind == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    got = runner(run())
    elapsed = time.perf_counter() - t0
    print(json.dumps({"bytes": got, "seconds": elapsed, "cpu": time.process_time() - cpu0}))
    return 0


def diag_run(kind: str, loop_kind: str, spec_file: str, nginx: list[int], pause_s: float) -> dict[str, Any]:
    time.sleep(pause_s)
    nginx_before = cpu_of(nginx)
    out = subprocess.run([sys.executable, "-m", "bench.bench_bytes", "--client", kind, "--loop", loop_kind,
                          "--spec", spec_file], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parent.parent))
    if out.returncode != 0:
        raise RuntimeError(f"client {kind}/{loop_kind} failed: {out.stderr[-2000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {**got, "client_cpu": got["cpu"], "nginx_cpu": cpu_of(nginx) - nginx_before}


# -- profile -------------------------------------------------------------------------------------------


def py_spy() -> str | None:
    for cand in (Path(sys.executable).parent / "py-spy", Path("/tmp/spyvenv/bin/py-spy")):
        if cand.exists():
            return str(cand)
    return shutil.which("py-spy")


_FRAME_RE = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    m = _FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    fn, path = m.groups()
    for marker in ("site-packages/", "lib/python3.11/", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{fn} ({path})"


IDLE_FRAMES = frozenset({"epoll_wait", "epoll_pwait", "pthread_cond_wait", "Condition.wait", "Event.wait",
                         "PyThread_acquire_lock_timed", "lock_PyThread_acquire_lock"})
"""A stack through one of these is a thread waiting for work (event loops, Ray's threads, the GC thread)."""
GIL_FRAMES = frozenset({"pthread_cond_timedwait"})
"""... and through this one (without an idle frame) a thread waiting for the GIL (take_gil's timed wait)."""


def summarize_profile(path: Path, top: int) -> dict[str, Any]:
    """A py-spy raw file (``--threads``; ``--native`` for C frames) sorted into busy, GIL-wait and idle samples per
    thread, and the busy samples' top frames: self (the innermost frame; an unresolved address is named by the
    nearest named frame around it) and inclusive. Also the prewarm source folders seen."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[tuple[str, str]] = Counter()
    files: set[str] = set()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        parts = stack.split(";")
        thread = next((f for f in parts if f.startswith("thread ")), "thread ?")
        thread = re.sub(r"^thread \(\d+\):?\s*", "", thread).split(" 0x")[0].strip() or "(unnamed)"
        frames = [f for f in parts if f and not f.startswith(("process ", "thread "))]
        keys = [frame_key(f) for f in frames]
        names = {k.split(" (")[0] for k in keys}
        kind = "idle" if names & IDLE_FRAMES else "GIL wait" if names & GIL_FRAMES else "busy"
        threads[(thread, kind)] += n
        for f in frames:
            m = _FRAME_RE.match(f.strip())
            if m and "/prewarm/" in m.group(2):
                files.add(m.group(2).rsplit("/prewarm/", 1)[0] + "/prewarm/")
        if kind != "busy" or not keys:
            continue
        leaf = keys[-1]
        if leaf.startswith("0x"):
            lib = leaf.split(" (", 1)[1].rstrip(")").rsplit("/", 1)[-1] if " (" in leaf else "?"
            named = next((k for k in reversed(keys) if not k.startswith("0x")), "?")
            leaf = f"[{lib}] in {named}"
        self_c[leaf] += n
        for k in set(keys):
            if not k.startswith("0x"):
                incl[k] += n
    return {"total": total, "self": self_c.most_common(top), "incl": incl.most_common(top * 2), "files": files,
            "threads": threads, "busy": sum(n for (_, kind), n in threads.items() if kind == "busy")}


# -- main ----------------------------------------------------------------------------------------------


def fmt_run(side: str, r: dict[str, Any]) -> str:
    """The run's rate; the client's and nginx's CPU per GiB; and, where measured, the rest of the machine's CPU
    during the run (for the service: its other processes too, coordinator, state actor, Serve; and anyone else's)
    and how busy the machine was just before it."""
    rate = r["bytes"] / MIB / r["seconds"]
    gib = r["bytes"] / GIB
    rest = ""
    own = r.get("service_cpu", 0.0)
    if own:
        rest = f", the service's other processes and this driver {own / r['seconds']:.2f} cores"
    if "machine_cpu" in r:
        other = r["machine_cpu"] - r["client_cpu"] - r["nginx_cpu"] - own
        rest += f", the rest of the machine {other / r['seconds']:.2f} cores"
    if r.get("quiet") is not None:
        rest += f" (before: {r['quiet']:.2f} cores busy)"
    return (f"{side}: {r['bytes'] / MIB:.0f} MiB in {r['seconds']:.2f} s = {rate:.0f} MiB/s; CPU client "
            f"{r['client_cpu'] / gib:.2f} core-s/GiB, nginx {r['nginx_cpu'] / gib:.2f}{rest}")


def rate(r: dict[str, Any]) -> float:
    return r["bytes"] / MIB / r["seconds"]


def rss_table(run: dict[str, Any], flat_mib: float) -> list[str]:
    lines = ["| fetcher | pid | samples | rest MiB | peak MiB | end MiB | peak - rest | flat |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for pid, rows in sorted(run["samples"].items()):
        if len(rows) < 2:
            continue
        rest, peak, end = rows[0][2] / MIB, max(r[2] for r in rows) / MIB, rows[-1][2] / MIB
        name = run["names"].get(pid, cmdline(pid) or "(found by title)")
        lines.append(f"| {name} | {pid} | {len(rows)} | {rest:.1f} | {peak:.1f} | {end:.1f} | {peak - rest:+.1f} | "
                     f"{'yes' if peak - rest < flat_mib else 'NO'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=None, help="object size in MiB (8; 256 with --rss)")
    ap.add_argument("--urls", type=int, default=None, help="distinct URLs (25; 2 with --rss)")
    ap.add_argument("--pops", type=int, default=2)
    ap.add_argument("--curls", type=int, default=8, help="parallel curl processes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pause-s", type=float, default=5.0, help="rest before each timed run")
    ap.add_argument("--quiet-s", type=float, default=20.0,
                    help="then wait up to this long for a half second with the machine under 0.25 cores busy")
    ap.add_argument("--rss", action="store_true", help="256 MiB objects, 2 URLs, print each fetcher's RSS")
    ap.add_argument("--flat-mib", type=float, default=32.0, help="RSS growth counted as flat")
    ap.add_argument("--diag", action="store_true", help="also single-process asyncio/uvloop clients")
    ap.add_argument("--diag-rounds", type=int, default=2)
    ap.add_argument("--read-kib", type=int, default=256, help="read/buffer size of the diagnostic clients")
    ap.add_argument("--profile", action="store_true", help="also py-spy on the fetchers over one more job")
    ap.add_argument("--profile-python", action="store_true",
                    help="py-spy --nonblocking, Python frames only (default: --native, pausing the fetcher per sample)")
    ap.add_argument("--profile-rate", type=int, default=250)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="the whole run's bound")
    ap.add_argument("--field", action="append", default=[], metavar="NAME=JSON",
                    help="a request field of the timed jobs, e.g. max_concurrency=4 (repeatable)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a PREWARM_* setting of the service (repeatable)")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        return client_main(args.client, args.loop, args.spec)

    size_mb = args.size_mb or (256 if args.rss else 8)
    n_urls = args.urls or (2 if args.rss else 25)
    pops = POPS[: args.pops]
    size = size_mb * MIB
    expected = size * n_urls * len(pops)
    start_run("bench.bench_bytes", argv, args.max_minutes)

    from bench.common import WebhookInbox, run_job
    from prewarm.api.service import start_service, stop_service
    from prewarm.client import PrewarmClient
    from prewarm.settings import Settings
    from prewarm.testbed import Testbed
    from prewarm.testbed.net import free_port

    with Testbed(pops=pops) as tb:
        addresses = {pop: tb.pop_addresses[pop][0] for pop in pops}
        nginx = nginx_pids(str(tb.workdir))
        urls = [tb.url(f"/obj/{size_mb}mb/bytes-{size_mb}-{i}") for i in range(n_urls)]
        groups = curl_groups(urls, pops, addresses, args.curls)
        print(f"testbed: POPs {', '.join(f'{p} {a}' for p, a in addresses.items())}; {n_urls} URLs x {len(pops)} POPs "
              f"of {size_mb} MiB = {expected / MIB:.0f} MiB per run, HTTPS; curl: {len(groups)} processes of "
              f"{', '.join(str(len(us)) for _, us in groups)} URLs; nginx pids {nginx}", flush=True)
        state_dir = tempfile.mkdtemp(prefix="bench-bytes-state-")
        env = {**tb.env(), "PREWARM_STATE_DIR": state_dir, "PREWARM_WEBHOOK_SECRET": WebhookInbox.SECRET,
               **dict(item.split("=", 1) for item in args.env)}
        settings = Settings.from_env(env)
        base = start_service(settings, port=free_port(), ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
        inbox = WebhookInbox()
        try:
            import ray

            w = ray.get(ray.remote(num_cpus=0)(_where).remote(), timeout=60)
            print(f"prewarm imported from {w['prewarm']} (a Ray worker, pid {w['pid']}, cwd {w['cwd']})", flush=True)
            client = PrewarmClient(base, timeout_s=120)
            body = {"url_list": urls, "cf_domain": tb.cf_domain, "target_type": "pop", "pops": pops,
                    "timeout": 10, "instance_count": 1, "verify": False,
                    **{name: json.loads(value) for name, value in (item.split("=", 1) for item in args.field)}}
            t0 = time.perf_counter()
            _, _, fill = run_job(client, body, inbox=inbox)
            if fill["status"] != "FINISHED" or fill["success_count"] != fill["total_count"]:
                raise RuntimeError(f"the warm-up job did not warm every pair: {fill}")
            cold = check_cached(groups, tb.ca_file)
            for _ in range(2):
                if not cold:
                    break
                for address, url, _ in cold:
                    subprocess.run(curl_args(address, [url], tb.ca_file), capture_output=True, timeout=120)
                cold = check_cached(groups, tb.ca_file)
            if cold:
                raise RuntimeError(f"pairs not cached after the warm-up: {cold[:5]}")
            print(f"warm-up: one job ({time.perf_counter() - t0:.1f} s with the checks), then every pair's HEAD "
                  f"answered X-Cache: {HIT}", flush=True)
            fetchers = wait_for_standby(settings.namespace, 2, timeout_s=60)
            for pid, name in sorted(fetchers.items()):
                penv = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().decode(
                    errors="replace").split("\0") if "=" in kv)
                print(f"fetcher {name}: pid {pid}, title {cmdline(pid)!r}, PYTHONPATH={penv.get('PYTHONPATH')!r}, "
                      f"cwd {os.readlink(f'/proc/{pid}/cwd')}", flush=True)

            services: list[dict[str, Any]] = []
            curls: list[dict[str, Any]] = []
            for i in range(args.repeat):
                s = service_run(client, body, inbox, settings.namespace, nginx, expected, args.pause_s,
                                period=0.1 if args.rss else 0.02, quiet_s=args.quiet_s)
                services.append(s)
                c = curl_run(groups, tb.ca_file, size, nginx, args.pause_s, args.quiet_s)
                curls.append(c)
                busy = s["busy"]
                window = "" if busy is None else (
                    f"; fetchers busy {busy[0]:.2f}-{busy[1]:.2f} s after the POST (sampled every {s['period']:g} s): "
                    f"{s['bytes'] / MIB / max(busy[1] - busy[0] + s['period'], 1e-9):.0f} MiB/s")
                print(f"run {i + 1}: {fmt_run('service', s)} | {fmt_run('curl x' + str(len(groups)), c)} | "
                      f"ratio {rate(s) / rate(c):.2f}{window}", flush=True)
                if args.rss:
                    print("\n".join(rss_table(s, args.flat_mib)), flush=True)
            best_s, best_c = max(map(rate, services)), max(map(rate, curls))
            ratios = [rate(s) / rate(c) for s, c in zip(services, curls, strict=True)]
            print(f"service runs MiB/s: {', '.join(f'{rate(s):.0f}' for s in services)}; curl runs MiB/s: "
                  f"{', '.join(f'{rate(c):.0f}' for c in curls)}", flush=True)
            print(f"ratio service/curl: best against best {best_s / best_c:.2f} ({best_s:.0f} / {best_c:.0f} MiB/s); "
                  f"median of the runs' ratios {statistics.median(ratios):.2f} (target >= 0.9)", flush=True)
            if args.rss:
                flat = all(max(r[2] for r in rows) - rows[0][2] < args.flat_mib * MIB
                           for s in services for rows in s["samples"].values() if len(rows) > 1)
                print(f"fetcher RSS flat in every run (peak - rest < {args.flat_mib:g} MiB): {'yes' if flat else 'NO'}",
                      flush=True)

            if args.diag:
                spec_file = Path(state_dir) / "pairs.json"
                spec_file.write_text(json.dumps({"ca": tb.ca_file, "groups": groups, "size": size,
                                                 "read_kib": args.read_kib}))
                kinds = [(k, lp) for k in ("stream", "buffered", "wire", "wire32") for lp in ("asyncio", "uvloop")]
                diag: dict[str, list[dict[str, Any]]] = defaultdict(list)
                # curl at other concurrencies: one process per POP (its URLs one after another on one
                # connection), and one per pair (every pair at once on its own connection, as the service's
                # 32-per-POP cap has it for these few URLs)
                curl_layouts = {
                    f"curl x{len(groups)}": groups,
                    f"curl x{len(pops)} (one per POP)": curl_groups(urls, pops, addresses, len(pops)),
                    f"curl x{n_urls * len(pops)} (one per pair)": [(a, [u]) for a, us in groups for u in us]}
                for rnd in range(args.diag_rounds):
                    for name, layout in curl_layouts.items():
                        c = curl_run(layout, tb.ca_file, size, nginx, 1.0)
                        diag[name].append(c)
                        print(f"diag round {rnd + 1}: {fmt_run(name, c)}", flush=True)
                    c = diag[f"curl x{len(groups)}"][-1]
                    for kind, lp in kinds:
                        r = diag_run(kind, lp, str(spec_file), nginx, 1.0)
                        if r["bytes"] != expected:
                            raise RuntimeError(f"{kind}/{lp} read {r['bytes']} bytes, expected {expected}")
                        diag[f"{kind}/{lp}"].append(r)
                        print(f"diag round {rnd + 1}: {fmt_run(f'{kind}/{lp}', r)} | vs curl {rate(r) / rate(c):.2f}",
                              flush=True)
                # What a job costs apart from its bytes: the same job shape (URLs x POPs) over cached 1 KiB objects.
                small = {**body, "url_list": [tb.url(f"/obj/1kb/bytes-fixed-{i}") for i in range(n_urls)]}
                run_job(client, small, inbox=inbox)  # fills the edges
                fixed = []
                for _ in range(args.diag_rounds + 1):
                    time.sleep(args.pause_s)
                    wait_for_standby(settings.namespace, 2, timeout_s=30)
                    fixed.append(run_job(client, small, inbox=inbox)[0])
                print(f"diag: the same job over cached 1 KiB objects (its cost apart from the bytes), POST to webhook: "
                      f"{', '.join(f'{t:.3f}' for t in fixed)} s", flush=True)
                print("\n| client (one process unless curl) | MiB/s, best | client CPU core-s/GiB, least |\n"
                      "| --- | ---: | ---: |", flush=True)
                for name, rs in diag.items():
                    print(f"| {name} | {max(map(rate, rs)):.0f} | "
                          f"{min(r['client_cpu'] / (r['bytes'] / GIB) for r in rs):.2f} |", flush=True)

            if args.profile:
                spy = py_spy()
                if spy is None:
                    print("profile: py-spy not found (python3 -m venv /tmp/spyvenv && /tmp/spyvenv/bin/pip install "
                          "py-spy)", flush=True)
                else:
                    time.sleep(args.pause_s)
                    fetchers = wait_for_standby(settings.namespace, 2, timeout_s=30)
                    spies = {}
                    for pid in sorted(fetchers):
                        outp = Path(state_dir) / f"spy-{pid}.txt"
                        cmd = [spy, "record", "--pid", str(pid), "--duration", "60", "--rate", str(args.profile_rate),
                               "--format", "raw", "--full-filenames", "--nolineno", "--threads", "-o", str(outp)]
                        cmd += ["--nonblocking"] if args.profile_python else ["--native"]
                        spies[pid] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), outp)
                    time.sleep(1.0)  # py-spy attached
                    watch = ProcWatch(sorted(fetchers), find_new=False)
                    elapsed, _, progress = run_job(client, body, inbox=inbox)
                    samples = watch.stop()
                    how = "nonblocking, Python frames" if args.profile_python else "native, pauses the fetcher"
                    print(f"profiled job: {progress['download_size'] / MIB:.0f} MiB in {elapsed:.2f} s = "
                          f"{progress['download_size'] / MIB / elapsed:.0f} MiB/s (py-spy attached, rate "
                          f"{args.profile_rate}/s, {how})", flush=True)
                    for pid, (proc, outp) in spies.items():
                        try:
                            proc.wait(timeout=30)  # the fetcher exits with its job; py-spy then writes its file
                        except subprocess.TimeoutExpired:
                            proc.send_signal(signal.SIGINT)
                            proc.wait(timeout=30)
                        rows = samples.get(pid, [])
                        cpu = rows[-1][1] - rows[0][1] if len(rows) > 1 else 0.0
                        if not outp.exists():
                            why = proc.stderr.read().decode()[-500:] if proc.stderr else ""
                            print(f"fetcher {pid}: no profile ({why})")
                            continue
                        prof = summarize_profile(outp, args.top)
                        busy = max(1, prof["busy"])
                        print(f"\nfetcher {fetchers[pid]} (pid {pid}): {cpu:.2f} CPU s over the job, {prof['total']} "
                              f"samples, {prof['busy']} busy; prewarm source from {sorted(prof['files'])}", flush=True)
                        by_thread: dict[str, dict[str, int]] = defaultdict(dict)
                        for (thread, kind), n in prof["threads"].items():
                            by_thread[thread][kind] = by_thread[thread].get(kind, 0) + n
                        print("threads (samples busy / GIL wait / idle):\n" + "\n".join(
                            f"  {t}: {k.get('busy', 0)} / {k.get('GIL wait', 0)} / {k.get('idle', 0)}"
                            for t, k in sorted(by_thread.items(), key=lambda kv: -kv[1].get("busy", 0))))
                        print("busy, self (innermost frame):\n" + "\n".join(
                            f"  {n / busy:6.1%}  {k}" for k, n in prof["self"]))
                        print("busy, inclusive:\n" + "\n".join(
                            f"  {n / busy:6.1%}  {k}" for k, n in prof["incl"]), flush=True)
        finally:
            inbox.close()
            stop_service()
            signal.alarm(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
