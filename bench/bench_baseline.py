"""Baseline throughput of one testbed POP serving a cached 1 KiB object: raw aiohttp vs wrk.

The aiohttp figure is what one Python process can drive; wrk shows what the edge itself can
serve. Their ratio tells later benchmarks how much of a measured rate is client overhead.

    python bench/bench_baseline.py                       # own one-POP testbed
    python bench/bench_baseline.py --state-dir /tmp/prewarm-testbed   # a running 'testbed up'
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prewarm.testbed import Testbed, TestbedError

HOST = "www.example.com"
PATH = "/obj/1kb/bench-baseline"
_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")


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


def main(argv: list[str] | None = None) -> int:
    """Start (or attach to) a testbed, warm one POP, run both clients, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", help="use the testbed of 'prewarm testbed up --dir DIR'")
    ap.add_argument("--pop", help="POP code to measure (default: the testbed's first)")
    ap.add_argument("--host", default=HOST)
    ap.add_argument("--path", default=PATH)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args(argv)

    own = args.state_dir is None
    tb = Testbed(pops=[args.pop or "IAD89-P1"]) if own else Testbed.from_state_dir(args.state_dir)
    try:
        if own:
            tb.start()
        pop = args.pop or tb.pops[0]
        address = tb.pop_addresses[pop][0]
        warm(address, args.host, args.path)
        print(f"POP {pop} at {address}, GET http://{args.host}{args.path} (cached), "
              f"{args.connections} connections, {args.seconds:g} s each", flush=True)
        raw = asyncio.run(raw_aiohttp_rps(address, args.host, args.path, args.seconds, args.connections))
        print(f"raw aiohttp (1 process): {raw:10.0f} req/s", flush=True)
        ref = wrk_rps(address, args.host, args.path, args.seconds, args.connections)
        print(f"wrk -t2 -c{args.connections}:       {ref:10.0f} req/s", flush=True)
        print(f"ratio aiohttp/wrk:       {raw / ref:10.3f}")
    finally:
        if own:
            tb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
