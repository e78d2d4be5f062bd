"""CloudFront and S3 through boto3: invalidations before a warm-up, distributions by alias, reports in S3.

Plain functions over clients passed in, so they run anywhere (a coordinator, the state actor, a test
against moto) and hold no state between calls. Credentials, region and endpoints come from boto3's
standard chain: environment, shared config/credentials files, container or instance roles. Endpoints
are overridden the standard way, which boto3 >= 1.28 applies by itself: ``AWS_ENDPOINT_URL`` for every
service, ``AWS_ENDPOINT_URL_CLOUDFRONT`` / ``AWS_ENDPOINT_URL_S3`` for one (or ``endpoint_url`` in the
config file's profile).

Every AWS failure comes out as a :class:`CloudFrontError` naming the IAM action (``cloudfront:...`` or
``s3:...``) and the reason, so a job's error message tells an operator which permission or setting to fix.
"""

from __future__ import annotations

import math
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # boto3 and botocore load on first AWS use: most jobs and every fetcher never need them
    from botocore.config import Config

MAX_PATHS_PER_INVALIDATION = 3000
"""CloudFront allows invalidations for 3,000 individual paths per distribution in progress at once."""
MAX_WILDCARD_PATHS = 15
"""...and, independently, 15 wildcard (``*``) paths in progress at once."""
MAX_PATH_LENGTH = 4000
"""The longest invalidation path CloudFront accepts."""
MAX_BACKOFF_S = 30.0
"""Longest wait between two CreateInvalidation attempts refused with TooManyInvalidationsInProgress."""


@cache
def client_config() -> Config:
    """Every call is bounded in time; throttling and transient errors are retried by botocore itself."""
    from botocore.config import Config

    return Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 5})


_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden"}
_BAD_CREDENTIALS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                    "InvalidAccessKeyId", "UnrecognizedClientException", "InvalidToken", "AuthFailure"}
_TOO_MANY = "TooManyInvalidationsInProgress"
# RFC 1738's unsafe characters: CloudFront wants these (and non-ASCII) percent-encoded in invalidation
# paths, and every other character left as it is.
_UNSAFE = frozenset(' <>"#%{}|\\^~[]`')
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# Query parameters of CloudFront signed URLs: not part of the object's identity (the docs say to
# invalidate a signed URL by the part before the "?").
_SIGNED_URL_PARAMS = frozenset({"Expires", "Signature", "Key-Pair-Id", "Policy"})


class CloudFrontError(Exception):
    """An AWS call failed; the message names the action (``cloudfront:CreateInvalidation``) and why.

    ``action`` and ``code`` (the AWS error code, "" when there is none) let callers branch without
    parsing the message.
    """

    def __init__(self, message: str, *, action: str = "", code: str = "") -> None:
        super().__init__(message)
        self.action = action
        self.code = code

    def __reduce__(self) -> Any:
        # Keep action and code when the error crosses a process boundary (Ray pickles exceptions).
        return _rebuild_error, (type(self), str(self), self.action, self.code)


class CloudFrontTimeout(CloudFrontError, TimeoutError):
    """The deadline passed before CloudFront accepted or completed the invalidations."""


def _rebuild_error(cls: type[CloudFrontError], message: str, action: str, code: str) -> CloudFrontError:
    return cls(message, action=action, code=code)


def make_clients(region: str | None = None, *, config: Config | None = None) -> tuple[Any, Any]:
    """(cloudfront, s3) clients from boto3's standard credential, region and endpoint chain.

    ``client_config()`` bounds every call (connect and read timeouts, standard retry mode); ``config``
    overrides parts of it. The S3 client signs with SigV4. Creating the clients makes no network call.
    """
    import boto3.session
    from botocore.config import Config

    base = client_config()
    merged = base.merge(config) if config is not None else base
    session = boto3.session.Session(region_name=region)
    # SigV4 for presigned report URLs: botocore may otherwise presign with SigV2, which S3 is retiring.
    s3_config = Config(signature_version="s3v4").merge(merged)
    return session.client("cloudfront", config=merged), session.client("s3", config=s3_config)


