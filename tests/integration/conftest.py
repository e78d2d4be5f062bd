"""Fixtures for tests that run the whole service: a testbed, a local Ray cluster and Serve."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from prewarm.client import PrewarmClient
from prewarm.schema import FINAL_STATUSES
from prewarm.settings import Settings
from prewarm.testbed import Testbed
from prewarm.testbed.net import free_port

SPEC_POPS = ["ATL56-C1", "SIN2-C1", "DFW55-C3"]

RAY_TEST_KWARGS: dict[str, Any] = {
    "num_cpus": 2,
    "object_store_memory": 100 * 1024 * 1024,
    "include_dashboard": False,
}


def service_settings(testbed: Testbed, **extra: str) -> Settings:
    env = {
        **testbed.env(),
        "PREWARM_FETCH_TIMEOUT": "3",
        "PREWARM_BACKOFF_BASE": "0.05",
        # The testbed says "Error from cloudfront" as CloudFront does, and a retry waits out an error's cache TTL
        # (10 s) up to this cap: short here, so retried faults stay quick.
        "PREWARM_RETRY_AFTER_CAP": "0.5",
        "PREWARM_NAMESPACE": f"prewarm-test-{uuid.uuid4().hex[:8]}",
        "PREWARM_STATE_DIR": tempfile.mkdtemp(prefix="prewarm-state-"),
        **extra,
    }
    return Settings.from_env(env)


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """This module's own testbed, with the spec example's POPs added to the catalogue's."""
    with Testbed(extra_pops=SPEC_POPS, two_address_pops=["SIN2-C1"], workdir=tmp_path_factory.mktemp("cdn")) as tb:
        yield tb


def serve_on_free_port(settings: Settings, **kwargs: Any) -> str:
    """start_service on a free port, trying another if something took it between the check and the bind."""
    from prewarm.api.service import start_service

    for attempt in range(3):
        try:
            return start_service(settings, port=free_port(), **kwargs)
        except RuntimeError as exc:
            if "bind" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


@contextmanager
def running_service(testbed: Testbed, **extra: str) -> Iterator[tuple[PrewarmClient, Settings]]:
    """The whole service on a local Ray cluster, pointed at ``testbed``, with ``extra`` PREWARM_* settings."""
    from prewarm.api.service import stop_service

    settings = service_settings(testbed, **extra)
    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    try:
        yield PrewarmClient(base), settings
    finally:
        stop_service()


@pytest.fixture(scope="module")
def service(cdn: Testbed) -> Iterator[PrewarmClient]:
    """The whole service on a local Ray cluster, pointed at this module's testbed."""
    with running_service(cdn) as (client, _):
        yield client


def wait_final(client: PrewarmClient, req_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = client.progress(req_id)
        if progress["status"] in FINAL_STATUSES:
            return progress
        time.sleep(0.2)
    raise AssertionError(f"job {req_id} did not end within {timeout_s} s: {progress}")


def origin_gets(testbed: Testbed) -> Counter[tuple[str, str]]:
    """(path, edge POP) -> number of GETs the origin saw."""
    counts: Counter[tuple[str, str]] = Counter()
    for row in testbed.origin_counts()["requests"]:
        if row["method"] == "GET":
            counts[(row["path"], row["edge"])] += row["count"]
    return counts


def request_body(urls: list[str], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "url_list": urls, "cf_domain": "www.example.com", "target_type": "pop", "countries": [],
        "regions": [], "pops": SPEC_POPS, "timeout": 2, "header": [], "instance_count": 1,
        "need_invalidate": False,
    }
    body.update(fields)
    return body
