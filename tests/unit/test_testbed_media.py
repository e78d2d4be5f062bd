"""The testbed's generated video against the expander: every shape expands to exactly what the testbed generated."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from prewarm.core.manifests import Kind, ManifestError, expand, sniff
from prewarm.testbed import media

HOST = "https://www.example.com"
NOW = media.LIVE_EPOCH + 3600.5


def expand_all(path: str, max_bandwidth: int | None = None, first_seconds: float = 0.0) -> set[media.Ref]:
    """What a job would warm for ``path``: the manifest, its child playlists read in turn, and what they list."""
    found: set[media.Ref] = set()
    todo = [HOST + path]
    while todo:
        url = todo.pop()
        found.add((urlsplit(url).path, None))
        body, _ = media.answer(urlsplit(url).path, now=NOW)  # type: ignore[misc]
        fmt = sniff(body)
        assert fmt is not None, url
        out = expand(fmt, body.decode(), url, max_bandwidth, first_seconds, now=_dt(NOW))
        todo += [p.url for p in out.playlists]
        for ref in out.refs:
            assert ref.kind is not Kind.PLAYLIST
            assert urlsplit(ref.url).netloc == "www.example.com"
            assert media.answer(urlsplit(ref.url).path, now=NOW) is not None, f"the origin has no {ref.url}"
            found.add((urlsplit(ref.url).path, ref.byte_range))
    return found


def _dt(t: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC)


SHAPES = ["/media/hls/vod-9/master.m3u8", "/media/hls/vod-9/byterange.m3u8", "/media/hls/vod-1/master.m3u8",
          "/media/dash/vod-9/template.mpd", "/media/dash/vod-9/timeline.mpd", "/media/dash/vod-9/base.mpd",
          "/media/live/hls/ch1/index.m3u8", "/media/live/dash/ch1/live.mpd"]


@pytest.mark.parametrize("path", SHAPES)
def test_each_shape_expands_to_exactly_what_was_generated(path: str) -> None:
    assert expand_all(path) == media.expected(path, now=NOW)


@pytest.mark.parametrize("path", SHAPES)
def test_bandwidth_cap_and_first_seconds(path: str) -> None:
    assert expand_all(path, 1_300_000, 5) == media.expected(path, 1_300_000, 5, now=NOW)


def test_the_expected_sets_are_not_trivial() -> None:
    master = media.expected("/media/hls/vod-9/master.m3u8", now=NOW)
    # 3 video + 2 audio renditions: init + 9 segments + 3 keys each; subtitles 9; the i-frame ranges 9 (their init
    # is the 400k rendition's); playlists 8; the session key.
    assert len(master) == 5 * (1 + 9 + 3) + 9 + 9 + 8 + 1
    capped = media.expected("/media/hls/vod-9/master.m3u8", 1_300_000, 5, now=NOW)
    assert ("/media/hls/vod-9/v3500/index.m3u8", None) not in capped
    assert ("/media/hls/vod-9/v400/seg3.m4s", None) not in capped and ("/media/hls/vod-9/v400/seg2.m4s", None) in capped
    live = media.expected("/media/live/hls/ch1/index.m3u8", now=NOW)
    assert len(live) == 1 + media.LIVE_WINDOW


@pytest.mark.parametrize("leaf", sorted(media.BAD))
def test_broken_manifests_are_refused_with_a_reason(leaf: str) -> None:
    body, _ = media.answer(f"/media/bad/{leaf}")  # type: ignore[misc]
    fmt = sniff(body)
    if fmt is None:
        assert leaf in ("garbage.m3u8", "html.m3u8")  # not a manifest at all: the job says so from sniff
        return
    with pytest.raises(ManifestError):
        expand(fmt, body.decode(), HOST + f"/media/bad/{leaf}")


def test_unknown_media_paths_are_not_found() -> None:
    assert media.answer("/media/hls/vod-9/nothing.txt") is None
    assert media.answer("/obj/1kb/x") is None


def test_the_origin_serves_the_generated_media_over_http() -> None:
    """Through the testbed origin's own aiohttp app on a loopback socket: manifests with their types, live ones
    cacheable for a second, segments and ranges of the byte-range file, 404 for what was not generated."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from prewarm.testbed.origin import Origin

    async def run() -> None:
        async with TestClient(TestServer(Origin().app(), host="127.0.0.1")) as client:
            resp = await client.get("/media/hls/vod-4/master.m3u8")
            assert resp.status == 200 and resp.headers["Content-Type"].startswith(media.HLS_TYPE)
            assert (await resp.read()).startswith(b"#EXTM3U") and "max-age=3600" in resp.headers["Cache-Control"]
            resp = await client.get("/media/dash/vod-4/template.mpd")
            assert resp.headers["Content-Type"].startswith(media.DASH_TYPE)
            resp = await client.get("/media/live/hls/ch1/index.m3u8")
            assert resp.headers["Cache-Control"] == "max-age=1"
            resp = await client.get("/media/hls/vod-4/v400/seg3.m4s")
            assert resp.status == 200 and len(await resp.read()) == media.SEGMENT_BYTES
            resp = await client.get("/media/hls/vod-4/br/all.mp4", headers={"Range": "bytes=700-2747"})
            assert resp.status == 206 and len(await resp.read()) == media.SEGMENT_BYTES
            assert (await client.get("/media/hls/vod-4/nothing.txt")).status == 404

    asyncio.run(run())
