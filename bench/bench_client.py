"""Per-process fetch rate of ``PopClient`` (no Ray) against the raw aiohttp loop, in one run.

Isolates the client's own cost from the service's fixed costs: the same cached 1 KiB objects, the same
testbed, alternating rounds so that noise from other processes on the shared cores hits both alike.
Each figure comes with its CPU cost (process CPU seconds per 1,000 fetches), which the other load on the
machine moves far less than the wall-clock rate. ``PopClient`` runs under uvloop, as in a Ray async actor
(Ray installs uvloop when it is present); the raw loop runs as ``bench_service.py`` runs it.

    .venv/bin/python bench/bench_client.py [--state-dir /tmp/prewarm-testbed] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_baseline import raw_aiohttp_rps, warm
from prewarm.fetch import PopClient
from prewarm.settings import Settings
from prewarm.testbed import Testbed

HOST = "www.example.com"
POPS = ["IAD89-P1", "SFO5-P1", "FRA56-P4", "NRT51-P2"]


async def popclient_rps(tb: Testbed, pops: list[str], urls: list[str], per_pop: int) -> tuple[float, int]:
    """(fetches/s, failures) of one ``PopClient`` per POP fetching every URL, ``per_pop`` at once each."""
    settings = Settings.from_env(tb.env())
    clients = [PopClient(p, tb.pop_addresses[p], settings, {}, per_pop) for p in pops]
    failures = 0

    async def lane(client: PopClient) -> None:
        nonlocal failures
        queue = list(reversed(urls))

        async def worker() -> None:
            nonlocal failures
            while queue:
                r = await client.fetch(queue.pop(), "GET", time.time() + 60)
                if not r.ok or r.nbytes != 1024:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(per_pop)))

    t0 = time.perf_counter()
    await asyncio.gather(*(lane(c) for c in clients))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in clients))
    return len(urls) * len(pops) / elapsed, failures


def timed(run: Callable[[], Awaitable[float]], use_uvloop: bool) -> tuple[float, float]:
    """(rate, CPU ms per 1,000 fetches) of one coroutine run in a fresh event loop."""
    holder: dict[str, float] = {}

    async def body() -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        holder["rate"] = await run()
        holder["cpu"], holder["wall"] = time.process_time() - c0, time.perf_counter() - t0

    if use_uvloop:
        import uvloop

        uvloop.run(body())
    else:
        asyncio.run(body())
    fetches = holder["rate"] * holder["wall"]
    return holder["rate"], holder["cpu"] / fetches * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", help="use a running 'prewarm testbed up --dir DIR' (with these POPs)")
    ap.add_argument("--urls", type=int, default=5000)
    ap.add_argument("--per-pop", type=int, default=32, help="concurrent fetches per POP (PREWARM_MAX_CONCURRENCY)")
    ap.add_argument("--seconds", type=float, default=5.0, help="raw client run time per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    own = args.state_dir is None
    tb = Testbed(pops=POPS) if own else Testbed.from_state_dir(args.state_dir)
    try:
        if own:
            tb.start()
        pops = [p for p in POPS if p in tb.pop_addresses]
        urls = [tb.url(f"/obj/1kb/bench-client-{i}", scheme="http") for i in range(args.urls)]
        address = tb.pop_addresses[pops[0]][0]
        warm(address, HOST, "/obj/1kb/bench-client-0")
        fill, failures = asyncio.run(popclient_rps(tb, pops, urls, args.per_pop))  # every object cached
        print(f"{len(urls)} URLs x {len(pops)} POPs, plain http, {args.per_pop} per POP; fill run {fill:.0f}/s "
              f"({failures} failures)", flush=True)
        print("| round | raw aiohttp req/s | CPU us/fetch | PopClient fetches/s | CPU us/fetch | ratio (rate) "
              "| ratio (CPU) |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
        box: dict[str, int] = {}

        async def client_run() -> float:
            rate, box["failures"] = await popclient_rps(tb, pops, urls, args.per_pop)
            return rate

        for n in range(1, args.rounds + 1):
            raw, raw_cpu = timed(lambda: raw_aiohttp_rps(address, HOST, "/obj/1kb/bench-client-0", args.seconds),
                                 use_uvloop=False)

            rate, cpu = timed(client_run, use_uvloop=True)
            if box["failures"]:
                raise RuntimeError(f"{box['failures']} failed or short fetches")
            print(f"| {n} | {raw:.0f} | {raw_cpu:.0f} | {rate:.0f} | {cpu:.0f} | {rate / raw:.2f} "
                  f"| {raw_cpu / cpu:.2f} |", flush=True)
    finally:
        if own:
            tb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
