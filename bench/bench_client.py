"""Per-process fetch rate of ``PopClient`` (no Ray) against the raw aiohttp loop, in one run.

Isolates the client's own cost from the service's fixed costs: the same cached 1 KiB objects, the same
testbed, alternating rounds so that noise from other processes on the shared cores hits both alike.
Each figure comes with its CPU cost (process CPU seconds per 1,000 fetches), which the other load on the
machine moves far less than the wall-clock rate. ``PopClient`` runs under uvloop, as in a Ray async actor
(Ray installs uvloop when it is present); the raw loop runs as ``bench_service.py`` runs it.

It first prints what making a fetcher's clients for 20 POPs costs with the system trust store (the trust store
is loaded once per process: ``fetch.ssl_context``).

A third client, the floor, is the least a Python client can do for the same fetches (write a fixed head,
count the body by its Content-Length, nothing checked or recorded), under uvloop too: ``PopClient``'s CPU
over the floor's, measured in the same round, is its own overhead with the machine's mood divided out.

    .venv/bin/python -m bench.bench_client [--state-dir /tmp/prewarm-testbed] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from bench.common import raw_aiohttp_rps, warm
from prewarm.net.popclient import PopClient
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


class _FloorConnection(asyncio.Protocol):
    """One keep-alive connection that only finds the end of each answer (Content-Length framing)."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] | None = None
        self.buf = b""
        self.need = -1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"content-length:") + len(b"content-length:")
            self.need, self.buf = int(head[at:head.find(b"\r\n", at)]), self.buf[end + 4:]
        if len(self.buf) >= self.need and self.done is not None:
            self.buf, self.need = b"", -1
            self.done.set_result(None)


async def floor_rps(tb: Testbed, pops: list[str], urls: list[str], per_pop: int) -> float:
    """Fetches/s of the floor: ``per_pop`` connections per POP, each sending its share of the URLs in turn."""
    loop = asyncio.get_running_loop()
    heads = [f"GET /{u.split('/', 3)[3]} HTTP/1.1\r\nHost: {u.split('/')[2]}\r\n"
             "Accept-Encoding: gzip, deflate, br\r\nUser-Agent: cdn-prewarm/0.1\r\nAccept: */*\r\n\r\n".encode()
             for u in urls]

    async def connection(address: str, share: list[bytes]) -> None:
        transport, conn = await asyncio.wait_for(loop.create_connection(_FloorConnection, address, 80), 10)
        try:
            for head in share:
                conn.done = loop.create_future()
                transport.write(head)
                await asyncio.wait_for(conn.done, 60)
        finally:
            transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection(tb.pop_addresses[p][0], heads[i::per_pop]) for p in pops for i in range(per_pop)))
    return len(urls) * len(pops) / (time.perf_counter() - t0)


def startup_cpu_ms(n_pops: int) -> float:
    """CPU ms to make a fetcher's clients for ``n_pops`` POPs with the system trust store (as in production)."""
    c0 = time.process_time()
    for i in range(n_pops):
        PopClient(f"TST{i}-P1", ["127.0.0.1"], Settings(), {})
    return (time.process_time() - c0) * 1000


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

    print(f"PopClient start-up, system trust store: {startup_cpu_ms(20):.0f} ms CPU for a fetcher's 20 POPs "
          f"(a further 20: {startup_cpu_ms(20):.1f} ms)", flush=True)
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
              "| ratio (CPU) | floor CPU us/fetch | PopClient CPU / floor |\n"
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
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
            _, floor_cpu = timed(lambda: floor_rps(tb, pops, urls, args.per_pop), use_uvloop=True)
            print(f"| {n} | {raw:.0f} | {raw_cpu:.0f} | {rate:.0f} | {cpu:.0f} | {rate / raw:.2f} "
                  f"| {raw_cpu / cpu:.2f} | {floor_cpu:.0f} | {cpu / floor_cpu:.2f} |", flush=True)
    finally:
        if own:
            tb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