def _error(action: str, exc: Exception) -> CloudFrontError:
    """botocore's exception -> a CloudFrontError whose message says which action failed and why."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return CloudFrontError(
            f"{action} failed: no usable AWS credentials ({exc}); looked in the environment, the shared "
            "credentials and config files, and container/instance roles",
            action=action, code="NoCredentials",
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DENIED or (status == 403 and code not in _BAD_CREDENTIALS):
            return CloudFrontError(f"{action} was denied: {code or status}: {message or 'access denied'}",
                                   action=action, code=code or "AccessDenied")
        if code in _BAD_CREDENTIALS:
            return CloudFrontError(f"{action} failed: AWS rejected the credentials: {code}: {message}",
                                   action=action, code=code)
        return CloudFrontError(f"{action} failed: {code or status}: {message}", action=action, code=code)
    return CloudFrontError(f"{action} failed: {exc}", action=action)


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore's exceptions raised inside the block into a CloudFrontError naming ``action``."""
    try:
        yield
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded already: the block used boto3

        if isinstance(exc, BotoCoreError | ClientError):
            raise _error(action, exc) from exc
        raise


# -- distributions -------------------------------------------------------------------------------

def _distributions(cf: Any) -> Iterator[dict[str, Any]]:
    """Every distribution summary, page after page (ListDistributions returns at most 100 a page)."""
    with aws_errors("cloudfront:ListDistributions"):
        for page in cf.get_paginator("list_distributions").paginate():
            yield from page.get("DistributionList", {}).get("Items") or []


def _norm_host(name: str) -> str:
    return name.strip().lower().rstrip(".")


def find_distribution_id(cf: Any, cf_domain: str) -> str:
    """The id of the distribution whose ``DomainName`` is ``cf_domain`` (case-insensitive).

    Invalidations are made by id while requests name the ``dxxxx.cloudfront.net`` domain; pages are read
    until it is found.
    """
    wanted = _norm_host(cf_domain)
    for dist in _distributions(cf):
        if _norm_host(dist["DomainName"]) == wanted:
            return str(dist["Id"])
    raise CloudFrontError(f"cloudfront:ListDistributions: no distribution has the domain name {cf_domain!r}",
                          action="cloudfront:ListDistributions", code="NoSuchDistribution")


def origin_shield_enabled(cf: Any, cf_domain: str) -> bool:
    """Whether any origin of the distribution of ``cf_domain`` has Origin Shield on (ListDistributions' summaries
    carry each origin's ``OriginShield``)."""
    wanted = _norm_host(cf_domain)
    for dist in _distributions(cf):
        if _norm_host(dist["DomainName"]) == wanted:
            origins = (dist.get("Origins") or {}).get("Items") or []
            return any((origin.get("OriginShield") or {}).get("Enabled") for origin in origins)
    raise CloudFrontError(f"cloudfront:ListDistributions: no distribution has the domain name {cf_domain!r}",
                          action="cloudfront:ListDistributions", code="NoSuchDistribution")


def on_ec2() -> bool:
    """Whether this machine says it is an EC2 instance (its DMI vendor), so an instance role may hold credentials."""
    for path in ("/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/board_vendor"):
        try:
            if "amazon" in Path(path).read_text().lower():
                return True
        except OSError:
            continue
    return False


def has_credentials() -> bool:
    """Whether boto3's credential chain finds any. Off EC2 the instance-metadata provider is left out: it would
    try a link-local address on every job that only wanted to know whether to ask."""
    import botocore.session

    session = botocore.session.get_session()
    if not on_ec2():
        session.get_component("credential_provider").remove("iam-role")
    return session.get_credentials() is not None


def alias_matches(alias: str, host: str) -> bool:
    """Whether a distribution alias covers ``host``: ``*.example.com`` stands for exactly one label."""
    alias, host = _norm_host(alias), _norm_host(host)
    if alias.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == alias[2:]
    return alias == host


def distribution_by_alias(hosts: list[str]) -> str:
    """The distribution whose aliases cover ``hosts``, with the default credentials; ValueError if none."""
    try:
        return distribution_for_hosts(make_clients()[0], hosts)
    except CloudFrontError as exc:
        raise ValueError(str(exc)) from None


