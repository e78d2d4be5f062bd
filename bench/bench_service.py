"""End-to-end service throughput against the raw single-process aiohttp client, in one run.

20,000 (URL, POP) tasks: 5,000 cached 1 KiB objects over 4 testbed POPs (plain http, as the raw client
uses). The job runs once to fill the caches; the second, identical job is timed from POST to FINISHED
(resolution, size probe and report included). The raw client then runs for the same POP set.

    .venv/bin/python bench/bench_service.py [--urls 5000] [--pops 4]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_baseline import raw_aiohttp_rps, warm
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


def run_job(client: PrewarmClient, body: dict[str, Any], poll_s: float = 0.2) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    req_id = client.prewarm(body)["request_id"]
    while True:
        progress = client.progress(req_id)
        if progress["status"] in FINAL_STATUSES:
            return time.perf_counter() - t0, progress
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=5000)
    ap.add_argument("--pops", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0, help="raw client run time")
    args = ap.parse_args(argv)
    pops = POPS[: args.pops]

    from prewarm.service import start_service, stop_service

    with Testbed(pops=pops) as tb:
        settings = Settings.from_env({**tb.env(), "PREWARM_MAX_URLS": str(max(args.urls, 100_000))})
        base = start_service(settings, port=free_port(),
                             ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
        try:
            client = PrewarmClient(base, timeout_s=120)
            urls = [tb.url(f"/obj/1kb/bench-{i}", scheme="http") for i in range(args.urls)]
            body = {"url_list": urls, "cf_domain": tb.cf_domain, "target_type": "pop", "pops": pops,
                    "timeout": 30, "instance_count": 1}
            fill_s, fill = run_job(client, body)
            assert fill["status"] == "FINISHED" and fill["success_count"] == fill["total_count"], fill
            elapsed, progress = run_job(client, body)
            assert progress["status"] == "FINISHED" and progress["success_count"] == progress["total_count"], progress
            tasks = progress["total_count"]
            service_rps = tasks / elapsed
            print(f"service: {tasks} tasks ({args.urls} URLs x {len(pops)} POPs, cached 1 KiB) in {elapsed:.2f} s "
                  f"= {service_rps:.0f} fetches/s  (cache-filling run: {fill_s:.2f} s)", flush=True)
        finally:
            stop_service()
        address = tb.pop_addresses[pops[0]][0]
        warm(address, "www.example.com", "/obj/1kb/bench-0")
        raw = asyncio.run(raw_aiohttp_rps(address, "www.example.com", "/obj/1kb/bench-0", args.seconds))
        print(f"raw aiohttp (1 process, 64 connections, one POP): {raw:.0f} req/s", flush=True)
        print(f"ratio service/raw aiohttp: {service_rps / raw:.2f} (target >= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
