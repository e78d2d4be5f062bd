"""prewarm.aws.cloudfront against moto in server mode: a real HTTP endpoint on 127.0.0.1, real boto3 clients.

Clients come from ``make_clients()`` with the endpoint given only through ``AWS_ENDPOINT_URL``, so the
standard endpoint chain is tested too. What moto does not do is injected through botocore's own event
hooks on those real clients, and nowhere else:

* moto completes invalidations at once (status ``COMPLETED``); an ``after-call`` hook rewrites the parsed
  GetInvalidation status to ``InProgress`` for the first polls, as CloudFront reports while it works;
* moto never refuses with TooManyInvalidationsInProgress or AccessDenied; a ``before-send`` hook answers
  those requests with CloudFront's XML error body, which botocore parses like a real one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from prewarm.aws.cloudfront import (
    CloudFrontError,
    CloudFrontTimeout,
    batch_paths,
    distribution_for_hosts,
    find_distribution_id,
    invalidate,
    invalidation_paths,
    make_clients,
    upload_report,
)

from .moto_server import create_distribution, http_get, moto_server, reset, use_moto_env

CF_ERROR = ('<?xml version="1.0"?><ErrorResponse xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/">'
            "<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            "<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """One moto server for the module."""
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh moto, reachable through the standard environment variables only."""
    reset(endpoint)
    use_moto_env(monkeypatch, endpoint)
    return endpoint


@pytest.fixture
def cf(aws: str) -> Any:
    client = make_clients()[0]
    assert client.meta.endpoint_url == aws  # boto3 applied AWS_ENDPOINT_URL by itself
    return client