def distribution_for_hosts(cf: Any, hosts: list[str]) -> str:
    """The ``DomainName`` (``dxxxx.cloudfront.net``) of the one distribution whose aliases cover every host.

    As CloudFront routes requests, an exact alias wins over a wildcard alias (``www.example.com`` in one
    distribution, ``*.example.com`` in another). ValueError, naming the hosts, when a host matches no
    alias, when a host matches several distributions equally well, or when the hosts belong to different
    distributions (one warm-up covers one distribution).
    """
    if not hosts:
        raise ValueError("no hosts given to look up a CloudFront distribution for")
    names = list(dict.fromkeys(_norm_host(h) for h in hosts))
    exact: dict[str, set[str]] = {h: set() for h in names}
    wild: dict[str, set[str]] = {h: set() for h in names}
    for dist in _distributions(cf):
        domain = str(dist["DomainName"])
        for alias in (dist.get("Aliases") or {}).get("Items") or []:
            for host in names:
                if alias_matches(alias, host):
                    (wild if alias.startswith("*.") else exact)[host].add(domain)
    found = {h: exact[h] or wild[h] for h in names}
    missing = [h for h in names if not found[h]]
    if missing:
        raise ValueError(f"no CloudFront distribution has an alias for host(s) {', '.join(missing)}")
    ambiguous = {h: sorted(d) for h, d in found.items() if len(d) > 1}
    if ambiguous:
        detail = "; ".join(f"{h} -> {', '.join(d)}" for h, d in ambiguous.items())
        raise ValueError(f"host(s) {', '.join(ambiguous)} match several CloudFront distributions: {detail}")
    domains = {h: next(iter(d)) for h, d in found.items()}
    if len(set(domains.values())) > 1:
        detail = "; ".join(f"{h} -> {d}" for h, d in domains.items())
        raise ValueError(f"hosts {', '.join(names)} map to different distributions ({detail}); one request "
                         "warms one CloudFront distribution")
    return next(iter(domains.values()))


# -- invalidation paths --------------------------------------------------------------------------

