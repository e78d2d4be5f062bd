"""A small HTTP client for the prewarm API (standard library only, every call with a timeout)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

# The service sends a comment after 15 s of silence: a read that waits this long means the stream is dead.
EVENTS_READ_TIMEOUT_S = 45.0
KEEP_ALIVE_EVENT = "keep-alive"  # what ``events(..., heartbeats=True)`` yields for a ``:`` comment


class ApiError(Exception):
    """The service answered with an HTTP error; keeps the status and the decoded body for callers."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error_message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body
        self.message = str(message)


class EventStreamError(ConnectionError):
    """The event stream broke: a read timed out, the connection dropped, or the answer was not SSE."""


def iter_sse(lines: Iterable[bytes], comments: bool = False) -> Iterator[tuple[str, str]]:
    """(event, data) per Server-Sent Events message from raw lines; ``comments`` also yields (KEEP_ALIVE_EVENT, text).

    Follows the SSE rules that matter here: ``data`` lines are joined by newlines, one space after the
    colon is dropped, the event name defaults to ``message``, a message without data is not dispatched.
    """
    event, data = "", []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            if comments:
                yield KEEP_ALIVE_EVENT, line[1:].strip()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


class PrewarmClient:
    """One method per API call; ``x-api-key`` sent when given, every request bounded by ``timeout_s``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _open(self, method: str, path: str, body: Any = None, timeout_s: float | None = None,
              **query: Any) -> Any:
        """The open HTTP response (the caller closes it); HTTP errors become ApiError."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(exc.code, payload) from None

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """JSON in, JSON (or raw bytes for non-JSON answers) out; HTTP errors become ApiError."""
        with self._open(method, path, body, **query) as resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw

    def prewarm(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/prewarm", request)

    def progress(self, req_id: str) -> dict[str, Any]:
        return self.call("GET", "/prewarm", req_id=req_id)

    def summary(self, req_id: str) -> dict[str, Any]:
        return self.call("GET", "/summary", req_id=req_id)

    def events(self, req_id: str, read_timeout_s: float = EVENTS_READ_TIMEOUT_S,
               heartbeats: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) from ``GET /prewarm/events`` until the service closes the stream (after ``done``).

        Error answers raise ApiError before anything is yielded; a read that waits ``read_timeout_s``, a
        dropped connection or a non-SSE answer raise EventStreamError. ``heartbeats`` also yields
        (KEEP_ALIVE_EVENT, {}) per keep-alive comment, so a caller can check its own deadline in silences.
        """
        try:
            resp = self._open("GET", "/prewarm/events", timeout_s=read_timeout_s, req_id=req_id)
        except OSError as exc:  # refused, reset or timed out (URLError is an OSError; HTTP errors are ApiError)
            raise EventStreamError(f"cannot open the event stream: {getattr(exc, 'reason', exc)}") from exc
        with resp:
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                raise EventStreamError(f"the event stream answered {ctype or 'no content type'}, not SSE")
            try:
                for event, text in iter_sse(resp, comments=heartbeats):
                    if event == KEEP_ALIVE_EVENT:
                        yield event, {}
                        continue
                    try:
                        data = json.loads(text)
                    except ValueError:
                        data = {"data": text}
                    yield event, data if isinstance(data, dict) else {"data": data}
            except (OSError, http.client.HTTPException) as exc:  # timeouts are OSErrors too
                raise EventStreamError(f"the event stream broke: {type(exc).__name__}: {exc}") from exc

    def jobs(self, status: str | None = None, limit: int | None = None,
             since: str | datetime | None = None) -> dict[str, Any]:
        """``GET /jobs``: jobs newest first with their progress; ``since`` as a datetime is sent as ISO 8601."""
        if isinstance(since, datetime):
            since = since.isoformat()
        return self.call("GET", "/jobs", status=status, limit=limit, since=since)

    def report(self, req_id: str) -> bytes:
        return self.call("GET", f"/reports/{req_id}.csv")

    def instances(self, desired: int | None = None, req_id: str | None = None,
                  force_stop: bool = False) -> dict[str, Any]:
        if desired is None and not force_stop:
            return self.call("GET", "/instances")
        body: dict[str, Any] = {"force_stop": force_stop}
        if desired is not None:
            body["DesiredCapacity"] = desired
        if req_id:
            body["req_id"] = req_id
        return self.call("POST", "/instances", body)
