"""CloudFront and S3 through boto3 against moto in server mode (a real HTTP endpoint on 127.0.0.1)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from prewarm.cloudfront import (
    CloudFrontError,
    batch_paths,
    distribution_for_hosts,
    find_distribution_id,
    invalidate,
    invalidation_paths,
    make_clients,
    report_url,
    upload_report,
)

from .moto_server import client, create_distribution, moto_server, reset


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def cf(endpoint: str) -> Any:
    reset(endpoint)
    return client("cloudfront", endpoint)


def all_invalidations(cf: Any, dist_id: str) -> list[list[str]]:
    paginator = cf.get_paginator("list_invalidations")
    ids = [i["Id"] for page in paginator.paginate(DistributionId=dist_id)
           for i in (page["InvalidationList"].get("Items") or [])]
    return [cf.get_invalidation(DistributionId=dist_id, Id=i)["Invalidation"]["InvalidationBatch"]["Paths"]["Items"]
            for i in ids]


def test_invalidation_paths_keep_query_strings_and_dedupe() -> None:
    urls = ["https://a.example.com/x/y.js?v=2", "https://a.example.com/x/y.js?v=2", "https://a.example.com/",
            "https://a.example.com/%E2%9C%93.png", "https://a.example.com"]
    assert invalidation_paths(urls) == ["/x/y.js?v=2", "/", "/%E2%9C%93.png"]
    assert [len(b) for b in batch_paths([str(i) for i in range(7000)])] == [3000, 3000, 1000]


@pytest.mark.parametrize(("n_urls", "batches"), [(1, [1]), (3000, [3000]), (7000, [3000, 3000, 1000])])
def test_invalidations_are_batched(cf: Any, n_urls: int, batches: list[int]) -> None:
    dist = create_distribution(cf)
    paths = invalidation_paths([f"https://www.example.com/obj/{i}.js" for i in range(n_urls)])
    ids = invalidate(cf, dist["Id"], paths, deadline=__import__("time").time() + 60, poll_s=0.01)
    assert len(ids) == len(batches)
    created = all_invalidations(cf, dist["Id"])
    assert sorted(len(b) for b in created) == sorted(batches)
    assert sorted(p for b in created for p in b) == sorted(paths)


def test_too_many_invalidations_in_progress_is_retried(cf: Any) -> None:
    dist = create_distribution(cf)
    refusals = {"left": 2, "calls": 0}

    def refuse(**_: Any) -> Any:  # the error comes back through botocore's own error handling
        refusals["calls"] += 1
        if refusals["left"] > 0:
            refusals["left"] -= 1
            error = {"Error": {"Code": "TooManyInvalidationsInProgress", "Message": "slow down"},
                     "ResponseMetadata": {"HTTPStatusCode": 400}}
            return AWSResponse("http://moto", 400, {}, None), error
        return None

    cf.meta.events.register("before-call.cloudfront.CreateInvalidation", refuse)
    slept: list[float] = []
    ids = invalidate(cf, dist["Id"], ["/a"], deadline=__import__("time").time() + 600, poll_s=0.01,
                     sleep=slept.append)
    assert len(ids) == 1 and refusals["calls"] == 3 and len(slept) == 2
    assert all_invalidations(cf, dist["Id"]) == [["/a"]]


def test_waits_until_completed_and_gives_up_at_the_deadline(cf: Any) -> None:
    dist = create_distribution(cf)
    in_progress = {"left": 3}

    def still_running(parsed: dict[str, Any], **_: Any) -> None:
        # moto completes invalidations at once; report InProgress for the first polls, as CloudFront does.
        if in_progress["left"] > 0:
            in_progress["left"] -= 1
            parsed["Invalidation"]["Status"] = "InProgress"

    cf.meta.events.register("after-call.cloudfront.GetInvalidation", still_running)
    slept: list[float] = []
    invalidate(cf, dist["Id"], ["/a"], deadline=__import__("time").time() + 60, poll_s=0.5, sleep=slept.append)
    assert slept == [0.5, 0.5, 0.5]

    in_progress["left"] = 10**6
    now = [1000.0]
    with pytest.raises(CloudFrontError, match="still in progress at the job's deadline"):
        invalidate(cf, dist["Id"], ["/b"], deadline=1003.0, poll_s=1.0,
                   sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])


def test_distribution_lookup_across_pages(cf: Any) -> None:
    dists = [create_distribution(cf, [f"site{i}.example.com"]) for i in range(7)]
    wild = create_distribution(cf, ["*.assets.example.org"])
    create_distribution(cf, ["dup.example.net"])
    create_distribution(cf, ["dup.example.net.", "other.example.net"])

    real = cf.get_paginator
    cf.get_paginator = lambda name: SmallPages(real(name))  # two items a page: paging must be followed
    assert find_distribution_id(cf, dists[6]["DomainName"].upper()) == dists[6]["Id"]
    assert distribution_for_hosts(cf, ["site5.example.com"]) == dists[5]["DomainName"]
    assert distribution_for_hosts(cf, ["img.assets.example.org", "js.assets.example.org"]) == wild["DomainName"]
    for hosts, words in ((["nothing.example.com"], "no CloudFront distribution has an alias for"),
                         (["a.b.assets.example.org"], "no CloudFront distribution"),
                         (["dup.example.net"], "several distributions"),
                         (["site1.example.com", "site2.example.com"], "different distributions")):
        with pytest.raises(ValueError, match=words):
            distribution_for_hosts(cf, hosts)
    with pytest.raises(CloudFrontError, match="no distribution has the domain"):
        find_distribution_id(cf, "dnope.cloudfront.net")


class SmallPages:
    """A real paginator asked for two items a page."""

    def __init__(self, paginator: Any) -> None:
        self._paginator = paginator

    def paginate(self, **kwargs: Any) -> Any:
        return self._paginator.paginate(PaginationConfig={"PageSize": 2}, **kwargs)


def test_report_upload_and_presigned_url(endpoint: str) -> None:
    reset(endpoint)
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket="reports")
    body = b"url,pop,error_class\nhttps://www.example.com/x,ATL56-C1,http_404\n"
    upload_report(s3, "reports", "prewarm/abc/failed_pop_urls.csv", body)
    url = report_url(s3, "reports", "prewarm/abc/failed_pop_urls.csv", 600)
    assert "X-Amz-Signature" in url or "Signature" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == body


def test_missing_credentials_name_the_action(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    cf, _ = make_clients("us-east-1")
    with pytest.raises(CloudFrontError, match="cloudfront:ListDistributions failed: no AWS credentials"):
        find_distribution_id(cf, "d1.cloudfront.net")