def _encode(text: str) -> str:
    """Percent-encode non-ASCII and RFC 1738 unsafe characters, keep existing ``%XX`` escapes and all else."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%" and _ESCAPE.match(text, i):
            out.append(text[i : i + 3])
            i += 3
            continue
        if char in _UNSAFE or not (0x21 <= ord(char) <= 0x7E):
            out.append("".join(f"%{b:02X}" for b in char.encode("utf-8")))
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _query(query: str) -> str:
    """The query string without CloudFront signed-URL parameters, encoded like the path."""
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] not in _SIGNED_URL_PARAMS]
    return _encode("&".join(kept))


def invalidation_paths(urls: list[str], *, keep_query: bool = True) -> list[str]:
    """The invalidation paths for ``urls``: de-duplicated, in the order given.

    Each path is the URL's path from the leading ``/`` (the host is dropped: a path is relative to the
    distribution). Non-ASCII and RFC 1738 unsafe characters are percent-encoded, ``%XX`` escapes are kept
    as sent and nothing else is touched, as CloudFront asks: encoding other characters would
    miss the cached object. The fragment is dropped (viewers never send it).

    Query strings: CloudFront caches one object per query string when query strings are part of the
    cache key (forwarded to the origin / in the cache policy), and its docs say to include the query
    string in the invalidation path then (``/images/image.jpg?parameter1=a``); a path without it leaves
    those variants cached. So the query string is kept (``keep_query=False`` drops it, for distributions
    whose cache key has no query string). CloudFront signed-URL parameters (``Expires``, ``Signature``,
    ``Key-Pair-Id``, ``Policy``) are never part of an object's identity and are dropped.

    A path longer than CloudFront's 4,000 characters becomes its first 3,999 characters plus ``*``: a
    wildcard path that still covers the object.
    """
    paths: dict[str, None] = {}
    for url in urls:
        parts = urlsplit(url.strip())
        path = _encode(parts.path or "/")
        if not path.startswith("/"):
            path = "/" + path
        query = _query(parts.query) if keep_query else ""
        full = f"{path}?{query}" if query else path
        if len(full) > MAX_PATH_LENGTH:
            full = full[: MAX_PATH_LENGTH - 1] + "*"
        paths[full] = None
    return list(paths)


def _is_wildcard(path: str) -> bool:
    return path.endswith("*")


def batch_paths(paths: list[str], size: int = MAX_PATHS_PER_INVALIDATION) -> list[list[str]]:
    """Split ``paths`` into as few invalidation batches as CloudFront allows.

    A batch holds at most ``size`` paths (3,000: CloudFront's limit of individual paths in progress per
    distribution), of which at most 15 are wildcard paths (ending in ``*``: CloudFront's separate limit).
    Wildcard paths are spread 15 to a batch and the other paths fill the room left, so the count is the
    minimum, max(ceil(all / size), ceil(wildcards / 15)). Paths keep their order within a batch.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    if not paths:
        return []
    per_batch_wild = min(MAX_WILDCARD_PATHS, size)
    wild = [i for i, p in enumerate(paths) if _is_wildcard(p)]
    plain = [i for i, p in enumerate(paths) if not _is_wildcard(p)]
    count = max(math.ceil(len(paths) / size), math.ceil(len(wild) / per_batch_wild))
    batches: list[list[int]] = [wild[b * per_batch_wild : (b + 1) * per_batch_wild] for b in range(count)]
    start = 0
    for batch in batches:
        room = size - len(batch)
        batch.extend(plain[start : start + room])
        start += room
    return [[paths[i] for i in sorted(batch)] for batch in batches if batch]


# -- invalidations -------------------------------------------------------------------------------

def _create_invalidation(cf: Any, distribution_id: str, batch: list[str], deadline: float, poll_s: float,
                         sleep: Callable[[float], None], clock: Callable[[], float]) -> str:
    """Create one invalidation, waiting out TooManyInvalidationsInProgress with jittered backoff."""
    # One CallerReference per batch, reused on every attempt: should a refused-looking attempt have been
    # accepted after all, CloudFront answers the retry with that same invalidation instead of a second one.
    reference = f"prewarm-{uuid.uuid4().hex}"
    attempt = 0
    while True:
        if clock() >= deadline:
            why = "too many invalidations in progress" if attempt else "no time left"
            raise CloudFrontTimeout(
                f"cloudfront:CreateInvalidation: the deadline passed before CloudFront accepted an invalidation "
                f"of {len(batch)} path(s) for distribution {distribution_id} ({why})",
                action="cloudfront:CreateInvalidation", code=_TOO_MANY if attempt else "",
            )
        try:
            with aws_errors("cloudfront:CreateInvalidation"):
                answer = cf.create_invalidation(
                    DistributionId=distribution_id,
                    InvalidationBatch={"Paths": {"Quantity": len(batch), "Items": batch},
                                       "CallerReference": reference},
                )
            return str(answer["Invalidation"]["Id"])
        except CloudFrontError as exc:
            if exc.code != _TOO_MANY:
                raise
        # CloudFront refuses while 3,000 paths (or 15 wildcards) are in progress, ours or others': wait
        # for some to complete. Equal jitter: the wait grows, and concurrent jobs don't retry in step.
        ceiling = min(MAX_BACKOFF_S, max(poll_s, 0.001) * 2**attempt)
        attempt += 1
        sleep(min(random.uniform(ceiling / 2, ceiling), max(0.0, deadline - clock())))


def invalidate(cf: Any, distribution_id: str, paths: list[str], deadline: float, *, poll_s: float = 2.0,
               sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> list[str]:
    """Invalidate ``paths`` in as few invalidations as CloudFront allows and wait until all are Completed.

    Warming before the invalidation completed would refill edge caches with the stale object, so this
    returns only once every invalidation reports ``Completed`` (polled every ``poll_s`` seconds with
    GetInvalidation). ``TooManyInvalidationsInProgress`` (a later batch while an earlier one runs, or
    another job's invalidations) is retried with exponential backoff and jitter. Everything is bounded
    by ``deadline`` (epoch seconds, per ``clock``): past it, CloudFrontTimeout (a TimeoutError) names the
    invalidations still in progress. Returns the invalidation ids, one per batch.
    """
    ids = [_create_invalidation(cf, distribution_id, batch, deadline, poll_s, sleep, clock)
           for batch in batch_paths(list(dict.fromkeys(paths)))]
    pending = list(ids)
    while True:
        for inv_id in list(pending):
            with aws_errors("cloudfront:GetInvalidation"):
                answer = cf.get_invalidation(DistributionId=distribution_id, Id=inv_id)
            if str(answer["Invalidation"]["Status"]).lower() == "completed":
                pending.remove(inv_id)
        if not pending:
            return ids
        remaining = deadline - clock()
        if remaining <= 0:
            raise CloudFrontTimeout(
                f"cloudfront:GetInvalidation: the deadline passed with {len(pending)} of {len(ids)} "
                f"invalidation(s) of distribution {distribution_id} still in progress: {', '.join(pending)}",
                action="cloudfront:GetInvalidation", code="InProgress",
            )
        sleep(min(poll_s, remaining))


# -- reports in S3 -------------------------------------------------------------------------------

def report_url(s3: Any, bucket: str, key: str, expires_s: int = 3600) -> str:
    """A presigned GET URL for ``s3://bucket/key``, valid ``expires_s`` seconds (signed locally, no call)."""
    with aws_errors("s3:GetObject"):
        return str(s3.generate_presigned_url(ClientMethod="get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=expires_s))


def upload_report(s3: Any, bucket: str, key: str, body: bytes, expires_s: int = 3600) -> str:
    """Put the CSV report at ``s3://bucket/key`` (text/csv) and return a presigned URL to download it.

    A presigned URL lets whoever reads the job's result fetch the report without AWS credentials.
    """
    with aws_errors("s3:PutObject"):
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/csv")
    return report_url(s3, bucket, key, expires_s)
