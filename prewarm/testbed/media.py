"""Video content the testbed origin generates: HLS and DASH, VOD and live, and manifests that are broken on purpose.

Every shape is a pure function of its path (and, live, of the clock), so a test can ask ``expected(path)`` for the
exact set of (path, byte range) a player would fetch and compare it with what a job warmed. Paths::

    /media/hls/<name>/master.m3u8            3 video renditions (400k, 1200k, 3500k), audio groups en and fr,
                                             English subtitles, an I-frame playlist, an AES-128 session key
    /media/hls/<name>/<rendition>/index.m3u8 fMP4: EXT-X-MAP init, AES-128 keys rotating every 4 segments
    /media/hls/<name>/audio-<lang>/index.m3u8, /media/hls/<name>/subs-en/index.m3u8 (WebVTT), .../iframes.m3u8
    /media/hls/<name>/byterange.m3u8         one file, EXT-X-MAP and segments as EXT-X-BYTERANGE
    /media/dash/<name>/template.mpd          SegmentTemplate $RepresentationID$/$Number%05d$ (3 video, 1 audio)
    /media/dash/<name>/timeline.mpd          SegmentTemplate $Time$ with a SegmentTimeline, two Periods
    /media/dash/<name>/base.mpd              SegmentBase with Initialization and indexRange, BaseURL per level
    /media/live/hls/<name>/index.m3u8        a live media playlist: the last 5 segments of 2 s, no ENDLIST
    /media/live/dash/<name>/live.mpd         type="dynamic", SegmentTemplate $Number$ with a 10 s window
    /media/bad/<kind>.m3u8|.mpd              malformed: truncated, garbage, no-offset, html,
                                             bad-xml, no-period

``<name>`` is ``vod-<segments>`` (segments of 2 s per rendition, at most 100,000), e.g. ``vod-6``; anything else is
6 segments. Segments, init segments and keys are deterministic bytes (``SEGMENT_BYTES``, ``INIT_BYTES``, 16 for a
key); a byte-range file holds them back to back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

SEGMENT_S = 2.0
SEGMENT_BYTES = 2048
INIT_BYTES = 700
KEY_BYTES = 16
KEY_EVERY = 4
LIVE_WINDOW = 5
LIVE_EPOCH = 1_796_000_000  # a fixed start for live streams (2026-11-30): segment numbers are time since it
VIDEO = (("v400", 400_000, "640x360"), ("v1200", 1_200_000, "1280x720"), ("v3500", 3_500_000, "1920x1080"))
AUDIO = (("en", "English"), ("fr", "Français"))
DASH_AUDIO = ("a128", 128_000)
HLS_TYPE = "application/vnd.apple.mpegurl"
DASH_TYPE = "application/dash+xml"
MAX_SEGMENTS = 100_000
BAD = {
    "truncated.m3u8": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:100\n",
    "garbage.m3u8": "this is not a playlist\n",
    "no-offset.m3u8": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n#EXT-X-BYTERANGE:100\nseg.ts\n#EXT-X-ENDLIST\n",
    "html.m3u8": "<html><body>Not Found</body></html>\n",
    "bad-xml.mpd": '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><Period>',
    "no-period.mpd": '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"/>',
}
_NAME = re.compile(r"^vod-(\d{1,6})$")

Ref = tuple[str, tuple[int, int] | None]
"""(path, byte range first-last inclusive or None): one thing a player fetches."""


def segments_of(name: str) -> int:
    m = _NAME.match(name)
    return min(int(m.group(1)), MAX_SEGMENTS) if m else 6


def is_live_manifest(path: str) -> bool:
    """A live playlist or MPD changes every segment: edges may keep it a second, not an hour."""
    return path.startswith("/media/live/") and path.endswith((".m3u8", ".mpd"))


def answer(path: str, now: float | None = None) -> tuple[bytes, str] | None:
    """(body, content type) of a /media/ path, or None when the path names nothing here."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] != "media":
        return None
    now = time.time() if now is None else now
    kind = parts[1]
    if kind == "bad" and parts[2] in BAD:
        ctype = HLS_TYPE if parts[2].endswith(".m3u8") else DASH_TYPE
        return BAD[parts[2]].encode(), ctype
    if kind == "live" and len(parts) >= 5:
        base = "/" + "/".join(parts[:4])
        if parts[2] == "hls" and parts[4] == "index.m3u8":
            return _live_hls(now).encode(), HLS_TYPE
        if parts[2] == "dash" and parts[4] == "live.mpd":
            return _live_dash().encode(), DASH_TYPE
        return _media_bytes(path, base)
    if len(parts) < 4 or kind not in ("hls", "dash"):
        return None
    name, rest = parts[2], parts[3:]
    n = segments_of(name)
    base = f"/media/{kind}/{name}"
    builders: dict[str, Callable[[], str]] = {}
    if kind == "hls":
        builders = {"master.m3u8": _hls_master, "byterange.m3u8": lambda: _hls_byterange(n)}
        for rendition in _hls_renditions():
            builders[f"{rendition}/index.m3u8"] = (lambda r=rendition: _hls_media(r, n))
        builders["v400/iframes.m3u8"] = lambda: _hls_iframes(n)
    else:
        builders = {"template.mpd": lambda: _dash_template(n), "timeline.mpd": lambda: _dash_timeline(n),
                    "base.mpd": lambda: _dash_base(n)}
    built = builders.get("/".join(rest))
    if built is not None:
        return built().encode(), HLS_TYPE if rest[-1].endswith(".m3u8") else DASH_TYPE
    return _media_bytes(path, base, n)


