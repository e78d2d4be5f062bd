"""End-to-end service throughput against the raw single-process aiohttp client, in one run.

20,000 (URL, POP) tasks: 5,000 cached 1 KiB objects over 4 testbed POPs (plain http, as the raw client
uses). The job runs once to fill the caches; the second, identical job is timed from POST to FINISHED
(resolution, size probe and report included), and with ``--timeline`` over its warming phase. The raw client
then runs against one of the POPs (for ``--seconds``; with ``--repeat N``, N timed jobs and N raw runs, the best
of each compared). ``--compare-persistence`` repeats the job with PREWARM_PERSIST=0,
``--compare-verify`` with ``verify: true`` (the timed jobs run with ``verify: false`` otherwise),
``--compare-standby`` with PREWARM_STANDBY=0. Each timed job starts after 5 s of rest.

A timed job ends when its signed job-end webhook reaches the benchmark (``callback_url``, sent once the
report is built), and nothing polls it meanwhile: a client polling ``GET /prewarm`` spends ~14 ms of CPU per
poll on this 2-core machine (proxy, replica, state actor), and even the few polls 0.1 s apart that found
when warming starts cost a job ~0.1 s. ``--timeline`` polls so (0.1 s apart until warming is seen), to print
the phases and the warming phase's rate; ``--poll-s 0.05`` times the job polled every 50 ms, to its end.

    .venv/bin/python -m bench.bench_service [--urls 5000] [--pops 4] [--compare-persistence] [--compare-verify]
        [--compare-standby] [--timeline] [--poll-s 0.05] [--cpu] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import POPS, CpuWatch, WebhookInbox, raw_aiohttp_rps, run_job, warm, wrk_rps
from prewarm.client import PrewarmClient
from prewarm.settings import Settings
from prewarm.testbed import Testbed
from prewarm.testbed.net import free_port


def per_s(rate: float | None) -> str:
    return "not measured (--timeline)" if rate is None else f"{rate:.0f}/s"


def cost(rate: float | None, baseline: float | None) -> str:
    """How much slower ``rate`` is than ``baseline``, as a percentage, when both were measured."""
    return "n/a" if rate is None or baseline is None else f"{(1 - rate / baseline) * 100:.1f}%"








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
            pause_s: float = 5.0, standby: bool = True, poll_s: float | None = None,
            extra_env: dict[str, str] | None = None, cpu: bool = False) -> tuple[float, float | None, int, float]:
    """Run the job once to fill the caches, then ``repeat`` timed runs on a fresh service; the best
    (e2e s, warming-phase tasks/s or None, tasks, the median e2e s). ``fetchers_per_node`` is
    PREWARM_FETCHERS_PER_NODE (0: one per CPU); ``timeline`` prints when each timed job changed phase, ``cpu`` the
    CPU each process spent on it (process names as the kernel has them: ``ray::Fetcher``, ``nginx``, ...). Each
    timed job starts after ``pause_s`` of rest, as a job on a service at rest would (with ``standby``, the next
    job's processes have started by then).
    A timed job ends at its webhook, or with ``poll_s`` at the first poll (that often) that sees it final."""
    from prewarm.api.service import start_service, stop_service

    env = {**tb.env(), "PREWARM_MAX_URLS": str(max(n_urls, 100_000)), "PREWARM_PERSIST": "1" if persist else "0",
           "PREWARM_STATE_DIR": tempfile.mkdtemp(prefix="bench-state-"),
           "PREWARM_FETCHERS_PER_NODE": str(fetchers_per_node), "PREWARM_STANDBY": "1" if standby else "0",
           "PREWARM_WEBHOOK_SECRET": WebhookInbox.SECRET, **(extra_env or {})}
    base = start_service(Settings.from_env(env), port=free_port(),
                         ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
    inbox = WebhookInbox() if poll_s is None else None
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
            watch = CpuWatch() if cpu else None
            elapsed, warming_rps, progress = run_job(client, body, poll_s or 0.05,
                                                     timeline=phases if timeline or inbox is None else None,
                                                     inbox=inbox)
            if timeline:
                print("timeline (s after POST): " + ", ".join(f"{t:.2f} {p}" for t, p in phases), flush=True)
            if watch is not None:
                spent = watch.stop()
                print(f"CPU over the job: {sum(spent.values()):.2f} core-s, "
                      f"{sum(spent.values()) / elapsed / (os.cpu_count() or 1):.0%} of the machine; "
                      + ", ".join(f"{name} {c:.2f}" for name, c in list(spent.items())[:8]), flush=True)
            assert progress["status"] == "FINISHED" and progress["success_count"] == progress["total_count"], progress
            runs.append((elapsed, warming_rps))
        if repeat > 1:
            print("timed jobs: " + ", ".join(f"{progress['total_count'] / r[0]:.0f}" for r in runs)
                  + " fetches/s end to end", flush=True)
        rates = [r[1] for r in runs if r[1] is not None]
        return (min(r[0] for r in runs), max(rates) if rates else None, progress["total_count"],
                statistics.median(r[0] for r in runs))
    finally:
        if inbox is not None:
            inbox.close()
        stop_service()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=5000)
    ap.add_argument("--pops", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="raw client run time")
    ap.add_argument("--compare-persistence", action="store_true", help="also run with PREWARM_PERSIST=0")
    ap.add_argument("--side-by-side", action="store_true", help="also wrk and a curl-per-fetch loop, as ratios")
    ap.add_argument("--fetchers-per-node", type=int, default=0, help="PREWARM_FETCHERS_PER_NODE (0: one per CPU)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="timed runs of the job, and runs of the raw client; the best of each counts")
    ap.add_argument("--compare-verify", action="store_true",
                    help="also time the job with verify: true (a HEAD per pair after its GET)")
    ap.add_argument("--timeline", action="store_true", help="print each timed job's phase changes")
    ap.add_argument("--poll-s", type=float, default=None,
                    help="end a timed job at the first progress poll (this often) seeing it final, not its webhook")
    ap.add_argument("--compare-standby", action="store_true",
                    help="also time the job with PREWARM_STANDBY=0 (every job starts its own processes)")
    ap.add_argument("--cpu", action="store_true", help="print the CPU each process spent on each timed job")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a service setting for every measured job (repeatable), e.g. PREWARM_BATCH_SIZE=1024")
    args = ap.parse_args(argv)
    pops = POPS[: args.pops]
    extra_env = dict(item.split("=", 1) for item in args.env)

    with Testbed(pops=pops) as tb:
        elapsed, warming_rps, tasks, median_elapsed = measure(tb, pops, args.urls, persist=True, poll_s=args.poll_s,
                                          fetchers_per_node=args.fetchers_per_node, repeat=args.repeat,
                                          timeline=args.timeline, extra_env=extra_env, cpu=args.cpu)
        service_rps = tasks / elapsed
        ended_by = f"a poll every {args.poll_s:g} s" if args.poll_s else "its webhook"
        print(f"service: {tasks} tasks ({args.urls} URLs x {len(pops)} POPs, cached 1 KiB, http) in {elapsed:.2f} s "
              f"= {service_rps:.0f} fetches/s end to end (POST to {ended_by}); warming phase {per_s(warming_rps)}",
              flush=True)
        common = {"poll_s": args.poll_s, "fetchers_per_node": args.fetchers_per_node, "repeat": args.repeat,
                  "extra_env": extra_env, "timeline": args.timeline}
        if args.compare_persistence:
            m_elapsed, m_warming_rps, *_ = measure(tb, pops, args.urls, persist=False, **common)
            print(f"without persistence (PREWARM_PERSIST=0): {tasks / m_elapsed:.0f} fetches/s end to end, "
                  f"warming {per_s(m_warming_rps)}; persistence costs "
                  f"{(1 - service_rps / (tasks / m_elapsed)) * 100:.1f}% end to end, "
                  f"{cost(warming_rps, m_warming_rps)} while warming (target <= 10%)", flush=True)
        if args.compare_verify:
            v_elapsed, v_warming_rps, *_ = measure(tb, pops, args.urls, persist=True, verify=True, **common)
            print(f"with verify: true: {tasks / v_elapsed:.0f} pairs/s end to end, warming {per_s(v_warming_rps)}; "
                  f"verification costs {(1 - (tasks / v_elapsed) / service_rps) * 100:.1f}% end to end, "
                  f"{cost(v_warming_rps, warming_rps)} while warming", flush=True)
        if args.compare_standby:
            c_elapsed, c_warming_rps, *_ = measure(tb, pops, args.urls, persist=True, standby=False, **common)
            print(f"without standby (PREWARM_STANDBY=0): {c_elapsed:.2f} s = {tasks / c_elapsed:.0f} fetches/s end to "
                  f"end, warming {per_s(c_warming_rps)}; the standby saves {c_elapsed - elapsed:.2f} s per job",
                  flush=True)
        address = tb.pop_addresses[pops[0]][0]
        warm(address, "www.example.com", "/obj/1kb/bench-0")
        # As many raw runs as timed jobs, the best counting, so neither side is compared at its best against the
        # other at an average.
        raws = [asyncio.run(raw_aiohttp_rps(address, "www.example.com", "/obj/1kb/bench-0", args.seconds))
                for _ in range(max(1, args.repeat))]
        raw = max(raws)
        each = f" (best of {', '.join(f'{r:.0f}' for r in raws)})" if len(raws) > 1 else ""
        print(f"raw aiohttp (1 process, 64 connections, one POP): {raw:.0f} req/s{each}", flush=True)
        while_warming = "" if warming_rps is None else f", {warming_rps / raw:.2f} while warming"
        median = f"; the median timed job {tasks / median_elapsed / raw:.2f}" if args.repeat > 1 else ""
        print(f"ratio service/raw aiohttp: {service_rps / raw:.2f} end to end{while_warming}{median} (target >= 1.2)")
        if args.side_by_side:
            ref = wrk_rps(address, "www.example.com", "/obj/1kb/bench-0", args.seconds)
            curl = curl_loop_rps(address, [tb.url(f"/obj/1kb/bench-{i}", scheme="http") for i in range(1500)])
            print("\n| client | fetches/s | service / client |\n| --- | ---: | ---: |")
            rows = [("the service, end to end", service_rps), ("the service, warming phase", warming_rps),
                    ("raw aiohttp, 1 process", raw), ("wrk -t2 -c64 (ceiling)", ref),
                    ("AWS-sample-style agent: 6 threads, one curl per fetch", curl)]
            for name, rps in ((name, rps) for name, rps in rows if rps is not None):
                print(f"| {name} | {rps:.0f} | {service_rps / rps:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
