"""What makes a URL acceptable to warm or to call back: syntax only, no DNS, so a request is refused at once."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import urlsplit

HARD_MAX_URL_LENGTH = 8192
MAX_CALLBACK_URL_LENGTH = 2048

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_PLAIN_URL = re.compile(r"https?://([A-Za-z0-9_.-]+)(?::([0-9]{1,5}))?(?:[/?#][^\x00-\x20\x7f]*)?")


def url_problem(url: str, max_length: int = HARD_MAX_URL_LENGTH) -> str | None:
    """Why ``url`` cannot be warmed (or called back), or None when it is an absolute http(s) URL a viewer
    could fetch.

    The common shape (lower-case scheme, a plain host name or IPv4 address, a port in range) is answered by
    one regular expression, because ``urlsplit`` per URL is slow on large jobs; anything else is parsed. Both
    give the same verdict (``tests/unit/test_models.py``).
    """
    if not url:
        return "empty"
    if len(url) > max_length:
        return f"longer than {max_length} characters"
    plain = _PLAIN_URL.fullmatch(url)
    if plain and valid_host(plain[1]) and (plain[2] is None or 0 < int(plain[2]) < 65536):
        return None
    return _parsed_url_problem(url)


def _parsed_url_problem(url: str) -> str | None:
    if _CONTROL.search(url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "not an absolute http(s) URL"
    host = parts.hostname or ""
    if not host:
        return "has no host"
    if port == 0:
        return "has port 0"
    if not valid_host(host):
        return f"invalid host {host!r}"
    return None


@lru_cache(maxsize=4096)
def valid_host(host: str) -> bool:
    """An IP address or a DNS host name (labels of letters, digits, ``-`` and ``_``).

    Cached: a job's URLs share a few hosts, and a failed ``ip_address`` raises, which is slow per URL."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(HOSTNAME.match(host))


def callback_url_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable callback URL, or None; the address rule waits for delivery, as DNS
    answers change (``net.webhook.resolve_callback``)."""
    if not isinstance(url, str):
        return "not a string"
    problem = url_problem(url, MAX_CALLBACK_URL_LENGTH)
    if problem is None and "@" in urlsplit(url).netloc:
        problem = "must not contain user info (credentials) before the host"
    return problem
