"""Baseline throughput of one testbed POP serving a cached 1 KiB object: raw aiohttp vs wrk.

The aiohttp figure is what one Python process can drive; wrk shows what the edge itself can
serve. Their ratio tells later benchmarks how much of a measured rate is client overhead.

    python -m bench.bench_baseline                       # own one-POP testbed
    python -m bench.bench_baseline --state-dir /tmp/prewarm-testbed   # a running 'testbed up'
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench.common import raw_aiohttp_rps, warm, wrk_rps
from prewarm.testbed import Testbed

HOST = "www.example.com"
PATH = "/obj/1kb/bench-baseline"








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
