"""Manifest expansion (issue 27): how long a 2-hour VOD takes to expand, and whether an expanded job warms as fast
as a job of as many plain URLs.

- Part 1, parsing alone: the testbed's 2-hour VOD (``/media/hls/vod-3600/master.m3u8``: 3,600 segments of 2 s in
  each of 5 renditions, 3 video and 2 audio, plus subtitles, I-frames, fMP4 init segments and a key every 4
  segments) expanded as the expander does (master, then its 7 playlists, then player order and the entries), in
  process; against ``m3u8.loads`` of the same 8 texts, the parser's own cost (the reference). Median of
  ``--repeat``.
- Part 2, the expander through a real POP of the testbed (nginx, TLS, the testbed's DNS): the same VOD read and
  expanded as a job's ``expanding`` phase does, timed whole.
- Part 3, the service on a local Ray cluster: a job with ``expand`` of ``/media/hls/vod-<--segments>/master.m3u8``
  through ``--pops`` POPs, and a job of as many plain 2 KiB URLs (the segments are 2 KiB), each on cold caches;
  tasks per second over each job's warming phase (``bench.common.run_job``) and their ratio (the goal: 1).

Talks only to 127.0.0.0/8; stops by itself within ``--max-minutes``.

    PYTHONPATH=. .venv/bin/python -m bench.bench_expand [--repeat 5] [--segments 600] [--parts 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from bench.common import start_run

POPS = ["ATL56-C1", "SIN2-C1", "DFW55-C3"]
VOD = "/media/hls/vod-3600/master.m3u8"


def parse_alone(texts: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to expand the VOD as the expander does, seconds of m3u8.loads alone, entries)."""
    import m3u8

    from prewarm.core.entries import range_entry
    from prewarm.core.manifests import Format, expand, player_order

    t0 = time.perf_counter()
    master = expand(Format.HLS, texts[VOD], "https://www.example.com" + VOD)
    refs = list(master.refs)
    for playlist in master.playlists:
        path = playlist.url.removeprefix("https://www.example.com")
        refs += expand(Format.HLS, texts[path], playlist.url).refs
    entries = dict.fromkeys(range_entry(r.url, r.byte_range) for r in player_order(refs))
    expanded = time.perf_counter() - t0
    t0 = time.perf_counter()
    for path, text in texts.items():
        m3u8.loads(text, uri="https://www.example.com" + path)
    return expanded, time.perf_counter() - t0, len(entries) + len(master.playlists)


def vod_texts() -> dict[str, str]:
    from prewarm.core.manifests import Format, expand
    from prewarm.testbed import media

    def text(path: str) -> str:
        answer = media.answer(path)
        assert answer is not None, path
        return answer[0].decode()

    texts = {VOD: text(VOD)}
    for playlist in expand(Format.HLS, texts[VOD], "https://www.example.com" + VOD).playlists:
        path = playlist.url.removeprefix("https://www.example.com")
        texts[path] = text(path)
    return texts


