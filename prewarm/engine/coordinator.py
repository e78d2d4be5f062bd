"""The per-request coordinator actor: resolve POPs, probe sizes, plan lanes, drive fetchers, keep time.

One detached coordinator per request, named after it, so each request has its own fetchers and its
own deadline: one job's timeout or stop never touches another. It ends the job in the state actor and
then exits; the fetchers it created die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from prewarm.core.catalog import load_catalog
from prewarm.core.pacing import share_of
from prewarm.core.plan import (
    Lane,
    ProbeChunk,
    batch_up,
    cap_share,
    column_groups,
    group_firsts,
    interleave_by_node,
    lane_of_tasks,
    per_fetcher_limits,
    plan_lanes,
    probe_plan,
    released_by_probe,
    released_in_group,
)
from prewarm.core.results import ResultRow, one_piece, result_row
from prewarm.engine.cluster import ON_HEAD, choose_nodes, fetcher_nodes_exist
from prewarm.engine.fetcher import FetcherActor, ProbeRow
from prewarm.engine.metrics import record_job_end
from prewarm.engine.registry import coordinator_name, get_state_actor
from prewarm.net.popclient import SERVED_ORIGIN
from prewarm.net.resolve import PopAddresses, Resolver
from prewarm.schema import PrewarmRequest
from prewarm.settings import Settings

log = logging.getLogger("prewarm.engine.coordinator")


class JobLog(logging.LoggerAdapter):
    """Every line of a job carries its request id: in the text and as the ``req_id`` field of JSON logs."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        req_id = (self.extra or {}).get("req_id", "")
        kwargs["extra"] = {**kwargs.get("extra", {}), "req_id": req_id}
        return f"[req_id={req_id}] {msg}", kwargs

FETCHER_START_TIMEOUT_S = 60.0
TIERING_LOOKUP_TIMEOUT_S = 20.0
HEARTBEAT_S = 1.0
BATCHES_IN_FLIGHT_PER_LANE = 2


def own_rec(pop: str) -> str:
    """The name of a REC nothing else is known to share: the POP's own group."""
    return f"{pop} (own)"


def fetcher_name(req_id: str, suffix: str) -> str:
    """Named so operators (and tests) can find a job's fetchers: ``prewarm-fetcher-<req_id>-...``."""
    return f"prewarm-fetcher-{req_id}-{suffix}"


class JobFailed(Exception):
    """The job cannot run; the message becomes the job's ``error_message``."""


