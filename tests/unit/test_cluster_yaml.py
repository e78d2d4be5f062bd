"""cluster.yaml is a valid `ray up` file, checked offline with Ray's own config preparation and schema."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from prewarm.cluster import FETCHER_RESOURCE

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_validates_with_ray() -> None:
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))  # merges AWS defaults, no cloud calls
    validate_config(config)
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert FETCHER_RESOURCE not in types["head"]["resources"]
    assert types["fetcher"]["resources"][FETCHER_RESOURCE] == 1
    assert types["fetcher"]["max_workers"] == config["max_workers"] == 300
    assert types["head"]["max_workers"] == 0
    head_commands = " ".join(config["head_start_ray_commands"])
    assert "prewarm serve" in head_commands and "--address auto" in head_commands
    assert "PREWARM_API_KEYS" in head_commands
