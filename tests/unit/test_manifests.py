"""Manifest expansion on the shapes real services publish: HLS masters with renditions, fMP4, keys and byte ranges;
DASH with SegmentTemplate ($Number$, $Time$ with a SegmentTimeline), SegmentList, SegmentBase, several Periods."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import m3u8
import pytest

from prewarm.core.manifests import (
    Format,
    Kind,
    ManifestError,
    MediaRef,
    expand_dash,
    expand_hls,
    fill_template,
    iso_duration,
    player_order,
    read_media_playlist,
    sniff,
)

BASE = "https://video.example.com/vod/show/"

MASTER = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI="skd://key42",KEYFORMAT="com.apple.streamingkeydelivery"
#EXT-X-SESSION-KEY:METHOD=AES-128,URI="/keys/session.bin"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",LANGUAGE="en",NAME="English",DEFAULT=YES,URI="audio/en/index.m3u8"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",LANGUAGE="fr",NAME="Francais",URI="audio/fr/index.m3u8"
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",LANGUAGE="en",NAME="English",URI="subs/en/index.m3u8"
#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="CC1",INSTREAM-ID="CC1"
#EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=800000,RESOLUTION=640x360,CODECS="avc1.4d401e,mp4a.40.2",AUDIO="aac",SUBTITLES="subs",CLOSED-CAPTIONS="cc"
360p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720,CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aac",SUBTITLES="subs"
720p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=6000000,RESOLUTION=1920x1080,CODECS="avc1.640028,mp4a.40.2",AUDIO="aac",SUBTITLES="subs"
https://cdn2.example.com/vod/show/1080p/index.m3u8
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=150000,RESOLUTION=640x360,CODECS="avc1.4d401e",URI="360p/iframes.m3u8"
#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=700000,RESOLUTION=1920x1080,CODECS="avc1.640028",URI="1080p/iframes.m3u8"
"""

