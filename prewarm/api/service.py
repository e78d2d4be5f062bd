"""Start (or join) a Ray cluster and run the Serve app on it: shared by ``prewarm serve`` and the demo."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
import urllib.error
import urllib.request
from typing import Any

import ray
from ray import serve

from prewarm.api.app import build_app
from prewarm.settings import Settings

APP_NAME = "prewarm"
log = logging.getLogger("prewarm.api.service")


def start_service(settings: Settings, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  ray_init_kwargs: dict[str, Any] | None = None) -> str:
    """Connect to (or start) Ray, start Serve on host:port, deploy the app; returns the base URL.

    Without PREWARM_API_KEYS the API has no authentication, so it may only listen on loopback.
    """
    if not settings.api_keys and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host} without PREWARM_API_KEYS: the API would be open to "
                         "anyone who can reach it; set PREWARM_API_KEYS or listen on 127.0.0.1")
    started_ray = not ray.is_initialized()
    if started_ray:
        kwargs: dict[str, Any] = {
            "namespace": settings.namespace, "log_to_driver": False,
            # JSON worker logs: each job's lines carry a req_id field (see coordinator.JobLog).
            "logging_config": ray.LoggingConfig(encoding="JSON", log_level="INFO"),
        }
        if address:
            kwargs["address"] = address
        else:  # a new local cluster, never one that happens to be running on this machine already
            kwargs["address"] = "local"
            kwargs.setdefault("include_dashboard", False)
        kwargs.update(ray_init_kwargs or {})
        ray.init(**kwargs)
    try:
        # The API lives on the head only: fetcher nodes come and go, and must not take HTTP connections along.
        serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{port}"
        wait_until_routed(base.replace("0.0.0.0", "127.0.0.1"))
    except BaseException:  # e.g. the port is taken: leave nothing half-started behind
        with contextlib.suppress(Exception):
            serve.shutdown()
        if started_ray:
            ray.shutdown()
        raise
    return base


def wait_until_routed(base: str, timeout_s: float = 60.0) -> None:
    """Return once the proxy routes to the app (it may answer 404 for a moment after deployment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API at {base} did not answer /healthz within {timeout_s:g} s")
        time.sleep(0.2)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def stop_service() -> None:
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
