"""A lean HTTP/1.1 keep-alive client over asyncio protocols, for the one request shape a viewer sends.

Why not aiohttp: a fetcher spends its CPU on small cached objects, and aiohttp's general machinery
(request/response objects, stream readers, several timers and tasks per request) costs far more per
fetch than the exchange itself. This client writes one prebuilt request and parses the answer in
``data_received`` (a future per request, no reader task), counting body bytes without storing them.

What it keeps from a viewer's fetch: the URL's host (and non-default port) in ``Host``, the URL's host as
TLS SNI with the certificate verified against it, no redirect followed, the body read to its end
(Content-Length, chunked, or until close) and a short body reported as truncated. Every connect and
exchange runs under limits that fit a body of any length (``Limits``): a time to the response head, then no cut
for length, only for a stall (no body byte for a while), a rate under a floor, or the job's end. Connections
are pooled per (address, scheme, host, port) so a TLS session is only reused for the host it was verified for.
"""

from __future__ import annotations

import asyncio
import math
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol
from urllib.parse import quote, urlsplit

MAX_HEAD_BYTES = 64 * 1024
"""Longest status line plus headers accepted: past it the answer is not HTTP we can trust."""
IDLE_TIMEOUT_S = 30.0
"""An idle pooled connection older than this is closed rather than reused (edges drop them anyway)."""
DEADLINE_CHECK_S = 0.05
"""How often a pool with exchanges in flight checks their limits: an exchange fails at most this late. One
check per pool replaces a timer per request (a timer per request was a measurable share of a cached fetch)."""
_NO_BODY_STATUSES = frozenset({204, 304})
_TARGET_SAFE = "!$%&'()*+,/:;=?@~"
_NEEDS_QUOTING = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")
"""Characters a request target may not carry as they are (RFC 3986): percent-encoded, as yarl does."""

# Response parser states.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE = range(8)


class WireError(Exception):
    """A failed exchange, already classified the way the report classifies it."""

    def __init__(self, error_class: str, message: str, *, stale: bool = False, nbytes: int = 0) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.stale = stale  # nothing came back on a reused connection: the edge may have closed it idle
        self.nbytes = nbytes  # body bytes that arrived before it failed (received, and warmed nothing)


@dataclass(frozen=True, slots=True)
class Limits:
    """When an exchange gives up. A body is never cut for being long: only for silence or a trickle.

    ``head_s``: time from sending the request to the end of the response head. ``stall_s``: longest wait for
    the next body byte. ``min_rate``: body bytes per second averaged over ``rate_window_s`` (0: no floor).
    """

    head_s: float
    stall_s: float = math.inf
    min_rate: float = 0.0
    rate_window_s: float = 30.0


class ByteGate(Protocol):
    """A job's byte-rate cap as a connection sees it: ``take(n)`` returns how long to stop reading."""

    def take(self, n: int) -> float: ...


class Response:
    """Status, the header block (searched by name on demand) and the number of body bytes read.

    Headers are not split into a dict per answer: a fetch reads five of them, and finding those in the
    block costs a fraction of parsing every line (the largest Python cost of a fetch once measured).
    """

    __slots__ = ("_block", "_lower", "content_length", "nbytes", "oversize", "reason", "status")

    def __init__(self, status: int, reason: str, block: str) -> None:
        self.status = status
        self.reason = reason
        self._block = block  # every header line, each led by CRLF: "\r\nName: value\r\nName: value"
        self._lower = block.lower()
        self.nbytes = 0
        self.content_length: int | None = None
        self.oversize = False  # the head announced more than the caller's max_body: the body was not read

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (given in lower case), the last one if repeated; None if absent."""
        key = f"\r\n{name}:"
        at = self._lower.rfind(key)
        if at < 0:
            return None
        start = at + len(key)
        end = self._block.find("\r\n", start)
        return self._block[start:end if end >= 0 else None].strip()

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case), in order."""
        key = f"\r\n{name}:"
        values = []
        at = self._lower.find(key)
        while at >= 0:
            start = at + len(key)
            end = self._block.find("\r\n", start)
            values.append(self._block[start:end if end >= 0 else None].strip())
            at = self._lower.find(key, start)
        return values

    @property
    def headers(self) -> dict[str, str]:
        """Every header as a dict with lower-case names (the last value wins), for callers wanting all."""
        parsed: dict[str, str] = {}
        for line in self._block.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                parsed[name.strip().lower()] = value.strip()
        return parsed