class _Body:
    """The raw body botocore reads a response from (``stream()``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def refuse(cf: Any, operation: str, times: int, code: str, status: int = 400) -> Counter[str]:
    """Answer the first ``times`` requests of ``operation`` with an AWS error; count what was sent."""
    sent: Counter[str] = Counter()

    def before_send(request: Any, **_: Any) -> AWSResponse | None:
        sent["requests"] += 1
        if sent["refused"] >= times:
            return None  # go to moto
        sent["refused"] += 1
        body = CF_ERROR.format(code=code, message=f"{code} (injected)").encode()
        return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Body(body))

    cf.meta.events.register(f"before-send.cloudfront.{operation}", before_send)
    return sent


def report_in_progress(cf: Any, polls: int) -> Counter[str]:
    """GetInvalidation says InProgress for the first ``polls`` polls of each invalidation."""
    seen: Counter[str] = Counter()

    def after_call(parsed: dict[str, Any], **_: Any) -> None:
        inv = parsed.get("Invalidation")
        if inv is None:
            return
        seen[inv["Id"]] += 1
        if seen[inv["Id"]] <= polls:
            inv["Status"] = "InProgress"

    cf.meta.events.register("after-call.cloudfront.GetInvalidation", after_call)
    return seen


def created_invalidations(cf: Any, dist_id: str) -> dict[str, list[str]]:
    """Every invalidation of the distribution (all pages, two a page) -> its paths, from moto."""
    pages = cf.get_paginator("list_invalidations").paginate(DistributionId=dist_id, PaginationConfig={"PageSize": 2})
    ids = [i["Id"] for page in pages for i in page["InvalidationList"].get("Items") or []]
    return {i: cf.get_invalidation(DistributionId=dist_id, Id=i)["Invalidation"]["InvalidationBatch"]["Paths"]
            .get("Items") or [] for i in ids}


# -- invalidations -------------------------------------------------------------------------------

@pytest.mark.parametrize("n_urls", [1, 3000, 7000])
def test_invalidations_are_batched_and_awaited(cf: Any, n_urls: int) -> None:
    dist = create_distribution(cf)
    paths = invalidation_paths([f"https://www.example.com/obj/{i}.js?v=1" for i in range(n_urls)])
    polls = report_in_progress(cf, polls=1)
    slept: list[float] = []
    ids = invalidate(cf, dist["Id"], paths, deadline=time.time() + 60, poll_s=0.5, sleep=slept.append)

    polled = dict(polls)  # before reading the invalidations back (that calls GetInvalidation too)
    expected = batch_paths(paths)
    assert len(ids) == len(expected) == {1: 1, 3000: 1, 7000: 3}[n_urls]
    created = created_invalidations(cf, dist["Id"])
    assert set(created) == set(ids)  # nothing else was created
    assert [created[i] for i in ids] == expected  # exact paths, batch by batch
    assert polled == {i: 2 for i in ids}  # each polled until Completed (InProgress, then Completed)
    assert slept == [0.5]


def test_waits_for_completion(cf: Any) -> None:
    dist = create_distribution(cf)
    polls = report_in_progress(cf, polls=3)
    slept: list[float] = []
    (inv_id,) = invalidate(cf, dist["Id"], ["/a"], deadline=time.time() + 60, poll_s=0.25, sleep=slept.append)
    assert slept == [0.25] * 3 and polls[inv_id] == 4


def test_too_many_invalidations_in_progress_is_retried(cf: Any) -> None:
    dist = create_distribution(cf)
    sent = refuse(cf, "CreateInvalidation", times=3, code="TooManyInvalidationsInProgress")
    slept: list[float] = []
    ids = invalidate(cf, dist["Id"], ["/a", "/b"], deadline=time.time() + 60, poll_s=0.1, sleep=slept.append)

    assert sent == {"requests": 4, "refused": 3}  # botocore did not retry it itself; we did, three times
    assert len(slept) == 3
    for attempt, delay in enumerate(slept):  # exponential with jitter: in [ceiling/2, ceiling]
        assert 0.1 * 2**attempt / 2 <= delay <= 0.1 * 2**attempt
    assert list(created_invalidations(cf, dist["Id"]).values()) == [["/a", "/b"]]
    assert len(ids) == 1


def test_too_many_in_progress_until_the_deadline(cf: Any) -> None:
    dist = create_distribution(cf)
    refuse(cf, "CreateInvalidation", times=10**6, code="TooManyInvalidationsInProgress")
    now = [1000.0]
    with pytest.raises(CloudFrontTimeout, match=r"CreateInvalidation.*deadline passed.*too many invalidations"):
        invalidate(cf, dist["Id"], ["/a"], deadline=1010.0, poll_s=1.0,
                   sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert now[0] == 1010.0  # backed off up to the deadline, not past it
    assert created_invalidations(cf, dist["Id"]) == {}


def test_never_completing_invalidation_raises_at_the_deadline(cf: Any) -> None:
    dist = create_distribution(cf)
    report_in_progress(cf, polls=10**6)
    started = time.monotonic()
    with pytest.raises(CloudFrontTimeout, match=r"deadline passed with 1 of 1 invalidation") as info:
        invalidate(cf, dist["Id"], ["/a"], deadline=time.time() + 1.0, poll_s=0.2)
    assert isinstance(info.value, TimeoutError)
    assert 0.9 <= time.monotonic() - started < 2.0


def test_access_denied_names_the_action(cf: Any) -> None:
    dist = create_distribution(cf)
    refuse(cf, "CreateInvalidation", times=1, code="AccessDenied", status=403)
    with pytest.raises(CloudFrontError, match=r"^cloudfront:CreateInvalidation was denied: AccessDenied") as info:
        invalidate(cf, dist["Id"], ["/a"], deadline=time.time() + 60)
    assert info.value.action == "cloudfront:CreateInvalidation" and info.value.code == "AccessDenied"


# -- distributions -------------------------------------------------------------------------------

def test_distribution_lookup_across_pages(cf: Any) -> None:
    """moto pages ListDistributions by 100 (MaxItems/Marker): 105 distributions make two pages."""
    first_dup = create_distribution(cf, ["dup.example.net"])
    exact = create_distribution(cf, ["static.assets.example.org"])
    for i in range(98):
        create_distribution(cf, [f"filler{i}.example.com"])
    target = create_distribution(cf, ["www.example.com", "example.com"])  # page 2 from here on
    wild = create_distribution(cf, ["*.assets.example.org"])
    create_distribution(cf, ["dup.example.net"])
    create_distribution(cf, [])
    create_distribution(cf, ["other.example.com"])

    pages: Counter[str] = Counter()
    cf.meta.events.register("before-call.cloudfront.ListDistributions", lambda **_: pages.update(["call"]))
    assert find_distribution_id(cf, target["DomainName"].upper() + ".") == target["Id"]
    assert pages["call"] == 2
    assert find_distribution_id(cf, exact["DomainName"]) == exact["Id"]
    with pytest.raises(CloudFrontError, match=r"no distribution has the domain name 'dnope.cloudfront.net'"):
        find_distribution_id(cf, "dnope.cloudfront.net")

    assert distribution_for_hosts(cf, ["WWW.example.com", "example.com."]) == target["DomainName"]
    # A wildcard alias covers one label; an exact alias elsewhere wins, as CloudFront routes it.
    assert distribution_for_hosts(cf, ["img.assets.example.org", "js.assets.example.org"]) == wild["DomainName"]
    assert distribution_for_hosts(cf, ["static.assets.example.org"]) == exact["DomainName"]
    cases = [
        (["a.b.assets.example.org", "nothing.example.com"],
         "no CloudFront distribution has an alias for host.s. a.b.assets.example.org, nothing.example.com"),
        (["dup.example.net"], f"host.s. dup.example.net match several .*{first_dup['DomainName']}"),
        (["www.example.com", "other.example.com"],
         "hosts www.example.com, other.example.com map to different distributions"),
        (["www.example.com", "static.assets.example.org"], "map to different distributions"),
    ]
    for hosts, message in cases:
        with pytest.raises(ValueError, match=message):
            distribution_for_hosts(cf, hosts)


# -- reports -------------------------------------------------------------------------------------

def test_upload_report_and_presigned_url(aws: str) -> None:
    _, s3 = make_clients()
    s3.create_bucket(Bucket="reports")
    body = b"url,pop,error_class\r\nhttps://www.example.com/x?a=1,ATL56-C1,http_404\r\n\xc3\xa9,SIN2-C1,timeout\r\n"
    url = upload_report(s3, "reports", "prewarm/abc/failed_pop_urls.csv", body, expires_s=600)
    assert url.startswith(f"{aws}/reports/prewarm/abc/failed_pop_urls.csv?") and "X-Amz-Signature=" in url
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=600" in url
    data, headers = http_get(url)
    assert data == body and headers["content-type"] == "text/csv"


def test_service_endpoint_variables_win(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_ENDPOINT_URL_<SERVICE> overrides AWS_ENDPOINT_URL, with no code of ours involved."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFRONT", aws)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws)
    cf, s3 = make_clients()
    assert (cf.meta.endpoint_url, s3.meta.endpoint_url) == (aws, aws)
    dist = create_distribution(cf)
    assert find_distribution_id(cf, dist["DomainName"]) == dist["Id"]


def test_unreachable_endpoint_names_the_action(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    cf, _ = make_clients(config=Config(retries={"mode": "standard", "max_attempts": 1}))
    with pytest.raises(CloudFrontError, match=r"^cloudfront:ListDistributions failed: Could not connect"):
        find_distribution_id(cf, "d1.cloudfront.net")


def test_missing_credentials_name_the_action(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cf, s3 = make_clients("us-east-1")
    with pytest.raises(CloudFrontError, match=r"^cloudfront:CreateInvalidation failed: no usable AWS credentials"):
        invalidate(cf, "E123", ["/a"], deadline=time.time() + 60)
    with pytest.raises(CloudFrontError, match=r"^cloudfront:ListDistributions failed: no usable AWS credentials"):
        find_distribution_id(cf, "d1.cloudfront.net")
    with pytest.raises(CloudFrontError, match=r"^s3:PutObject failed: no usable AWS credentials"):
        upload_report(s3, "reports", "k.csv", b"a\n")
