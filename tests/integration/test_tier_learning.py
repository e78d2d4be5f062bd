"""Which REC a POP uses, learnt from Server-Timing and kept for later jobs: a testbed whose grouping differs from
the catalogue's for two POPs (FRA60-P1 behind us-east-1's REC, IAD89-P2 behind eu-central-1's)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prewarm.client import PrewarmClient
from prewarm.core.catalog import load_catalog
from prewarm.testbed import Testbed

from .conftest import request_body, running_service, wait_final

POPS = ["ATL56-C1", "FRA60-P1", "IAD89-P1", "IAD89-P2", "ARN54-C1"]
REAL = {"ATL56-C1": "us-east-1", "FRA60-P1": "us-east-1", "IAD89-P1": "us-east-1", "IAD89-P2": "eu-central-1",
        "ARN54-C1": "eu-central-1"}


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    catalog = load_catalog()
    assert catalog.rec_of("FRA60-P1") == "eu-central-1" and catalog.rec_of("IAD89-P2") == "us-east-1"
    with Testbed(pops=POPS, tiers="rec", rec_of=REAL, workdir=tmp_path_factory.mktemp("cdn-learn")) as tb:
        yield tb


@pytest.fixture(scope="module")
def service(cdn: Testbed) -> Iterator[PrewarmClient]:
    with running_service(cdn, PREWARM_ORIGIN_SHIELD="0") as (client, _):
        yield client


def run(client: PrewarmClient, path: str, pops: list[str]) -> dict:
    req_id = client.prewarm(request_body([path], pops=pops, tiering="rec"))["request_id"]
    progress = wait_final(client, req_id)
    assert progress["status"] == "FINISHED" and progress["success_count"] == len(pops)
    return client.summary(req_id)


def test_a_first_fetch_served_by_the_probes_rec_joins_it_for_later_jobs(service: PrewarmClient,
                                                                        cdn: Testbed) -> None:
    """The probe (URL 0 through ATL56-C1) fills us-east-1's REC; FRA60-P1, by the catalogue eu-central-1's first,
    is answered by a REC (cdn-hit-layer REC): it shares ATL56-C1's. The next job groups it so."""
    cdn.reset()
    first = run(service, cdn.url("/obj/2kb/learn-join-1"), ["ATL56-C1", "FRA60-P1"])
    assert first["rec_groups"] == {"ATL56-C1": "us-east-1", "FRA60-P1": "eu-central-1"}  # the catalogue's
    later = run(service, cdn.url("/obj/2kb/learn-join-2"), ["ATL56-C1", "FRA60-P1"])
    assert later["rec_groups"] == {"ATL56-C1": "us-east-1", "FRA60-P1": "us-east-1"}  # learnt
    assert later["origin_fetches"] == 1


def test_a_released_pop_the_origin_answered_gets_a_group_of_its_own(service: PrewarmClient, cdn: Testbed) -> None:
    """IAD89-P2, by the catalogue in ATL56-C1's REC, is released once the probe through ATL56-C1 filled that REC,
    yet the origin answers it while IAD89-P1 of the same group is served by the REC (so the object is cacheable
    there): its REC is another, and later jobs give it a first fetch of its own."""
    cdn.reset()
    pops = ["ATL56-C1", "IAD89-P1", "IAD89-P2"]
    first = run(service, cdn.url("/obj/2kb/learn-split-1"), pops)
    assert first["rec_groups"]["IAD89-P2"] == "us-east-1" and first["origin_fetches"] == 2
    later = run(service, cdn.url("/obj/2kb/learn-split-2"), pops)
    assert later["rec_groups"] == {"ATL56-C1": "us-east-1", "IAD89-P1": "us-east-1", "IAD89-P2": "IAD89-P2 (own)"}


def test_an_object_no_rec_keeps_teaches_nothing(service: PrewarmClient, cdn: Testbed) -> None:
    """Every POP answered by the origin (no-store: no tier keeps it) is no sign of a wrong grouping."""
    cdn.reset()
    pops = ["ATL56-C1", "IAD89-P1"]
    first = run(service, cdn.url("/fault/nocache/learn-nothing"), pops)
    assert first["origin_fetches"] == 2
    later = run(service, cdn.url("/obj/2kb/learn-nothing-2"), pops)
    assert later["rec_groups"] == {"ATL56-C1": "us-east-1", "IAD89-P1": "us-east-1"}
