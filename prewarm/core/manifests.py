"""What a player fetches from an HLS playlist or a DASH MPD: its child playlists, init segments, keys and segments.

Pure: text in, references out; fetching the manifests is the engine's. HLS is parsed by ``m3u8`` (the library
players' tooling uses); DASH by the standard XML parser through ``defusedxml`` (an MPD comes from the customer's
origin: no entity expansion), because SegmentTemplate, SegmentBase and BaseURL inherit down four levels and the
element tree says that directly. Relative URIs resolve against the manifest's own URL (RFC 3986), as players do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from urllib.parse import urljoin
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeXML
import m3u8

MPD_NS = "urn:mpeg:dash:schema:mpd:2011"
MAX_SEGMENTS_PER_RENDITION = 1_000_000
"""A template whose duration would yield more segments than this is refused: a typo, not a video."""


class Kind(StrEnum):
    """What a reference is to a player; the order players need them in is ``PRIORITY``."""

    PLAYLIST = "playlist"
    KEY = "key"
    INIT = "init"
    SEGMENT = "segment"


PRIORITY = {Kind.PLAYLIST: 0, Kind.KEY: 1, Kind.INIT: 1, Kind.SEGMENT: 2}


class Format(StrEnum):
    HLS = "hls"
    DASH = "dash"


class ManifestError(ValueError):
    """A manifest that cannot be read as what it claims to be; the message says where."""


@dataclass(frozen=True, slots=True)
class MediaRef:
    """One thing to warm: a URL, and the bytes of it a player asks for (``first``-``last`` inclusive, as in Range)."""

    url: str
    kind: Kind
    manifest: str
    rendition: str = ""
    start_s: float = 0.0
    byte_range: tuple[int, int] | None = None
    bandwidth: int | None = None

    def range_header(self) -> str | None:
        return None if self.byte_range is None else f"bytes={self.byte_range[0]}-{self.byte_range[1]}"


@dataclass
class Expansion:
    """What one manifest held: media to warm, child playlists to read next, and whether it is live."""

    refs: list[MediaRef] = field(default_factory=list)
    playlists: list[MediaRef] = field(default_factory=list)
    live: bool = False
    target_duration_s: float | None = None
    left_out: list[str] = field(default_factory=list)  # renditions above the bandwidth cap, by name
    not_http: list[str] = field(default_factory=list)  # URIs a CDN does not serve (skd:// keys): not warmed
    _seen: set[tuple[str, tuple[int, int] | None]] = field(default_factory=set, repr=False)

    def add(self, ref: MediaRef) -> None:
        """Keep ``ref`` once (a key or init segment shared by segments is fetched once); name a non-HTTP URI."""
        if not ref.url.lower().startswith(("http://", "https://")):
            if ref.url not in self.not_http:
                self.not_http.append(ref.url)
        elif (ref.url, ref.byte_range) not in self._seen:
            self._seen.add((ref.url, ref.byte_range))
            self.refs.append(ref)


def sniff(body: bytes) -> Format | None:
    """HLS or DASH by what the answer holds (a type header or a suffix can say either and be wrong)."""
    head = body[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"#EXTM3U"):
        return Format.HLS
    if re.search(rb"<(?:\w+:)?MPD[\s>]", head):
        return Format.DASH
    return None


def expand(fmt: Format, text: str, url: str, max_bandwidth: int | None = None, first_seconds: float = 0.0,
           now: datetime | None = None) -> Expansion:
    """The references of one manifest. ``first_seconds`` > 0 keeps the segments that start before it."""
    if fmt is Format.HLS:
        return expand_hls(text, url, max_bandwidth, first_seconds)
    return expand_dash(text, url, max_bandwidth, first_seconds, now or datetime.now(UTC))


# -- HLS ------------------------------------------------------------------------------------------------


def expand_hls(text: str, url: str, max_bandwidth: int | None = None, first_seconds: float = 0.0,
               rendition: str = "") -> Expansion:
    """A master playlist through ``m3u8``; a media playlist through ``read_media_playlist`` (see there why)."""
    if not text.lstrip("\ufeff \t\r\n").startswith("#EXTM3U"):
        raise ManifestError("not an HLS playlist: it does not start with #EXTM3U")
    out = Expansion()
    if _MASTER_TAGS.search(text):
        try:
            playlist = m3u8.loads(text, uri=url)
        except Exception as exc:  # the parser raises several types for malformed tags
            raise ManifestError(f"malformed HLS playlist: {exc}") from None
        _hls_master(playlist, url, max_bandwidth, out)
        return out
    media = read_media_playlist(text)
    out.live = not media.endlist
    out.target_duration_s = media.target_duration
    if out.live:
        first_seconds = 0.0  # a live window is where viewers start: all of it
    join = _joiner(url)
    start = 0.0
    next_offset: dict[str, int] = {}  # URI -> where its next BYTERANGE without an offset starts
    key_seen: HlsKey | None = None
    map_seen: HlsMap | None = None
    for seg_uri, duration, seg_byterange, key, init in media.segments:
        if first_seconds and start >= first_seconds:
            break
        if key is not key_seen:
            key_seen = key
            if key is not None and key.uri and key.method.upper() != "NONE":
                out.add(MediaRef(join(key.uri), Kind.KEY, url, rendition, start))
        if init is not map_seen:
            map_seen = init
            if init is not None and init.uri:
                init_url = join(init.uri)
                out.add(MediaRef(init_url, Kind.INIT, url, rendition, start, _hls_range(init.byterange, init_url, {})))
        seg_url = join(seg_uri)
        seg_range = _hls_range(seg_byterange, seg_url, next_offset)
        out.add(MediaRef(seg_url, Kind.SEGMENT, url, rendition, start, seg_range))
        start += duration
    return out


_MASTER_TAGS = re.compile(r"^#EXT-X-(?:STREAM-INF|I-FRAME-STREAM-INF|MEDIA|SESSION-KEY|SESSION-DATA):", re.MULTILINE)
_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


@dataclass(frozen=True, slots=True)
class HlsKey:
    method: str
    uri: str


@dataclass(frozen=True, slots=True)
class HlsMap:
    uri: str
    byterange: str | None


@dataclass
class MediaPlaylist:
    """What a player reads of a media playlist: each segment with the key and the map in effect for it."""

    segments: list[tuple[str, float, str | None, HlsKey | None, HlsMap | None]] = field(default_factory=list)
    endlist: bool = False
    target_duration: float | None = None


def _attributes(text: str) -> dict[str, str]:
    return {name: value[1:-1] if value.startswith('"') else value for name, value in _ATTRIBUTE.findall(text)}


def read_media_playlist(text: str) -> MediaPlaylist:
    """A media playlist's segments, line by line (RFC 8216 4.3.2; tags a CDN warm-up needs nothing from are
    skipped, as players skip unknown tags). Not ``m3u8``: it alone takes over the second a 2-hour VOD may take to
    expand (BENCHMARKS.md); ``test_manifests`` checks the two agree on every shape."""
    out = MediaPlaylist()
    key: HlsKey | None = None
    init: HlsMap | None = None
    duration: float | None = None
    byterange: str | None = None
    append = out.segments.append
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line[0] != "#":
            append((line, duration or 0.0, byterange, key, init))
            duration = byterange = None
        elif line.startswith("#EXTINF:"):
            value = line[8:].split(",", 1)[0].strip()
            try:
                duration = float(value)
            except ValueError:
                raise ManifestError(f"malformed EXTINF {value!r}") from None
        elif line.startswith("#EXT-X-BYTERANGE:"):
            byterange = line[17:].strip()
        elif line.startswith("#EXT-X-KEY:"):
            attrs = _attributes(line[11:])
            key = HlsKey(attrs.get("METHOD", "NONE"), attrs.get("URI", ""))
        elif line.startswith("#EXT-X-MAP:"):
            attrs = _attributes(line[11:])
            init = HlsMap(attrs.get("URI", ""), attrs.get("BYTERANGE"))
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            try:
                out.target_duration = float(line[22:].strip())
            except ValueError:
                raise ManifestError(f"malformed EXT-X-TARGETDURATION {line[22:]!r}") from None
        elif line == "#EXT-X-ENDLIST":
            out.endlist = True
    if duration is not None or byterange is not None:
        start = sum(d for _, d, _, _, _ in out.segments)
        raise ManifestError(f"a segment at {start:g} s has no URI")
    return out


def _joiner(base: str) -> Callable[[str], str]:
    """``urljoin(base, uri)`` for a manifest's URIs, with the common case (a plain relative name such as
    ``seg12.m4s``: no scheme, no leading ``/``, ``.`` or ``?``, no dot segments) as a concatenation onto the base's
    directory, which is what urljoin returns for it at a twentieth of the cost."""
    directory = urljoin(base, ".")

    def join(uri: str) -> str:
        if uri and uri[0] not in "/.?#" and ":" not in uri and "/." not in uri:
            return directory + uri
        return urljoin(base, uri)

    return join


def _hls_master(playlist: m3u8.M3U8, url: str, max_bandwidth: int | None, out: Expansion) -> None:
    for key in playlist.session_keys:
        if key is not None and key.uri and (key.method or "NONE").upper() != "NONE":
            out.add(MediaRef(urljoin(url, key.uri), Kind.KEY, url))
    groups_used: set[str] = set()
    streams = [(v.uri, v.stream_info, "") for v in playlist.playlists]
    streams += [(i.uri, i.iframe_stream_info, "i-frames ") for i in playlist.iframe_playlists]
    for uri, info, label in streams:
        name = f"{label}{info.bandwidth or '?'} b/s {uri}"
        if _above(info.bandwidth, max_bandwidth):
            out.left_out.append(name)
            continue
        groups_used.update(g for g in (getattr(info, "audio", None), getattr(info, "subtitles", None),
                                       getattr(info, "video", None)) if g)
        out.playlists.append(MediaRef(urljoin(url, uri), Kind.PLAYLIST, url, name, bandwidth=info.bandwidth))
    for media in playlist.media:
        # A rendition group no kept variant refers to is left out with the variants that did.
        if media.uri and (not groups_used or media.group_id in groups_used or not playlist.playlists):
            name = f"{(media.type or '').lower()} {media.group_id}/{media.name}"
            out.playlists.append(MediaRef(urljoin(url, media.uri), Kind.PLAYLIST, url, name))
    unique: dict[str, MediaRef] = {}
    for ref in out.playlists:
        unique.setdefault(ref.url, ref)
    out.playlists = list(unique.values())


def _above(bandwidth: int | None, cap: int | None) -> bool:
    """Whether a rendition is left out by ``expand_max_bandwidth`` (one that declares no bandwidth stays)."""
    return cap is not None and bandwidth is not None and bandwidth > cap


def _hls_range(spec: str | None, url: str, next_offset: dict[str, int]) -> tuple[int, int] | None:
    """``EXT-X-BYTERANGE:<n>[@<o>]`` as (first, last); without ``@o`` it follows the previous range of ``url``."""
    if not spec:
        return None
    length_text, _, offset_text = str(spec).partition("@")
    try:
        length = int(length_text)
        offset = int(offset_text) if offset_text else next_offset.get(url)
    except ValueError:
        raise ManifestError(f"malformed BYTERANGE {spec!r}") from None
    if offset is None:
        raise ManifestError(f"BYTERANGE {spec!r} of {url} has no offset and follows no earlier range")
    if length <= 0 or offset < 0:
        raise ManifestError(f"BYTERANGE {spec!r} is empty or negative")
    next_offset[url] = offset + length
    return offset, offset + length - 1


# -- DASH -----------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_TEMPLATE_VAR = re.compile(r"\$(RepresentationID|Number|Time|Bandwidth|)(%0(\d+)[dxX])?\$")


def iso_duration(text: str | None) -> float | None:
    """``PT1H2M3.5S`` (the xs:duration forms MPDs use) in seconds."""
    if not text:
        return None
    m = _DURATION.match(text.strip())
    if m is None or not any(m.groups()):
        raise ManifestError(f"malformed duration {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def fill_template(template: str, rep_id: str, number: int | None = None, time: int | None = None,
                  bandwidth: int | None = None) -> str:
    """A SegmentTemplate ``media``/``initialization`` string with its identifiers replaced (ISO 23009-1 5.3.9.4)."""
    values = {"RepresentationID": rep_id, "Number": number, "Time": time, "Bandwidth": bandwidth}

    def one(m: re.Match[str]) -> str:
        name, fmt = m.group(1), m.group(2)
        if name == "":
            return "$"
        value = values[name]
        if value is None:
            raise ManifestError(f"template {template!r} uses ${name}$, which this representation has no value for")
        if fmt and name != "RepresentationID":
            return format(int(value), fmt[1:])
        return str(value)

    return _TEMPLATE_VAR.sub(one, template)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: Element, name: str) -> list[Element]:
    return [c for c in elem if _local(c.tag) == name]


def _child(elem: Element | None, name: str) -> Element | None:
    if elem is None:
        return None
    found = _children(elem, name)
    return found[0] if found else None


def _base(url: str, elem: Element) -> str:
    """The BaseURL of ``elem`` resolved against ``url`` (the first one: players start with it)."""
    base = _child(elem, "BaseURL")
    return urljoin(url, base.text.strip()) if base is not None and base.text and base.text.strip() else url


def _lowest(levels: Iterable[Element], *path: str) -> Element | None:
    """The element at ``path`` under the lowest of ``levels`` that has one (a Representation's over its set's)."""
    for level in reversed(list(levels)):
        found: Element | None = level
        for name in path:
            found = _child(found, name)
        if found is not None:
            return found
    return None


def _merged(levels: Iterable[Element | None], name: str) -> dict[str, str] | None:
    """The attributes of ``name`` (SegmentTemplate, SegmentBase...) inherited down the levels, lowest winning."""
    merged: dict[str, str] | None = None
    for level in levels:
        found = _child(level, name)
        if found is not None:
            merged = {**(merged or {}), **found.attrib}
    return merged


def _range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    first, _, last = text.partition("-")
    try:
        pair = int(first), int(last)
    except ValueError:
        raise ManifestError(f"malformed byte range {text!r}") from None
    if pair[0] < 0 or pair[1] < pair[0]:
        raise ManifestError(f"byte range {text!r} is empty or reversed")
    return pair


def expand_dash(text: str, url: str, max_bandwidth: int | None = None, first_seconds: float = 0.0,
                now: datetime | None = None) -> Expansion:
    try:
        root = SafeXML.fromstring(text.encode() if isinstance(text, str) else text)
    except Exception as exc:  # ParseError, or defusedxml refusing entities
        raise ManifestError(f"malformed MPD: {exc}") from None
    if _local(root.tag) != "MPD":
        raise ManifestError(f"not an MPD: the root element is {_local(root.tag)!r}")
    out = Expansion(live=root.get("type", "static") == "dynamic")
    total = iso_duration(root.get("mediaPresentationDuration"))
    mpd_base = _base(url, root)
    periods = _children(root, "Period")
    if not periods:
        raise ManifestError("the MPD has no Period")
    period_start = 0.0
    for index, period in enumerate(periods):
        period_start = iso_duration(period.get("start")) if period.get("start") else period_start
        duration = iso_duration(period.get("duration"))
        if duration is None:
            following = periods[index + 1].get("start") if index + 1 < len(periods) else None
            if following:
                duration = (iso_duration(following) or 0.0) - period_start
            elif total is not None:
                duration = total - period_start
        _dash_period(period, url, _base(mpd_base, period), period_start, duration, max_bandwidth, first_seconds,
                     root, now, out)
        period_start += duration or 0.0
    return out


def _dash_period(period: Element, url: str, base: str, start: float, duration: float | None,
                 max_bandwidth: int | None, first_seconds: float, root: Element, now: datetime | None,
                 out: Expansion) -> None:
    for aset in _children(period, "AdaptationSet"):
        aset_base = _base(base, aset)
        for rep in _children(aset, "Representation"):
            rep_id = rep.get("id", "")
            bandwidth = int(rep.get("bandwidth")) if rep.get("bandwidth", "").isdigit() else None
            name = f"{aset.get('contentType') or aset.get('mimeType') or rep.get('mimeType') or 'media'} {rep_id}"
            if _above(bandwidth, max_bandwidth):
                out.left_out.append(f"{name} ({bandwidth} b/s)")
                continue
            rep_base = _base(aset_base, rep)
            ref = MediaRef(rep_base, Kind.SEGMENT, url, name, start, bandwidth=bandwidth)
            levels = (period, aset, rep)
            template = _merged(levels, "SegmentTemplate")
            if template is not None:
                timeline = _lowest(levels, "SegmentTemplate", "SegmentTimeline")
                out.refs.extend(_from_template(template, timeline, ref, rep_id, duration, first_seconds, root, now))
                continue
            seg_list = _lowest(levels, "SegmentList")
            if seg_list is not None:
                out.refs.extend(_from_list(seg_list, ref, first_seconds))
                continue
            seg_base = _merged(levels, "SegmentBase")
            init = _lowest(levels, "SegmentBase", "Initialization")
            if seg_base is not None or init is not None:
                out.refs.extend(_from_base(seg_base or {}, init, ref))
            else:  # a single file per representation: the player reads it whole
                out.refs.append(ref)


def _from_template(attrs: dict[str, str], timeline: Element | None, ref: MediaRef, rep_id: str,
                   period_s: float | None, first_seconds: float, root: Element, now: datetime | None) -> list[MediaRef]:
    refs: list[MediaRef] = []
    timescale = int(attrs.get("timescale", "1"))
    number = int(attrs.get("startNumber", "1"))
    if attrs.get("initialization"):
        refs.append(replace(ref, url=urljoin(ref.url, fill_template(attrs["initialization"], rep_id,
                                                                    bandwidth=ref.bandwidth)), kind=Kind.INIT))
    media = attrs.get("media")
    if not media:
        return refs
    offset = int(attrs.get("presentationTimeOffset", "0"))

    def segment(num: int, time: int) -> MediaRef:
        return replace(ref, url=urljoin(ref.url, fill_template(media, rep_id, num, time, ref.bandwidth)),
                       start_s=ref.start_s + (time - offset) / timescale)

    if timeline is not None:
        time = None
        for s in _children(timeline, "S"):
            time = int(s.get("t")) if s.get("t") is not None else (time or offset)
            d = int(s.get("d", "0"))
            if d <= 0:
                raise ManifestError(f"SegmentTimeline entry without a positive d in representation {rep_id!r}")
            repeat = int(s.get("r", "0"))
            if repeat < 0:  # to the end of the period (or of what is there, live)
                end = offset + (period_s or 0.0) * timescale
                repeat = max(0, math.ceil((end - time) / d) - 1)
            for _ in range(repeat + 1):
                if first_seconds and ref.start_s + (time - offset) / timescale >= first_seconds:
                    return refs
                refs.append(segment(number, time))
                number += 1
                time += d
        return refs
    seg_duration = int(attrs.get("duration", "0"))
    if seg_duration <= 0:
        raise ManifestError(f"SegmentTemplate of {rep_id!r} has neither a SegmentTimeline nor a duration")
    length_s = seg_duration / timescale
    live = root.get("type") == "dynamic" and now is not None and bool(root.get("availabilityStartTime"))
    if live:
        # Live: the segments available now, within the time-shift window (all of them: the window is the start).
        started = datetime.fromisoformat(root.get("availabilityStartTime", "").replace("Z", "+00:00"))
        elapsed = (now - started).total_seconds() - ref.start_s
        window = iso_duration(root.get("timeShiftBufferDepth")) or elapsed
        last = int(elapsed // length_s) - 1
        first = max(0, last - int(window // length_s) + 1)
        indices: Iterable[int] = range(first, last + 1)
    else:
        if period_s is None:
            raise ManifestError(f"SegmentTemplate of {rep_id!r} has a duration but the period's length is unknown")
        count = math.ceil(period_s / length_s - 1e-9)
        if count > MAX_SEGMENTS_PER_RENDITION:
            raise ManifestError(f"representation {rep_id!r} would have {count:,} segments")
        indices = range(count)
    for i in indices:
        if first_seconds and not live and ref.start_s + i * length_s >= first_seconds:
            break
        refs.append(segment(number + i, offset + i * seg_duration))
    return refs


def _from_list(seg_list: Element, ref: MediaRef, first_seconds: float) -> list[MediaRef]:
    refs: list[MediaRef] = []
    init = _child(seg_list, "Initialization")
    if init is not None:
        refs.append(replace(ref, url=urljoin(ref.url, init.get("sourceURL", "")) if init.get("sourceURL") else ref.url,
                            kind=Kind.INIT, byte_range=_range(init.get("range"))))
    timescale = int(seg_list.get("timescale", "1"))
    length_s = int(seg_list.get("duration", "0")) / timescale
    for i, item in enumerate(_children(seg_list, "SegmentURL")):
        start = i * length_s
        if first_seconds and length_s and ref.start_s + start >= first_seconds:
            break
        target = urljoin(ref.url, item.get("media")) if item.get("media") else ref.url
        refs.append(replace(ref, url=target, start_s=ref.start_s + start, byte_range=_range(item.get("mediaRange"))))
    return refs


def _from_base(attrs: dict[str, str], init: Element | None, ref: MediaRef) -> list[MediaRef]:
    """SegmentBase: one file; a player reads the init range, the index (sidx) range, then media by range from it.
    The media ranges are inside the index, which only the file holds: the whole file is warmed after them."""
    refs: list[MediaRef] = []
    if init is not None:
        target = urljoin(ref.url, init.get("sourceURL")) if init.get("sourceURL") else ref.url
        refs.append(replace(ref, url=target, kind=Kind.INIT, byte_range=_range(init.get("range"))))
    if attrs.get("indexRange"):
        refs.append(replace(ref, kind=Kind.INIT, byte_range=_range(attrs["indexRange"])))
    refs.append(ref)
    return refs


# -- order ----------------------------------------------------------------------------------------------


def player_order(refs: Iterable[MediaRef]) -> list[MediaRef]:
    """What a player needs first, first: keys and init segments of every rendition, then segments by their start
    time across renditions (every rendition's first seconds before any rendition's later ones); no duplicates."""
    seen: set[tuple[str, tuple[int, int] | None]] = set()
    unique = []
    for ref in refs:
        if (ref.url, ref.byte_range) not in seen:
            seen.add((ref.url, ref.byte_range))
            unique.append(ref)
    return sorted(unique, key=lambda r: (PRIORITY[r.kind], r.start_s if r.kind is Kind.SEGMENT else 0.0))
