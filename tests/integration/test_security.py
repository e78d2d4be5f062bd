"""Nobody let in: API keys, the private-address guard on POP addresses, and input caps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from prewarm.api.service import start_service, stop_service
from prewarm.client import ApiError, PrewarmClient
from prewarm.net.resolve import Resolver
from prewarm.settings import Settings
from prewarm.testbed import Testbed

from .conftest import (
    RAY_TEST_KWARGS,
    SPEC_POPS,
    free_port,
    request_body,
    serve_on_free_port,
    service_settings,
    wait_final,
)

KEYS = ("first-key-0123456789", "second-key-9876543210")


@pytest.fixture(scope="module")
def guarded(cdn: Testbed) -> Iterator[PrewarmClient]:
    """A service with API keys, small input caps, and private edge addresses NOT allowed."""
    settings = service_settings(
        cdn, PREWARM_API_KEYS=",".join(KEYS), PREWARM_ALLOW_PRIVATE_EDGES="0", PREWARM_MAX_URLS="10",
        PREWARM_MAX_BODY_BYTES="8192", PREWARM_WEBHOOK_SECRET="s3cret",
    )
    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    try:
        yield PrewarmClient(base, api_key=KEYS[1])
    finally:
        stop_service()


def status_of(client: PrewarmClient, method: str, path: str, body: object = None) -> tuple[int, dict]:
    try:
        client.call(method, path, body)
    except ApiError as exc:
        return exc.status, exc.body
    return 200, {}


def test_every_endpoint_but_healthz_needs_a_valid_key(guarded: PrewarmClient) -> None:
    anonymous = PrewarmClient(guarded.base_url)
    wrong = PrewarmClient(guarded.base_url, api_key="first-key-0123456788")
    assert anonymous.call("GET", "/healthz")["status"] == "ok"
    for client in (anonymous, wrong):
        for method, path, body in (("POST", "/prewarm", {}), ("GET", "/prewarm?req_id=x", None),
                                   ("GET", "/summary?req_id=x", None), ("GET", "/instances", None),
                                   ("POST", "/instances", {"DesiredCapacity": 1}), ("GET", "/docs", None),
                                   ("GET", "/openapi.json", None)):
            status, answer = status_of(client, method, path, body)
            assert status == 403, (method, path)
            assert answer["status"] == "Failed" and "x-api-key" in answer["error_message"]
    for key in KEYS:
        assert PrewarmClient(guarded.base_url, api_key=key).call("GET", "/instances")["status"] == "success"


def test_private_edge_addresses_are_refused(guarded: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    req_id = guarded.prewarm(request_body([cdn.url("/obj/1kb/ssrf")]))["request_id"]
    progress = wait_final(guarded, req_id)
    assert progress["status"] == "FAILED" and "loopback" in progress["error_message"]
    summary = guarded.summary(req_id)
    assert summary["failure_pops"] == SPEC_POPS
    assert cdn.origin_counts()["total"] == 0  # nothing was fetched from anywhere


def test_private_callback_addresses_are_refused(guarded: PrewarmClient, cdn: Testbed) -> None:
    for url, why in (("http://127.0.0.1:9/hook", "loopback"),
                     ("http://169.254.169.254/latest/", "169.254.169.254 is a"),
                     ("https://localhost/hook", "loopback")):
        status, answer = status_of(guarded, "POST", "/prewarm",
                                   request_body([cdn.url("/obj/1kb/hooked")], callback_url=url))
        assert status == 400, url
        assert answer["error_message"].startswith("field 'callback_url'") and why in answer["error_message"], answer


def test_resolver_guard_reasons(cdn: Testbed) -> None:
    resolver = Resolver((cdn.nameserver,), 5.0)
    refused = asyncio.run(resolver.pop_addresses(cdn.cf_domain, ["ATL56-C1"], allow_private=False))
    assert refused[0].addresses == [] and "loopback" in (refused[0].problem or "")
    allowed = asyncio.run(resolver.pop_addresses(cdn.cf_domain, ["ATL56-C1"], allow_private=True))
    assert allowed[0].addresses == cdn.pop_addresses["ATL56-C1"] and allowed[0].problem is None


def test_caps_say_so_when_hit(guarded: PrewarmClient) -> None:
    urls = [f"https://www.example.com/{i}" for i in range(11)]
    status, answer = status_of(guarded, "POST", "/prewarm", request_body(urls))
    assert status == 400 and "at most 10" in answer["error_message"] and "PREWARM_MAX_URLS" in answer["error_message"]
    big = request_body(["https://www.example.com/" + "a" * 2000] * 5)
    status, answer = status_of(guarded, "POST", "/prewarm", big)
    assert status == 413 and "PREWARM_MAX_BODY_BYTES" in answer["error_message"]


def test_no_keys_means_loopback_only() -> None:
    with pytest.raises(ValueError, match="PREWARM_API_KEYS"):
        start_service(Settings(), host="0.0.0.0", port=free_port())
