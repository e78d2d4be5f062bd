"""cluster.yaml and the fake-provider config pass Ray's own config checks, offline.

``prepare_config`` only merges the provider's bundled defaults.yaml (no boto3 client, no credentials);
the AWS calls (key pair, subnets, IAM role, instance-type resources) happen later, in ``ray up``'s
``bootstrap_config``, which this test never calls. The socket guard below proves it stays offline.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from prewarm.engine.cluster import FETCHER_RESOURCE

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
FAKE_YAML = Path(__file__).with_name("fake_autoscaling_cluster.yaml")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any connection attempt, so a cloud call inside Ray's config code would fail the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"config validation tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture
def config(no_network: None) -> dict[str, Any]:
    prepared = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(prepared)  # JSON schema of ray 2.60 plus head type / min-max consistency
    return prepared


def test_cluster_yaml_is_an_aws_config(config: dict[str, Any]) -> None:
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"]
    assert config["head_node_type"] == "head"


def test_only_fetcher_nodes_carry_the_fetcher_resource(config: dict[str, Any]) -> None:
    types = config["available_node_types"]
    head, fetcher = types["head"], types["fetcher"]
    assert FETCHER_RESOURCE not in head["resources"]
    assert head["max_workers"] == 0
    assert fetcher["resources"][FETCHER_RESOURCE] == 1  # one unit: one request_resources bundle = one node
    assert fetcher["labels"]["prewarm-role"] == "fetcher"
    assert fetcher["min_workers"] == 0
    # The API caps DesiredCapacity and instance_count at 300; the launcher must allow that many.
    assert fetcher["max_workers"] == config["max_workers"] == 300
    others = [name for name, spec in types.items() if FETCHER_RESOURCE in spec["resources"]]
    assert others == ["fetcher"]


def test_head_starts_ray_with_autoscaling_then_the_service(config: dict[str, Any]) -> None:
    commands = config["head_start_ray_commands"]
    start = next(i for i, c in enumerate(commands) if "ray start --head" in c)
    serve = next(i for i, c in enumerate(commands) if "prewarm serve" in c)
    assert start < serve
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in commands[start]
    line = commands[serve]
    assert "--address auto" in line and "nohup" in line and line.rstrip().endswith("&")
    # A non-loopback listener is refused without keys, so the command must pass them.
    assert "PREWARM_API_KEYS" in line
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    # prepare_config merged setup_commands into head and worker setup: both install the project.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install" in c and "prewarm" in c for c in config[key])


def test_fake_provider_config_validates(no_network: None) -> None:
    """The autoscaler test's config: schema-valid, and the same resource split as cluster.yaml.

    Only ``validate_config``: ``prepare_config`` would read the fake provider's defaults from Ray's
    example.yaml, which the pip wheel does not ship; the file is complete, so it needs no defaults.
    """
    fake = yaml.safe_load(FAKE_YAML.read_text())
    validate_config(fake)
    types = fake["available_node_types"]
    assert fake["provider"]["type"] == "fake_multinode"
    assert fake["provider"]["use_node_id_as_ip"] is True  # else fake nodes never count as idle
    assert FETCHER_RESOURCE not in types[fake["head_node_type"]]["resources"]
    assert types["fetcher"]["resources"][FETCHER_RESOURCE] == 1
    assert types["fetcher"]["min_workers"] == 0