def _media_bytes(path: str, base: str, n: int = 0) -> tuple[bytes, str] | None:
    """A segment, init segment, key or byte-range file: deterministic bytes of its kind's size."""
    leaf = path.rsplit("/", 1)[-1]
    if leaf.endswith(".key"):
        return _fill(path, KEY_BYTES), "application/octet-stream"
    if leaf == "all.mp4":  # the byte-range file: the init segment, then every segment
        return _fill(path, INIT_BYTES + n * SEGMENT_BYTES), "video/mp4"
    if leaf.startswith("init"):
        return _fill(path, INIT_BYTES), "video/mp4"
    if leaf.endswith(".vtt"):
        return _fill(path, 256), "text/vtt"
    if leaf.endswith((".m4s", ".mp4", ".ts", ".aac")):
        return _fill(path, SEGMENT_BYTES), "video/mp4"
    return None


def _fill(path: str, size: int) -> bytes:
    seed = path.encode()
    return (seed * (size // max(1, len(seed)) + 1))[:size]


# -- HLS ------------------------------------------------------------------------------------------------


def _hls_renditions() -> list[str]:
    return [v[0] for v in VIDEO] + [f"audio-{lang}" for lang, _ in AUDIO] + ["subs-en"]


def _hls_master() -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS",
             '#EXT-X-SESSION-KEY:METHOD=AES-128,URI="keys/session.key"']
    for i, (lang, label) in enumerate(AUDIO):
        default = "YES" if i == 0 else "NO"
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",LANGUAGE="{lang}",NAME="{label}",DEFAULT={default},'
                     f'URI="audio-{lang}/index.m3u8"')
    lines.append('#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",LANGUAGE="en",NAME="English",URI="subs-en/index.m3u8"')
    for rendition, bandwidth, resolution in VIDEO:
        lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={resolution},CODECS="avc1.640028,mp4a.40.2",'
                  'AUDIO="aac",SUBTITLES="subs"', f"{rendition}/index.m3u8"]
    lines.append('#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=100000,RESOLUTION=640x360,URI="v400/iframes.m3u8"')
    return "\n".join(lines) + "\n"


def _hls_media(rendition: str, n: int) -> str:
    subtitles = rendition.startswith("subs")
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{int(SEGMENT_S)}", "#EXT-X-PLAYLIST-TYPE:VOD"]
    if not subtitles:
        lines.append('#EXT-X-MAP:URI="init.mp4"')
    for i in range(n):
        if not subtitles and i % KEY_EVERY == 0:
            lines.append(f'#EXT-X-KEY:METHOD=AES-128,URI="../keys/{rendition}-{i // KEY_EVERY}.key"')
        lines += [f"#EXTINF:{SEGMENT_S:.3f},", f"seg{i}.vtt" if subtitles else f"seg{i}.m4s"]
    return "\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n"


def _hls_iframes(n: int) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{int(SEGMENT_S)}", "#EXT-X-I-FRAMES-ONLY",
             '#EXT-X-MAP:URI="init.mp4"']
    for i in range(n):
        lines += [f"#EXTINF:{SEGMENT_S:.3f},", "#EXT-X-BYTERANGE:512@100", f"seg{i}.m4s"]
    return "\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n"


def _hls_byterange(n: int) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:4", f"#EXT-X-TARGETDURATION:{int(SEGMENT_S)}",
             f'#EXT-X-MAP:URI="br/all.mp4",BYTERANGE="{INIT_BYTES}@0"']
    for i in range(n):
        # The first with an offset; the others follow on from the previous range, as packagers write them.
        spec = f"{SEGMENT_BYTES}@{INIT_BYTES}" if i == 0 else str(SEGMENT_BYTES)
        lines += [f"#EXTINF:{SEGMENT_S:.3f},", f"#EXT-X-BYTERANGE:{spec}", "br/all.mp4"]
    return "\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n"


