"""Load on the running service over loopback: 50 concurrent POSTs, then sustained polling of progress and
summary while the jobs run. Prints errors, lost jobs and latency percentiles.

    .venv/bin/python -m bench.bench_load [--jobs 50] [--urls 40] [--pollers 8] [--no-standby]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from prewarm.client import PrewarmClient
from prewarm.schema import FINAL_STATUSES
from prewarm.settings import Settings
from prewarm.testbed import Testbed
from prewarm.testbed.net import free_port

POPS = ["IAD89-P1", "SFO5-P1", "FRA56-P4"]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--urls", type=int, default=40)
    ap.add_argument("--pollers", type=int, default=8)
    ap.add_argument("--no-standby", action="store_true", help="PREWARM_STANDBY=0: every job starts its processes")
    args = ap.parse_args(argv)

    from prewarm.api.service import start_service, stop_service

    with Testbed(pops=POPS) as tb:
        env = {**tb.env(), "PREWARM_STANDBY": "0" if args.no_standby else "1"}
        base = start_service(Settings.from_env(env), port=free_port(),
                             ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
        errors: list[str] = []
        try:
            client = PrewarmClient(base, timeout_s=60)

            def submit(j: int) -> tuple[str, float]:
                urls = [tb.url(f"/fault/delay/50/load-{j}-{i}") for i in range(args.urls)]
                t0 = time.perf_counter()
                answer = client.prewarm({"url_list": urls, "cf_domain": tb.cf_domain, "target_type": "pop",
                                         "pops": POPS, "timeout": 10, "instance_count": 1})
                return answer["request_id"], time.perf_counter() - t0

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.jobs) as pool:
                submitted = list(pool.map(submit, range(args.jobs)))
            post_s = time.perf_counter() - t0
            ids = [rid for rid, _ in submitted]
            post_lat = [s * 1000 for _, s in submitted]
            print(f"{args.jobs} concurrent POSTs in {post_s:.2f} s: p50 {pct(post_lat, 50):.0f} ms, "
                  f"p99 {pct(post_lat, 99):.0f} ms", flush=True)

            progress_lat: list[float] = []
            summary_lat: list[float] = []
            final: dict[str, dict] = {}
            lock = threading.Lock()
            stop = threading.Event()

            def poll(k: int) -> None:
                i = k
                while not stop.is_set():
                    rid = ids[i % len(ids)]
                    i += 1
                    try:
                        t = time.perf_counter()
                        p = client.progress(rid)
                        progress_lat.append((time.perf_counter() - t) * 1000)
                        t = time.perf_counter()
                        client.summary(rid)
                        summary_lat.append((time.perf_counter() - t) * 1000)
                    except Exception as exc:
                        with lock:
                            errors.append(repr(exc))
                        continue
                    if p["status"] in FINAL_STATUSES:
                        with lock:
                            final[rid] = p
                            if len(final) == len(ids):
                                stop.set()

            threads = [threading.Thread(target=poll, args=(k,)) for k in range(args.pollers)]
            for t in threads:
                t.start()
            stop.wait(timeout=600)
            stop.set()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            expected = args.urls * len(POPS)
            lost = [rid for rid in ids if rid not in final]
            wrong = [rid for rid, p in final.items()
                     if (p["status"], p["success_count"], p["total_count"]) != ("FINISHED", expected, expected)]
            print(f"all jobs ended in {wall:.1f} s; polls: {len(progress_lat)} progress + {len(summary_lat)} summary",
                  flush=True)
            print(f"progress latency: p50 {pct(progress_lat, 50):.1f} ms, p99 {pct(progress_lat, 99):.1f} ms")
            print(f"summary latency:  p50 {pct(summary_lat, 50):.1f} ms, p99 {pct(summary_lat, 99):.1f} ms")
            print(f"errors: {len(errors)}, lost jobs: {len(lost)}, jobs with wrong counts: {len(wrong)}")
            for e in errors[:5]:
                print("  ", e)
            for rid in wrong[:5]:
                p = final[rid]
                rows = client.report(rid).decode().splitlines()
                print(f"   {rid}: {p['status']} {p['success_count']}/{p['total_count']} "
                      f"failures {p['failure_count']} {p.get('error_message', '')!r}; report: {rows[:3]}")
            for rid in lost[:5]:
                print(f"   not ended: {rid}: {client.progress(rid)}")
                try:
                    import ray

                    from prewarm.engine.registry import coordinator_name

                    name = coordinator_name(rid)
                    table = ray._private.state.actors().values()
                    print("   its coordinator:", [(a.get("State"), a.get("DeathCause") or a.get("death_cause"))
                                                  for a in table if a.get("Name") == name])
                except Exception as exc:  # diagnostics only
                    print("   (no actor table:", repr(exc), ")")
        finally:
            stop_service()
    return 1 if errors or lost or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
