"""The ``expanding`` phase: read a job's manifests through its first POP and list what a player fetches from them.

Each given URL is fetched through the first targeted POP; one that is an HLS playlist or a DASH MPD (by its type, its
suffix or its first bytes) is parsed (``core.manifests``) and its child playlists are read the same way, down to
``MAX_DEPTH``. That GET is the manifest's warm-up at the first POP: its row is recorded as such, and no other GET
of it is sent there. What the manifests hold joins the job's URLs after the given ones, in the order a player
needs them (``player_order``), up to ``max_expanded_urls``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from prewarm.core.entries import range_entry
from prewarm.core.manifests import Format, Kind, ManifestError, MediaRef, expand, player_order, sniff
from prewarm.core.results import ResultRow, result_row
from prewarm.net.manifestfetch import ManifestReader, TextAnswer
from prewarm.net.popclient import FetchResult

MAX_DEPTH = 3
"""An HLS master names media playlists, which name segments; deeper is a loop or a mistake."""
READS_AT_ONCE = 16
MANIFEST_TYPES = {
    "application/vnd.apple.mpegurl": Format.HLS, "application/x-mpegurl": Format.HLS, "audio/mpegurl": Format.HLS,
    "audio/x-mpegurl": Format.HLS, "application/dash+xml": Format.DASH,
}
MANIFEST_SUFFIXES = {".m3u8": Format.HLS, ".m3u": Format.HLS, ".mpd": Format.DASH}
MANIFESTS_LISTED = 1000  # in the summary; the report names every entry's manifest


def claimed_format(url: str, content_type: str) -> Format | None:
    """What the answer's type, or else the URL's suffix, says it is (either can be wrong: the body decides)."""
    if content_type in MANIFEST_TYPES:
        return MANIFEST_TYPES[content_type]
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    return next((fmt for suffix, fmt in MANIFEST_SUFFIXES.items() if path.endswith(suffix)), None)


def _peek(url: str) -> Any:
    """Read on only what may be a manifest: the rest of a plain URL is its own warm-up task's to fetch."""
    return lambda content_type, head: claimed_format(url, content_type) is not None or sniff(head) is not None


@dataclass
class ManifestRead:
    url: str
    format: str = ""
    live: bool = False
    entries: int = 0
    error: str = ""
    target_duration_s: float | None = None


@dataclass
class Expanded:
    """A job's URL list after expansion: the given URLs, then their manifests' in player order."""

    urls: list[str]
    source: list[int]  # per URL: the index in ``manifests`` of the manifest it came from; -1 for a given URL
    manifests: list[ManifestRead] = field(default_factory=list)
    rows: dict[int, ResultRow] = field(default_factory=dict)  # URL index -> its GET through the first POP (task 0)
    found: int = 0  # URLs the manifests held beyond the given ones
    left_out: int = 0  # of those, not warmed: over max_expanded_urls
    cap: int = 0
    renditions_left_out: list[str] = field(default_factory=list)
    not_http: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The summary's ``expansion``: what was read, what it held, what was left out and why."""
        live = [m.url for m in self.manifests if m.live]
        failed = [m for m in self.manifests if m.error]
        notes = [f"{len(self.manifests) - len(failed)} manifest(s) read, {self.found - self.left_out:,} URL(s) added"]
        if self.left_out:
            notes.append(f"the manifests held {self.found:,} URLs, over PREWARM_MAX_EXPANDED_URLS ({self.cap:,}): "
                         f"the last {self.left_out:,} in player order were not warmed")
        if failed:
            notes.append(f"{len(failed)} manifest(s) could not be read: " + "; ".join(
                f"{m.url}: {m.error}" for m in failed[:5]) + ("; ..." if len(failed) > 5 else ""))
        if live:
            notes.append(f"{len(live)} live playlist(s): the segments listed when they were read were warmed; "
                         "segments published later were not")
        if self.renditions_left_out:
            notes.append(f"{len(self.renditions_left_out)} rendition(s) above expand_max_bandwidth left out")
        if self.not_http:
            notes.append(f"{len(self.not_http)} non-HTTP URI(s) (such as skd:// keys) not warmed")
        return {
            "manifests": [{"url": m.url, "format": m.format, "live": m.live, "entries": m.entries, "error": m.error}
                          for m in self.manifests[:MANIFESTS_LISTED]],
            "manifest_count": len(self.manifests),
            "expanded_count": self.found - self.left_out,
            "found_count": self.found,
            "left_out_count": self.left_out,
            "max_expanded_urls": self.cap,
            "live": bool(live),
            "renditions_left_out": self.renditions_left_out,
            "not_http": self.not_http[:MANIFESTS_LISTED],
            "message": "; ".join(notes),
        }


