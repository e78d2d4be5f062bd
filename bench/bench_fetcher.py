"""A fetcher's CPU per fetch inside a Ray actor, against the same ``Fetcher`` in a plain process, in one run.

Drives one fetcher as a coordinator does (two POPs, a lane each, 1,024-task batches, two in flight per lane,
cached 1 KiB objects over plain http), with a state actor that only counts what it is sent, and no Serve.
Rounds alternate between the actor (``FetcherActor``, driven by Ray calls) and the plain ``Fetcher`` run in
this process under uvloop, so the machine's mood hits both alike. Each round also prints what the rest of
the machine spent meanwhile: nginx, and Ray's metrics agent (``ray::DashboardAgent``), which replays every
histogram observation in Python (see ``prewarm.engine.metrics.LATENCY_SAMPLES_PER_BATCH``).

    .venv/bin/python -m bench.bench_fetcher [--urls 5000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from bench.common import cpu_spent, process_cpu
from prewarm.engine import fetcher as fetcher_module
from prewarm.engine.registry import STATE_ACTOR_NAME
from prewarm.settings import Settings
from prewarm.testbed import Testbed

POPS = ["IAD89-P1", "SFO5-P1"]
BATCH = 1024
IN_FLIGHT_PER_LANE = 2
FetchBatch = Callable[[str, list[str], Sequence[tuple[int, str]]], Awaitable[Any]]


@ray.remote(num_cpus=0)
class RecordSink:
    """Stands in for the state actor: takes each batch's results and keeps nothing."""

    def record(self, req_id: str, rows: Sequence[Any]) -> int:
        return len(rows)


class _LocalSink:
    """The same for the plain ``Fetcher``: ``record.remote`` answers at once."""

    class _Record:
        def remote(self, req_id: str, rows: Sequence[Any]) -> asyncio.Future[int]:
            done = asyncio.get_running_loop().create_future()
            done.set_result(len(rows))
            return done

    record = _Record()


async def drive(fetch_batch: FetchBatch, addresses: dict[str, list[str]], urls: list[str]) -> None:
    """Every URL through every POP: one lane per POP, ``IN_FLIGHT_PER_LANE`` batches in flight each."""

    async def lane(pop: str) -> None:
        tasks = list(enumerate(urls))
        batches = [tasks[s : s + BATCH] for s in range(0, len(tasks), BATCH)]
        inflight: set[asyncio.Future[Any]] = set()
        while batches or inflight:
            while batches and len(inflight) < IN_FLIGHT_PER_LANE:
                inflight.add(asyncio.ensure_future(fetch_batch(pop, addresses[pop], batches.pop(0))))
            done, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()

    await asyncio.gather(*(lane(pop) for pop in addresses))


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def timed_round(run: Awaitable[None], cpu_of: Callable[[], float], fetches: int) -> tuple[float, float, str]:
    """(fetches/s, CPU us per fetch of the fetcher's process, what else spent CPU meanwhile)."""
    before, c0, t0 = process_cpu(), cpu_of(), time.perf_counter()
    await run
    elapsed, cpu = time.perf_counter() - t0, cpu_of() - c0
    others = {n: s for n, s in cpu_spent(before, process_cpu()).items() if n in ("nginx", "ray::DashboardA")}
    return fetches / elapsed, cpu / fetches * 1e6, ", ".join(f"{n} {s:.2f}" for n, s in others.items()) or "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    import uvloop

    with Testbed(pops=POPS) as tb:
        settings = Settings.from_env(tb.env())
        urls = [tb.url(f"/obj/1kb/bench-fetcher-{i}", scheme="http") for i in range(args.urls)]
        addresses = {pop: tb.pop_addresses[pop] for pop in POPS}
        fetches = len(urls) * len(POPS)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 namespace=settings.namespace)
        try:
            RecordSink.options(name=STATE_ACTOR_NAME, namespace=settings.namespace).remote()
            actor = fetcher_module.FetcherActor.options(namespace=settings.namespace).remote("bench", settings)
            actor_pid = ray.get(actor.pid.remote())

            async def actor_batch(pop: str, addrs: list[str], tasks: Sequence[tuple[int, str]]) -> Any:
                return await actor.fetch_batch.remote(pop, addrs, tasks, time.time() + 60, 32)

            plain = fetcher_module.Fetcher("bench", settings)
            plain._state = _LocalSink()  # no Ray call for the results: the plain figure is the fetch alone

            async def plain_batch(pop: str, addrs: list[str], tasks: Sequence[tuple[int, str]]) -> Any:
                return await plain.fetch_batch(pop, addrs, tasks, time.time() + 60, 32)

            async def rounds() -> None:
                await drive(plain_batch, addresses, urls)  # fills the caches
                print(f"{len(urls)} URLs x {len(POPS)} POPs through one fetcher, cached 1 KiB, plain http\n"
                      "| round | actor fetches/s | actor CPU us/fetch | meanwhile (core-s) | plain fetches/s "
                      "| plain CPU us/fetch | meanwhile (core-s) | actor / plain CPU |\n"
                      "| ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |", flush=True)
                for n in range(1, args.rounds + 1):
                    a_rate, a_cpu, a_other = await timed_round(drive(actor_batch, addresses, urls),
                                                               lambda: process_cpu_s(actor_pid), fetches)
                    p_rate, p_cpu, p_other = await timed_round(drive(plain_batch, addresses, urls), own_cpu_s,
                                                               fetches)
                    print(f"| {n} | {a_rate:.0f} | {a_cpu:.0f} | {a_other} | {p_rate:.0f} | {p_cpu:.0f} | {p_other} "
                          f"| {a_cpu / p_cpu:.2f} |", flush=True)

            uvloop.run(rounds())  # one loop for both: the plain fetcher's connections belong to it
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