FMP4_MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-MAP:URI="init.mp4"
#EXT-X-KEY:METHOD=AES-128,URI="../keys/k1.bin",IV=0x00000000000000000000000000000001
#EXTINF:4.000,
seg0.m4s
#EXTINF:4.000,
seg1.m4s
#EXT-X-KEY:METHOD=AES-128,URI="../keys/k2.bin"
#EXTINF:4.000,
seg2.m4s
#EXT-X-DISCONTINUITY
#EXT-X-MAP:URI="ad/init.mp4"
#EXT-X-KEY:METHOD=NONE
#EXTINF:3.5,
ad/seg0.m4s
#EXT-X-ENDLIST
"""

BYTERANGE_MEDIA = """#EXTM3U
#EXT-X-VERSION:4
#EXT-X-TARGETDURATION:6
#EXT-X-MAP:URI="main.mp4",BYTERANGE="1200@0"
#EXTINF:6.0,
#EXT-X-BYTERANGE:50000@1200
main.mp4
#EXTINF:6.0,
#EXT-X-BYTERANGE:40000
main.mp4
#EXTINF:6.0,
#EXT-X-BYTERANGE:45000
main.mp4
#EXT-X-ENDLIST
"""

LIVE_MEDIA = """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:1800
#EXTINF:2.0,
live1800.ts
#EXTINF:2.0,
live1801.ts
#EXTINF:2.0,
live1802.ts
"""


def urls(refs: list[MediaRef]) -> list[str]:
    return [r.url for r in refs]


def test_sniff_reads_the_content_not_the_name() -> None:
    assert sniff(b"\xef\xbb\xbf#EXTM3U\n#EXT-X-VERSION:3") is Format.HLS
    assert sniff(b'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011">') is Format.DASH
    assert sniff(b"<mpd:MPD xmlns:mpd='urn:mpeg:dash:schema:mpd:2011'>") is Format.DASH
    assert sniff(b"<html><body>#EXTM3U</body></html>") is None
    assert sniff(b"\x00\x00\x00\x18ftypmp42") is None


def test_master_playlist_lists_every_rendition_and_session_key() -> None:
    out = expand_hls(MASTER, BASE + "master.m3u8")
    assert urls(out.playlists) == [
        BASE + "360p/index.m3u8", BASE + "720p/index.m3u8", "https://cdn2.example.com/vod/show/1080p/index.m3u8",
        BASE + "360p/iframes.m3u8", BASE + "1080p/iframes.m3u8",
        BASE + "audio/en/index.m3u8", BASE + "audio/fr/index.m3u8", BASE + "subs/en/index.m3u8",
    ]
    # A FairPlay skd:// key comes from a key server, not the CDN: named, not warmed. The AES-128 one is warmed,
    # resolved against the host's root.
    assert [(r.url, r.kind) for r in out.refs] == [("https://video.example.com/keys/session.bin", Kind.KEY)]
    assert out.not_http == ["skd://key42"]
    assert out.left_out == [] and not out.live


def test_master_playlist_leaves_out_renditions_above_the_bandwidth_cap() -> None:
    out = expand_hls(MASTER, BASE + "master.m3u8", max_bandwidth=2_500_000)
    assert BASE + "720p/index.m3u8" in urls(out.playlists)
    assert "https://cdn2.example.com/vod/show/1080p/index.m3u8" not in urls(out.playlists)
    assert BASE + "1080p/iframes.m3u8" in urls(out.playlists)  # 700 kb/s: under the cap
    assert out.left_out == ["6000000 b/s https://cdn2.example.com/vod/show/1080p/index.m3u8"]


def test_fmp4_playlist_with_maps_and_keys() -> None:
    out = expand_hls(FMP4_MEDIA, BASE + "720p/index.m3u8", rendition="720p")
    got = [(r.url.removeprefix(BASE), r.kind.value, r.start_s) for r in out.refs]
    assert got == [
        ("keys/k1.bin", "key", 0.0), ("720p/init.mp4", "init", 0.0), ("720p/seg0.m4s", "segment", 0.0),
        ("720p/seg1.m4s", "segment", 4.0),
        ("keys/k2.bin", "key", 8.0), ("720p/seg2.m4s", "segment", 8.0),
        ("720p/ad/init.mp4", "init", 12.0), ("720p/ad/seg0.m4s", "segment", 12.0),
    ]
    assert all(r.manifest == BASE + "720p/index.m3u8" and r.rendition == "720p" for r in out.refs)
    assert not out.live and out.target_duration_s == 4.0


def test_first_seconds_keeps_the_segments_that_start_before_it() -> None:
    out = expand_hls(FMP4_MEDIA, BASE + "720p/index.m3u8", first_seconds=5)
    assert [r.url.removeprefix(BASE) for r in out.refs if r.kind is Kind.SEGMENT] == ["720p/seg0.m4s", "720p/seg1.m4s"]


def test_byterange_segments_are_the_ranges_a_player_asks_for() -> None:
    out = expand_hls(BYTERANGE_MEDIA, BASE + "br/index.m3u8")
    assert [(r.kind.value, r.byte_range, r.range_header()) for r in out.refs] == [
        ("init", (0, 1199), "bytes=0-1199"),
        ("segment", (1200, 51199), "bytes=1200-51199"),
        ("segment", (51200, 91199), "bytes=51200-91199"),  # no offset: after the previous range
        ("segment", (91200, 136199), "bytes=91200-136199"),
    ]
    assert {r.url for r in out.refs} == {BASE + "br/main.mp4"}


def test_live_playlist_is_said_to_be_live() -> None:
    out = expand_hls(LIVE_MEDIA, BASE + "live/index.m3u8")
    assert out.live and out.target_duration_s == 2.0
    assert urls(out.refs) == [BASE + f"live/live{n}.ts" for n in (1800, 1801, 1802)]


@pytest.mark.parametrize(("text", "reason"), [
    ("<html>not found</html>", "does not start with #EXTM3U"),
    ("#EXTM3U\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:100\nx.ts\n", "has no offset"),
    ("#EXTM3U\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:abc@0\nx.ts\n", "malformed BYTERANGE"),
])
def test_malformed_playlists_say_why(text: str, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        expand_hls(text, BASE + "bad.m3u8")


# -- DASH ------------------------------------------------------------------------------------------------

NUMBER_MPD = """<?xml version="1.0" encoding="UTF-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011" type="static"
     mediaPresentationDuration="PT0M9.5S" minBufferTime="PT2S">
  <BaseURL>https://video.example.com/dash/</BaseURL>
  <Period id="p0">
    <AdaptationSet contentType="video" mimeType="video/mp4" segmentAlignment="true">
      <SegmentTemplate timescale="1000" duration="2000" startNumber="1"
                       initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg-$Number%05d$.m4s"/>
      <Representation id="v360" bandwidth="800000" width="640" height="360"/>
      <Representation id="v1080" bandwidth="5000000" width="1920" height="1080"/>
    </AdaptationSet>
    <AdaptationSet contentType="audio" mimeType="audio/mp4" lang="en">
      <BaseURL>audio/</BaseURL>
      <Representation id="a128" bandwidth="128000">
        <SegmentTemplate timescale="48000" duration="96000" initialization="init-$Bandwidth$.mp4"
                         media="chunk-$Bandwidth$-$Number$.m4s"/>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>"""

TIMELINE_MPD = """<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT12S">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate timescale="90000" initialization="$RepresentationID$-init.mp4"
                       media="$RepresentationID$-$Time$.mp4" presentationTimeOffset="900000">
        <SegmentTimeline>
          <S t="900000" d="180000" r="2"/>
          <S d="90000"/>
          <S d="180000" r="-1"/>
        </SegmentTimeline>
      </SegmentTemplate>
      <Representation id="hd" bandwidth="3000000"/>
    </AdaptationSet>
  </Period>
