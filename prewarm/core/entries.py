"""A job's URL entries: a URL, or a URL and the byte range of it a player asks for (``<url>#bytes=<first>-<last>``).

An HLS ``EXT-X-BYTERANGE`` segment or a DASH ``indexRange`` is its own cached object at the edge (CloudFront caches
a range as it was asked for), so it is its own task. The range rides in the fragment, which no request carries, so
the entry reads as what it is in the report and still names the URL a viewer fetches.
"""

from __future__ import annotations

RANGE_MARK = "#bytes="


def range_entry(url: str, byte_range: tuple[int, int] | None) -> str:
    """The entry for ``url`` (without a fragment), or for bytes ``first``-``last`` (inclusive) of it."""
    return url if byte_range is None else f"{url}{RANGE_MARK}{byte_range[0]}-{byte_range[1]}"


def split_entry(entry: str) -> tuple[str, tuple[int, int] | None]:
    """(URL, byte range or None) of an entry; a fragment that is not a well-formed range is left as it is."""
    at = entry.find(RANGE_MARK)
    if at < 0:
        return entry, None
    first, sep, last = entry[at + len(RANGE_MARK):].partition("-")
    if not (sep and first.isdigit() and last.isdigit()) or int(last) < int(first):
        return entry, None
    return entry[:at], (int(first), int(last))
