"""A small HTTP client for the prewarm API (standard library only, every call with a timeout)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiError(Exception):
    """The service answered with an HTTP error; keeps the status and the decoded body for callers."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error_message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body
        self.message = str(message)


class PrewarmClient:
    """One method per API call; ``x-api-key`` sent when given, every request bounded by ``timeout_s``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """JSON in, JSON (or raw bytes for non-JSON answers) out; HTTP errors become ApiError."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(exc.code, payload) from None
        return json.loads(raw) if "json" in ctype else raw

    def prewarm(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/prewarm", request)

    def progress(self, req_id: str) -> dict[str, Any]:
        return self.call("GET", "/prewarm", req_id=req_id)

    def summary(self, req_id: str) -> dict[str, Any]:
        return self.call("GET", "/summary", req_id=req_id)

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
