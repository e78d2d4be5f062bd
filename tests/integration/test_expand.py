"""``expand``: a manifest in, every playlist, key, init segment and segment a player fetches warm at every POP.

The testbed origin generates the video (``prewarm.testbed.media``) and says, for each shape, the exact set of
(path, byte range) a player fetches: the job must warm exactly that set, every entry a verified Hit at every POP,
and the origin must have sent each once per POP (this testbed has no regional tier).
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from prewarm.client import ApiError, PrewarmClient
from prewarm.engine.expander import expand_urls
from prewarm.net.manifestfetch import ManifestReader
from prewarm.net.resolve import Resolver
from prewarm.testbed import Testbed, media

from .conftest import SPEC_POPS, request_body, running_service, service_settings, wait_final


@pytest.fixture(scope="module")
def service(cdn: Testbed) -> Iterator[PrewarmClient]:
    with running_service(cdn, PREWARM_MAX_EXPANDED_URLS="5000") as (client, _):
        yield client


def sent_by_origin(cdn: Testbed) -> Counter[tuple[str, tuple[int, int] | None, str]]:
    """(path, byte range, POP) -> bodies the origin sent for it."""
    counts: Counter[tuple[str, tuple[int, int] | None, str]] = Counter()
    for row in cdn.origin_sent():
        spec = row["range"].removeprefix("bytes=")
        first, _, last = spec.partition("-")
        counts[(row["path"], (int(first), int(last)) if spec else None, row["edge"])] += row["complete"]
    return counts


def expand_job(client: PrewarmClient, urls: list[str], **fields: Any) -> tuple[str, dict[str, Any]]:
    body = request_body(urls, expand=True, verify=True, tiering="off", timeout=3, **fields)
    req_id = client.prewarm(body)["request_id"]
    return req_id, wait_final(client, req_id, timeout_s=180)


SHAPES = ["/media/hls/vod-5/master.m3u8", "/media/hls/vod-6/byterange.m3u8", "/media/dash/vod-5/template.mpd",
          "/media/dash/vod-6/timeline.mpd", "/media/dash/vod-3/base.mpd"]


@pytest.mark.parametrize("path", SHAPES)
def test_every_shape_warms_exactly_what_a_player_fetches_at_every_pop(service: PrewarmClient, cdn: Testbed,
                                                                      path: str) -> None:
    cdn.reset()
    expected = media.expected(path)
    req_id, progress = expand_job(service, [cdn.url(path)])
    assert progress["status"] == "FINISHED", progress
    assert progress["total_count"] == len(expected) * len(SPEC_POPS)
    assert progress["success_count"] == progress["total_count"]
    assert progress["verified_hit_count"] == progress["total_count"]  # a Hit at every POP afterwards
    # The origin sent each thing a player fetches once per POP, and nothing else.
    assert sent_by_origin(cdn) == Counter({(p, r, pop): 1 for p, r in expected for pop in SPEC_POPS})
    summary = service.summary(req_id)
    expansion = summary["expansion"]
    assert expansion["expanded_count"] == len(expected) - 1 and expansion["left_out_count"] == 0
    assert all(not m["error"] for m in expansion["manifests"]) and not expansion["live"]
    assert summary["failure_manifests"] == {}


def test_first_seconds_and_max_bandwidth_narrow_the_set(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    path = "/media/hls/vod-30/master.m3u8"
    expected = media.expected(path, max_bandwidth=1_300_000, first_seconds=6)
    req_id, progress = expand_job(service, [cdn.url(path)], expand_max_bandwidth=1_300_000, expand_first_seconds=6)
    assert progress["status"] == "FINISHED"
    assert progress["success_count"] == progress["total_count"] == len(expected) * len(SPEC_POPS)
    assert {(p, r) for p, r, _ in sent_by_origin(cdn)} == expected
    assert service.summary(req_id)["expansion"]["renditions_left_out"]  # the 3,500 kb/s rendition


def test_a_failed_segment_names_its_manifest_and_malformed_manifests_fail_their_own_row(
        service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    master = "/media/hls/vod-4/master.m3u8"
    broken = "/media/hls/vod-4/v1200/seg2.m4s"
    assert (broken, None) in media.expected(master)
    cdn.add_fault({"path": broken, "status": 404, "per_edge": False})
    bad = ["/media/bad/garbage.m3u8", "/media/bad/no-offset.m3u8", "/media/bad/bad-xml.mpd"]
    req_id, progress = expand_job(service, [cdn.url(master), *(cdn.url(p) for p in bad)])
    assert progress["status"] == "FINISHED"
    n_player = len(media.expected(master))
    assert progress["total_count"] == (n_player + len(bad)) * len(SPEC_POPS)
    # Each bad manifest: its row through the first POP failed with the reason; its other POPs warmed it as a file.
    # The broken segment: one failure per POP, named after its media playlist.
    assert progress["failure_count"] == len(bad) + len(SPEC_POPS)
    summary = service.summary(req_id)
    playlist = cdn.url("/media/hls/vod-4/v1200/index.m3u8")
    assert summary["failure_manifests"] == {playlist: len(SPEC_POPS)}
    errors = {m["url"]: m["error"] for m in summary["expansion"]["manifests"] if m["error"]}
    assert set(errors) == {cdn.url(p) for p in bad}
    assert "BYTERANGE" in errors[cdn.url("/media/bad/no-offset.m3u8")]
    rows = list(csv.DictReader(io.StringIO(service.report(req_id).decode())))
    by_url = {(r["url"], r["pop"]): r for r in rows}
    for p in bad:
        row = by_url[(cdn.url(p), SPEC_POPS[0])]
        assert row["error_class"] == "manifest" and row["error_message"] and row["manifest"] == ""
    assert {r["manifest"] for r in rows if r["url"] == cdn.url(broken)} == {playlist}
    assert len([r for r in rows if r["url"] == cdn.url(broken)]) == len(SPEC_POPS)


def test_the_job_is_expanding_until_its_manifests_are_read_then_counts_their_tasks(service: PrewarmClient,
                                                                                   cdn: Testbed) -> None:
    cdn.reset()
    path = "/media/dash/vod-3/template.mpd"
    cdn.add_fault({"path": path, "delay_ms": 1500, "per_edge": False})
    req_id = service.prewarm(request_body([cdn.url(path)], expand=True, tiering="off"))["request_id"]
    seen: list[tuple[str, int]] = []
    while (progress := service.progress(req_id))["status"] == "IN_PROGRESS":
        seen.append((progress["phase"], progress["total_count"]))
        time.sleep(0.1)
    assert ("expanding", len(SPEC_POPS)) in seen  # the given URL alone, until its manifest is read
    n = len(media.expected(path))
    assert all(total == n * len(SPEC_POPS) for phase, total in seen if phase in ("probing", "warming"))
    assert progress["status"] == "FINISHED" and progress["success_count"] == n * len(SPEC_POPS)


def test_a_live_playlist_warms_its_window_and_says_so(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    path = "/media/live/hls/launch/index.m3u8"
    req_id, progress = expand_job(service, [cdn.url(path)])
    assert progress["status"] == "FINISHED" and progress["failure_count"] == 0
    assert progress["total_count"] == (1 + media.LIVE_WINDOW) * len(SPEC_POPS)
    expansion = service.summary(req_id)["expansion"]
    assert expansion["live"] and "live" in expansion["message"]


def test_plain_urls_beside_manifests_are_warmed_as_ever(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    plain = "/obj/4kb/beside-a-manifest"
    manifest = "/media/dash/vod-2/template.mpd"
    _, progress = expand_job(service, [cdn.url(plain), cdn.url(manifest)])
    assert progress["status"] == "FINISHED"
    assert progress["success_count"] == progress["verified_hit_count"] == (1 + len(media.expected(manifest))) * 3
    # Read only far enough to see it is no manifest, then warmed by its own task: once per POP at the origin.
    assert {pop: n for (path, _, pop), n in sent_by_origin(cdn).items() if path == plain} == dict.fromkeys(SPEC_POPS, 1)


@pytest.mark.parametrize(("fields", "name"), [({"expand": "yes"}, "expand"),
                                              ({"expand": True, "expand_first_seconds": -1}, "expand_first_seconds"),
                                              ({"expand": True, "expand_max_bandwidth": 0}, "expand_max_bandwidth")])
def test_bad_expand_options_get_a_400_naming_the_field(service: PrewarmClient, cdn: Testbed, fields: dict[str, Any],
                                                       name: str) -> None:
    with pytest.raises(ApiError) as caught:
        service.prewarm(request_body([cdn.url("/media/hls/vod-2/master.m3u8")], **fields))
    assert caught.value.status == 400 and f"field '{name}'" in caught.value.message


def test_the_cap_on_expanded_urls_is_kept_and_said(cdn: Testbed) -> None:
    """The expander alone (no Ray), through a real POP: a 2-hour-style master over the cap keeps the first URLs in
    player order and says how many it left out."""
    settings = service_settings(cdn)
    path = "/media/hls/vod-50/master.m3u8"

    async def main() -> Any:
        resolved = await Resolver(settings.nameservers, settings.dns_timeout_s).pop_addresses(
            cdn.cf_domain, [SPEC_POPS[0]], settings.allow_private_edges)
        reader = ManifestReader(resolved[0].addresses, settings, {})
        try:
            return await expand_urls([cdn.url(path)], reader, time.time() + 30, max_bandwidth=None,
                                     first_seconds=0, cap=150, verify=False)
        finally:
            await reader.close()

    out = asyncio.run(main())
    found = len(media.expected(path)) - 1
    assert out.found == found and out.left_out == found - 150 and len(out.urls) == 151
    summary = out.summary()
    assert summary["left_out_count"] == found - 150
    assert "PREWARM_MAX_EXPANDED_URLS (150)" in summary["message"] and f"last {found - 150:,}" in summary["message"]
    # Player order: the playlists, then keys and init segments, then the first segments of every rendition.
    kinds = [u.rsplit("/", 1)[-1].split(".")[-1] for u in out.urls[1:]]
    assert kinds.index("m4s") > max(i for i, k in enumerate(kinds) if k in ("m3u8", "key", "mp4"))
    first = {u.rsplit("/", 2)[-2] for u in out.urls if u.endswith("seg0.m4s")}
    assert first == {"v400", "v1200", "v3500", "audio-en", "audio-fr"}  # every rendition's first segment is kept
