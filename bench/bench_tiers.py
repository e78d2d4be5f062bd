"""Tiered warming (issue 25): origin fetches per URL, peak origin concurrency and time to warm, by tiering mode.

Side by side in one run, each job on cold caches (``Testbed.reset()`` first: every tier's cache and the origin's
counters emptied), each timed from its POST to its signed job-end webhook (``bench_service.run_job``):

- Part 1, a cold launch: ``--urls`` (200) distinct objects of ``--size-kb`` (256) KiB behind an origin delay of
  ``--delay-ms`` (100) ms, through 12 POPs in 3 regional edge caches (the catalogue's ``recs`` grouping, the one
  the service uses: us-east-1, eu-central-1, ap-southeast-1, four POPs each), ``max_origin_concurrency``
  ``--cap`` (16). The issue asks for 2,000 URLs of 1 MiB: 2,000 x 12 POPs x 1 MiB = 24 GiB written to the POP
  caches per job (plus the RECs' and the shield's copies), over 2 GiB per cache where the testbed's caches hold
  at most 1 GiB each (``max_size=1g``: nginx would evict while the job runs), and minutes per mode on this 2-core
  machine; ``--urls 2000 --size-kb 1024`` runs it anyway.
- Part 2, a slow object: one 10 MiB object sent by the origin at 1 MiB/s (``/fault/rate/1048576/obj/10mb/...``,
  10 s), through 8 POPs in 2 RECs (us-east-1 and eu-central-1). nginx's cache lock gives up after
  ``--lock-timeout`` (5 s, nginx's default): a waiter then goes upstream itself, so a fan-out slower than that
  multiplies origin fetches.

Modes (``--modes``, testbed tiers:tiering): ``rec:off``, ``rec:rec`` on a testbed with ``tiers="rec"`` (each POP
-> its REC -> origin), ``shield:shield`` and ``shield:rec`` on one with ``tiers="shield"`` (every REC through the
Origin Shield, us-east-1, which is itself one of the RECs). One testbed and one service (one Ray cluster) at a
time. Per job: origin GETs per URL (min/mean/max and how many URLs had each count), the origin's requests by the
tier that sent them, the peak of origin requests in flight (against the cap), seconds to warm, successes, and the
service's own ``origin_fetches``; the expected count is the floor the tiers allow (one per REC of the job's POPs on
the rec testbed, 1 behind the shield) and the issue's goal (rec: the RECs; shield: 1).

Talks only to 127.0.0.0/8 (testbed, Ray, Serve, the webhook inbox); stops by itself within ``--max-minutes``.
Ray's node address is 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set before ray is imported).

    PYTHONPATH=. .venv/bin/python -m bench.bench_tiers [--urls 200] [--size-kb 256] [--cap 16] [--modes ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import start_run

MIB = 1024 * 1024
RECS = {"us-east-1": ["ATL56-C1", "IAD89-P1", "IAD89-P2", "YUL62-C1"],
        "eu-central-1": ["ARN54-C1", "ARN56-P1", "FRA56-P4", "FRA60-P1"],
        "ap-southeast-1": ["SIN2-C1", "SIN2-P1", "SIN2-P2", "SIN52-C2"]}
POPS_12 = [pop for pops in RECS.values() for pop in pops]
POPS_8 = RECS["us-east-1"] + RECS["eu-central-1"]
DEFAULT_MODES = "rec:off,rec:rec,shield:shield,shield:rec"


def _where() -> dict[str, str]:
    """Run in a Ray worker: which prewarm package it imports."""
    import prewarm as p

    return {"prewarm": p.__file__, "pid": str(os.getpid())}


def parse_modes(text: str) -> list[tuple[str, str]]:
    modes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        tiers, _, tiering = item.partition(":")
        if tiers not in ("rec", "shield") or tiering not in ("off", "rec", "shield", "auto"):
            raise SystemExit(f"--modes: {item!r} is not <rec|shield>:<off|rec|shield|auto>")
        modes.append((tiers, tiering))
    return modes


def expected_gets(tb_tiers: str, tiering: str, pops: list[str]) -> tuple[int, int | None]:
    """(the floor the testbed's tiers allow per URL, the issue's goal for this tiering or None)."""
    n_recs = len({rec for rec, members in RECS.items() for p in pops if p in members})
    floor = 1 if tb_tiers == "shield" else n_recs
    goal = {"rec": floor, "shield": 1}.get(tiering)
    return floor, goal


def wait_origin_idle(tb: Any, timeout_s: float) -> int:
    """Wait until no origin request is in flight (at most ``timeout_s``); the number still in flight."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = int(tb.origin_concurrency().get("in_flight", 0))
        if left == 0 or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def measure_job(tb: Any, client: Any, inbox: Any, namespace: str, *, part: str, tiering: str, pops: list[str],
                paths: list[str], cap: int, timeout_min: int, pause_s: float) -> dict[str, Any]:
    from bench.common import run_job, wait_for_standby

    tb.reset()
    time.sleep(pause_s)
    standby = wait_for_standby(namespace, 2, timeout_s=30)
    tb.reset()  # again: nothing reached the edges meanwhile, but the counters start from nothing for sure
    body = {"url_list": [tb.url(p) for p in paths], "cf_domain": tb.cf_domain, "target_type": "pop", "pops": pops,
            "timeout": timeout_min, "instance_count": 1, "verify": False, "tiering": tiering,
            "max_origin_concurrency": cap}
    elapsed, _, progress = run_job(client, body, inbox=inbox)
    left_at_end = int(tb.origin_concurrency().get("in_flight", 0))
    still = wait_origin_idle(tb, 30.0)
    rows = tb.origin_counts(tiers=True)["requests"]
    wanted = set(paths)
    gets: Counter[str] = Counter({p: 0 for p in paths})
    by_tier: Counter[str] = Counter()
    by_tier_head: Counter[str] = Counter()
    other = 0
    for row in rows:
        if row["path"] not in wanted:
            other += row["count"]
            continue
        if row["method"] == "GET":
            gets[row["path"]] += row["count"]
            by_tier[row["tier"]] += row["count"]
        else:
            by_tier_head[f"{row['method']} {row['tier']}"] += row["count"]
    sent = tb.origin_sent(tiers=True)
    conc = tb.origin_concurrency()
    per_url = [gets[p] for p in paths]
    return {
        "part": part, "tiers": tb.tiers, "tiering": tiering,
        "service_tiering": progress.get("tiering", ""), "pops": len(pops), "urls": len(paths),
        "gets_min": min(per_url), "gets_mean": statistics.fmean(per_url), "gets_max": max(per_url),
        "dist": dict(sorted(Counter(per_url).items())), "gets_total": sum(per_url), "by_tier": dict(by_tier),
        "other_methods": dict(by_tier_head), "other_paths": other, "peak": int(conc["peak"]), "cap": cap,
        "seconds": elapsed, "success": progress["success_count"], "total": progress["total_count"],
        "status": progress["status"], "origin_fetches": progress.get("origin_fetches", 0),
        "sent_mib": sum(r["bytes"] for r in sent if r["path"] in wanted) / MIB,
        "sent_complete": sum(r["complete"] for r in sent if r["path"] in wanted),
        "in_flight_at_end": left_at_end, "in_flight_after_wait": still, "standby_fetchers": len(standby),
        "expected": expected_gets(tb.tiers, tiering, pops),
        "starts": sorted((r["start"], r.get("end"), r.get("tier", ""), r.get("path", ""), r.get("edge", ""),
                          r.get("rec", "")) for r in conc["requests"] if r.get("path") in wanted),
    }


