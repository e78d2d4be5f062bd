"""The service's AWS paths end to end against moto in server mode: need_invalidate, cf_domain from
CloudFront aliases, and reports uploaded to S3 with a presigned URL."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from prewarm.client import ApiError, PrewarmClient
from prewarm.testbed import Testbed

from .conftest import (
    RAY_TEST_KWARGS,
    origin_gets,
    request_body,
    serve_on_free_port,
    service_settings,
    wait_final,
)
from .moto_server import CREDENTIALS, client, create_distribution, moto_server, reset

BUCKET = "prewarm-reports"
POPS = ["ATL56-C1", "DFW55-C3"]


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto on loopback with two distributions and a bucket; boto3 in every Ray worker points at it."""
    with moto_server() as endpoint:
        saved = {k: os.environ.get(k) for k in (*CREDENTIALS, "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")}
        os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"})
        try:
            cf = client("cloudfront", endpoint)
            dist = create_distribution(cf, ["alias.example.net", "*.cdn.example.net"])
            other = create_distribution(cf, ["other.example.net"])
            client("s3", endpoint).create_bucket(Bucket=BUCKET)
            yield {"endpoint": endpoint, "cf": cf, "dist": dist, "other": other}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def edge(aws: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A testbed whose distribution is the one moto created (its POP names use moto's domain)."""
    label = aws["dist"]["DomainName"].split(".")[0]
    with Testbed(pops=POPS, distribution=label, workdir=tmp_path_factory.mktemp("aws-cdn")) as tb:
        yield tb


@pytest.fixture(scope="module")
def api(aws: dict[str, Any], edge: Testbed) -> Iterator[PrewarmClient]:
    from prewarm.api.service import stop_service

    settings = service_settings(edge, PREWARM_REPORT_BUCKET=BUCKET, PREWARM_REPORT_PREFIX="runs/")
    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    try:
        yield PrewarmClient(base)
    finally:
        stop_service()


def invalidated_paths(aws: dict[str, Any]) -> list[list[str]]:
    cf, dist_id = aws["cf"], aws["dist"]["Id"]
    listing = cf.list_invalidations(DistributionId=dist_id)["InvalidationList"].get("Items") or []
    return [cf.get_invalidation(DistributionId=dist_id, Id=i["Id"])["Invalidation"]["InvalidationBatch"]["Paths"]
            ["Items"] for i in listing]


def test_need_invalidate_then_warm_and_report_in_s3(api: PrewarmClient, edge: Testbed, aws: dict[str, Any]) -> None:
    edge.reset()
    paths = ["/obj/1kb/inv-a", "/obj/1kb/inv-b?v=2", "/fault/status/404/inv-gone"]
    urls = [edge.url(p) for p in paths]
    body = request_body(urls, pops=POPS, cf_domain=aws["dist"]["DomainName"], need_invalidate=True)
    req_id = api.prewarm(body)["request_id"]
    progress = wait_final(api, req_id)
    assert (progress["status"], progress["success_count"], progress["failure_count"]) == ("FINISHED", 4, 2)
    assert invalidated_paths(aws) == [paths]  # one invalidation holding exactly the requested paths
    gets = origin_gets(edge)
    assert gets[("/obj/1kb/inv-a", "ATL56-C1")] == 1 and gets[("/obj/1kb/inv-a", "DFW55-C3")] == 1

    summary = api.summary(req_id)
    report = summary["failure_pop_urls_report"]
    assert report.startswith(aws["endpoint"]) and f"runs/{req_id}/failed_pop_urls.csv" in report
    with urllib.request.urlopen(report, timeout=10) as resp:
        assert resp.read() == api.report(req_id)
    assert b"inv-gone" in api.report(req_id)


def test_cf_domain_from_cloudfront_aliases(api: PrewarmClient, edge: Testbed, aws: dict[str, Any]) -> None:
    edge.reset()
    # No CNAME leads anywhere for these hosts (the testbed's DNS answers NXDOMAIN): the aliases decide.
    urls = ["http://alias.example.net/obj/1kb/aliased", "http://img.cdn.example.net/obj/1kb/aliased2"]
    body = request_body(urls, pops=POPS)
    del body["cf_domain"]
    progress = wait_final(api, api.prewarm(body)["request_id"])
    assert (progress["status"], progress["success_count"]) == ("FINISHED", 4)
    assert origin_gets(edge)[("/obj/1kb/aliased", "DFW55-C3")] == 1

    for hosts, words in ((["http://alias.example.net/a", "http://other.example.net/b"], "different distributions"),
                         (["http://unknown.example.net/a"], "no CloudFront distribution has an alias")):
        body = request_body(hosts, pops=POPS)
        del body["cf_domain"]
        with pytest.raises(ApiError) as info:
            api.prewarm(body)
        assert info.value.status == 400 and words in info.value.body["error_message"]
        assert "field 'cf_domain'" in info.value.body["error_message"]


def test_auto_tiering_reads_the_distributions_origin_shield(api: PrewarmClient, edge: Testbed,
                                                            aws: dict[str, Any]) -> None:
    """``tiering: auto`` asks CloudFront (ListDistributions) whether the distribution's origin has Origin Shield on:
    shield when it has, rec when it has not."""
    cf, dist_id = aws["cf"], aws["dist"]["Id"]

    def shield(enabled: bool) -> None:
        current = cf.get_distribution_config(Id=dist_id)
        config = current["DistributionConfig"]
        config["Origins"]["Items"][0]["OriginShield"] = (
            {"Enabled": True, "OriginShieldRegion": "us-east-1"} if enabled else {"Enabled": False})
        cf.update_distribution(Id=dist_id, IfMatch=current["ETag"], DistributionConfig=config)

    edge.reset()
    body = request_body([edge.url("/obj/1kb/auto-tiering")], pops=POPS, cf_domain=aws["dist"]["DomainName"])
    plain = wait_final(api, api.prewarm(body)["request_id"])
    assert plain["status"] == "FINISHED" and plain["tiering"] == "rec"
    shield(True)
    try:
        shielded = wait_final(api, api.prewarm(body)["request_id"])
        assert shielded["status"] == "FINISHED" and shielded["tiering"] == "shield"
    finally:
        shield(False)


def test_a_failed_invalidation_fails_the_job(api: PrewarmClient, edge: Testbed, aws: dict[str, Any]) -> None:
    # Last in the module: CloudFront forgets every distribution, so the one the POPs belong to is unknown.
    reset(aws["endpoint"])
    body = request_body([edge.url("/obj/1kb/never")], pops=POPS, cf_domain=edge.cf_domain, need_invalidate=True)
    progress = wait_final(api, api.prewarm(body)["request_id"])
    assert progress["status"] == "FAILED"
    assert "invalidation failed" in progress["error_message"]
    assert "no distribution has the domain" in progress["error_message"]
    assert all(row["path"] != "/obj/1kb/never" for row in edge.origin_counts()["requests"])  # nothing fetched

