"""Read the URLs of a sitemap (urlset, sitemap index, plain text; gzip or not) from a path or an http(s) URL.

A sitemap index is followed into its nested sitemaps, with caps on depth, on the number of sitemaps read
and on each document's size, so a hostile or looping index cannot make the CLI read without end.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

FETCH_TIMEOUT_S = 30.0
MAX_DEPTH = 3  # the top sitemap is depth 0; an index nested in an index is depth 1, ...
MAX_SITEMAPS = 200
MAX_BYTES = 50 * 1024 * 1024  # the sitemap protocol's own limit, uncompressed
USER_AGENT = "prewarm-sitemap/1"

GZIP_MAGIC = b"\x1f\x8b"


class SitemapError(ValueError):
    """A sitemap that cannot be read or parsed; the message names the source."""


def _local_name(tag: str) -> str:
    """``{http://www.sitemaps.org/schemas/sitemap/0.9}loc`` -> ``loc``: accept any (or no) namespace."""
    return tag.rsplit("}", 1)[-1]


def decompress(data: bytes, limit: int = MAX_BYTES) -> bytes:
    """Gunzip ``data`` when it starts with the gzip magic (whatever its name says), at most ``limit`` bytes."""
    if not data.startswith(GZIP_MAGIC):
        return data
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise SitemapError(f"corrupt gzip data: {exc}") from None
    if len(out) > limit:
        raise SitemapError(f"larger than {limit} bytes once decompressed")
    return out


def parse_sitemap(data: bytes) -> tuple[str, list[str]]:
    """Return ``(kind, locations)``: kind is ``urlset``, ``sitemapindex`` or ``text`` (one URL a line)."""
    data = decompress(data)
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"<"):
        text = head.decode("utf-8", errors="replace")
        return "text", [line.strip() for line in text.splitlines() if line.strip()]
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise SitemapError(f"not valid XML: {exc}") from None
    kind = _local_name(root.tag)
    if kind not in ("urlset", "sitemapindex"):
        raise SitemapError(f"root element is <{kind}>, expected <urlset> or <sitemapindex>")
    entry = "url" if kind == "urlset" else "sitemap"
    locs: list[str] = []
    for child in root:
        if _local_name(child.tag) != entry:
            continue
        for field in child:
            if _local_name(field.tag) == "loc" and field.text and field.text.strip():
                locs.append(field.text.strip())
                break
    return kind, locs


def _is_http(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def read_source(source: str, timeout_s: float = FETCH_TIMEOUT_S, limit: int = MAX_BYTES) -> bytes:
    """The raw bytes of a local path, a ``file://`` URL or an http(s) URL (with a timeout and a size cap)."""
    if _is_http(source):
        request = urllib.request.Request(source, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                data = resp.read(limit + 1)
        except OSError as exc:  # URLError, HTTPError and timeouts are all OSErrors
            raise SitemapError(f"{source}: {exc}") from None
    else:
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(source).path)) if source.startswith("file:") \
            else Path(source)
        try:
            with path.open("rb") as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            raise SitemapError(f"{source}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SitemapError(f"{source}: larger than {limit} bytes")
    return data


def resolve_nested(parent: str, loc: str) -> str:
    """Where a nested sitemap lives: relative to its index; a remote index may only point to http(s)."""
    if _is_http(parent):
        child = urllib.parse.urljoin(parent, loc)
        if not _is_http(child):
            raise SitemapError(f"{parent}: nested sitemap {loc!r} is not an http(s) URL")
        return child
    if _is_http(loc) or loc.startswith("file:"):
        return loc
    base = Path(urllib.parse.unquote(urllib.parse.urlsplit(parent).path)) if parent.startswith("file:") \
        else Path(parent)
    return str(base.parent / loc) if not Path(loc).is_absolute() else loc


def load_sitemap(source: str, *, timeout_s: float = FETCH_TIMEOUT_S, max_depth: int = MAX_DEPTH,
                 max_sitemaps: int = MAX_SITEMAPS,
                 reader: Callable[[str], bytes] | None = None) -> list[str]:
    """Every page URL of ``source``, nested sitemaps followed depth first, duplicates dropped, order kept."""
    read = reader or (lambda s: read_source(s, timeout_s))
    urls: dict[str, None] = {}
    seen: set[str] = set()
    stack: list[tuple[str, int]] = [(source, 0)]
    while stack:
        current, depth = stack.pop()
        if current in seen:
            continue  # an index that lists itself, or two indexes sharing a child
        seen.add(current)
        if len(seen) > max_sitemaps:
            raise SitemapError(f"{source}: more than {max_sitemaps} sitemaps")
        try:
            kind, locs = parse_sitemap(read(current))
        except SitemapError as exc:
            message = str(exc)
            raise SitemapError(message if message.startswith(current) else f"{current}: {message}") from None
        if kind != "sitemapindex":
            urls.update(dict.fromkeys(locs))
            continue
        if depth + 1 > max_depth:
            raise SitemapError(f"{current}: sitemap indexes nested deeper than {max_depth} levels")
        stack.extend((resolve_nested(current, loc), depth + 1) for loc in reversed(locs))
    return list(urls)