def fmt_dist(dist: dict[int, int]) -> str:
    return ", ".join(f"{n} GET{'s' if n != 1 else ''}: {k}" for n, k in dist.items())


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| tiering | testbed tiers | origin GETs per URL min / mean / max | URLs by GET count | expected "
             "(floor; goal) | origin GETs by tier | peak origin concurrency / cap | s to warm | successes | "
             "service's origin_fetches | origin MiB sent |",
             "| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        floor, goal = r["expected"]
        exact = "" if goal is None else (" **yes**" if r["gets_min"] == r["gets_max"] == goal else " **NO**")
        tiers = ", ".join(f"{t} {n}" for t, n in sorted(r["by_tier"].items()))
        lines.append(
            f"| {r['tiering']} | {r['tiers']} | {r['gets_min']} / {r['gets_mean']:.2f} / {r['gets_max']} | "
            f"{fmt_dist(r['dist'])} | {floor}; {'-' if goal is None else goal}{exact} | {tiers} | "
            f"{r['peak']} / {r['cap']} | {r['seconds']:.2f} | {r['success']:,} / {r['total']:,} | "
            f"{r['origin_fetches']} | {r['sent_mib']:.1f} |")
    return lines


def notes(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        bits = []
        if r["service_tiering"] != r["tiering"]:
            bits.append(f"the service says tiering {r['service_tiering']!r}")
        if r["status"] != "FINISHED" or r["success"] != r["total"]:
            bits.append(f"status {r['status']}, {r['total'] - r['success']} pairs not warmed")
        if r["other_methods"]:
            bits.append(f"other origin requests for these paths: {r['other_methods']}")
        if r["other_paths"]:
            bits.append(f"{r['other_paths']} origin requests for other paths")
        if r["in_flight_at_end"]:
            bits.append(f"{r['in_flight_at_end']} origin requests still in flight at the webhook "
                        f"({r['in_flight_after_wait']} after waiting up to 30 s)")
        if r["origin_fetches"] != r["gets_total"]:
            bits.append(f"service counted {r['origin_fetches']} origin fetches, the origin saw {r['gets_total']} GETs")
        if bits:
            out.append(f"- {r['part']} {r['tiers']}:{r['tiering']}: " + "; ".join(bits))
    return out


def slow_timeline(r: dict[str, Any], t0: float | None = None) -> str:
    """The slow object's origin GETs: when each started and ended (s after the first), the tier and edge."""
    if not r["starts"]:
        return "no origin requests"
    t0 = r["starts"][0][0] if t0 is None else t0
    parts = []
    for start, end, tier, _, edge, rec in r["starts"]:
        span = f"{start - t0:.1f}-{end - t0:.1f} s" if end is not None else f"{start - t0:.1f}- s"
        parts.append(f"{span} {tier} ({rec or '-'} via {edge})")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=200, help="part 1's URLs (the issue: 2,000)")
    ap.add_argument("--size-kb", type=int, default=256, help="part 1's object size in KiB (the issue: 1024)")
    ap.add_argument("--delay-ms", type=int, default=100, help="part 1's origin delay before the headers")
    ap.add_argument("--cap", type=int, default=16, help="max_origin_concurrency of every job")
    ap.add_argument("--slow-mb", type=int, default=10, help="part 2's object size in MiB")
    ap.add_argument("--slow-rate", type=int, default=MIB, help="part 2's origin rate in bytes/s")
    ap.add_argument("--lock-timeout", type=float, default=5.0, help="the testbed's proxy_cache_lock_timeout/_age")
    ap.add_argument("--modes", default=DEFAULT_MODES, help="testbed-tiers:tiering pairs, comma-separated")
    ap.add_argument("--parts", default="1,2", help="which parts to run")
    ap.add_argument("--pause-s", type=float, default=3.0, help="rest before each job (the standby starts)")
    ap.add_argument("--job-timeout-min", type=int, default=10, help="each job's timeout field (minutes)")
    ap.add_argument("--max-minutes", type=float, default=35.0, help="the whole run's bound")
    ap.add_argument("--json", help="also write every result here")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a PREWARM_* setting of the service (repeatable)")
    args = ap.parse_args(argv)
    modes = parse_modes(args.modes)
    parts = {p.strip() for p in args.parts.split(",")}

    start_run("bench.bench_tiers", argv, args.max_minutes)

    from bench.common import WebhookInbox, run_job
    from prewarm.api.service import start_service, stop_service
    from prewarm.client import PrewarmClient
    from prewarm.core.catalog import load_catalog
    from prewarm.settings import Settings
    from prewarm.testbed import Testbed
    from prewarm.testbed.net import free_port

    catalog = load_catalog()
    wrong = {p: catalog.rec_of(p) for rec, members in RECS.items() for p in members if catalog.rec_of(p) != rec}
    if wrong:
        raise SystemExit(f"the catalogue puts these POPs elsewhere: {wrong}")
    full = 2000 * 12 * 1024 * 1024
    run = args.urls * 12 * args.size_kb * 1024
    print(f"part 1: {args.urls} URLs of {args.size_kb} KiB (origin delay {args.delay_ms} ms) x 12 POPs in 3 RECs = "
          f"{run / MIB:,.0f} MiB into the POP caches per job"
          + ("" if (args.urls, args.size_kb) == (2000, 1024) else
             f"; scaled down from the issue's 2,000 x 1 MiB x 12 = {full / MIB:,.0f} MiB ({full / MIB / 1024:.1f} "
             "GiB) per job, plus 2,000 MiB in each REC: disk and minutes of cache writes per "
             "mode on this 2-core machine, and 2,000 MiB per cache is past the testbed's max_size=1g per cache "
             "(nginx would evict while the job runs)"), flush=True)
    print(f"part 2: one {args.slow_mb} MiB object at {args.slow_rate / MIB:g} MiB/s from the origin x 8 POPs in "
          f"2 RECs; lock timeout {args.lock_timeout:g} s; max_origin_concurrency {args.cap} in every job; "
          f"modes {', '.join(f'{t}:{m}' for t, m in modes)}", flush=True)

    tag = uuid.uuid4().hex[:6]
    results: list[dict[str, Any]] = []
    try:
        for tb_tiers in dict.fromkeys(t for t, _ in modes):
            with Testbed(pops=POPS_12, tiers=tb_tiers, lock_timeout=args.lock_timeout) as tb:
                print(f"\ntestbed tiers={tb_tiers}: RECs {tb.rec_addresses}, shield {tb.origin_shield} "
                      f"{tb.shield_address}", flush=True)
                env = {**tb.env(), "PREWARM_STATE_DIR": tempfile.mkdtemp(prefix="bench-tiers-state-"),
                       "PREWARM_WEBHOOK_SECRET": WebhookInbox.SECRET,
                       "PREWARM_MAX_URLS": str(max(args.urls, 100_000)),
                       "PREWARM_ORIGIN_SHIELD": "1" if tb_tiers == "shield" else "0",
                       "PREWARM_NAMESPACE": f"bench-tiers-{tag}-{tb_tiers}",
                       **dict(item.split("=", 1) for item in args.env)}
                settings = Settings.from_env(env)
                base = start_service(settings, port=free_port(),
                                     ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
                inbox = WebhookInbox()
                try:
                    import ray

                    w = ray.get(ray.remote(num_cpus=0)(_where).remote(), timeout=60)
                    print(f"prewarm imported from {w['prewarm']} (a Ray worker, pid {w['pid']})", flush=True)
                    client = PrewarmClient(base, timeout_s=120)
                    # A first small job: the service's first-job costs (imports, worker start) out of the timings.
                    warm = {"url_list": [tb.url(f"/obj/1kb/tiers-warmup-{tag}")], "cf_domain": tb.cf_domain,
                            "target_type": "pop", "pops": POPS_12, "timeout": 2, "instance_count": 1,
                            "verify": False, "tiering": "off"}
                    run_job(client, warm, inbox=inbox)
                    for t, tiering in modes:
                        if t != tb_tiers:
                            continue
                        if "1" in parts:
                            paths = [f"/fault/delay/{args.delay_ms}/obj/{args.size_kb}kb/cold-{tag}-{tiering}-{i}"
                                     for i in range(args.urls)]
                            r = measure_job(tb, client, inbox, settings.namespace, part="part 1", tiering=tiering,
                                            pops=POPS_12, paths=paths, cap=args.cap,
                                            timeout_min=args.job_timeout_min, pause_s=args.pause_s)
                            results.append(r)
                            print(f"part 1 {tb_tiers}:{tiering}: GETs/URL {r['gets_min']}/{r['gets_mean']:.2f}/"
                                  f"{r['gets_max']} {r['dist']}, by tier {r['by_tier']}, peak {r['peak']}/"
                                  f"{r['cap']}, {r['seconds']:.2f} s, {r['success']}/{r['total']} "
                                  f"{r['status']}, origin_fetches {r['origin_fetches']}", flush=True)
                        if "2" in parts:
                            path = f"/fault/rate/{args.slow_rate}/obj/{args.slow_mb}mb/slow-{tag}-{tiering}"
                            r = measure_job(tb, client, inbox, settings.namespace, part="part 2", tiering=tiering,
                                            pops=POPS_8, paths=[path], cap=args.cap,
                                            timeout_min=args.job_timeout_min, pause_s=args.pause_s)
                            results.append(r)
                            print(f"part 2 {tb_tiers}:{tiering}: {r['gets_total']} origin GETs, by tier "
                                  f"{r['by_tier']}, {r['sent_mib']:.1f} MiB sent ({r['sent_complete']} whole), peak "
                                  f"{r['peak']}, {r['seconds']:.2f} s, {r['success']}/{r['total']} {r['status']}, "
                                  f"origin_fetches {r['origin_fetches']}", flush=True)
                            print(f"  origin GETs: {slow_timeline(r)}", flush=True)
                    tb.reset()
                finally:
                    inbox.close()
                    stop_service()
    finally:
        signal.alarm(0)
        for part, title in (("part 1", f"Part 1: cold launch, {args.urls} URLs x {args.size_kb} KiB, origin delay "
                                       f"{args.delay_ms} ms, 12 POPs in 3 RECs, cap {args.cap}"),
                            ("part 2", f"Part 2: one {args.slow_mb} MiB object at {args.slow_rate / MIB:g} MiB/s, "
                                       f"8 POPs in 2 RECs, lock timeout {args.lock_timeout:g} s")):
            rows = [r for r in results if r["part"] == part]
            if rows:
                print(f"\n{title}\n\n" + "\n".join(table(rows)), flush=True)
        extra = notes(results)
        if extra:
            print("\nnotes:\n" + "\n".join(extra), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
