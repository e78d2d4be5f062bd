"""moto in server mode on 127.0.0.1: a real HTTP endpoint that boto3 talks to as it would to AWS.

A ThreadedMotoServer (werkzeug in a daemon thread of the test process) on a port the OS picks, so two
test modules or runs never race for one. Tests reset its state through ``/moto-api/reset``.
"""

from __future__ import annotations

import logging
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
"""moto accepts any credentials; these are the conventional fake ones."""

# Variables that could point boto3 at real credentials, a profile or another endpoint during a test.
AWS_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION",
                 "AWS_ENDPOINT_URL_CLOUDFRONT", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto on 127.0.0.1 (port chosen by the OS) and yield its URL; stop it afterwards."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset(endpoint: str) -> None:
    """Forget every resource moto holds (distributions, invalidations, buckets)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", data=b"", method="POST")
    _NO_PROXY.open(request, timeout=10).close()


def http_get(url: str) -> tuple[bytes, dict[str, str]]:
    """GET ``url`` straight (no proxy), with a timeout: the body and the headers (names in lower case)."""
    with _NO_PROXY.open(url, timeout=10) as resp:
        return resp.read(), {k.lower(): v for k, v in resp.headers.items()}


def use_moto_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point boto3's standard chain at moto through the environment only, as a deployment would.

    Config files are pointed at nothing and instance metadata is off, so no developer setting and no
    network address other than 127.0.0.1 is ever involved.
    """
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def client(service: str, endpoint: str) -> Any:
    """A boto3 client for moto with explicit endpoint and credentials (independent of the environment)."""
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 1}))


def create_distribution(cf: Any, aliases: list[str] | None = None) -> dict[str, Any]:
    """A minimal web distribution with the given aliases (moto does not check certificates or clashes)."""
    config: dict[str, Any] = {
        "CallerReference": str(uuid.uuid4()),
        "Comment": "prewarm test",
        "Enabled": True,
        "Origins": {"Quantity": 1, "Items": [{
            "Id": "origin", "DomainName": "origin.example.com",
            "CustomOriginConfig": {"HTTPPort": 80, "HTTPSPort": 443, "OriginProtocolPolicy": "https-only"},
        }]},
        "DefaultCacheBehavior": {
            "TargetOriginId": "origin", "ViewerProtocolPolicy": "allow-all", "MinTTL": 0,
            "ForwardedValues": {"QueryString": True, "Cookies": {"Forward": "none"}},
            "TrustedSigners": {"Enabled": False, "Quantity": 0},
        },
    }
    if aliases:
        config["Aliases"] = {"Quantity": len(aliases), "Items": aliases}
    return cf.create_distribution(DistributionConfig=config)["Distribution"]