def _live_hls(now: float) -> str:
    last = int((now - LIVE_EPOCH) // SEGMENT_S) - 1
    first = max(0, last - LIVE_WINDOW + 1)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{int(SEGMENT_S)}", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    for i in range(first, last + 1):
        lines += [f"#EXTINF:{SEGMENT_S:.3f},", f"live{i}.ts"]
    return "\n".join(lines) + "\n"


def live_hls_segments(now: float) -> list[int]:
    """The segment numbers the live playlist lists at ``now``."""
    last = int((now - LIVE_EPOCH) // SEGMENT_S) - 1
    return list(range(max(0, last - LIVE_WINDOW + 1), last + 1))


# -- DASH -----------------------------------------------------------------------------------------------

_MPD_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" minBufferTime="PT2S"'


def _duration(seconds: float) -> str:
    return f"PT{seconds:g}S"


def _dash_template(n: int) -> str:
    reps = "\n".join(f'      <Representation id="{rid}" bandwidth="{bw}" width="{res.split("x")[0]}" '
                     f'height="{res.split("x")[1]}"/>' for rid, bw, res in VIDEO)
    return f"""{_MPD_HEAD} type="static" profiles="urn:mpeg:dash:profile:isoff-live:2011"
     mediaPresentationDuration="{_duration(n * SEGMENT_S)}">
  <Period id="p0">
    <AdaptationSet contentType="video" mimeType="video/mp4">
      <SegmentTemplate timescale="1000" duration="{int(SEGMENT_S * 1000)}" startNumber="1"
                       initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/$Number%05d$.m4s"/>
{reps}
    </AdaptationSet>
    <AdaptationSet contentType="audio" mimeType="audio/mp4" lang="en">
      <BaseURL>audio/</BaseURL>
      <Representation id="{DASH_AUDIO[0]}" bandwidth="{DASH_AUDIO[1]}">
        <SegmentTemplate timescale="48000" duration="{int(SEGMENT_S * 48000)}" startNumber="1"
                         initialization="init-$Bandwidth$.mp4" media="$Bandwidth$-$Number$.m4s"/>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"""


def _timeline_split(n: int) -> tuple[int, int]:
    first = max(1, n // 2)
    return first, max(1, n - first)


def _dash_timeline(n: int) -> str:
    first, second = _timeline_split(n)
    scale = 90000
    d = int(SEGMENT_S * scale)

    def period(pid: str, start_s: float, count: int, offset: int) -> str:
        return f"""  <Period id="{pid}" start="{_duration(start_s)}">
    <BaseURL>{pid}/</BaseURL>
    <AdaptationSet contentType="video" mimeType="video/mp4">
      <SegmentTemplate timescale="{scale}" initialization="$RepresentationID$-init.mp4"
                       media="$RepresentationID$-$Time$.m4s" presentationTimeOffset="{offset}">
        <SegmentTimeline><S t="{offset}" d="{d}" r="{count - 1}"/></SegmentTimeline>
      </SegmentTemplate>
      <Representation id="hd" bandwidth="3000000"/>
    </AdaptationSet>
  </Period>
"""
    return (f'{_MPD_HEAD} type="static" mediaPresentationDuration="{_duration((first + second) * SEGMENT_S)}">\n'
            + period("one", 0.0, first, 0) + period("two", first * SEGMENT_S, second, 900000) + "</MPD>\n")


def _dash_base(n: int) -> str:
    size = INIT_BYTES + n * SEGMENT_BYTES
    return f"""{_MPD_HEAD} type="static" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"
     mediaPresentationDuration="{_duration(n * SEGMENT_S)}">
  <BaseURL>ondemand/</BaseURL>
  <Period>
    <AdaptationSet contentType="video" mimeType="video/mp4">
      <BaseURL>video/</BaseURL>
      <Representation id="1" bandwidth="1500000">
        <BaseURL>all.mp4</BaseURL>
        <SegmentBase indexRange="{INIT_BYTES - 200}-{INIT_BYTES - 1}"><Initialization range="0-{INIT_BYTES - 201}"/>
        </SegmentBase>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
<!-- {size} bytes -->
"""


def _live_dash() -> str:
    start = datetime.fromtimestamp(LIVE_EPOCH, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"""{_MPD_HEAD} type="dynamic" availabilityStartTime="{start}" timeShiftBufferDepth="PT10S"
     minimumUpdatePeriod="PT2S" profiles="urn:mpeg:dash:profile:isoff-live:2011">
  <Period id="live" start="PT0S">
    <AdaptationSet contentType="video" mimeType="video/mp4">
      <SegmentTemplate timescale="1" duration="{int(SEGMENT_S)}" startNumber="0" initialization="init.mp4"
                       media="s$Number$.m4s"/>
      <Representation id="v" bandwidth="1000000"/>
    </AdaptationSet>
  </Period>
</MPD>
"""


# -- what a player fetches ------------------------------------------------------------------------------


def expected(path: str, max_bandwidth: int | None = None, first_seconds: float = 0.0,
             now: float | None = None) -> set[Ref]:
    """Every (path, range) a player of ``path`` fetches, manifests included, as generated here (VOD and live; a
    live stream's whole window, whatever ``first_seconds`` says)."""
    parts = [p for p in path.split("/") if p]
    now = time.time() if now is None else now
    keep = (lambda i: i * SEGMENT_S < first_seconds) if first_seconds else (lambda i: True)
    if parts[1] == "live":
        base = "/" + "/".join(parts[:4])
        if parts[2] == "hls":
            return {(path, None)} | {(f"{base}/live{i}.ts", None) for i in live_hls_segments(now)}
        elapsed = now - LIVE_EPOCH
        last = int(elapsed // SEGMENT_S) - 1
        first = max(0, last - int(10 // SEGMENT_S) + 1)
        return {(path, None), (f"{base}/init.mp4", None)} | {(f"{base}/s{i}.m4s", None) for i in range(first, last + 1)}
    kind, name, leaf = parts[1], parts[2], "/".join(parts[3:])
    n = segments_of(name)
    base = f"/media/{kind}/{name}"
    out: set[Ref] = {(path, None)}
    if kind == "hls" and leaf == "master.m3u8":
        out.add((f"{base}/keys/session.key", None))
        for rendition, bandwidth, _ in VIDEO:
            if max_bandwidth is None or bandwidth <= max_bandwidth:
                out |= expected(f"{base}/{rendition}/index.m3u8", max_bandwidth, first_seconds, now)
        out |= expected(f"{base}/v400/iframes.m3u8", max_bandwidth, first_seconds, now)
        for lang, _ in AUDIO:
            out |= expected(f"{base}/audio-{lang}/index.m3u8", max_bandwidth, first_seconds, now)
        out |= expected(f"{base}/subs-en/index.m3u8", max_bandwidth, first_seconds, now)
        return out
    if kind == "hls" and leaf.endswith("/index.m3u8"):
        rendition = leaf.split("/")[0]
        kept = [i for i in range(n) if keep(i)]
        if rendition.startswith("subs"):
            return out | {(f"{base}/{rendition}/seg{i}.vtt", None) for i in kept}
        out.add((f"{base}/{rendition}/init.mp4", None))
        out |= {(f"{base}/keys/{rendition}-{i // KEY_EVERY}.key", None) for i in kept}
        return out | {(f"{base}/{rendition}/seg{i}.m4s", None) for i in kept}
    if kind == "hls" and leaf == "v400/iframes.m3u8":
        kept = [i for i in range(n) if keep(i)]
        return out | {(f"{base}/v400/init.mp4", None)} | {(f"{base}/v400/seg{i}.m4s", (100, 611)) for i in kept}
    if kind == "hls" and leaf == "byterange.m3u8":
        whole = f"{base}/br/all.mp4"
        out.add((whole, (0, INIT_BYTES - 1)))
        for i in range(n):
            if keep(i):
                start = INIT_BYTES + i * SEGMENT_BYTES
                out.add((whole, (start, start + SEGMENT_BYTES - 1)))
        return out
    if kind == "dash" and leaf == "template.mpd":
        for rid, bandwidth, _ in VIDEO:
            if max_bandwidth is None or bandwidth <= max_bandwidth:
                out.add((f"{base}/{rid}/init.mp4", None))
                out |= {(f"{base}/{rid}/{i + 1:05d}.m4s", None) for i in range(n) if keep(i)}
        rid, bandwidth = DASH_AUDIO
        if max_bandwidth is None or bandwidth <= max_bandwidth:
            out.add((f"{base}/audio/init-{bandwidth}.mp4", None))
            out |= {(f"{base}/audio/{bandwidth}-{i + 1}.m4s", None) for i in range(n) if keep(i)}
        return out
    if kind == "dash" and leaf == "timeline.mpd":
        if max_bandwidth is not None and max_bandwidth < 3_000_000:
            return out
        first, second = _timeline_split(n)
        d = int(SEGMENT_S * 90000)
        out |= {(f"{base}/one/hd-init.mp4", None), (f"{base}/two/hd-init.mp4", None)}
        out |= {(f"{base}/one/hd-{i * d}.m4s", None) for i in range(first) if keep(i)}
        out |= {(f"{base}/two/hd-{900000 + i * d}.m4s", None) for i in range(second) if keep(first + i)}
        return out
    if kind == "dash" and leaf == "base.mpd":
        if max_bandwidth is not None and max_bandwidth < 1_500_000:
            return out
        whole = f"{base}/ondemand/video/all.mp4"
        return out | {(whole, (0, INIT_BYTES - 201)), (whole, (INIT_BYTES - 200, INIT_BYTES - 1)), (whole, None)}
    raise ValueError(f"no generated content at {path}")