def _row(r: FetchResult, error_class: str = "", message: str = "", verify: FetchResult | None = None) -> ResultRow:
    """A warm-up row for a manifest's GET (task id 0: the coordinator places it), failed by ``error_class``."""
    verify_x_cache, age, layer = "", -1, r.hit_layer
    if verify is not None:
        verify_x_cache = verify.x_cache or "none" if verify.ok else f"verify failed: {verify.error_class}"
        age = verify.age if verify.ok and verify.age is not None else -1
        layer = verify.hit_layer
    size = r.size if r.size is not None else -1
    return result_row(0, r.status, r.x_cache, r.address, r.nbytes, r.attempts, round(r.elapsed_ms, 1),
                      error_class or r.error_class, message or r.error_message, verify_x_cache, age,
                      1, r.wasted, size, False, (), layer, r.served_by)


async def expand_urls(urls: list[str], reader: ManifestReader, deadline: float, *, max_bandwidth: int | None,
                      first_seconds: float, cap: int, verify: bool) -> Expanded:
    """Read every manifest among ``urls`` (and their child playlists) through the reader's POP; see the module."""
    out = Expanded(list(urls), [-1] * len(urls), cap=cap)
    index = {u: i for i, u in enumerate(out.urls)}
    refs: list[MediaRef] = []
    manifest_at: dict[str, int] = {}
    gate = asyncio.Semaphore(READS_AT_ONCE)

    async def read(url: str, known: bool) -> TextAnswer:
        async with gate:
            return await reader.get(url, deadline, None if known else _peek(url))

    async def verified(url: str, r: FetchResult) -> FetchResult | None:
        """With ``verify``: HEAD the manifest through the edge that answered, as every pair is verified."""
        return await reader.head(url, r.address, deadline) if verify and r.ok else None

    level = [(i, u, False) for i, u in enumerate(out.urls)]
    for _ in range(MAX_DEPTH):
        if not level:
            break
        answers = await asyncio.gather(*(read(u, known) for _, u, known in level))
        next_level: list[tuple[int, str, bool]] = []
        for (i, url, known), answer in zip(level, answers, strict=True):
            r = answer.result
            claimed = claimed_format(url, answer.content_type)
            if not known and claimed is None and (r.error_class or answer.body is None):
                continue  # a plain URL (or one that failed before saying what it is): warmed as any other
            if r.error_class:
                out.rows[i] = _row(r, message=f"manifest not read: {r.error_message}")
                out.manifests.append(ManifestRead(url, error=f"not read: {r.error_message or r.error_class}"))
                continue
            body = answer.body or b""
            fmt = sniff(body)
            if fmt is None:
                why = f"not an HLS playlist or DASH MPD (it starts {body[:40]!r})"
                out.rows[i] = _row(r, "manifest", why)
                out.manifests.append(ManifestRead(url, str(claimed or ""), error=why))
                continue
            try:
                found = expand(fmt, body.decode("utf-8", errors="replace"), url, max_bandwidth, first_seconds)
            except ManifestError as exc:
                out.rows[i] = _row(r, "manifest", str(exc), await verified(url, r))
                out.manifests.append(ManifestRead(url, str(fmt), error=str(exc)))
                continue
            out.rows[i] = _row(r, verify=await verified(url, r))
            manifest_at[url] = len(out.manifests)
            out.manifests.append(ManifestRead(url, str(fmt), found.live, len(found.refs) + len(found.playlists),
                                              target_duration_s=found.target_duration_s))
            out.renditions_left_out += [n for n in found.left_out if n not in out.renditions_left_out]
            out.not_http += [u for u in found.not_http if u not in out.not_http]
            for playlist in found.playlists:
                if playlist.url not in index:
                    index[playlist.url] = len(out.urls)
                    out.urls.append(playlist.url)
                    out.source.append(manifest_at[url])
                    next_level.append((index[playlist.url], playlist.url, True))
            refs.extend(found.refs)
        level = next_level
    n_given = len(urls)
    for ref in player_order(refs):
        entry = range_entry(ref.url, ref.byte_range) if ref.kind is not Kind.PLAYLIST else ref.url
        if entry not in index:
            index[entry] = len(out.urls)
            out.urls.append(entry)
            out.source.append(manifest_at.get(ref.manifest, -1))
    out.found = len(out.urls) - n_given
    if out.found > cap:
        out.left_out = out.found - cap
        del out.urls[n_given + cap:], out.source[n_given + cap:]
        out.rows = {i: row for i, row in out.rows.items() if i < len(out.urls)}
    return out
