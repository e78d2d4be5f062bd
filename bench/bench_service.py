"""End-to-end service throughput against the raw single-process aiohttp client, in one run.

20,000 (URL, POP) tasks: 5,000 cached 1 KiB objects over 4 testbed POPs (plain http, as the raw client
uses). The job runs once to fill the caches; the second, identical job is timed from POST to FINISHED
(resolution, size probe and report included), and separately over its warming phase. The raw client
then runs against one of the POPs. ``--compare-persistence`` repeats the job with PREWARM_PERSIST=0,
``--compare-verify`` with ``verify: true`` (the timed jobs run with ``verify: false`` otherwise),
``--compare-standby`` with PREWARM_STANDBY=0. Each timed job starts after 5 s of rest.

    .venv/bin/python bench/bench_service.py [--urls 5000] [--pops 4] [--compare-persistence] [--compare-verify]
        [--compare-standby] [--timeline]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_baseline import raw_aiohttp_rps, warm, wrk_rps
from prewarm.client import PrewarmClient
from prewarm.models import FINAL_STATUSES
from prewarm.settings import Settings
from prewarm.testbed import Testbed

POPS = ["IAD89-P1", "SFO5-P1", "FRA56-P4", "NRT51-P2", "SIN2-P1", "LHR61-P3", "DFW56-P1", "CDG50-P1",
        "SYD1-C1", "GRU1-C2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_job(client: PrewarmClient, body: dict[str, Any], poll_s: float = 0.05,
            timeline: list[tuple[float, str]] | None = None) -> tuple[float, float, dict[str, Any]]:
    """(seconds from POST to the end, seconds of the warming phase, final progress). ``timeline`` collects
    (seconds after POST, phase/status) at each change seen by the poll."""
    t0 = time.perf_counter()
    req_id = client.prewarm(body)["request_id"]
    warming_at = None
    last = ""
    while True:
        progress = client.progress(req_id)
        now = time.perf_counter()
        if timeline is not None and (seen := f"{progress['phase']}/{progress['status']}") != last:
            timeline.append((now - t0, seen))
            last = seen
        if warming_at is None and progress["phase"] == "warming":
            warming_at = now  # a job too short for a poll to see it warming counts whole
        if progress["status"] in FINAL_STATUSES:
            return now - t0, now - (warming_at or t0), progress
        time.sleep(poll_s)


def curl_loop_rps(address: str, urls: list[str], threads: int = 6) -> float:
    """The published sample's agent: six threads, one ``curl`` process per fetch, pinned to the edge."""
    from concurrent.futures import ThreadPoolExecutor

    def one(url: str) -> str:
        host = url.split("/")[2]
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                              "--resolve", f"{host}:80:{address}", url], capture_output=True, text=True, timeout=20)
        return out.stdout

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        codes = list(pool.map(one, urls))
    elapsed = time.perf_counter() - t0
    if any(c != "200" for c in codes):
        raise RuntimeError(f"curl saw non-200 answers: {sorted(set(codes))}")
    return len(urls) / elapsed


