"""The standby: the next job's coordinator and fetchers, started before the job (prewarm/standby.py).

A job takes the standby's request id, coordinator and fetchers, and no process is started for it; the
next standby starts only once the job has ended; a standby nobody takes leaves with its fetchers; a stale
one is replaced and a closed keeper leaves none behind. And a job whose coordinator never starts does not
wait for its deadline, nor hold an admission slot when nobody polls it, while a long job whose coordinator
runs is not cut short.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import ray

from prewarm.api import standby as standby_module
from prewarm.api.standby import Standby
from prewarm.client import ApiError, PrewarmClient
from prewarm.engine.coordinator import CoordinatorActor, create_coordinator
from prewarm.engine.registry import coordinator_name
from prewarm.engine.state import ensure_state_actor
from prewarm.schema import utcnow
from prewarm.settings import Settings
from prewarm.testbed import Testbed

from .conftest import RAY_TEST_KWARGS, SPEC_POPS, origin_gets, request_body, serve_on_free_port, service_settings
from .test_service import assert_warm

COORDINATOR = "prewarm-coordinator-"
SILENCE_S = 4.0


@pytest.fixture(scope="module")
def served(cdn: Testbed) -> Iterator[tuple[PrewarmClient, Settings]]:
    from prewarm.api.service import stop_service

    # A short silence limit: jobs here must keep their coordinator's heartbeat through long quiet phases.
    settings = service_settings(cdn, PREWARM_COORDINATOR_SILENCE_TIMEOUT=str(SILENCE_S), PREWARM_FETCH_TIMEOUT="10")
    base = serve_on_free_port(settings, ray_init_kwargs=RAY_TEST_KWARGS)
    try:
        yield PrewarmClient(base), settings
    finally:
        stop_service()


def named(namespace: str, prefix: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == namespace and a["name"].startswith(prefix)}


def standby_ids(namespace: str) -> set[str]:
    return {name.removeprefix(COORDINATOR) for name in named(namespace, COORDINATOR)}


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def test_a_job_runs_on_the_standby_and_the_next_starts_after_it(served: tuple[PrewarmClient, Settings],
                                                                 cdn: Testbed) -> None:
    client, settings = served
    ns = settings.namespace
    (ready,) = wait_for("one standby coordinator", lambda: (ids := standby_ids(ns)) and len(ids) == 1 and ids)
    # Its fetchers (one per CPU of the node: 2) are started with it, before any job.
    prestarted = wait_for("the standby's fetchers", lambda: len(f := named(ns, f"prewarm-fetcher-{ready}-")) == 2 and f)

    cdn.reset()
    paths = [f"/fault/delay/1500/obj/1kb/standby-{i}" for i in range(3)]  # the job lasts ~3 s: probe, then GETs
    urls = [cdn.url(p) for p in paths]
    first = client.prewarm(request_body(urls, timeout=2))
    second = client.prewarm(request_body([cdn.url("/obj/1kb/standby-second")], timeout=2))
    assert first["request_id"] == ready  # the standby's id, coordinator and fetchers
    assert second["request_id"] != ready  # no standby was ready for it: a coordinator started on demand

    seen_during: set[str] = set()
    job_fetchers: set[str] = set()
    while (progress := client.progress(ready))["status"] == "IN_PROGRESS":
        seen_during |= standby_ids(ns) - {ready, second["request_id"]}
        if progress["phase"] in ("probing", "warming"):
            job_fetchers |= named(ns, f"prewarm-fetcher-{ready}-")
        time.sleep(0.1)
    assert job_fetchers == prestarted  # the job ran on the prestarted fetchers and started none
    assert progress["status"] == "FINISHED" and progress["success_count"] == progress["total_count"] == 9
    assert client.progress(second["request_id"])["status"] in ("IN_PROGRESS", "FINISHED")
    assert seen_during == set(), "the next standby started while a job was running"

    assert origin_gets(cdn) == {**{(p, pop): 1 for p in paths for pop in SPEC_POPS},
                                **{("/obj/1kb/standby-second", pop): 1 for pop in SPEC_POPS}}
    assert_warm(cdn, urls, SPEC_POPS)

    after = wait_for("the next standby", lambda: standby_ids(ns) - {ready, second["request_id"]})
    (next_id,) = after
    with pytest.raises(ApiError) as missing:  # not a job until a POST takes it
        client.progress(next_id)
    assert missing.value.status == 404
    assert named(ns, f"prewarm-fetcher-{ready}-") == set()  # the job's fetchers left with it


def test_an_unclaimed_standby_leaves_with_its_fetchers(served: tuple[PrewarmClient, Settings]) -> None:
    _, settings = served
    ns = settings.namespace
    req_id = str(uuid.uuid4())
    coordinator = create_coordinator(req_id, settings, prestart=True)
    coordinator.leave_unless_claimed.options(max_task_retries=0).remote(2.0)
    wait_for("its fetchers", lambda: len(named(ns, f"prewarm-fetcher-{req_id}-")) == 2, 30)
    wait_for("it to leave", lambda: not named(ns, coordinator_name(req_id)) and
             not named(ns, f"prewarm-fetcher-{req_id}-"), 30)


def test_a_stale_standby_is_replaced_and_close_removes_it(served: tuple[PrewarmClient, Settings],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, service = served
    settings = dataclasses.replace(service, namespace=f"{service.namespace}-keeper")  # apart from the API's
    monkeypatch.setattr(standby_module, "REPLACE_AFTER_S", 3.0)
    monkeypatch.setattr(standby_module, "CHECK_EVERY_S", 0.2)
    monkeypatch.setattr(standby_module, "START_WITHIN_S", 1.0)
    ensure_state_actor(settings)  # the API creates it before its standby asks it whether jobs run
    keeper = Standby(settings)
    try:
        (first,) = wait_for("a standby", lambda: standby_ids(settings.namespace))
        wait_for("a fresh one instead", lambda: (ids := standby_ids(settings.namespace)) != {first}
                 and len(ids) == 1 and ids, 60)
        # No more replacing from here (on a loaded machine 3 s pass quickly); let one in progress finish.
        monkeypatch.setattr(standby_module, "REPLACE_AFTER_S", 600.0)
        time.sleep(1.0)
        (held,) = wait_for("one standby held", lambda: (ids := standby_ids(settings.namespace)) and len(ids) == 1
                           and ids, 60)
        assert held != first
        taken_id, taken = keeper.take()
        assert taken_id == held and taken is not None
        wait_for("one more after the take", lambda: standby_ids(settings.namespace) - {held}, 60)
        ray.kill(taken, no_restart=True)
    finally:
        keeper.close()
    wait_for("none left after close", lambda: not standby_ids(settings.namespace), 30)
    wait_for("no fetcher left", lambda: not named(settings.namespace, "prewarm-fetcher-"), 30)


def test_a_job_whose_coordinator_never_starts_fails_with_a_reason(served: tuple[PrewarmClient, Settings]) -> None:
    """A coordinator Ray cannot place keeps its name, so it looks alive; the job still ends, well before its
    deadline, and the pending actor is removed."""
    _, service = served
    settings = dataclasses.replace(service, namespace=f"{service.namespace}-unstarted", coordinator_silence_s=3.0,
                                   persist=False)
    state = ensure_state_actor(settings)  # as the API does: the other parts only find it
    req_id = str(uuid.uuid4())
    CoordinatorActor.options(name=coordinator_name(req_id), namespace=settings.namespace, lifetime="detached",
                             resources={"no-such-node": 1}).remote(req_id, settings)
    assert named(settings.namespace, coordinator_name(req_id))  # registered, never scheduled
    now = utcnow()
    request = request_body(["https://www.example.com/obj/1kb/never"], timeout=10)
    ray.get(state.create_job.remote(req_id, request, SPEC_POPS, "www.example.com", now, now + timedelta(minutes=10)))
    started = time.monotonic()
    progress = wait_for("the job to end",
                        lambda: (p := ray.get(state.progress.remote(req_id)))["status"] != "IN_PROGRESS" and p, 30)
    assert progress["status"] == "FAILED" and progress["success_count"] == 0
    assert progress["error_message"] == ("the job's coordinator did not run for 3 s (it never started, or it is "
                                         "stuck restarting)")
    assert time.monotonic() - started < 20  # not the job's 10-minute deadline
    wait_for("the pending coordinator removed", lambda: not named(settings.namespace, coordinator_name(req_id)), 30)
    ray.kill(state, no_restart=True)


def test_a_silent_job_nobody_polls_does_not_hold_its_admission_slot(served: tuple[PrewarmClient, Settings]) -> None:
    """One job may fetch at a time. The running one has no coordinator (it fell silent) and nobody reads its
    progress: the queued job's own admission requests must close it and take the slot."""
    _, service = served
    settings = dataclasses.replace(service, namespace=f"{service.namespace}-slot", coordinator_silence_s=3.0,
                                   max_active_jobs=1, persist=False)
    state = ensure_state_actor(settings)  # as the API does: the other parts only find it
    silent, queued = str(uuid.uuid4()), str(uuid.uuid4())
    now, later = utcnow(), utcnow() + timedelta(minutes=10)
    request = request_body(["https://www.example.com/obj/1kb/slot"], timeout=10)
    for req_id in (silent, queued):
        ray.get(state.create_job.remote(req_id, request, SPEC_POPS, "www.example.com", now, later))
    assert ray.get(state.admit.remote(silent)) is True  # it runs, then its coordinator says nothing more
    assert ray.get(state.admit.remote(queued)) is False
    assert ray.get(state.quiet.remote(queued)) is False
    started = time.monotonic()
    wait_for("the queued job admitted", lambda: ray.get(state.admit.remote(queued)), 30)  # as its coordinator asks
    assert time.monotonic() - started < 20
    progress = ray.get(state.progress.remote(silent))
    assert progress["status"] == "FAILED" and progress["success_count"] == 0, progress
    ray.get(state.finish.remote(queued, "STOPPED", "test over"))
    assert ray.get(state.quiet.remote(queued)) is True  # nothing runs: the API may start its next standby
    ray.kill(state, no_restart=True)


def test_a_job_longer_than_the_silence_limit_is_kept_by_its_heartbeat(served: tuple[PrewarmClient, Settings],
                                                                       cdn: Testbed) -> None:
    """Probe and fetches each take 6 s, longer than the 4 s silence limit, with no result recorded between:
    only the coordinator's heartbeat shows the job is driven."""
    client, _ = served
    cdn.reset()
    paths = [f"/fault/delay/6000/obj/1kb/heartbeat-{i}" for i in range(2)]
    urls = [cdn.url(p) for p in paths]
    req_id = client.prewarm(request_body(urls, timeout=2))["request_id"]
    progress = wait_for("the job to end", lambda: (p := client.progress(req_id))["status"] != "IN_PROGRESS" and p, 90)
    assert progress["status"] == "FINISHED", progress
    assert progress["success_count"] == progress["total_count"] == 6
    assert origin_gets(cdn) == {(p, pop): 1 for p in paths for pop in SPEC_POPS}
    assert_warm(cdn, urls, SPEC_POPS)
