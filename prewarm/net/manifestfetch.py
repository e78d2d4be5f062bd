"""Reading a manifest through a POP: its body kept (the wire module only counts bodies), sent as a viewer sends it.

aiohttp, pinned to the POP's addresses (``PinnedResolver``): the URL's host in ``Host`` and SNI, the certificate
verified, the job's headers as every other fetch of the job sends them (the same cache key at the edge). Only a
coordinator expanding manifests uses it, a few requests per manifest; a fetcher process never imports aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prewarm.net.popclient import (
    DEFAULT_HEADERS,
    FetchResult,
    PinnedResolver,
    age_seconds,
    backoff_delay,
    cache_metrics,
    ssl_context,
)
from prewarm.settings import Settings

PEEK_BYTES = 4096
"""What is read of an answer before deciding whether it is a manifest (``#EXTM3U`` or ``<MPD`` is at its start)."""


@dataclass(slots=True)
class TextAnswer:
    """One GET: what a warm-up fetch records (``result``), the type, and the body when it was read whole."""

    result: FetchResult
    content_type: str = ""
    body: bytes | None = None


class ManifestReader:
    """GETs through one POP, a session per edge address, tried in turn on failures that may pass."""

    def __init__(self, addresses: list[str], settings: Settings, headers: dict[str, str]) -> None:
        self.addresses = list(addresses)
        self._settings = settings
        self._headers = {**DEFAULT_HEADERS, **headers}
        self._sessions: dict[str, Any] = {}
        self._next = 0

    def _session(self, address: str) -> Any:
        import aiohttp

        session = self._sessions.get(address)
        if session is None:
            tls = ssl_context(self._settings.ca_bundle)
            connector = aiohttp.TCPConnector(resolver=PinnedResolver(address), ssl=tls, limit=16, ttl_dns_cache=None)
            session = self._sessions[address] = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auto_decompress=True,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._settings.connect_timeout_s,
                                              sock_read=self._settings.stall_timeout_s),
            )
        return session

    async def get(self, url: str, deadline: float, peek: Callable[[str, bytes], bool] | None = None) -> TextAnswer:
        """GET ``url``, reading at most ``max_manifest_bytes`` of it; ``peek(content type, first bytes)`` false:
        not a manifest, the rest is not read (its own warm-up task fetches it)."""
        settings = self._settings
        first = self._next
        self._next += 1
        answer = TextAnswer(FetchResult())
        for attempt in range(1, settings.attempts + 1):
            address = self.addresses[(first + attempt - 1) % len(self.addresses)]
            answer = await self._once(url, address, deadline, peek)
            answer.result.attempts = attempt
            r = answer.result
            if not r.error_class or not r.retryable or attempt == settings.attempts:
                break
            delay = backoff_delay(attempt, settings.backoff_base_s, r.retry_after, settings.retry_after_cap_s)
            if time.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        return answer

    async def _once(self, url: str, address: str, deadline: float,
                    peek: Callable[[str, bytes], bool] | None) -> TextAnswer:
        import aiohttp

        settings = self._settings
        start = time.monotonic()
        r = FetchResult(address=address)
        answer = TextAnswer(r)
        limit = max(0.1, min(settings.fetch_timeout_s + settings.stall_timeout_s, deadline - time.time()))
        try:
            async with asyncio.timeout(limit):
                async with self._session(address).get(url, allow_redirects=False) as resp:
                    r.status = resp.status
                    r.x_cache = resp.headers.get("X-Cache", "")
                    r.age = age_seconds(resp.headers.get("Age"))
                    r.content_length = resp.content_length
                    timing = resp.headers.get("Server-Timing")
                    if timing:
                        r.cache_metric, r.hit_layer = cache_metrics(timing)
                    answer.content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if not 200 <= resp.status < 300:
                        r.error_class, r.error_message = f"http_{resp.status}", f"HTTP {resp.status} {resp.reason}"
                        r.nbytes = len(await resp.read())
                    else:
                        await self._read(resp, answer, peek)
        except TimeoutError:
            r.error_class, r.error_message = "fetch_timeout", f"no whole answer within {limit:.1f} s"
        except aiohttp.ClientSSLError as exc:
            r.error_class, r.error_message = "tls", f"{type(exc).__name__}: {exc}"
        except (aiohttp.ClientError, OSError) as exc:
            r.error_class, r.error_message = "connection", f"{type(exc).__name__}: {exc}"
        r.elapsed_ms = r.exchange_ms = (time.monotonic() - start) * 1000
        return answer

    async def _read(self, resp: Any, answer: TextAnswer, peek: Callable[[str, bytes], bool] | None) -> None:
        r = answer.result
        cap = self._settings.max_manifest_bytes
        head = await resp.content.read(PEEK_BYTES)
        if peek is not None and not peek(answer.content_type, head):
            r.nbytes = len(head)
            resp.close()  # not a manifest: no more of it here
            return
        chunks = [head]
        size = len(head)
        while chunk := await resp.content.read(64 * 1024):
            size += len(chunk)
            if size > cap:
                r.nbytes = size
                r.error_class = "manifest"
                r.error_message = f"longer than PREWARM_MAX_MANIFEST_BYTES ({cap:,} bytes): not read"
                resp.close()
                return
            chunks.append(chunk)
        r.nbytes = size
        r.size = size
        answer.body = b"".join(chunks)

    async def head(self, url: str, address: str, deadline: float) -> FetchResult:
        """A HEAD through ``address``: a manifest's verification, as ``verify`` asks of every pair."""
        import aiohttp

        r = FetchResult(address=address, attempts=1)
        limit = max(0.1, min(self._settings.fetch_timeout_s, deadline - time.time()))
        try:
            async with asyncio.timeout(limit):
                async with self._session(address).head(url, allow_redirects=False) as resp:
                    r.status = resp.status
                    r.x_cache = resp.headers.get("X-Cache", "")
                    r.age = age_seconds(resp.headers.get("Age"))
                    timing = resp.headers.get("Server-Timing")
                    if timing:
                        r.cache_metric, r.hit_layer = cache_metrics(timing)
                    if resp.status >= 400:
                        r.error_class = f"http_{resp.status}"
        except TimeoutError:
            r.error_class = "fetch_timeout"
        except (aiohttp.ClientError, OSError) as exc:  # a failed verification is a cold one
            r.error_class, r.error_message = "connection", f"{type(exc).__name__}: {exc}"
        return r

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
