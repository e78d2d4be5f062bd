"""A million (URL, POP) tasks in one request, and how cost grows with the work.

For each size (URLs x POPs over the testbed, small objects) one job runs on a local Ray cluster and the
benchmark prints: POST response time, peak RSS (VmHWM) of the state actor and the coordinator,
progress-endpoint p50/p99 while the job runs, end-to-end fetches per second, and the time to build the CSV
report for the job's rows (all rows failed, the worst case for the report). Objects are distinct per task
row, so the first pass through each POP is a cache miss served by the testbed origin.

    .venv/bin/python -m bench.bench_scale --sizes 1000,10000,100000 --pops 10
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray

from bench.common import POPS
from prewarm.client import PrewarmClient
from prewarm.core.report import report_csv
from prewarm.core.results import TaskTable
from prewarm.engine.registry import STATE_ACTOR_NAME, coordinator_name
from prewarm.schema import FINAL_STATUSES
from prewarm.settings import Settings
from prewarm.testbed import Testbed
from prewarm.testbed.net import free_port


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report_build_s(rows: int, n_pops: int) -> float:
    urls = [f"https://www.example.com/obj/1kb/scale-{i}" for i in range(rows // n_pops)]
    table = TaskTable(urls, POPS[:n_pops])
    table.fail_unfinished("http_503", "HTTP 503 Service Unavailable")
    t0 = time.perf_counter()
    report_csv(table, {})
    return time.perf_counter() - t0


def run_size(client: PrewarmClient, tb: Testbed, namespace: str, n_urls: int, pops: list[str]) -> dict[str, float]:
    urls = [tb.url(f"/obj/1kb/s{n_urls}-{i}", scheme="http") for i in range(n_urls)]
    body = {"url_list": urls, "cf_domain": tb.cf_domain, "target_type": "pop", "pops": pops, "timeout": 60,
            "instance_count": 1}
    t0 = time.perf_counter()
    req_id = client.prewarm(body)["request_id"]
    post_s = time.perf_counter() - t0
    state = ray.get_actor(STATE_ACTOR_NAME, namespace=namespace)
    state_pid = ray.get(state.pid.remote())
    coord_pid = None
    latencies: list[float] = []
    coord_hwm = 0.0
    while True:
        t = time.perf_counter()
        progress = client.progress(req_id)
        latencies.append((time.perf_counter() - t) * 1000)
        if coord_pid is None:
            with contextlib.suppress(Exception):
                coord_pid = ray.get(ray.get_actor(coordinator_name(req_id), namespace=namespace).pid.remote())
        if coord_pid is not None:
            with contextlib.suppress(OSError):
                coord_hwm = max(coord_hwm, hwm_mb(coord_pid))
        if progress["status"] in FINAL_STATUSES:
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    assert progress["status"] == "FINISHED", progress
    return {
        "tasks": progress["total_count"], "ok": progress["success_count"], "post_s": post_s,
        "state_mb": hwm_mb(state_pid), "coord_mb": coord_hwm,
        "p50_ms": statistics.median(latencies), "p99_ms": float(np.percentile(latencies, 99)),
        "rps": progress["total_count"] / elapsed, "elapsed_s": elapsed,
        "report_s": report_build_s(progress["total_count"], len(pops)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="URL counts, comma-separated")
    ap.add_argument("--pops", type=int, default=10)
    args = ap.parse_args(argv)
    pops = POPS[: args.pops]
    sizes = [int(s) for s in args.sizes.split(",")]

    from prewarm.api.service import start_service, stop_service

    with Testbed(pops=pops) as tb:
        settings = Settings.from_env({**tb.env(), "PREWARM_MAX_URLS": str(max(sizes)),
                                      "PREWARM_STATE_DIR": tempfile.mkdtemp(prefix="bench-scale-")})
        base = start_service(settings, port=free_port(), ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
        rows = []
        stop = threading.Event()
        try:
            client = PrewarmClient(base, timeout_s=300)
            for n in sizes:
                r = run_size(client, tb, settings.namespace, n, pops)
                rows.append(r)
                print(f"{r['tasks']:>9,} tasks: POST {r['post_s']:.2f} s, state actor peak {r['state_mb']:.0f} MB, "
                      f"coordinator peak {r['coord_mb']:.0f} MB, progress p50 {r['p50_ms']:.1f} ms "
                      f"p99 {r['p99_ms']:.1f} ms, {r['rps']:.0f} fetches/s ({r['elapsed_s']:.1f} s), "
                      f"report build {r['report_s']:.2f} s", flush=True)
        finally:
            stop.set()
            stop_service()
    print("\n| tasks | POST s | state MB | coordinator MB | progress p50 ms | p99 ms | fetches/s | report s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['tasks']:,} | {r['post_s']:.2f} | {r['state_mb']:.0f} | {r['coord_mb']:.0f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['rps']:.0f} | {r['report_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
