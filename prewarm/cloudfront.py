"""CloudFront and S3 through boto3: invalidations before a warm-up, distributions by alias, reports in S3.

Plain functions over clients passed in, so they run anywhere (a coordinator, the state actor, a test
against moto). Credentials, region and endpoints come from boto3's standard chain: environment,
config files, instance roles; ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_CLOUDFRONT`` and
``AWS_ENDPOINT_URL_S3`` override endpoints.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

MAX_PATHS_PER_INVALIDATION = 3000
"""CloudFront allows 3,000 paths in invalidations in progress at once (15 with wildcards)."""

_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 4})
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "InvalidClientTokenId",
           "SignatureDoesNotMatch", "ExpiredToken"}


class CloudFrontError(Exception):
    """An AWS call failed; the message names the action (``cloudfront:CreateInvalidation``) and why."""


def make_clients(region: str | None = None) -> tuple[Any, Any]:
    """(cloudfront, s3) clients from the standard credential chain, with timeouts and retries."""
    session = boto3.session.Session(region_name=region)
    return session.client("cloudfront", config=_CONFIG), session.client("s3", config=_CONFIG)


def aws_call(action: str, call: Callable[..., Any], **kwargs: Any) -> Any:
    """Run one AWS call, turning botocore's errors into a CloudFrontError that names the action."""
    try:
        return call(**kwargs)
    except NoCredentialsError:
        raise CloudFrontError(f"{action} failed: no AWS credentials found (environment, config files or "
                              "instance role)") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _DENIED:
            raise CloudFrontError(f"{action} was denied: {code}: {message}") from None
        raise CloudFrontError(f"{action} failed: {code}: {message}") from exc
    except BotoCoreError as exc:
        raise CloudFrontError(f"{action} failed: {exc}") from None


def _distributions(cf: Any) -> Any:
    paginator = cf.get_paginator("list_distributions")
    pages = aws_call("cloudfront:ListDistributions", lambda: list(paginator.paginate()))
    for page in pages:
        yield from page.get("DistributionList", {}).get("Items") or []


def find_distribution_id(cf: Any, cf_domain: str) -> str:
    """The id of the distribution whose domain is ``cf_domain`` (every page is searched)."""
    wanted = cf_domain.rstrip(".").lower()
    for dist in _distributions(cf):
        if dist["DomainName"].lower() == wanted:
            return str(dist["Id"])
    raise CloudFrontError(f"cloudfront:ListDistributions: no distribution has the domain {cf_domain}")


def alias_matches(alias: str, host: str) -> bool:
    """CloudFront aliases may be ``*.example.com``: the wildcard stands for exactly one label."""
    alias, host = alias.lower().rstrip("."), host.lower().rstrip(".")
    if alias.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == alias[2:]
    return alias == host


def distribution_for_hosts(cf: Any, hosts: list[str]) -> str:
    """The domain (``dxxxx.cloudfront.net``) of the one distribution whose aliases cover every host.

    ValueError names the hosts when a host matches no distribution, several, or the hosts split over
    distributions.
    """
    dists = [(d["DomainName"], (d.get("Aliases") or {}).get("Items") or []) for d in _distributions(cf)]
    found: dict[str, set[str]] = {}
    for host in hosts:
        found[host] = {domain for domain, aliases in dists if any(alias_matches(a, host) for a in aliases)}
    missing = [h for h, d in found.items() if not d]
    if missing:
        raise ValueError(f"no CloudFront distribution has an alias for {missing}")
    ambiguous = {h: sorted(d) for h, d in found.items() if len(d) > 1}
    if ambiguous:
        raise ValueError(f"hosts match several distributions: {ambiguous}")
    domains = {next(iter(d)) for d in found.values()}
    if len(domains) > 1:
        raise ValueError(f"the hosts belong to different distributions {sorted(domains)}: one request per "
                         "distribution")
    return domains.pop()


def invalidation_paths(urls: list[str]) -> list[str]:
    """The paths to invalidate, de-duplicated in order.

    The query string is kept: CloudFront matches an invalidation path with a query string against the
    cached object of that query string when the cache key includes query strings (and a path without one
    would leave those versions cached). Percent-encoding is kept as the viewer sent it.
    """
    paths: dict[str, None] = {}
    for url in urls:
        parts = urlsplit(url)
        path = parts.path or "/"
        paths[f"{path}?{parts.query}" if parts.query else path] = None
    return list(paths)


def batch_paths(paths: list[str], size: int = MAX_PATHS_PER_INVALIDATION) -> list[list[str]]:
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def invalidate(cf: Any, distribution_id: str, paths: list[str], deadline: float, *, poll_s: float = 2.0,
               sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> list[str]:
    """Invalidate ``paths`` in as few invalidations as CloudFront allows, and wait until all completed.

    ``TooManyInvalidationsInProgress`` is retried with backoff; everything is bounded by ``deadline``
    (epoch seconds). Returns the invalidation ids.
    """
    ids: list[str] = []
    for batch in batch_paths(paths):
        attempt = 0
        while True:
            try:
                answer = aws_call(
                    "cloudfront:CreateInvalidation", cf.create_invalidation, DistributionId=distribution_id,
                    InvalidationBatch={"Paths": {"Quantity": len(batch), "Items": batch},
                                       "CallerReference": f"prewarm-{uuid.uuid4()}"},
                )
                ids.append(answer["Invalidation"]["Id"])
                break
            except CloudFrontError as exc:
                if "TooManyInvalidationsInProgress" not in str(exc):
                    raise
                attempt += 1
                delay = min(60.0, poll_s * 2 ** attempt) * random.uniform(0.5, 1.0)
                if clock() + delay >= deadline:
                    raise CloudFrontError("cloudfront:CreateInvalidation: too many invalidations in progress "
                                          "until the job's deadline") from None
                sleep(delay)
    pending = list(ids)
    while pending:
        for inv_id in list(pending):
            answer = aws_call("cloudfront:GetInvalidation", cf.get_invalidation, DistributionId=distribution_id,
                              Id=inv_id)
            if answer["Invalidation"]["Status"].lower() == "completed":
                pending.remove(inv_id)
        if pending:
            if clock() + poll_s >= deadline:
                raise CloudFrontError(f"cloudfront:GetInvalidation: {len(pending)} invalidation(s) still in "
                                      "progress at the job's deadline")
            sleep(poll_s)
    return ids


def upload_report(s3: Any, bucket: str, key: str, body: bytes) -> None:
    aws_call("s3:PutObject", s3.put_object, Bucket=bucket, Key=key, Body=body, ContentType="text/csv")


def report_url(s3: Any, bucket: str, key: str, expires_s: int = 3600) -> str:
    """A presigned GET URL for the report (computed locally, no network call)."""
    return str(aws_call("s3:GetObject (presign)", s3.generate_presigned_url, ClientMethod="get_object",
                        Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s))
