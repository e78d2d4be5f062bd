"""One pinned HTTP fetch with retries: the URL's own host in Host and SNI, the POP's address on the wire.

A ``PopClient`` keeps one keep-alive pool per POP address. Its resolver answers every host name with
that address, so aiohttp sends exactly what a viewer would (Host, SNI, certificate checked against
the URL's host) while connecting only to the edge that DNS gave for the POP.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from prewarm.settings import Settings

DEFAULT_HEADERS = {"Accept-Encoding": "gzip, deflate, br", "User-Agent": "cdn-prewarm/0.1"}
RETRYABLE_CLASSES = frozenset({"connection", "fetch_timeout", "truncated"})


@dataclass
class FetchResult:
    status: int = 0
    x_cache: str = ""
    address: str = ""
    nbytes: int = 0
    attempts: int = 0
    elapsed_ms: float = 0.0
    error_class: str = ""
    error_message: str = ""
    content_length: int | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return not self.error_class

    @property
    def retryable(self) -> bool:
        return self.error_class in RETRYABLE_CLASSES or self.status == 429 or self.status >= 500


class PinnedResolver(AbstractResolver):
    """Resolves every name to one fixed address: the POP edge."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host=self._address, port=port, family=self._family,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, base: float, retry_after: float | None, cap: float) -> float:
    """Exponential backoff with full jitter, at least what ``Retry-After`` asked for (capped)."""
    delay = base * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class PopClient:
    """Keep-alive connection pools to one POP, with a cap on concurrent fetches through it."""

    def __init__(self, pop: str, addresses: list[str], settings: Settings, headers: dict[str, str],
                 limit: int | None = None) -> None:
        self.pop = pop
        self.addresses = list(addresses)
        self._settings = settings
        self._headers = {**DEFAULT_HEADERS, **headers}
        self._ssl = ssl_context(settings.ca_bundle)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._next = 0
        self.concurrency = max(1, limit or settings.max_concurrency)
        self.limit = asyncio.Semaphore(self.concurrency)

    def _session(self, address: str) -> aiohttp.ClientSession:
        session = self._sessions.get(address)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                resolver=PinnedResolver(address),
                ssl=self._ssl,
                limit=0,
                use_dns_cache=False,
                keepalive_timeout=30,
            )
            timeout = aiohttp.ClientTimeout(
                total=self._settings.fetch_timeout_s,
                sock_connect=self._settings.connect_timeout_s,
            )
            session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False, headers=self._headers,
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
            self._sessions[address] = session
        return session

    async def fetch(self, url: str, method: str = "GET", deadline: float | None = None) -> FetchResult:
        """Fetch ``url`` through this POP, retrying transient failures on the POP's next address."""
        start = time.monotonic()
        result = FetchResult()
        first = self._next
        self._next += 1
        async with self.limit:
            for attempt in range(1, self._settings.attempts + 1):
                address = self.addresses[(first + attempt - 1) % len(self.addresses)]
                result = await self._once(url, method, address)
                result.attempts = attempt
                if result.ok or not result.retryable or attempt == self._settings.attempts:
                    break
                delay = backoff_delay(
                    attempt, self._settings.backoff_base_s, result.retry_after, self._settings.retry_after_cap_s
                )
                if deadline is not None and time.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
        result.elapsed_ms = (time.monotonic() - start) * 1000
        return result

    async def _once(self, url: str, method: str, address: str) -> FetchResult:
        result = FetchResult(address=address)
        try:
            async with self._session(address).request(method, url, allow_redirects=False) as resp:
                result.status = resp.status
                result.x_cache = resp.headers.get("X-Cache", "")
                result.content_length = resp.content_length
                if method != "HEAD":
                    content = resp.content  # counted as it arrives, never stored
                    while chunk := await content.readany():
                        result.nbytes += len(chunk)
                    if resp.content_length is not None and result.nbytes != resp.content_length:
                        return _failed(result, "truncated", f"{result.nbytes} of {resp.content_length} bytes")
                if not 200 <= resp.status < 300:
                    result.retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    return _failed(result, f"http_{resp.status}", f"HTTP {resp.status} {resp.reason or ''}".strip())
        except TimeoutError:
            return _failed(result, "fetch_timeout", f"no complete answer within {self._settings.fetch_timeout_s:g} s")
        except aiohttp.ClientConnectorCertificateError as exc:
            return _failed(result, "tls", _describe(exc))
        except aiohttp.ClientConnectorSSLError as exc:
            return _failed(result, "tls", _describe(exc))
        except aiohttp.ClientPayloadError as exc:
            return _failed(result, "truncated", _describe(exc))
        except (aiohttp.ClientError, OSError) as exc:
            return _failed(result, "connection", _describe(exc))
        return result

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()), return_exceptions=True)
        self._sessions.clear()


def _failed(result: FetchResult, error_class: str, message: str) -> FetchResult:
    result.error_class = error_class
    result.error_message = message[:500]
    return result


def _describe(exc: Any) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