def measure(tb: Testbed, pops: list[str], n_urls: int, persist: bool, fetchers_per_node: int = 0,
            repeat: int = 1, verify: bool = False, timeline: bool = False,
            pause_s: float = 5.0, standby: bool = True) -> tuple[float, float, int]:
    """Run the job once to fill the caches, then ``repeat`` timed runs on a fresh service; the best
    (e2e s, warming s, tasks). ``fetchers_per_node`` is PREWARM_FETCHERS_PER_NODE (0: one per CPU);
    ``timeline`` prints when each timed job changed phase. Each timed job starts after ``pause_s`` of rest, as
    a job on a service at rest would (with ``standby``, the next job's processes have started by then)."""
    from prewarm.service import start_service, stop_service

    env = {**tb.env(), "PREWARM_MAX_URLS": str(max(n_urls, 100_000)), "PREWARM_PERSIST": "1" if persist else "0",
           "PREWARM_STATE_DIR": tempfile.mkdtemp(prefix="bench-state-"),
           "PREWARM_FETCHERS_PER_NODE": str(fetchers_per_node), "PREWARM_STANDBY": "1" if standby else "0"}
    base = start_service(Settings.from_env(env), port=free_port(),
                         ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
    try:
        client = PrewarmClient(base, timeout_s=120)
        urls = [tb.url(f"/obj/1kb/bench-{i}", scheme="http") for i in range(n_urls)]
        # verify off unless asked: the raw client sends one GET per task, so the service is timed doing the same.
        body = {"url_list": urls, "cf_domain": tb.cf_domain, "target_type": "pop", "pops": pops,
                "timeout": 30, "instance_count": 1, "verify": verify}
        _, _, fill = run_job(client, body)
        assert fill["status"] == "FINISHED" and fill["success_count"] == fill["total_count"], fill
        runs = []
        for _ in range(repeat):
            time.sleep(pause_s)
            phases: list[tuple[float, str]] = []
            elapsed, warming, progress = run_job(client, body, timeline=phases)
            if timeline:
                print("timeline (s after POST): " + ", ".join(f"{t:.2f} {p}" for t, p in phases), flush=True)
            assert progress["status"] == "FINISHED" and progress["success_count"] == progress["total_count"], progress
            runs.append((elapsed, warming))
        return min(r[0] for r in runs), min(r[1] for r in runs), progress["total_count"]
    finally:
        stop_service()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=5000)
    ap.add_argument("--pops", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="raw client run time")
    ap.add_argument("--compare-persistence", action="store_true", help="also run with PREWARM_PERSIST=0")
    ap.add_argument("--side-by-side", action="store_true", help="also wrk and a curl-per-fetch loop, as ratios")
    ap.add_argument("--fetchers-per-node", type=int, default=0, help="PREWARM_FETCHERS_PER_NODE (0: one per CPU)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of the job; the best one counts")
    ap.add_argument("--compare-verify", action="store_true",
                    help="also time the job with verify: true (a HEAD per pair after its GET)")
    ap.add_argument("--timeline", action="store_true", help="print each timed job's phase changes")
    ap.add_argument("--compare-standby", action="store_true",
                    help="also time the job with PREWARM_STANDBY=0 (every job starts its own processes)")
    args = ap.parse_args(argv)
    pops = POPS[: args.pops]

    with Testbed(pops=pops) as tb:
        elapsed, warming, tasks = measure(tb, pops, args.urls, persist=True, fetchers_per_node=args.fetchers_per_node,
                                          repeat=args.repeat, timeline=args.timeline)
        service_rps, warming_rps = tasks / elapsed, tasks / warming
        print(f"service: {tasks} tasks ({args.urls} URLs x {len(pops)} POPs, cached 1 KiB, http) in {elapsed:.2f} s "
              f"= {service_rps:.0f} fetches/s end to end; warming phase {warming:.2f} s = {warming_rps:.0f}/s",
              flush=True)
        if args.compare_persistence:
            m_elapsed, m_warming, _ = measure(tb, pops, args.urls, persist=False,
                                              fetchers_per_node=args.fetchers_per_node, repeat=args.repeat)
            print(f"without persistence (PREWARM_PERSIST=0): {tasks / m_elapsed:.0f} fetches/s end to end, "
                  f"warming {tasks / m_warming:.0f}/s; persistence costs "
                  f"{(1 - service_rps / (tasks / m_elapsed)) * 100:.1f}% end to end, "
                  f"{(1 - warming_rps / (tasks / m_warming)) * 100:.1f}% while warming (target <= 10%)", flush=True)
        if args.compare_verify:
            v_elapsed, v_warming, _ = measure(tb, pops, args.urls, persist=True,
                                              fetchers_per_node=args.fetchers_per_node, repeat=args.repeat,
                                              verify=True)
            print(f"with verify: true: {tasks / v_elapsed:.0f} pairs/s end to end, warming {tasks / v_warming:.0f} "
                  f"pairs/s; verification costs {(1 - (tasks / v_elapsed) / service_rps) * 100:.1f}% end to end, "
                  f"{(1 - (tasks / v_warming) / warming_rps) * 100:.1f}% while warming", flush=True)
        if args.compare_standby:
            c_elapsed, c_warming, _ = measure(tb, pops, args.urls, persist=True,
                                              fetchers_per_node=args.fetchers_per_node, repeat=args.repeat,
                                              timeline=args.timeline, standby=False)
            print(f"without standby (PREWARM_STANDBY=0): {c_elapsed:.2f} s = {tasks / c_elapsed:.0f} fetches/s end to "
                  f"end, warming {c_warming:.2f} s = {tasks / c_warming:.0f}/s; the standby saves "
                  f"{c_elapsed - elapsed:.2f} s per job", flush=True)
        address = tb.pop_addresses[pops[0]][0]
        warm(address, "www.example.com", "/obj/1kb/bench-0")
        raw = asyncio.run(raw_aiohttp_rps(address, "www.example.com", "/obj/1kb/bench-0", args.seconds))
        print(f"raw aiohttp (1 process, 64 connections, one POP): {raw:.0f} req/s", flush=True)
        print(f"ratio service/raw aiohttp: {service_rps / raw:.2f} end to end, {warming_rps / raw:.2f} while warming "
              "(target >= 1.2)")
        if args.side_by_side:
            ref = wrk_rps(address, "www.example.com", "/obj/1kb/bench-0", args.seconds)
            curl = curl_loop_rps(address, [tb.url(f"/obj/1kb/bench-{i}", scheme="http") for i in range(1500)])
            print("\n| client | fetches/s | service / client |\n| --- | ---: | ---: |")
            for name, rps in (("the service, end to end", service_rps), ("the service, warming phase", warming_rps),
                              ("raw aiohttp, 1 process", raw), ("wrk -t2 -c64 (ceiling)", ref),
                              ("AWS-sample-style agent: 6 threads, one curl per fetch", curl)):
                print(f"| {name} | {rps:.0f} | {service_rps / rps:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
