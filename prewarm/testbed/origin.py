"""Testbed origin: an aiohttp server that generates objects and injects faults.

It stands in for a customer's origin behind CloudFront, so the testbed can show how the
service reacts to every kind of origin behaviour without any network beyond 127.0.0.0/8.

Paths (``...`` is the rest of the path, parsed again, so faults can be chained)::

    GET/HEAD /obj/<n>kb/<name>, /obj/<n>b/<name>, /obj/<n>mb/<name>
                                       object of exactly that size, deterministic bytes
    /fault/status/<code>/...           answer <code> with a small body
    /fault/delay/<ms>/...              wait before sending headers
    /fault/slowbody/<ms>/...           send the body in pieces spread over <ms>
    /fault/rate/<bytes_per_s>/...      send the body at that average rate (headers at once; pieces
                                       of at most 64 KiB, each released when a link of that rate
                                       would have delivered it, on a monotonic schedule)
    /fault/stall/<after_bytes>/<ms>/... send the first <after_bytes> bytes of the body, then nothing
                                       for <ms>, then the rest (no stall if the body is not longer)
    /fault/reset/...                   abort the connection (RST) without a response
    /fault/truncate/...                declare Content-Length N, send N/2 bytes, close
    /fault/retry-after/<code>/<s>/...  answer <code> (429/503) with ``Retry-After: <s>``
    /fault/fail-first/<n>/<code>/...   answer <code> to the first n requests of that path
                                       from each edge, then go on with ``...``
    /fault/nocache/...                 200 with ``Cache-Control: no-store``
    GET/HEAD /media/...                 generated HLS and DASH, VOD and live, and broken manifests
                                       (``prewarm.testbed.media``: its paths, and the exact set a player fetches)
    /fault/max-age/<s>/...             answer with ``Cache-Control: max-age=<s>`` (an error answer too, so a
                                       test sets how long an edge caches it, e.g.
                                       /fault/max-age/30/fault/status/503/obj/1kb/x; no-store still wins)

When ``...`` is itself ``obj/<size>/<name>`` that object is served after the fault; otherwise
a 1 KiB object is served. Control endpoints (not counted): ``POST /_control/faults``,
``GET /_control/faults``, ``GET /_control/counts``, ``GET /_control/sent``, ``GET /_control/log``,
``GET /_control/concurrency``, ``POST /_control/reset``. Rule keys (``Rule.from_json``): path, status,
count, per_edge, retry_after, delay_ms, slowbody_ms, rate (bytes/s), stall_after and stall_ms (bytes,
ms), action (reset, truncate, nocache), max_age (seconds: ``Cache-Control: max-age``), headers, body.

Conditional GET: a 200 answer whose ETag is in the request's ``If-None-Match`` becomes 304 (no body),
so an edge that revalidates an expired object (``proxy_cache_revalidate``) gets CloudFront's RefreshHit.

Ranges (RFC 9110): every 200 answer says ``Accept-Ranges: bytes``; a GET or HEAD of it with one
range (``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n``) gets 206 with ``Content-Range: bytes
a-b/size`` and exactly those bytes, same ETag and Cache-Control; a range that starts at or beyond
the end (or ``bytes=-0``, or any range of an empty object) gets 416 with ``Content-Range: bytes
*/size`` and ``Cache-Control: no-store``. A multi-range or malformed Range, or an ``If-Range`` that
is not the object's ETag, is ignored (full 200). rate, stall, slowbody and truncate apply to the
range's body.

Requests are counted by (method, path, edge, rec, shield), and again with the encoding, the request's
``Accept-Encoding`` normalised as CloudFront's cache key does it ("br", "gzip" or ""); ``GET
/_control/log`` lists every counted request with its arrival time (for rate checks). The edge is the
``X-Edge-Pop`` request header that the testbed's POPs add ("-" for direct requests); a regional edge
cache adds ``X-Edge-Rec: <REC>`` and an Origin Shield ``X-Edge-Shield: <name>`` and both pass the
POP's header on, so the edge is the POP whose miss led to the request and ``tier`` says which nginx
tier sent it, spelled as CloudFront's Server-Timing ``cdn-upstream-layer``: "EDGE" (a POP), "REC",
"Origin Shield", or "-" (not a testbed tier). Rows of counts, sent and by_encoding carry ``rec``,
``shield`` ("" when absent) and ``tier`` only when asked with ``?tiers=1`` (a tiered Testbed asks),
so a flat testbed's rows keep their old shape. nginx's proxy_cache turns HEAD into GET
toward the origin (``proxy_cache_convert_head on``, as CloudFront does), so a HEAD sent to a POP
is counted here as a GET.

What was sent: each counts row also has ``bytes``, the body bytes the origin handed to that key's
connections (partial sends included, counted as each piece is written), and ``complete``, how many
bodies went out to their end (error and 416 bodies count too; a HEAD answer or a 304 has no body and
adds to neither). ``GET /_control/sent`` groups the bodies sent (not HEAD) by (path, edge, Range header or
""): ``{"sent": [{"path", "edge", "range", "bytes", "complete"}, ...]}``, first seen first.

Concurrency: ``GET /_control/concurrency`` -> ``{"requests": [{"start", "end", "method", "path",
"edge", "rec", "shield", "tier"}, ...], "samples": [[time, in_flight], ...], "peak": n, "in_flight": n}``:
each counted request's start (its handler began) and end (its answer was written or the connection
dropped; null while running), unix seconds, oldest first, and the number in flight after each start
and end (an end sorts before a start at the same time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import mimetypes
import os
import re
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from prewarm.testbed import media

EDGE_HEADER = "X-Edge-Pop"
REC_HEADER = "X-Edge-Rec"
SHIELD_HEADER = "X-Edge-Shield"
LOG_SIZE = 200_000


def cache_key_encoding(accept_encoding: str) -> str:
    """The encoding part of the edges' cache key, normalised like CloudFront's: br, gzip or none."""
    tokens = {t.split(";")[0].strip().lower() for t in accept_encoding.split(",")}
    return "br" if "br" in tokens else "gzip" if "gzip" in tokens else ""
DEFAULT_SIZE = 1024
CACHEABLE = "public, max-age=3600"
_SIZE_RE = re.compile(r"^(\d+)(b|kb|mb)$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1024, "mb": 1024 * 1024}
_BLOCK = 64 * 1024
RATE_TICKS = 20  # with a byte rate, pieces hold at most 1/20 s of it, so the body flows evenly
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


Sent = Callable[[int, bool], None]  # records n body bytes written; True once the body is complete
Key = tuple[str, str, str, str, str]  # (method, path, edge, rec, shield) of a counted request


class FaultSpecError(ValueError):
    """A /fault/ path whose parameters do not parse (answered with 400)."""


@dataclass
class Plan:
    """What to do for one request, built from the path and the control rules."""

    status: int = 200
    size: int = DEFAULT_SIZE
    name: str = "default"
    is_object: bool = False
    delay_ms: int = 0
    slowbody_ms: int = 0
    rate: int = 0  # bytes/s, 0 = as fast as possible
    stall_after: int = 0
    stall_ms: int = 0
    reset: bool = False
    truncate: bool = False
    nocache: bool = False
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    not_found: bool = False
    max_age: int | None = None
    content_type: str | None = None


@dataclass
class Rule:
    """A fault set through ``POST /_control/faults``; ``count`` None means every request."""

    path: str
    status: int | None = None
    count: int | None = None
    per_edge: bool = True
    retry_after: str | None = None
    delay_ms: int = 0
    slowbody_ms: int = 0
    rate: int = 0
    stall_after: int = 0
    stall_ms: int = 0
    action: str | None = None  # "reset", "truncate" or "nocache"
    max_age: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    used: Counter[str] = field(default_factory=Counter)

    def matches(self, path: str) -> bool:
        """Exact path, or a prefix when the rule's path ends with ``*``."""
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def take(self, edge: str) -> bool:
        """Consume one use for this edge; False once the rule's count is spent."""
        key = edge if self.per_edge else "*"
        if self.count is not None and self.used[key] >= self.count:
            return False
        self.used[key] += 1
        return True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        """Build a rule from the control payload, rejecting unknown keys so typos show up."""
        known = {"path", "status", "count", "per_edge", "retry_after", "delay_ms", "slowbody_ms",
                 "rate", "stall_after", "stall_ms", "action", "max_age", "headers", "body"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        if not isinstance(data.get("path"), str) or not data["path"].startswith("/"):
            raise ValueError("rule needs a 'path' starting with '/'")
        action = data.get("action")
        if action not in (None, "reset", "truncate", "nocache"):
            raise ValueError("action must be one of reset, truncate, nocache")
        retry_after = data.get("retry_after")
        rate, stall_after, stall_ms = (int(data.get(k) or 0) for k in ("rate", "stall_after", "stall_ms"))
        if min(rate, stall_after, stall_ms) < 0:
            raise ValueError("rate, stall_after and stall_ms must not be negative")
        max_age = int(data["max_age"]) if data.get("max_age") is not None else None
        if max_age is not None and max_age < 0:
            raise ValueError("max_age must not be negative")
        return cls(
            path=data["path"],
            status=int(data["status"]) if data.get("status") is not None else None,
            count=int(data["count"]) if data.get("count") is not None else None,
            per_edge=bool(data.get("per_edge", True)),
            retry_after=str(retry_after) if retry_after is not None else None,
            delay_ms=int(data.get("delay_ms", 0)),
            slowbody_ms=int(data.get("slowbody_ms", 0)),
            rate=rate,
            stall_after=stall_after,
            stall_ms=stall_ms,
            action=action,
            max_age=max_age,
            headers={str(k): str(v) for k, v in (data.get("headers") or {}).items()},
            body=data.get("body"),
        )

    def to_json(self) -> dict[str, Any]:
        """Rule as shown by ``GET /_control/faults``."""
        return {"path": self.path, "status": self.status, "count": self.count, "per_edge": self.per_edge,
                "retry_after": self.retry_after, "delay_ms": self.delay_ms,
                "slowbody_ms": self.slowbody_ms, "rate": self.rate, "stall_after": self.stall_after,
                "stall_ms": self.stall_ms, "action": self.action, "max_age": self.max_age,
                "headers": self.headers,
                "body": self.body, "used": dict(self.used)}


def object_bytes(name: str, size: int) -> bytes:
    """Deterministic content for (name, size), so clients can verify what they received."""
    seed = hashlib.sha256(f"{size}:{name}".encode()).digest()
    block = (seed * (_BLOCK // len(seed) + 1))[:_BLOCK]
    reps, rest = divmod(size, _BLOCK)
    return block * reps + block[:rest]


def object_etag(name: str, size: int) -> str:
    """Strong ETag derived from the same inputs as the content."""
    return '"' + hashlib.sha1(f"{size}:{name}".encode()).hexdigest() + '"'


def parse_size(text: str) -> int | None:
    """``12kb`` -> 12288, ``5b`` -> 5, ``1mb`` -> 1048576; None if not a size."""
    m = _SIZE_RE.match(text)
    if not m:
        return None
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _int(value: str, what: str, minimum: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FaultSpecError(f"bad {what}: {value!r}") from None
    if minimum is not None and number < minimum:
        raise FaultSpecError(f"{what} must be at least {minimum}, not {number}")
    return number


def parse_range(header: str, size: int) -> tuple[int, int] | Literal[False] | None:
    """One byte range of a ``size``-byte object: (first, last) inclusive, False if unsatisfiable,
    None if the header is to be ignored (malformed, or more than one range)."""
    m = _RANGE_RE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix range: the last n bytes
        n = int(last)
        return (size - min(n, size), size - 1) if n > 0 and size > 0 else False
    a = int(first)
    b = int(last) if last else size - 1
    if last and b < a:
        return None  # invalid range-spec: the header is ignored
    if a >= size:
        return False
    return a, min(b, size - 1)


class Origin:
    """Request counters, fault rules and the aiohttp application that uses them."""

    def __init__(self) -> None:
        # A request key is (method, path, edge, rec, shield); see the module docstring.
        self.counts: Counter[Key] = Counter()
        self.first_seen: dict[Key, float] = {}
        self.fail_first: Counter[tuple[str, str]] = Counter()
        self.rules: list[Rule] = []
        self.by_encoding: Counter[tuple[str, str, str, str, str, str]] = Counter()
        self.log: deque[tuple[float, str, str, str]] = deque(maxlen=LOG_SIZE)
        # (*key, Range or "") -> [body bytes written, bodies sent to their end]; one dict serves
        # both views (counts by request key, /_control/sent by range) to stay small.
        self.sent: dict[tuple[str, str, str, str, str, str], list[int]] = {}
        # One [start, end or None, *key] per counted request (GET /_control/concurrency).
        self.spans: deque[list[Any]] = deque(maxlen=LOG_SIZE)

    # -- control -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget counts, fail-first progress and rules."""
        self.counts.clear()
        self.by_encoding.clear()
        self.log.clear()
        self.spans.clear()
        self.sent.clear()
        self.first_seen.clear()
        self.fail_first.clear()
        self.rules.clear()

    def counts_json(self, tiers: bool = False) -> dict[str, Any]:
        """Counts in the shape documented for ``GET /_control/counts`` (``tiers``: with rec, shield, tier)."""
        by_key: dict[Key, list[int]] = {}
        for (*k, _), (nbytes, done) in self.sent.items():
            total = by_key.setdefault(tuple(k), [0, 0])  # type: ignore[arg-type]
            total[0] += nbytes
            total[1] += done
        rows = [{"method": k[0], "path": k[1], "edge": k[2], **_tier_fields(k, tiers), "count": c,
                 "bytes": by_key.get(k, (0, 0))[0], "complete": by_key.get(k, (0, 0))[1]}
                for k, c in sorted(self.counts.items(), key=lambda kv: self.first_seen[kv[0]])]
        encodings = [{"method": k[0], "path": k[1], "edge": k[2], **_tier_fields(k, tiers), "encoding": k[5],
                      "count": c} for k, c in self.by_encoding.items()]
        return {"requests": rows, "total": sum(self.counts.values()), "by_encoding": encodings}

    async def h_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.counts_json(_wants_tiers(request)))

    async def h_sent(self, request: web.Request) -> web.Response:
        """Bodies sent, by (path, edge, Range): ``{"sent": [{"path", "edge", "range", "bytes", "complete"}]}``
        (with ``?tiers=1`` by (path, edge, rec, shield, Range), rows with rec, shield and tier too)."""
        tiers = _wants_tiers(request)
        rows: dict[tuple[str, ...], list[int]] = {}
        for (_, p, e, rec, shield, r), (nbytes, done) in self.sent.items():
            total = rows.setdefault((p, e, rec, shield, r) if tiers else (p, e, r), [0, 0])
            total[0] += nbytes
            total[1] += done
        out = []
        for k, (b, c) in rows.items():
            if tiers:
                p, e, rec, shield, r = k
                out.append({"path": p, "edge": e, **_tier_fields(("", p, e, rec, shield), True), "range": r,
                            "bytes": b, "complete": c})
            else:
                p, e, r = k
                out.append({"path": p, "edge": e, "range": r, "bytes": b, "complete": c})
        return web.json_response({"sent": out})

    async def h_log(self, request: web.Request) -> web.Response:
        """Every counted request: ``{"requests": [[unix_time, method, path, edge], ...]}``, oldest first."""
        return web.json_response({"requests": [list(r) for r in self.log]})

    def concurrency_json(self) -> dict[str, Any]:
        """Start and end of each counted request and the number in flight over time."""
        events: list[tuple[float, int]] = []
        requests = []
        for start, end, *k in self.spans:
            requests.append({"start": start, "end": end, "method": k[0], "path": k[1], "edge": k[2],
                             **_tier_fields(tuple(k), True)})  # type: ignore[arg-type]
            events.append((start, 1))
            if end is not None:
                events.append((end, -1))
        events.sort(key=lambda ev: (ev[0], ev[1]))  # at one instant, ends first
        samples, level, peak = [], 0, 0
        for t, step in events:
            level += step
            peak = max(peak, level)
            samples.append([t, level])
        return {"requests": requests, "samples": samples, "peak": peak, "in_flight": level}

    async def h_concurrency(self, request: web.Request) -> web.Response:
        return web.json_response(self.concurrency_json())

    async def h_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def h_faults_get(self, request: web.Request) -> web.Response:
        return web.json_response({"rules": [r.to_json() for r in self.rules]})

    async def h_faults_post(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            items = data if isinstance(data, list) else [data]
            rules = [Rule.from_json(item) for item in items]
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.rules.extend(rules)
        return web.json_response({"ok": True, "rules": len(self.rules)})

    async def h_faults_delete(self, request: web.Request) -> web.Response:
        self.rules.clear()
        return web.json_response({"ok": True})

    # -- serving -------------------------------------------------------------------------------------
    def plan(self, path: str, edge: str) -> Plan:
        """Turn a path (plus any control rule) into a Plan; raises FaultSpecError on bad params."""
        plan = Plan()
        for rule in self.rules:
            if rule.matches(path) and rule.take(edge):
                self._apply_rule(rule, plan)
                break
        segs = [s for s in path.split("/") if s]
        if segs and segs[0] == "media":
            found = media.answer(path)
            if found is None:
                plan.not_found = True
                return plan
            plan.body, plan.content_type = found
            plan.name, plan.size, plan.is_object = path + ":" + hashlib.sha1(found[0]).hexdigest(), len(found[0]), True
            if media.is_live_manifest(path) and plan.max_age is None:
                plan.max_age = 1
            return plan
        if not segs or segs[0] not in ("obj", "fault"):
            plan.not_found = True
            return plan
        while segs:
            head = segs[0]
            if head == "obj":
                size = parse_size(segs[1]) if len(segs) >= 3 else None
                if size is None:
                    plan.not_found = True
                    return plan
                plan.size, plan.name, plan.is_object = size, "/".join(segs[2:]), True
                return plan
            if head != "fault" or len(segs) < 2:
                break
            kind, args = segs[1], segs[2:]
            if kind == "status" and args:
                self._set_status(plan, _int(args[0], "status"))
                segs = args[1:]
            elif kind == "delay" and args:
                plan.delay_ms += _int(args[0], "delay")
                segs = args[1:]
            elif kind == "slowbody" and args:
                plan.slowbody_ms = _int(args[0], "slowbody")
                segs = args[1:]
            elif kind == "rate" and args:
                plan.rate = _int(args[0], "rate", minimum=1)
                segs = args[1:]
            elif kind == "stall" and len(args) >= 2:
                plan.stall_after = _int(args[0], "stall bytes", minimum=0)
                plan.stall_ms = _int(args[1], "stall ms", minimum=0)
                segs = args[2:]
            elif kind == "reset":
                plan.reset = True
                segs = args
            elif kind == "truncate":
                plan.truncate = True
                segs = args
            elif kind == "nocache":
                plan.nocache = True
                segs = args
            elif kind == "max-age" and args:
                plan.max_age = _int(args[0], "max-age", minimum=0)
                segs = args[1:]
            elif kind == "retry-after" and len(args) >= 2:
                self._set_status(plan, _int(args[0], "status"))
                plan.retry_after = str(_int(args[1], "seconds"))
                segs = args[2:]
            elif kind == "fail-first" and len(args) >= 2:
                n, code = _int(args[0], "count"), _int(args[1], "status")
                key = (path, edge)
                self.fail_first[key] += 1
                if self.fail_first[key] <= n:
                    self._set_status(plan, code)
                segs = args[2:]
            else:
                raise FaultSpecError(f"unknown fault segment: /fault/{kind}")
        else:
            # Path consumed entirely by fault segments: serve the default object.
            return plan
        if segs and segs[0] != "fault" and path.startswith("/fault/"):
            # Free-form tail after a fault (e.g. /fault/delay/100/x): default object named by it.
            plan.name = "/".join(segs)
            return plan
        plan.not_found = True
        return plan

    @staticmethod
    def _set_status(plan: Plan, code: int) -> None:
        if not 200 <= code <= 599:
            raise FaultSpecError(f"status must be 200..599, not {code}")
        if plan.status == 200:  # the first fault that sets a status wins (rules come first)
            plan.status = code

    @staticmethod
    def _apply_rule(rule: Rule, plan: Plan) -> None:
        if rule.status is not None:
            plan.status = rule.status
        plan.retry_after = rule.retry_after
        plan.delay_ms += rule.delay_ms
        plan.slowbody_ms = rule.slowbody_ms
        plan.rate = rule.rate
        plan.stall_after, plan.stall_ms = rule.stall_after, rule.stall_ms
        plan.reset = rule.action == "reset"
        plan.truncate = rule.action == "truncate"
        plan.nocache = rule.action == "nocache"
        if rule.max_age is not None:
            plan.max_age = rule.max_age
        plan.headers.update(rule.headers)
        if rule.body is not None:
            plan.body = rule.body.encode()

    async def h_any(self, request: web.Request) -> web.StreamResponse:
        """Count the request, then answer it according to its Plan (its span ends when this returns)."""
        headers = request.headers
        edge = headers.get(EDGE_HEADER, "-")
        key: Key = (request.method, request.path, edge, headers.get(REC_HEADER, ""), headers.get(SHIELD_HEADER, ""))
        self.counts[key] += 1
        self.by_encoding[(*key, cache_key_encoding(headers.get("Accept-Encoding", "")))] += 1
        now = time.time()
        self.log.append((now, key[0], key[1], edge))
        span = [now, None, *key]
        self.spans.append(span)
        self.first_seen.setdefault(key, time.monotonic())
        try:
            return await self._answer(request, key, edge)
        finally:
            span[1] = time.time()

    async def _answer(self, request: web.Request, key: Key, edge: str) -> web.StreamResponse:
        try:
            plan = self.plan(request.path, edge)
        except FaultSpecError as exc:
            return await self._simple(request, key, 400, f"{exc}\n", {"Cache-Control": "no-store"})
        if plan.delay_ms:
            await asyncio.sleep(plan.delay_ms / 1000)
        if plan.reset:
            _abort(request)
            raise asyncio.CancelledError  # nothing more can be sent on this connection
        if plan.not_found and plan.status == 200:
            return await self._simple(request, key, 404, "not found\n", {})
        return await self._respond(request, key, plan)

    async def _simple(self, request: web.Request, key: Key, status: int, text: str,
                      headers: dict[str, str]) -> web.StreamResponse:
        """A small text answer (400, 404), with its body counted like any other."""
        resp = web.Response(status=status, text=text, headers=headers)
        sent = self._tally(request, key)
        try:
            _check_open(request)
            if sent is not None:  # a Response goes out whole, in one write, at write_eof
                sent(len(text.encode()), True)
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    def _tally(self, request: web.Request, key: Key) -> Sent | None:
        """A function ``sent(n, done)`` recording body bytes as written; None for HEAD (no body).

        Callers record a piece just before handing it to the transport, with no ``await`` in
        between, so a counter read after the client got the bytes always includes them."""
        if request.method == "HEAD":
            return None
        row = self.sent.setdefault((*key, request.headers.get("Range", "")), [0, 0])

        def sent(n: int, done: bool = False) -> None:
            row[0] += n
            row[1] += done
        return sent

    async def _respond(self, request: web.Request, key: Key, plan: Plan) -> web.StreamResponse:
        headers: dict[str, str] = {"X-Origin-Epoch": str(int(time.time()))}
        status = plan.status
        if 200 <= plan.status < 300:
            body = plan.body if plan.body is not None else object_bytes(plan.name, plan.size)
            ctype = plan.content_type or mimetypes.guess_type(plan.name)[0] or "application/octet-stream"
            etag = object_etag(plan.name, plan.size)
            headers["ETag"] = etag
            headers["Cache-Control"] = "no-store" if plan.nocache else CACHEABLE
            if plan.status == 200:
                headers["Accept-Ranges"] = "bytes"
                wanted = request.headers.get("Range")
                if_range = request.headers.get("If-Range")
                span = parse_range(wanted, len(body)) if wanted is not None else None
                if if_range is not None and if_range.strip() != etag:
                    span = None  # the client's copy is another version: send the whole object
                not_modified = (span is None and wanted is None
                                and etag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")))
                if not_modified:
                    status, body = 304, b""
                elif span is False:
                    status = 416
                    headers["Content-Range"] = f"bytes */{len(body)}"
                    headers["Cache-Control"] = "no-store"
                    body, ctype = b"range not satisfiable\n", "text/plain; charset=utf-8"
                elif span:
                    first, last = span
                    status = 206
                    headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
                    body = body[first : last + 1]
        else:
            # Error answers carry no Cache-Control (unless max-age asks for one): the edges decide.
            body = plan.body if plan.body is not None else f"status {plan.status}\n".encode()
            ctype = "text/plain; charset=utf-8"
            if plan.nocache:
                headers["Cache-Control"] = "no-store"
        if plan.max_age is not None and headers.get("Cache-Control") != "no-store":
            headers["Cache-Control"] = f"max-age={plan.max_age}"
        if plan.retry_after is not None:
            headers["Retry-After"] = plan.retry_after
        headers["Content-Type"] = ctype
        headers.update(plan.headers)
        if status == 304:  # no body and no Content-Type; counted as a request, not in what was sent
            del headers["Content-Type"]
            resp304 = web.StreamResponse(status=304, headers=headers)
            with contextlib.suppress(ConnectionError):
                await resp304.prepare(request)
                await resp304.write_eof()
            return resp304
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        sent = self._tally(request, key)
        try:
            await resp.prepare(request)  # a StreamResponse sends its headers here, at once
            if sent is None:  # HEAD
                await resp.write_eof()
                return resp
            if not body and not plan.truncate:
                sent(0, True)
            await self._send_body(request, resp, body, plan, sent)
            if plan.truncate:
                _abort(request)
                raise asyncio.CancelledError
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away (e.g. gave up during a stall): stop quietly
        return resp

    @staticmethod
    async def _send_body(request: web.Request, resp: web.StreamResponse, body: bytes, plan: Plan,
                         sent: Sent) -> None:
        """Write ``body`` (half of it if truncating) at the plan's pace, recording each piece."""
        end = len(body) // 2 if plan.truncate else len(body)
        view = memoryview(body)
        piece = _BLOCK
        if plan.slowbody_ms and body:
            piece = -(-len(body) // min(10, len(body)))
        if plan.rate:
            piece = min(piece, max(1, plan.rate // RATE_TICKS))
        stall_at = plan.stall_after if plan.stall_ms and plan.stall_after < end else -1
        t0 = time.monotonic()
        pos = 0
        while pos < end:
            if pos == stall_at:
                began = time.monotonic()
                await asyncio.sleep(plan.stall_ms / 1000)
                t0 += time.monotonic() - began  # the rate's schedule resumes after the stall
            n = min(piece, end - pos, stall_at - pos if stall_at > pos else piece)
            if plan.slowbody_ms:
                await asyncio.sleep(plan.slowbody_ms / 1000 * n / len(body))
            if plan.rate:
                wait = t0 + (pos + n) / plan.rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            _check_open(request)
            sent(n, pos + n == len(body))  # never True when truncating: end is then half the body
            await resp.write(view[pos : pos + n])
            pos += n

    def app(self) -> web.Application:
        """The aiohttp application with control routes first, everything else counted."""
        app = web.Application()
        app.router.add_get("/_control/counts", self.h_counts)
        app.router.add_post("/_control/reset", self.h_reset)
        app.router.add_get("/_control/log", self.h_log)
        app.router.add_get("/_control/sent", self.h_sent)
        app.router.add_get("/_control/concurrency", self.h_concurrency)
        app.router.add_get("/_control/faults", self.h_faults_get)
        app.router.add_post("/_control/faults", self.h_faults_post)
        app.router.add_delete("/_control/faults", self.h_faults_delete)
        app.router.add_route("*", "/{tail:.*}", self.h_any)
        return app


def _wants_tiers(request: web.Request) -> bool:
    return request.query.get("tiers", "") not in ("", "0")


def tier_of(rec: str, shield: str, edge: str) -> str:
    """Which testbed tier sent a request, as CloudFront's Server-Timing cdn-upstream-layer spells it."""
    return "Origin Shield" if shield else "REC" if rec else "EDGE" if edge != "-" else "-"


def _tier_fields(key: tuple[str, ...], tiers: bool) -> dict[str, str]:
    """``rec``, ``shield`` and ``tier`` of a request key (method, path, edge, rec, shield, ...), if asked."""
    if not tiers:
        return {}
    return {"rec": key[3], "shield": key[4], "tier": tier_of(key[3], key[4], key[2])}


def _check_open(request: web.Request) -> None:
    """Raise ConnectionResetError if the client's connection is gone (nothing could be written)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client connection closed")


def _abort(request: web.Request) -> None:
    """Close the client connection with a TCP RST (SO_LINGER 0), as a crashed origin would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def serve(host: str, port: int, ready_file: Path | None = None) -> None:
    """Run the origin until cancelled; writes ``ready_file`` once it accepts connections."""
    runner = web.AppRunner(Origin().app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}))
        tmp.replace(ready_file)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m prewarm.testbed.origin`` (started detached by the testbed)."""
    ap = argparse.ArgumentParser(description="prewarm testbed origin")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--ready-file", type=Path)
    args = ap.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.ready_file))


if __name__ == "__main__":
    main()