async def through_pop(tb: Any, settings: Any) -> tuple[float, int]:
    from prewarm.engine.expander import expand_urls
    from prewarm.net.manifestfetch import ManifestReader
    from prewarm.net.resolve import Resolver

    resolved = await Resolver(settings.nameservers, settings.dns_timeout_s).pop_addresses(
        tb.cf_domain, POPS[:1], settings.allow_private_edges)
    reader = ManifestReader(resolved[0].addresses, settings, {})
    try:
        t0 = time.perf_counter()
        out = await expand_urls([tb.url(VOD)], reader, time.time() + 60, max_bandwidth=None, first_seconds=0,
                                cap=settings.max_expanded_urls, verify=False)
        return time.perf_counter() - t0, len(out.urls)
    finally:
        await reader.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--segments", type=int, default=600, help="part 3: segments per rendition of the job's VOD")
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--max-minutes", type=float, default=20.0)
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    start_run("bench.bench_expand", argv, args.max_minutes)

    from prewarm.settings import Settings
    from prewarm.testbed import Testbed, media

    if "1" in parts:
        texts = vod_texts()
        runs = [parse_alone(texts) for _ in range(args.repeat)]
        expanded = statistics.median(r[0] for r in runs)
        loads = statistics.median(r[1] for r in runs)
        print(f"part 1: 2-hour VOD, {len(texts)} playlists, {sum(map(len, texts.values())) / 1024:,.0f} KiB -> "
              f"{runs[0][2]:,} entries: expanded in {expanded:.3f} s (median of {args.repeat}; goal < 1 s); "
              f"m3u8.loads alone {loads:.3f} s; ratio {expanded / loads:.2f}x the parser's own cost", flush=True)
    if not parts & {"2", "3"}:
        return 0
    with Testbed(extra_pops=POPS) as tb:
        env = {**tb.env(), "PREWARM_STATE_DIR": tempfile.mkdtemp(prefix="bench-expand-state-"),
               "PREWARM_NAMESPACE": f"bench-expand-{uuid.uuid4().hex[:6]}", "PREWARM_MAX_URLS": "100000"}
        settings = Settings.from_env(env)
        if "2" in parts:
            seconds = []
            for _ in range(args.repeat):
                tb.reset()
                took, n = asyncio.run(through_pop(tb, settings))
                seconds.append(took)
            each = ", ".join(f"{s:.3f}" for s in seconds)
            print(f"part 2: the expander through {POPS[0]} (cold caches): {n:,} entries in "
                  f"{statistics.median(seconds):.3f} s (median of {args.repeat}: {each})", flush=True)
        if "3" in parts:
            from bench.common import run_job
            from prewarm.api.service import start_service, stop_service
            from prewarm.client import PrewarmClient
            from prewarm.testbed.net import free_port

            ray_kwargs = {"num_cpus": 2, "include_dashboard": False}
            base = start_service(settings, port=free_port(), ray_init_kwargs=ray_kwargs)
            try:
                client = PrewarmClient(base, timeout_s=120)
                common = {"cf_domain": tb.cf_domain, "target_type": "pop", "pops": POPS, "timeout": 10,
                          "instance_count": 1, "verify": False, "tiering": "off"}
                run_job(client, {**common, "url_list": [tb.url("/obj/1kb/expand-warmup")]})
                path = f"/media/hls/vod-{args.segments}/master.m3u8"
                n = len(media.expected(path))
                tag = uuid.uuid4().hex[:6]
                plain = [tb.url(f"/obj/2kb/expand-plain-{tag}-{i}") for i in range(n)]
                rates: dict[str, list[float]] = {"expanded": [], "plain": []}
                for _ in range(max(1, args.repeat // 2)):
                    tb.reset()
                    seconds, rate, progress = run_job(client, {**common, "url_list": [tb.url(path)], "expand": True})
                    assert progress["success_count"] == n * len(POPS), progress
                    rates["expanded"].append(rate or 0.0)
                    print(f"  expanded: {n:,} entries x {len(POPS)} POPs in {seconds:.2f} s, {rate:,.0f} tasks/s "
                          "warming", flush=True)
                    tb.reset()
                    seconds, rate, progress = run_job(client, {**common, "url_list": plain})
                    assert progress["success_count"] == n * len(POPS), progress
                    rates["plain"].append(rate or 0.0)
                    print(f"  plain:    {n:,} URLs x {len(POPS)} POPs in {seconds:.2f} s, {rate:,.0f} tasks/s "
                          "warming", flush=True)
                e, p = statistics.median(rates["expanded"]), statistics.median(rates["plain"])
                print(f"part 3: warming rate expanded {e:,.0f} tasks/s, plain {p:,.0f} tasks/s: ratio {e / p:.2f}",
                      flush=True)
            finally:
                stop_service()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
