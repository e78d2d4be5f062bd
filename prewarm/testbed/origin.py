"""Testbed origin: an aiohttp server that generates objects and injects faults.

It stands in for a customer's origin behind CloudFront, so the testbed can show how the
service reacts to every kind of origin behaviour without any network beyond 127.0.0.0/8.

Paths (``...`` is the rest of the path, parsed again, so faults can be chained)::

    GET/HEAD /obj/<n>kb/<name>, /obj/<n>b/<name>, /obj/<n>mb/<name>
                                       object of exactly that size, deterministic bytes
    /fault/status/<code>/...           answer <code> with a small body
    /fault/delay/<ms>/...              wait before sending headers
    /fault/slowbody/<ms>/...           send the body in pieces spread over <ms>
    /fault/reset/...                   abort the connection (RST) without a response
    /fault/truncate/...                declare Content-Length N, send N/2 bytes, close
    /fault/retry-after/<code>/<s>/...  answer <code> (429/503) with ``Retry-After: <s>``
    /fault/fail-first/<n>/<code>/...   answer <code> to the first n requests of that path
                                       from each edge, then go on with ``...``
    /fault/nocache/...                 200 with ``Cache-Control: no-store``

When ``...`` is itself ``obj/<size>/<name>`` that object is served after the fault; otherwise
a 1 KiB object is served. Control endpoints (not counted): ``POST /_control/faults``,
``GET /_control/faults``, ``GET /_control/counts``, ``POST /_control/reset``.

Requests are counted by (method, path, edge), and again by (method, path, edge, encoding) where
the encoding is the request's ``Accept-Encoding`` normalised as CloudFront's cache key does it
("br", "gzip" or ""); ``GET /_control/log`` lists every counted request with its arrival time (for
rate checks). The edge is the ``X-Edge-Pop`` request header
that the testbed nginx adds ("-" for direct requests). nginx's proxy_cache turns HEAD into GET
toward the origin (``proxy_cache_convert_head on``, as CloudFront does), so a HEAD sent to a POP
is counted here as a GET.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

EDGE_HEADER = "X-Edge-Pop"
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
    reset: bool = False
    truncate: bool = False
    nocache: bool = False
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    not_found: bool = False


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
    action: str | None = None  # "reset", "truncate" or "nocache"
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
                 "action", "headers", "body"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        if not isinstance(data.get("path"), str) or not data["path"].startswith("/"):
            raise ValueError("rule needs a 'path' starting with '/'")
        action = data.get("action")
        if action not in (None, "reset", "truncate", "nocache"):
            raise ValueError("action must be one of reset, truncate, nocache")
        retry_after = data.get("retry_after")
        return cls(
            path=data["path"],
            status=int(data["status"]) if data.get("status") is not None else None,
            count=int(data["count"]) if data.get("count") is not None else None,
            per_edge=bool(data.get("per_edge", True)),
            retry_after=str(retry_after) if retry_after is not None else None,
            delay_ms=int(data.get("delay_ms", 0)),
            slowbody_ms=int(data.get("slowbody_ms", 0)),
            action=action,
            headers={str(k): str(v) for k, v in (data.get("headers") or {}).items()},
            body=data.get("body"),
        )

    def to_json(self) -> dict[str, Any]:
        """Rule as shown by ``GET /_control/faults``."""
        return {"path": self.path, "status": self.status, "count": self.count, "per_edge": self.per_edge,
                "retry_after": self.retry_after, "delay_ms": self.delay_ms,
                "slowbody_ms": self.slowbody_ms, "action": self.action, "headers": self.headers,
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


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FaultSpecError(f"bad {what}: {value!r}") from None


class Origin:
    """Request counters, fault rules and the aiohttp application that uses them."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.first_seen: dict[tuple[str, str, str], float] = {}
        self.fail_first: Counter[tuple[str, str]] = Counter()
        self.rules: list[Rule] = []
        self.by_encoding: Counter[tuple[str, str, str, str]] = Counter()
        self.log: deque[tuple[float, str, str, str]] = deque(maxlen=LOG_SIZE)

    # -- control -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget counts, fail-first progress and rules."""
        self.counts.clear()
        self.by_encoding.clear()
        self.log.clear()
        self.first_seen.clear()
        self.fail_first.clear()
        self.rules.clear()

    def counts_json(self) -> dict[str, Any]:
        """Counts in the shape documented for ``GET /_control/counts``."""
        rows = [{"method": m, "path": p, "edge": e, "count": c}
                for (m, p, e), c in sorted(self.counts.items(), key=lambda kv: self.first_seen[kv[0]])]
        encodings = [{"method": m, "path": p, "edge": e, "encoding": enc, "count": c}
                     for (m, p, e, enc), c in self.by_encoding.items()]
        return {"requests": rows, "total": sum(self.counts.values()), "by_encoding": encodings}

    async def h_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.counts_json())

    async def h_log(self, request: web.Request) -> web.Response:
        """Every counted request: ``{"requests": [[unix_time, method, path, edge], ...]}``, oldest first."""
        return web.json_response({"requests": [list(r) for r in self.log]})

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
            elif kind == "reset":
                plan.reset = True
                segs = args
            elif kind == "truncate":
                plan.truncate = True
                segs = args
            elif kind == "nocache":
                plan.nocache = True
                segs = args
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
        plan.reset = rule.action == "reset"
        plan.truncate = rule.action == "truncate"
        plan.nocache = rule.action == "nocache"
        plan.headers.update(rule.headers)
        if rule.body is not None:
            plan.body = rule.body.encode()

    async def h_any(self, request: web.Request) -> web.StreamResponse:
        """Count the request, then answer it according to its Plan."""
        edge = request.headers.get(EDGE_HEADER, "-")
        key = (request.method, request.path, edge)
        self.counts[key] += 1
        self.by_encoding[(*key, cache_key_encoding(request.headers.get("Accept-Encoding", "")))] += 1
        self.log.append((time.time(), *key))
        self.first_seen.setdefault(key, time.monotonic())
        try:
            plan = self.plan(request.path, edge)
        except FaultSpecError as exc:
            return web.Response(status=400, text=f"{exc}\n", headers={"Cache-Control": "no-store"})
        if plan.delay_ms:
            await asyncio.sleep(plan.delay_ms / 1000)
        if plan.reset:
            _abort(request)
            raise asyncio.CancelledError  # nothing more can be sent on this connection
        if plan.not_found and plan.status == 200:
            return web.Response(status=404, text="not found\n")
        return await self._respond(request, plan)

    async def _respond(self, request: web.Request, plan: Plan) -> web.StreamResponse:
        headers: dict[str, str] = {"X-Origin-Epoch": str(int(time.time()))}
        if 200 <= plan.status < 300:
            body = plan.body if plan.body is not None else object_bytes(plan.name, plan.size)
            ctype = mimetypes.guess_type(plan.name)[0] or "application/octet-stream"
            headers["ETag"] = object_etag(plan.name, plan.size)
            headers["Cache-Control"] = "no-store" if plan.nocache else CACHEABLE
        else:
            # Error answers carry no Cache-Control: nginx then caches only what proxy_cache_valid allows.
            body = plan.body if plan.body is not None else f"status {plan.status}\n".encode()
            ctype = "text/plain; charset=utf-8"
            if plan.nocache:
                headers["Cache-Control"] = "no-store"
        if plan.retry_after is not None:
            headers["Retry-After"] = plan.retry_after
        headers["Content-Type"] = ctype
        headers.update(plan.headers)
        resp = web.StreamResponse(status=plan.status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        if plan.truncate:
            await resp.write(body[: len(body) // 2])
            _abort(request)
            raise asyncio.CancelledError
        if plan.slowbody_ms and body:
            pieces = min(10, len(body))
            step = -(-len(body) // pieces)
            for i in range(0, len(body), step):
                await asyncio.sleep(plan.slowbody_ms / 1000 / pieces)
                await resp.write(body[i : i + step])
        else:
            await resp.write(body)
        await resp.write_eof()
        return resp

    def app(self) -> web.Application:
        """The aiohttp application with control routes first, everything else counted."""
        app = web.Application()
        app.router.add_get("/_control/counts", self.h_counts)
        app.router.add_post("/_control/reset", self.h_reset)
        app.router.add_get("/_control/log", self.h_log)
        app.router.add_get("/_control/faults", self.h_faults_get)
        app.router.add_post("/_control/faults", self.h_faults_post)
        app.router.add_delete("/_control/faults", self.h_faults_delete)
        app.router.add_route("*", "/{tail:.*}", self.h_any)
        return app


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
