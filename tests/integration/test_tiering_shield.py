"""Tiered warming behind an Origin Shield: every REC goes through one shield, so a URL reaches the origin once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from prewarm.client import PrewarmClient
from prewarm.testbed import Testbed

from .conftest import request_body, running_service, wait_final
from .test_tiering import POPS


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    with Testbed(pops=POPS, tiers="shield", workdir=tmp_path_factory.mktemp("cdn-shield")) as tb:
        yield tb


@pytest.fixture(scope="module")
def service(cdn: Testbed) -> Iterator[PrewarmClient]:
    with running_service(cdn, PREWARM_ORIGIN_SHIELD="1") as (client, _):
        yield client


def test_auto_tiering_is_shield_and_each_url_reaches_the_origin_once(service: PrewarmClient, cdn: Testbed) -> None:
    cdn.reset()
    paths = [f"/obj/4kb/shielded-{i}" for i in range(5)]
    req_id = service.prewarm(request_body([cdn.url(p) for p in paths], pops=POPS, timeout=3))["request_id"]
    progress = wait_final(service, req_id, timeout_s=180)
    assert progress["status"] == "FINISHED" and progress["success_count"] == 5 * 12
    assert progress["tiering"] == "shield" and service.summary(req_id)["tiering"] == "shield"
    gets = Counter(row["path"] for row in cdn.origin_counts(tiers=True)["requests"] if row["method"] == "GET"
                   for _ in range(row["count"]))
    assert {p: gets[p] for p in paths} == {p: 1 for p in paths}
    assert {row["tier"] for row in cdn.origin_counts(tiers=True)["requests"]} == {"Origin Shield"}
    assert progress["origin_fetches"] == 5  # every other POP was served by a tier above it