</MPD>"""

BASE_MPD = """<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT60S"
     profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
  <Period duration="PT60S">
    <AdaptationSet mimeType="video/mp4">
      <Representation id="1" bandwidth="1500000">
        <BaseURL>video_1500k.mp4</BaseURL>
        <SegmentBase indexRange="862-1033"><Initialization range="0-861"/></SegmentBase>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>"""

LIST_MULTIPERIOD_MPD = """<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT14S">
  <Period id="ad" duration="PT4S">
    <BaseURL>ads/</BaseURL>
    <AdaptationSet mimeType="video/mp4">
      <Representation id="ad" bandwidth="1000000">
        <SegmentList timescale="1" duration="2">
          <Initialization sourceURL="ad-init.mp4"/>
          <SegmentURL media="ad-1.mp4"/>
          <SegmentURL media="ad-2.mp4"/>
        </SegmentList>
      </Representation>
    </AdaptationSet>
  </Period>
  <Period id="main" start="PT4S">
    <AdaptationSet mimeType="video/mp4">
      <Representation id="main" bandwidth="2000000">
        <BaseURL>main/all.mp4</BaseURL>
        <SegmentList timescale="10" duration="50">
          <Initialization range="0-999"/>
          <SegmentURL mediaRange="1000-49999"/>
          <SegmentURL mediaRange="50000-99999"/>
        </SegmentList>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>"""


def test_template_with_number_width_bandwidth_and_base_urls_at_every_level() -> None:
    out = expand_dash(NUMBER_MPD, "https://origin.example.com/manifests/show.mpd")
    root = "https://video.example.com/dash/"
    video = [root + f"{rep}/seg-{n:05d}.m4s" for rep in ("v360", "v1080") for n in range(1, 6)]
    assert [r.url for r in out.refs if r.kind is Kind.INIT] == [root + "v360/init.mp4", root + "v1080/init.mp4",
                                                                root + "audio/init-128000.mp4"]
    segments = [r.url for r in out.refs if r.kind is Kind.SEGMENT]
    assert segments == video + [root + f"audio/chunk-128000-{n}.m4s" for n in range(1, 6)]  # 9.5 s / 2 s: 5
    assert [r.start_s for r in out.refs if r.kind is Kind.SEGMENT][:5] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert not out.live


def test_bandwidth_cap_and_first_seconds_in_dash() -> None:
    out = expand_dash(NUMBER_MPD, "https://origin.example.com/show.mpd", max_bandwidth=1_000_000, first_seconds=3)
    assert [r.url.rsplit("/", 2)[-2:] for r in out.refs if r.kind is Kind.SEGMENT] == [
        ["v360", "seg-00001.m4s"], ["v360", "seg-00002.m4s"], ["audio", "chunk-128000-1.m4s"],
        ["audio", "chunk-128000-2.m4s"]]
    assert out.left_out == ["video v1080 (5000000 b/s)"]


def test_segment_timeline_with_time_and_repeats_to_the_end() -> None:
    out = expand_dash(TIMELINE_MPD, "https://video.example.com/live/tl.mpd")
    names = [r.url.rsplit("/", 1)[1] for r in out.refs]
    # 3 x 2 s from t=900000, one 1 s, then 2 s repeated to the 12 s end: 7 s, 9 s, 11 s -> 3 more.
    times = [900000, 1080000, 1260000, 1440000, 1530000, 1710000, 1890000]
    assert names == ["hd-init.mp4", *[f"hd-{t}.mp4" for t in times]]
    assert [r.start_s for r in out.refs[1:]] == [0.0, 2.0, 4.0, 6.0, 7.0, 9.0, 11.0]


def test_segment_base_warms_init_and_index_ranges_then_the_file() -> None:
    out = expand_dash(BASE_MPD, "https://video.example.com/od/movie.mpd")
    file = "https://video.example.com/od/video_1500k.mp4"
    assert [(r.url, r.kind.value, r.byte_range) for r in out.refs] == [
        (file, "init", (0, 861)), (file, "init", (862, 1033)), (file, "segment", None)]


def test_segment_list_across_periods() -> None:
    out = expand_dash(LIST_MULTIPERIOD_MPD, "https://video.example.com/m/show.mpd")
    assert [(r.url.removeprefix("https://video.example.com/m/"), r.byte_range, r.start_s) for r in out.refs] == [
        ("ads/ad-init.mp4", None, 0.0), ("ads/ad-1.mp4", None, 0.0), ("ads/ad-2.mp4", None, 2.0),
        ("main/all.mp4", (0, 999), 4.0), ("main/all.mp4", (1000, 49999), 4.0), ("main/all.mp4", (50000, 99999), 9.0),
    ]


def test_live_template_warms_what_is_available_now() -> None:
    mpd = """<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="dynamic" availabilityStartTime="2026-12-07T12:00:00Z"
         timeShiftBufferDepth="PT10S" minimumUpdatePeriod="PT2S"><Period start="PT0S"><AdaptationSet>
         <SegmentTemplate timescale="1" duration="2" startNumber="0" media="s$Number$.m4s"/>
         <Representation id="v" bandwidth="1"/></AdaptationSet></Period></MPD>"""
    out = expand_dash(mpd, "https://live.example.com/ch1.mpd", now=datetime(2026, 12, 7, 12, 1, 0, tzinfo=UTC))
    # 60 s in, 2 s segments: 0..29 complete; the last 10 s of them are 25..29.
    assert out.live and [r.url.rsplit("/", 1)[1] for r in out.refs] == [f"s{n}.m4s" for n in range(25, 30)]


@pytest.mark.parametrize(("text", "reason"), [
    ("<MPD", "malformed MPD"),
    ("<html/>", "not an MPD"),
    ('<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"/>', "no Period"),
    ('<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY a "aaaa">]><MPD>&a;</MPD>', "malformed MPD"),
    ('<MPD><Period><AdaptationSet><SegmentTemplate media="$Number$"/><Representation id="r"/></AdaptationSet>'
     "</Period></MPD>", "neither a SegmentTimeline nor a duration"),
])
def test_malformed_mpds_say_why(text: str, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        expand_dash(text, "https://video.example.com/bad.mpd")


def test_templates_and_durations() -> None:
    assert fill_template("$RepresentationID$/$Number%03d$-$Time$-$Bandwidth$$$.m4s", "v1", 7, 900, 128) == \
        "v1/007-900-128$.m4s"
    with pytest.raises(ManifestError, match=r"\$Time\$"):
        fill_template("$Time$.m4s", "v1", number=1)
    assert iso_duration("PT1H2M3.5S") == 3723.5 and iso_duration("P1DT1S") == 86401 and iso_duration(None) is None
    with pytest.raises(ManifestError):
        iso_duration("1 hour")


def test_player_order_puts_keys_and_inits_first_then_every_renditions_first_seconds() -> None:
    a = expand_hls(FMP4_MEDIA, BASE + "a/index.m3u8", rendition="a").refs
    b = expand_hls(FMP4_MEDIA, BASE + "b/index.m3u8", rendition="b").refs
    ordered = player_order(a + b)
    kinds = [r.kind for r in ordered]
    assert kinds.index(Kind.SEGMENT) == sum(k is not Kind.SEGMENT for k in kinds)  # every key and init first
    segments = [(r.rendition, r.start_s) for r in ordered if r.kind is Kind.SEGMENT]
    assert segments[:2] == [("a", 0.0), ("b", 0.0)] and segments[2:4] == [("a", 4.0), ("b", 4.0)]
    assert len({(r.url, r.byte_range) for r in ordered}) == len(ordered) == len(a) + len(b) - 2  # shared keys once


def _m3u8_view(text: str) -> list[tuple[Any, ...]]:
    playlist = m3u8.loads(text)
    return [(s.uri, float(s.duration or 0.0), s.byterange or None,
             (s.key.method, s.key.uri or "") if s.key is not None and s.key.method else None,
             (s.init_section.uri, s.init_section.byterange or None) if s.init_section is not None else None)
            for s in playlist.segments], playlist.is_endlist, float(playlist.target_duration or 0)


def _reader_view(text: str) -> list[tuple[Any, ...]]:
    media = read_media_playlist(text)
    return [(uri, duration, byterange, (key.method, key.uri) if key is not None else None,
             (init.uri, init.byterange) if init is not None else None)
            for uri, duration, byterange, key, init in media.segments], media.endlist, media.target_duration or 0.0


def _testbed_media_playlists() -> list[str]:
    from prewarm.testbed import media

    paths = ["/media/hls/vod-9/v400/index.m3u8", "/media/hls/vod-9/audio-fr/index.m3u8",
             "/media/hls/vod-9/subs-en/index.m3u8", "/media/hls/vod-9/v400/iframes.m3u8",
             "/media/hls/vod-9/byterange.m3u8", "/media/live/hls/x/index.m3u8"]
    texts = []
    for path in paths:
        answer = media.answer(path)
        assert answer is not None, path
        texts.append(answer[0].decode())
    return texts


@pytest.mark.parametrize("text", [FMP4_MEDIA, BYTERANGE_MEDIA, LIVE_MEDIA, *_testbed_media_playlists()])
def test_the_media_playlist_reader_agrees_with_m3u8(text: str) -> None:
    """The line reader used for speed reads every shape as m3u8 does: segments, durations, ranges, the key and the
    map in effect for each, ENDLIST and the target duration."""
    assert _reader_view(text) == _m3u8_view(text)
    assert _reader_view(text)[0]  # not vacuous: the shape has segments