class Coordinator:
    """Runs one job. It may be started before its job arrives (``prestart``: the API's standby), with the
    fetchers the job will most likely want already starting, so that a job does not wait for processes."""

    def __init__(self, req_id: str, settings: Settings, prestart: bool = False) -> None:
        self.req_id = req_id
        self.settings = settings
        self.state = get_state_actor(settings)
        self.request = PrewarmRequest.model_construct()  # the job's, once run() has it
        self.cf_domain = ""
        self.deadline = 0.0
        self.n_variants = 1
        self.fetchers: list[Any] = []
        self.urls: list[str] = []  # the job's URL entries: the request's, then (expand) what its manifests held
        self.dead: set[int] = set()
        self.dispatched = 0
        self.busy: dict[int, int] = {}  # lane id -> the fetcher it is sent to, while it has work
        self.large: dict[int, int] = {}  # URL index -> size, for URLs warmed in Range parts (from the size probe)
        self.tiering = "off"
        self.col_group: np.ndarray | None = None  # column -> tier group (plan.column_groups); None: no tiers
        self.pop_names: list[str] = []
        self.rec_names: list[str] = []  # per POP: the REC it is taken to use (rec tiering)
        self.learnt: dict[str, str] = {}  # POP -> REC, what this job's Server-Timing showed
        self.unfilled: set[tuple[int, int]] = set()  # (URL, tier group) whose first fetch failed (rare)
        self.missed: list[tuple[int, int, int]] = []  # (URL, group, POP) released, yet answered by the origin
        self.tier_served: set[tuple[int, int]] = set()  # (URL, group) a released POP of which a tier above served
        self.mean_size = 0.0  # of the probed URLs, to size batches under a byte-rate cap
        self.log = JobLog(log, {"req_id": req_id})
        self.has_job = False
        self.prestarted = self._prestart_fetchers() if prestart else {}
        if prestart and settings.origin_shield is None:
            # Between jobs, not in one: botocore is slow to import, and auto tiering needs it.
            threading.Thread(target=importlib.import_module, args=("botocore.session",), daemon=True).start()

    def pid(self) -> int:
        return os.getpid()

    async def leave_unless_claimed(self, after_s: float) -> None:
        """A standby nobody handed a job to (its API is gone) leaves after ``after_s``, with its fetchers."""
        await asyncio.sleep(after_s)
        if not self.has_job:
            self.log.info("standby coordinator leaving: no job came in %g s", after_s)
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def run(self, request: PrewarmRequest, cf_domain: str, deadline: float) -> str:
        """Run the job to its end and close it in the state actor; never raises.

        ``request`` is the API's validated model, passed as it is: validating its URLs again here cost
        tens of milliseconds before the first fetch of a large job."""
        self.has_job = True
        self.request = request
        self.cf_domain = cf_domain
        self.deadline = deadline
        self.n_variants = len(self.request.variant_labels())
        self.urls = list(request.url_list)
        remaining = self.deadline - time.time()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            status, message = await asyncio.wait_for(self._work(), timeout=max(0.0, remaining))
        except TimeoutError:
            status = "TIMEOUT"
            message = f"the job's timeout of {self.request.timeout:g} minute(s) was reached"
        except JobFailed as exc:
            status, message = "FAILED", str(exc)
        except Exception as exc:
            self.log.exception("job failed")
            status, message = "FAILED", f"{type(exc).__name__}: {exc}"
        heartbeat.cancel()
        self.learn_splits()
        if self.learnt:
            with contextlib.suppress(Exception):
                await self.state.learn_recs.remote(self.learnt)
        final = await self.state.finish.remote(self.req_id, status, message)
        record_job_end(final)
        self.log.info("job ended %s %s", final, message)
        for fetcher in self.fetchers + [f for spare in self.prestarted.values() for f in spare]:
            with contextlib.suppress(Exception):
                ray.kill(fetcher)
        # Leave once this call has returned: a clean exit that Ray neither restarts nor retries.
        me = ray.get_runtime_context().current_actor
        asyncio.get_running_loop().call_later(0.5, lambda: ray.kill(me, no_restart=True))
        return status

    async def _work(self) -> tuple[str, str]:
        """Plan (or, after a restart, pick up) the job and drive its tasks to the end."""
        req = self.request
        resolver = Resolver(self.settings.nameservers, self.settings.dns_timeout_s)
        while not await self.state.admit.remote(self.req_id):  # queued behind other jobs; the deadline holds
            await asyncio.sleep(0.25)
        point = await self.state.resume_point.remote(self.req_id)
        if point["final"]:
            return "FINISHED", ""  # closed already (stopped, or by an earlier run); finish() keeps that
        planned: list[str] | None = point["pops"]
        # Fetcher start-up and the tiering decision (a boto3 call, maybe) overlap DNS resolution.
        starting = asyncio.create_task(self._start_fetchers())
        tiering = asyncio.create_task(self._decide_tiering())
        resolved = await resolver.pop_addresses(
            self.cf_domain, planned if planned is not None else req.target_pops(), self.settings.allow_private_edges
        )
        failures = {r.pop: r.problem or "" for r in resolved if r.problem}
        if planned is None:
            pops = [r for r in resolved if not r.problem]
            if not pops:
                await self.state.set_plan.remote(self.req_id, [], failures)
                raise JobFailed(f"none of the {len(resolved)} targeted POPs could be resolved: "
                                + "; ".join(f"{p}: {why}" for p, why in list(failures.items())[:5]))
            await starting
            if req.need_invalidate:
                await self._invalidate()
            expansion = await self._expand(pops[0]) if req.expand else None
            await self.state.set_plan.remote(self.req_id, [p.pop for p in pops], failures, expansion)
            point = await self.state.resume_point.remote(self.req_id)
        else:
            # Resumed after a coordinator restart: the plan stands; only the tasks left are fetched.
            self.log.warning("resuming after a coordinator restart with %d tasks left", len(point["pending"]))
            pops = resolved
            await starting
            lost = [i for i, r in enumerate(resolved) if r.problem]
            if lost:
                n_cols = len(pops) * self.n_variants
                rows = [result_row(int(t), error_class="dns", message=failures[resolved[pop].pop])
                        for t in point["pending"] if (pop := int(t) % n_cols // self.n_variants) in lost]
                await self.state.record.remote(self.req_id, rows)
                point = await self.state.resume_point.remote(self.req_id)
        if point["urls"] is not None:  # expanded (now, or before a restart): the manifests' URLs are the job's too
            self.urls = point["urls"]
        n_cols = len(pops) * self.n_variants
        lanes = plan_lanes(point["pending"], n_cols, len(self.fetchers))
        probing = point["phase"] != "warming"  # not probed yet (a restarted coordinator probes the URLs left)
        self.tiering = await tiering
        self.col_group = self._column_groups([p.pop for p in pops], await self.state.learnt_recs.remote())
        await self.state.set_tiering.remote(self.req_id, self.tiering, self.rec_groups())
        self.log.info("warming %d tasks (%s): %d POPs x %d variant(s), %d lanes over %d fetchers "
                      "(%d unavailable POPs)", len(point["pending"]),
                      "a size probe per URL first" if probing else "probed already", len(pops), self.n_variants,
                      len(lanes), len(self.fetchers), len(failures))
        names = [p.pop for p in pops]
        addresses = [p.addresses for p in pops]
        limits = per_fetcher_limits(lanes, n_cols, req.max_concurrency or self.settings.max_concurrency,
                                    self.n_variants)
        self.busy = {lane.lane_id: self._alive_owner(lane.owner) for lane in lanes}
        self.dispatched = point["done"]
        feeds: dict[int, asyncio.Queue[list[int] | None]] = {lane.lane_id: asyncio.Queue() for lane in lanes}
        drives = asyncio.gather(*(self._drive(lane, names, addresses, limits[lane.column], feeds[lane.lane_id])
                                  for lane in lanes))
        try:
            if probing:
                await self.state.set_phase.remote(self.req_id, "probing")
                await self._probe(pops, lanes, n_cols, limits, feeds)
            else:
                for lane in lanes:
                    feeds[lane.lane_id].put_nowait(list(lane.url_indices))
            await self.state.set_phase.remote(self.req_id, "warming")
            for feed in feeds.values():
                feed.put_nowait(None)  # nothing more will come: each lane ends once its batches are done
            await drives
        except BaseException:
            drives.cancel()
            raise
        return "FINISHED", ""

    async def _expand(self, first: PopAddresses) -> dict[str, Any]:
        """Phase ``expanding``: the job's manifests read through its first POP (``engine.expander``); what
        ``State.set_plan`` takes with the plan. Imported here: only a job that expands needs the parsers."""
        from prewarm.engine.expander import expand_urls
        from prewarm.net.manifestfetch import ManifestReader

        await self.state.set_phase.remote(self.req_id, "expanding")
        req = self.request
        reader = ManifestReader(first.addresses, self.settings, req.variant_headers()[0])
        try:
            out = await expand_urls(list(req.url_list), reader, self.deadline, max_bandwidth=req.expand_max_bandwidth,
                                    first_seconds=req.expand_first_seconds, cap=self.settings.max_expanded_urls,
                                    verify=req.verify)
        finally:
            await reader.close()
        summary = out.summary()
        self.log.info("expanded through %s: %s", first.pop, summary["message"])
        return {"urls": out.urls, "source": out.source, "manifest_urls": [m.url for m in out.manifests],
                "summary": summary, "rows": list(out.rows.items())}

    async def _decide_tiering(self) -> str:
        """The request's tiering; ``auto`` is ``shield`` when the distribution has Origin Shield on
        (PREWARM_ORIGIN_SHIELD, else its config through boto3 when credentials are there), otherwise ``rec``."""
        mode = self.request.tiering or "auto"
        if mode != "auto":
            return mode
        shield = self.settings.origin_shield
        if shield is None and self.cf_domain:
            from prewarm.aws.cloudfront import CloudFrontError, has_credentials, make_clients, origin_shield_enabled

            def ask() -> bool:
                return has_credentials() and origin_shield_enabled(make_clients()[0], self.cf_domain)

            try:
                shield = await asyncio.wait_for(asyncio.to_thread(ask), TIERING_LOOKUP_TIMEOUT_S)
            except (CloudFrontError, TimeoutError, OSError) as exc:
                self.log.warning("could not read the distribution's Origin Shield setting (%s): tiering rec", exc)
                shield = False
        return "shield" if shield else "rec"

    def _column_groups(self, pops: list[str], learnt: dict[str, str]) -> np.ndarray | None:
        """Column -> tier group for ``rec`` (POPs of one REC: as learnt by earlier jobs, else by the catalogue) and
        ``shield`` (every POP); None for ``off``, where every POP goes once the size probe answered. A POP whose
        REC is unknown is a group alone."""
        self.pop_names = pops
        if self.tiering == "off":
            return None
        if self.tiering == "shield":
            return column_groups([0] * len(pops), self.n_variants)
        catalog = load_catalog()
        self.rec_names = [learnt.get(pop) or catalog.rec_of(pop) or own_rec(pop) for pop in pops]
        names: dict[str, int] = {}
        return column_groups([names.setdefault(rec, len(names)) for rec in self.rec_names], self.n_variants)

    def rec_groups(self) -> dict[str, str]:
        """The REC each targeted POP was taken to send its misses to (``rec`` tiering), for the summary."""
        return dict(zip(self.pop_names, self.rec_names, strict=True)) if self.tiering == "rec" else {}

    def _learn(self, pop: int, rec: str) -> None:
        """What a first GET's ``Server-Timing`` showed about POP ``pop``'s REC, kept for this job's end."""
        name = self.pop_names[pop]
        if self.rec_names[pop] != rec:
            self.log.info("learnt from Server-Timing: %s sends its misses to %s, not %s", name, rec,
                          self.rec_names[pop])
            self.learnt[name] = rec

    def note_released(self, misses: tuple[int, ...], by_tier: tuple[int, ...], n_cols: int) -> None:
        """Released tasks the origin answered, and those a tier above served (``fetch_batch``), for ``learn_splits``."""
        if self.tiering != "rec" or self.col_group is None:
            return
        for task in misses:
            url, column = divmod(int(task), n_cols)
            self.missed.append((url, int(self.col_group[column]), column // self.n_variants))
        self.tier_served.update((int(t) // n_cols, int(self.col_group[int(t) % n_cols])) for t in by_tier)

    def learn_splits(self) -> None:
        """A POP released once its tier group's first fetch filled their supposed REC, and answered by the origin while
        another POP of the group was served by that REC (so the object was cacheable there): its REC is another one,
        and it gets a group of its own until something says which."""
        for url, group, pop in self.missed:
            if (url, group) in self.tier_served and (url, group) not in self.unfilled:
                self._learn(pop, own_rec(self.pop_names[pop]))

    async def _invalidate(self) -> None:
        """Invalidate the URLs' paths and wait until CloudFront completed it, before anything is fetched."""
        await self.state.set_phase.remote(self.req_id, "invalidating")

        # boto3 is loaded only by jobs that invalidate: the others start faster without it.
        from prewarm.aws.cloudfront import (
            CloudFrontError,
            find_distribution_id,
            invalidate,
            invalidation_paths,
            make_clients,
        )

        def run() -> int:
            cf, _ = make_clients()
            dist_id = find_distribution_id(cf, self.cf_domain)
            return len(invalidate(cf, dist_id, invalidation_paths(self.request.url_list), self.deadline))

        try:
            count = await asyncio.to_thread(run)
        except CloudFrontError as exc:
            raise JobFailed(f"invalidation failed: {exc}") from None
        self.log.info("invalidated %d path(s) in %d invalidation(s)", len(self.request.url_list), count)

    def _new_fetcher(self, node_id: str, suffix: str) -> Any:
        return FetcherActor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            name=fetcher_name(self.req_id, suffix), namespace=self.settings.namespace,
        ).remote(self.req_id, self.settings)

    def _prestart_fetchers(self) -> dict[str, list[Any]]:
        """Start the fetchers of the node a job with ``instance_count: 1`` would get (the same rotation by
        request id as ``_start_fetchers``); node id -> fetchers.

        Not on a cluster with fetcher nodes: idle fetchers there would keep the autoscaler from removing
        the nodes when the cluster is idle. There the standby is the coordinator alone.
        """
        nodes = ray.nodes()
        if fetcher_nodes_exist(nodes):
            return {}
        slots = choose_nodes(nodes, 1, self.settings.fetchers_per_node, self.req_id)
        generation = uuid.uuid4().hex[:6]
        return {slot.node_id: [self._new_fetcher(slot.node_id, f"{generation}-p-{i}") for i in range(slot.fetchers)]
                for slot in slots}

    async def _start_fetchers(self) -> None:
        """Give the job fetchers on up to ``instance_count`` distinct nodes, using any started ahead for the
        same node, and hand them the job's fetch options; never wait forever on placement."""
        nodes = await asyncio.to_thread(ray.nodes)
        slots = choose_nodes(nodes, self.request.instance_count, self.settings.fetchers_per_node, self.req_id)
        prestarted, self.prestarted = self.prestarted, {}
        by_node: list[list[Any]] = []
        generation = uuid.uuid4().hex[:6]  # a restarted coordinator's fetchers get new names
        for n, slot in enumerate(slots):
            ready = prestarted.pop(slot.node_id, [])
            for extra in ready[slot.fetchers:]:
                ray.kill(extra)
            ready = ready[: slot.fetchers]
            by_node.append(ready + [self._new_fetcher(slot.node_id, f"{generation}-{n}-{i}")
                                    for i in range(len(ready), slot.fetchers)])
        for unused in (f for spare in prestarted.values() for f in spare):  # their node was not chosen
            ray.kill(unused)
        candidates = interleave_by_node(by_node)
        started: list[Any] = []
        node_ids: list[str] = []
        options = (self.request.variant_headers(), self.request.verify, self.request.until_hit,
                   self.request.skip_warm)
        refs = [f.bind.remote(*options) for f in candidates]
        for fetcher, ref in zip(candidates, refs, strict=True):
            try:
                node_ids.append(await asyncio.wait_for(asyncio.wrap_future(ref.future()), FETCHER_START_TIMEOUT_S))
                started.append(fetcher)
            except (TimeoutError, GetTimeoutError, RayActorError):
                ray.kill(fetcher)
        if not started:
            raise JobFailed("no fetcher could be started on the cluster")
        self.fetchers = started
        await self.state.set_nodes.remote(self.req_id, node_ids)

    async def _probe(self, pops: list[PopAddresses], lanes: list[Lane], n_cols: int, limits: list[int],
                     feeds: dict[int, asyncio.Queue[list[int] | None]]) -> None:
        """Run one task of each URL before its others (``plan.probe_plan``): a warm-up GET like any other, on
        the fetcher and pool of its lane. As each chunk answers, its URLs' other tasks go to their lanes (with
        tiering, those of the probe's tier group; every other group first gets one fetch, and its other POPs go once
        that answered), except a URL that answered a 4xx: its other tasks are failed instead of sent to every POP.
        The sizes learnt give ``total_size``. First-tier fetches hold a slot of ``max_origin_concurrency``.

        A HEAD before the GETs cost one more request per URL, at the POP and, on a cold edge, at the origin;
        waiting for every probe before any other GET left the machine idle at the switch.
        """
        urls = self.urls
        rps = share_of(self.request.max_rps, len(self.fetchers))
        bps = share_of(self.request.max_bytes_per_s, len(self.fetchers))
        part_bytes = self.settings.range_part_bytes
        lane_of = lane_of_tasks(lanes, len(urls) * n_cols, n_cols)
        plan = probe_plan(lanes, lane_of, n_cols, limits, self._batch_size(rps))
        sizes = np.zeros(len(urls), dtype=np.int64)
        col_group = self.col_group

        firsts: list[asyncio.Future[None]] = []
        probe_pop = np.full(len(urls), -1, dtype=np.int64)  # URL -> the POP whose probe the origin answered

        async def learnt(chunk: ProbeChunk, batch: tuple[ProbeRow, ...]) -> None:
            through = pops[chunk.column // self.n_variants].pop
            refused: list[ResultRow] = []
            passed: list[int] = []
            for task, status, nbytes, error_class, message, served in batch:
                index = task // n_cols
                if served == SERVED_ORIGIN:  # the URL was new to the probe's REC: what fills a REC now is this job
                    probe_pop[index] = chunk.column // self.n_variants
                if col_group is not None and error_class:
                    self.unfilled.add((index, int(col_group[chunk.column])))
                if 400 <= status < 500 and status != 429:
                    note = f"size probe through {through} answered {message or status}; not sent to the POPs"
                    refused.extend(
                        result_row(index * n_cols + c, status, error_class=f"http_{status}", message=note)
                        for c in range(n_cols) if c != chunk.column
                    )
                    continue
                if not error_class or nbytes > part_bytes:  # a large object with a failed part still told its size
                    sizes[index] = nbytes
                if nbytes > part_bytes:
                    self.large[index] = int(nbytes)
                passed.append(index)
            if col_group is None:  # off: every other POP now
                release(released_by_probe(lane_of, passed, chunk.column, n_cols))
            else:  # the probe's own tier group now; every other group's first fetch, then that group
                release(released_in_group(lane_of, passed, chunk.column, col_group, n_cols))
                for lane_id, task_ids in group_firsts(lane_of, passed, chunk.column, col_group, n_cols).items():
                    step = self._batch_size(rps)
                    for s in range(0, len(task_ids), step):
                        self.dispatched += len(task_ids[s:s + step])
                        firsts.append(asyncio.ensure_future(run_first(lanes[lane_id], task_ids[s:s + step])))
            if refused:
                await self.state.record.remote(self.req_id, refused)

        def release(held: dict[int, list[int]]) -> None:
            for lane_id, url_indices in held.items():
                feeds[lane_id].put_nowait(url_indices)

        async def call(column: int, owner_of: int, limit: int, task_ids: list[int]) -> tuple[ProbeRow, ...]:
            """First-tier tasks on their lane's fetcher, or on a survivor if that one dies."""
            pop, variant = divmod(column, self.n_variants)
            tasks = one_piece((t, urls[t // n_cols]) for t in task_ids)
            while True:
                owner = self._alive_owner(owner_of)
                try:
                    return await self.fetchers[owner].probe_batch.remote(
                        pops[pop].pop, pops[pop].addresses, tasks, self.deadline, limit, variant, rps,
                        self._phase(owner), bps, self._origin_share(owner))
                except RayActorError:
                    self._mark_dead(owner)

        async def run(chunk: ProbeChunk) -> None:
            await learnt(chunk, await call(chunk.column, chunk.owner, chunk.limit, chunk.task_ids))

        async def run_first(lane: Lane, task_ids: list[int]) -> None:
            """A tier group's first fetch of some URLs; once it answered, the group's other POPs may go (its REC,
            or the shield, holds them now)."""
            assert col_group is not None
            pop_index, variant = divmod(lane.column, self.n_variants)
            tasks = one_piece((t, urls[t // n_cols]) for t in task_ids)
            while True:
                owner = self._alive_owner(lane.owner)
                try:
                    failed, by_tier = await self.fetchers[owner].first_batch.remote(
                        pops[pop_index].pop, pops[pop_index].addresses, tasks, self.deadline, limits[lane.column],
                        variant, rps, self._phase(owner), bps, self._origin_share(owner))
                    break
                except RayActorError:
                    self._mark_dead(owner)
            group = int(col_group[lane.column])
            self.unfilled.update((t // n_cols, group) for t in failed)
            for task in by_tier:
                url = task // n_cols
                if self.tiering == "rec" and probe_pop[url] >= 0:
                    # The probe found the URL new and filled its REC; this group's first fetch, sent after it, was
                    # served by a tier above the POP: by that REC, which this POP shares.
                    self._learn(pop_index, self.rec_names[int(probe_pop[url])])
            release(released_in_group(lane_of, [t // n_cols for t in task_ids], lane.column, col_group, n_cols))

        self.dispatched += sum(len(chunk.task_ids) for chunk in plan)
        await asyncio.gather(*(run(chunk) for chunk in plan))
        await self.state.set_phase.remote(self.req_id, "warming")  # the probe is over; the groups' firsts warm
        while firsts:
            running, firsts[:] = list(firsts), []
            await asyncio.gather(*running)
        known = sizes[sizes > 0]
        self.mean_size = float(known.mean()) if len(known) else 0.0
        await self.state.set_sizes.remote(self.req_id, sizes)

    def _origin_share(self, owner: int) -> int:
        """Fetcher ``owner``'s share of ``max_origin_concurrency``."""
        return cap_share(self.request.max_origin_concurrency or self.settings.max_origin_concurrency,
                         len(self.fetchers), owner)

    def _alive_owner(self, preferred: int) -> int:
        alive = [i for i in range(len(self.fetchers)) if i not in self.dead]
        if not alive:
            raise JobFailed("every fetcher of the job died")
        return preferred % len(self.fetchers) if preferred % len(self.fetchers) in alive else alive[
            preferred % len(alive)
        ]

    def _mark_dead(self, index: int) -> None:
        if index not in self.dead:
            self.log.warning("fetcher %d died; moving its lanes to the survivors", index)
            self.dead.add(index)
            with contextlib.suppress(Exception):
                ray.kill(self.fetchers[index])

    def _phase(self, owner: int) -> float:
        """Where fetcher ``owner``'s paced requests start within an interval: the fetchers take turns."""
        return owner / max(1, len(self.fetchers))

    def _rps_share(self) -> float | None:
        """Each busy fetcher's part of ``max_rps``: the cap split over the fetchers that still have lanes."""
        return share_of(self.request.max_rps, len(set(self.busy.values())))

    def _bps_share(self) -> float | None:
        """Each busy fetcher's part of ``max_bytes_per_s``, split as ``max_rps`` is."""
        return share_of(self.request.max_bytes_per_s, len(set(self.busy.values())))

    def _batch_size(self, share: float | None, bytes_share: float | None = None) -> int:
        """Batches of about two seconds' work at a fetcher's rate ``share`` (and byte rate ``bytes_share``, once
        the probe told the objects' mean size), so progress moves while paced (a verified task is two requests,
        a GET and a HEAD, more when re-warmed)."""
        size = self.settings.batch_size
        per_task = 2 if self.request.verify else 1
        if share is not None:
            size = max(1, min(size, int(share * 2 / per_task)))
        if bytes_share is not None and self.mean_size > 0:
            size = max(1, min(size, int(bytes_share * 2 / self.mean_size)))
        return size

    async def _drive(self, lane: Lane, pops: list[str], addresses: list[list[str]], limit: int,
                     feed: asyncio.Queue[list[int] | None]) -> None:
        """Feed a lane's batches to its owner, a few in flight, as its URLs come (all at once, or as their size
        probes answer) until ``None``; on the owner's death, to a survivor."""
        n_cols = len(pops) * self.n_variants
        pop, variant = divmod(lane.column, self.n_variants)
        urls = self.urls
        pending: deque[list[int]] = deque()
        inflight: dict[asyncio.Future[Any], tuple[list[int], int]] = {}
        owner = self._alive_owner(lane.owner)
        more: asyncio.Future[list[int] | None] | None = asyncio.ensure_future(feed.get())
        try:
            while more is not None or pending or inflight:
                while pending and len(inflight) < BATCHES_IN_FLIGHT_PER_LANE:
                    batch = pending.popleft()
                    tasks = one_piece((t, urls[t // n_cols]) for t in batch)
                    large = self.large
                    sizes = {urls[u]: large[u] for t in batch if (u := t // n_cols) in large} if large else None
                    self.busy[lane.lane_id] = owner
                    ref = self.fetchers[owner].fetch_batch.remote(
                        pops[pop], addresses[pop], tasks, self.deadline, limit, variant, self._rps_share(),
                        self._phase(owner), self._bps_share(), sizes,
                        self._origin_share(owner) if self.tiering == "off" else None,
                    )
                    inflight[asyncio.wrap_future(ref.future())] = (batch, owner)
                    self.dispatched += len(batch)
                done, _ = await asyncio.wait([*inflight, *([more] if more else [])],
                                             return_when=asyncio.FIRST_COMPLETED)
                if more is not None and more in done:
                    done.discard(more)
                    url_indices = more.result()
                    more = None if url_indices is None else asyncio.ensure_future(feed.get())
                    if url_indices:
                        batch_up(pending, [u * n_cols + lane.column for u in url_indices],
                                 self._batch_size(self._rps_share(), self._bps_share()))
                for future in done:
                    batch, sent_to = inflight.pop(future)
                    try:
                        _, misses, by_tier = future.result()
                        if misses or by_tier:
                            self.note_released(misses, by_tier, n_cols)
                    except RayActorError:
                        self.dispatched -= len(batch)
                        self._mark_dead(sent_to)
                        if owner == sent_to:
                            owner = self._alive_owner(owner + 1)
                        pending.appendleft(batch)
        finally:
            if more is not None:
                more.cancel()
            self.busy.pop(lane.lane_id, None)  # its fetcher's rate share goes to those still busy

    async def _heartbeat(self) -> None:
        """Tell the state actor, for the whole job, that this coordinator runs, with how many tasks it has
        handed out: at each change (every 0.5 s at most), else every ``HEARTBEAT_S``. A job whose coordinator
        falls silent is closed by the state actor (``PREWARM_COORDINATOR_SILENCE_TIMEOUT``)."""
        last, sent_at = -1, 0.0
        while True:
            now = time.monotonic()
            if self.dispatched != last or now - sent_at >= HEARTBEAT_S:
                last, sent_at = self.dispatched, now
                self.state.dispatched.remote(self.req_id, last)
            await asyncio.sleep(0.5)

# Restarted by Ray if its process dies (run() is retried and resumes from the state actor); a stop kills it
# for good with no_restart.
CoordinatorActor = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3, max_concurrency=100)(Coordinator)


def create_coordinator(req_id: str, settings: Settings, prestart: bool = False) -> Any:
    """The request's detached coordinator, named after it; ``prestart``: start its likely fetchers now."""
    return CoordinatorActor.options(
        name=coordinator_name(req_id), namespace=settings.namespace, lifetime="detached", resources=ON_HEAD
    ).remote(req_id, settings, prestart)


def start_job(req_id: str, request: PrewarmRequest, cf_domain: str, deadline: float, settings: Settings,
              coordinator: Any = None) -> None:
    """Start the job on its coordinator (a standby made for ``req_id``, or a new one); the caller does not
    wait for the job."""
    coordinator = coordinator or create_coordinator(req_id, settings)
    coordinator.run.remote(request, cf_domain, deadline)