class Target:
    """What a URL decides on the wire: scheme, host (for Host and SNI), port and request target."""

    __slots__ = ("host", "host_header", "port", "scheme", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url!r}")
        host = parts.hostname
        if not host:
            raise ValueError(f"no host in {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        shown = f"[{host}]" if ":" in host else host
        self.scheme = scheme
        self.host = host
        self.port = port
        self.host_header = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.target = quote(target, safe=_TARGET_SAFE) if _NEEDS_QUOTING.search(target) else target


@lru_cache(maxsize=16384)
def target_of(url: str) -> Target:
    """``Target(url)``, remembered: a fetcher sends each URL through each of its POPs, and parsing a URL is a
    large share of a cached fetch's Python cost (a ``Target`` is never changed)."""
    return Target(url)


def header_block(headers: Mapping[str, str]) -> str:
    """Every request header after ``Host``, as aiohttp would send them: the session's, then ``Accept``."""
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    if not any(name.lower() == "accept" for name in headers):
        lines.append("Accept: */*\r\n")
    return "".join(lines) + "\r\n"


def build_head(method: str, target: Target, block: str, extra: str = "") -> bytes:
    """The request head: request line, ``Host`` (the URL's), ``extra`` header lines (each ending in CRLF, such
    as a ``Range``), then the prebuilt header block."""
    return f"{method} {target.target} HTTP/1.1\r\nHost: {target.host_header}\r\n{extra}{block}".encode()


READ_BUFFER_BYTES = 256 * 1024
_SCRATCH_ARRAY = bytearray(READ_BUFFER_BYTES)
_SCRATCH = memoryview(_SCRATCH_ARRAY)
"""Where every connection of the process reads into (``get_buffer``): a body is counted, never kept, and a read is
handled before the loop makes the next one, so one buffer serves them all, and a body byte costs no allocation."""


LARGE_BODY_BYTES = 1024 * 1024
"""A Content-Length body at least this long is read through a ``_BodySink`` (see ``Connection``)."""


class _BodySink(asyncio.BufferedProtocol):
    """The transport's protocol while a large body streams: the transport (TLS included) reads straight into
    ``_SCRATCH`` and the body is only counted there. Through ``data_received`` every read was a new bytes object
    (and uvloop's TLS joins a read's records into one more), a copy per body byte that a large object pays in full;
    a small answer is cheaper there, so a connection switches to its sink for large bodies only."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SCRATCH

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.body_read(nbytes)

    def eof_received(self) -> bool:
        return self.conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends a head and resolves with the parsed answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.used = 0
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Response] | None = None
        self._state = _IDLE
        self._buf = b""
        self._head_only = False
        self._remaining = 0
        self._received = False
        self._resp: Response | None = None
        # The exchange in flight's limits, checked by its pool (``check``), in loop time.
        self._limits = Limits(head_s=math.inf)
        self.head_deadline = math.inf
        self.end_deadline = math.inf  # the job's: bounds the whole exchange
        self._max_body: int | None = None
        self.gate: ByteGate | None = None
        self._seen = 0  # body bytes at the last check that saw progress ...
        self._progress_at = 0.0  # ... and when
        self._window_at = 0.0  # the rate floor's window: its start and the body bytes then
        self._window_bytes = 0
        self._paused_at: float | None = None  # reading paused by the byte-rate cap since then
        self._sink: _BodySink | None = None  # the transport's protocol while a large body streams

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        state, resp = self._state, self._resp
        if state == _UNTIL_CLOSE and resp is not None:
            self._finish(resp)
        elif state in (_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER) and resp is not None:
            if state == _LENGTH:
                message = f"{resp.nbytes} of {resp.content_length} bytes"
            else:
                message = f"chunked body cut off after {resp.nbytes} bytes"
            if exc is not None:
                message += f" ({type(exc).__name__}: {exc})"
            self._fail(WireError("truncated", message, nbytes=resp.nbytes))
        else:
            why = f"{type(exc).__name__}: {exc}" if exc else "ServerDisconnectedError: the server closed the connection"
            self._fail(WireError("connection", why, stale=not self._received and self.used > 1))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost decides what the answer was

    def body_read(self, nbytes: int) -> None:
        """``nbytes`` more of a large body, read into ``_SCRATCH`` by the sink."""
        waiter = self._waiter
        if self._state == _LENGTH and waiter is not None and not waiter.done():
            self._count_length_body(nbytes)
            if self.gate is not None:
                self._take(nbytes)
            return
        self.data_received(_SCRATCH_ARRAY[:nbytes])  # type: ignore[arg-type]  # parsed as bytes-like

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.reusable = False  # bytes nobody asked for: never reuse this connection
            if self.transport is not None:
                self.transport.close()
            return
        self._received = True
        state = self._state
        if state == _LENGTH:  # the hot path: the rest of a Content-Length body, counted, never stored
            self._count_length_body(len(data))
        elif state == _UNTIL_CLOSE:
            assert self._resp is not None
            self._resp.nbytes += len(data)
        else:
            self._buf += data
            try:
                self._parse()
            except WireError as exc:
                self.reusable = False
                self._fail(exc)
                if self.transport is not None:
                    self.transport.close()
                return
        if self.gate is not None:
            self._take(len(data))

    def _take(self, n: int) -> None:
        """``n`` bytes read under the job's byte-rate cap: pause reading for as long as it says."""
        assert self.gate is not None
        pause = self.gate.take(n)
        if pause > 0:
            self._pause(pause)

    def _pause(self, seconds: float) -> None:
        """Stop reading for ``seconds`` (the byte-rate cap): the kernel's window then slows the sender."""
        if self.transport is None or self.transport.is_closing() or self._paused_at is not None:
            return
        self.transport.pause_reading()
        self._paused_at = self.loop.time()
        self.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        paused_at, self._paused_at = self._paused_at, None
        if paused_at is not None:  # time held back by the cap is neither a stall nor a slow edge
            held = self.loop.time() - paused_at
            self._progress_at += held
            self._window_at += held
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # requests

    def request(self, head: bytes, head_only: bool, limits: Limits, end_deadline: float = math.inf,
                max_body: int | None = None) -> asyncio.Future[Response]:
        """Send one request; the future resolves with its answer or fails with a :class:`WireError`.

        ``end_deadline`` (loop time) bounds the whole exchange; ``max_body``: an answer whose head announces a
        longer body resolves at its head with ``oversize`` set, its body unread (the connection is not reused).
        """
        waiter = self.loop.create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._buf = b""
        self._head_only = head_only
        self._received = False
        self._resp = None
        self._limits = limits
        self._max_body = max_body
        self.used += 1
        self.head_deadline = self.loop.time() + limits.head_s
        self.end_deadline = end_deadline
        self._seen = -1  # the body's first check starts its stall clock and rate window (no clock read per answer)
        assert self.transport is not None
        self.transport.write(head)
        return waiter

    @property
    def in_flight(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    @property
    def body_bytes(self) -> int:
        """Body bytes of the answer being read (0 before its head)."""
        return 0 if self._resp is None else self._resp.nbytes

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def check(self, now: float) -> bool:
        """Fail the exchange in flight if one of its limits passed; True while it goes on."""
        resp = self._resp
        if resp is None:  # waiting for the head
            if now >= self.head_deadline:
                return self._give_up("fetch_timeout", f"no response head within {self._limits.head_s:g} s", 0)
        elif self._paused_at is None:  # a body arriving (held back by the byte-rate cap: not its fault)
            limits, nbytes = self._limits, resp.nbytes
            if self._seen < 0:
                self._window_at, self._window_bytes = now, nbytes
            if nbytes != self._seen:
                self._seen, self._progress_at = nbytes, now
            elif now - self._progress_at >= limits.stall_s:
                return self._give_up("stall", f"no body byte for {limits.stall_s:g} s after {nbytes} bytes", nbytes)
            if limits.min_rate and now - self._window_at >= limits.rate_window_s:
                rate = (nbytes - self._window_bytes) / (now - self._window_at)
                if rate < limits.min_rate:
                    return self._give_up("too_slow", f"{rate:.0f} bytes/s over {now - self._window_at:.0f} s, under "
                                         f"the floor of {limits.min_rate:g} bytes/s, after {nbytes} bytes", nbytes)
                self._window_at, self._window_bytes = now, nbytes
        if now >= self.end_deadline:
            nbytes = 0 if resp is None else resp.nbytes
            return self._give_up("timeout", f"the job's deadline passed after {nbytes} body bytes", nbytes)
        return True

    def _give_up(self, error_class: str, message: str, nbytes: int) -> bool:
        """Fail the exchange and drop the connection (its answer may still come); False, for ``check``."""
        self._fail(WireError(error_class, message, nbytes=nbytes))
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()
        return False

    def _count_length_body(self, n: int) -> None:
        """``n`` more bytes of a Content-Length body; bytes past its end make the connection unusable."""
        resp = self._resp
        assert resp is not None
        if n < self._remaining:
            self._remaining -= n
            resp.nbytes += n
            return
        resp.nbytes += self._remaining
        if n > self._remaining:
            self.reusable = False
        self._finish(resp)

    def _settle(self) -> asyncio.Future[Response] | None:
        """End the exchange (idle); the request's future if it still waits for an outcome."""
        self._state = _IDLE
        waiter = self._waiter
        return waiter if waiter is not None and not waiter.done() else None

    def _finish(self, resp: Response) -> None:
        self._buf = b""
        if self._sink is not None:
            self._unsink()
        if (waiter := self._settle()) is not None:
            waiter.set_result(resp)

    def _unsink(self) -> None:
        self._sink = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.set_protocol(self)

    def _fail(self, exc: WireError) -> None:
        if self._sink is not None:
            self._unsink()
        if (waiter := self._settle()) is not None:
            waiter.set_exception(exc)

    def _parse(self) -> None:
        """Advance through the buffered bytes: head, then the body in whichever framing it has."""
        while True:
            state = self._state
            if state == _HEAD:
                end = self._buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise WireError("connection", f"response head longer than {MAX_HEAD_BYTES} bytes")
                    return
                head, self._buf = self._buf[:end], self._buf[end + 4:]
                if not self._start_body(head):
                    continue  # an interim 1xx answer: the real one follows
            elif state == _LENGTH:
                n, self._buf = len(self._buf), b""
                self._count_length_body(n)
                return
            elif state == _UNTIL_CLOSE:
                assert self._resp is not None
                self._resp.nbytes += len(self._buf)
                self._buf = b""
                return
            elif state == _CHUNK_SIZE:
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 1024:
                        raise WireError("truncated", "malformed chunk size line")
                    return
                line, self._buf = self._buf[:end], self._buf[end + 2:]
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise WireError("truncated", f"malformed chunk size {size_text[:40]!r}") from None
                if size < 0:
                    raise WireError("truncated", f"malformed chunk size {size_text[:40]!r}")
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_DATA:
                resp = self._resp
                assert resp is not None
                take = min(self._remaining, len(self._buf))
                resp.nbytes += take
                self._remaining -= take
                self._buf = self._buf[take:]
                if self._remaining:
                    return
                self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(self._buf) < 2:
                    return
                if self._buf[:2] != b"\r\n":
                    raise WireError("truncated", "chunk data not followed by CRLF")
                self._buf = self._buf[2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise WireError("truncated", "chunked trailer too long")
                    return
                line, self._buf = self._buf[:end], self._buf[end + 2:]
                if not line:  # the empty line after the last chunk (and any trailer fields)
                    if self._buf:
                        self.reusable = False
                    assert self._resp is not None
                    self._finish(self._resp)
                    return
            else:
                return

    def _start_body(self, head: bytes) -> bool:
        """Parse a response head; False for an interim (1xx) answer. Sets the body framing."""
        text = head.decode("latin-1")
        status_line, _, rest = text.partition("\r\n")
        version, _, status_reason = status_line.partition(" ")
        code, _, reason = status_reason.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise WireError("connection", f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(code)
        if 100 <= status < 200:
            return False
        resp = Response(status, reason.strip(), f"\r\n{rest}" if rest else "")
        self._resp = resp
        connection = (resp.header("connection") or "").lower()
        if "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection):
            self.reusable = False
        lengths = resp.header_values("content-length")
        if len(set(lengths)) > 1:
            raise WireError("connection", f"conflicting Content-Length values {sorted(set(lengths))}")
        if lengths:
            value = lengths[0]
            if not value.isascii() or not value.isdigit():
                raise WireError("connection", f"invalid Content-Length {value[:40]!r}")
            resp.content_length = int(value)
        chunked = "chunked" in (resp.header("transfer-encoding") or "").lower()
        if (self._max_body is not None and resp.content_length is not None and resp.content_length > self._max_body
                and not self._head_only and status not in _NO_BODY_STATUSES):
            resp.oversize = True  # the caller fetches it otherwise (in ranges): the body is left unread
            resp.nbytes = min(len(self._buf), resp.content_length)
            self.reusable = False
            self._finish(resp)
            return True
        if self._head_only or status in _NO_BODY_STATUSES:
            if self._buf:
                self.reusable = False
            self._finish(resp)
            return True
        if chunked:
            resp.content_length = None  # Transfer-Encoding overrides any Content-Length
            self._state = _CHUNK_SIZE
        elif resp.content_length is not None:
            self._remaining = resp.content_length
            if not self._remaining:
                if self._buf:
                    self.reusable = False
                self._finish(resp)
                return True
            self._state = _LENGTH
            if self._remaining >= LARGE_BODY_BYTES and self.transport is not None:
                self._sink = _BodySink(self)
                self.transport.set_protocol(self._sink)
        else:
            self.reusable = False  # the body ends when the connection does
            self._state = _UNTIL_CLOSE
        return True


class Pool:
    """Idle keep-alive connections to one address, per (scheme, host, port); opens new ones on demand."""

    def __init__(self, address: str, ssl_context: ssl.SSLContext, connect_timeout_s: float,
                 max_idle: int = 64) -> None:
        self.address = address
        self._ssl = ssl_context
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._check: asyncio.TimerHandle | None = None

    def take(self, target: Target) -> Connection | None:
        """An idle connection for ``target`` that is alive and not too old, or None (no await: the common case)."""
        idle = self._idle.get((target.scheme, target.host, target.port))
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_TIMEOUT_S:
                return conn
            conn.close()
            self._all.discard(conn)
        return None

    def release(self, target: Target, conn: Connection) -> None:
        """Back to the pool if the exchange left it clean; otherwise closed."""
        if conn.closed or not conn.reusable:
            conn.close()
            self._all.discard(conn)
            return
        idle = self._idle.setdefault((target.scheme, target.host, target.port), [])
        if len(idle) >= self._max_idle:
            conn.close()
            self._all.discard(conn)
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)

    def watch(self) -> None:
        """Make sure the deadlines of this pool's exchanges in flight are checked (call after a request)."""
        if self._check is None:
            self._check = asyncio.get_running_loop().call_later(DEADLINE_CHECK_S, self._expire_passed)

    def _expire_passed(self) -> None:
        """Fail every exchange past one of its limits; check again later while any is still in flight."""
        self._check = None
        now = asyncio.get_running_loop().time()
        waiting = False
        for conn in list(self._all):
            if conn.in_flight and conn.check(now):
                waiting = True
        if waiting:
            self.watch()

    def body_bytes_in_flight(self) -> int:
        """Body bytes received so far by the exchanges still in flight (for a live byte rate)."""
        return sum(conn.body_bytes for conn in self._all if conn.in_flight)

    def discard(self, conn: Connection) -> None:
        conn.close()
        self._all.discard(conn)

    def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()

    async def connect(self, target: Target, deadline: float) -> Connection:
        """A new connection for ``target``, open within the connect timeout and ``deadline``."""
        loop = asyncio.get_running_loop()
        timeout = min(self._connect_timeout_s, deadline - loop.time())
        tls = target.scheme == "https"
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop), self.address, target.port,
                    ssl=self._ssl if tls else None,
                    server_hostname=target.host.rstrip(".") if tls else None,
                )
        except TimeoutError:
            raise WireError("connect_timeout", f"no connection to {self.address}:{target.port} within "
                            f"{timeout:g} s") from None
        except ssl.SSLError as exc:  # certificate verification failures included
            raise WireError("tls", f"{type(exc).__name__}: {exc} (connecting to {self.address}:{target.port} "
                            f"for {target.host})") from None
        except OSError as exc:
            raise WireError("connection", f"{type(exc).__name__}: cannot connect to {self.address}:"
                            f"{target.port}: {exc.strerror or exc}") from None
        self._all.add(conn)
        return conn


async def exchange(pool: Pool, target: Target, head: bytes, head_only: bool, limits: Limits,
                   end_deadline: float = math.inf, gate: ByteGate | None = None,
                   max_body: int | None = None) -> Response:
    """One request and its full answer, within ``limits`` and ``end_deadline`` (loop time); ``gate``: the byte-rate
    cap the body is read under; ``max_body``: see ``Connection.request``.

    A reused connection that closes before any byte of the answer is replaced once by a fresh one, as
    aiohttp does: the edge closed it while idle, so the request never reached it (not an attempt).
    """
    connect_by = min(end_deadline, asyncio.get_running_loop().time() + limits.head_s)
    conn = pool.take(target)
    while True:
        reused = conn is not None
        if conn is None:
            conn = await pool.connect(target, connect_by)
        conn.gate = gate
        try:
            answer = conn.request(head, head_only, limits, end_deadline, max_body)
            pool.watch()
            resp = await answer
        except WireError as exc:
            pool.discard(conn)
            if reused and exc.stale:
                conn = None  # a fresh one, not another idle one that may be as stale
                continue
            raise
        except BaseException:  # cancelled: the connection is mid-exchange, never reuse it
            pool.discard(conn)
            raise
        pool.release(target, conn)
        return resp
