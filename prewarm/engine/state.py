"""The detached state actor: one per cluster, a thin shell over the job book (``prewarm.core.jobs``).

It serialises writes, persists what a transition changed, keeps the final report (store, S3), delivers the
job-end webhook, asks the autoscaler for nodes, and runs the watch loop that closes jobs whose coordinator is
gone; reads only read. Find it from a notebook with ``ray.get_actor("prewarm-state", namespace="prewarm")``;
other parts of the service find it through ``prewarm.engine.registry``, which does not import this module's
pandas and boto3.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from prewarm.aws.cloudfront import CloudFrontError, make_clients, report_url, upload_report
from prewarm.core.jobs import (
    Job,
    JobBook,
    Overdue,
    Watch,
    job_from_meta,
    job_meta,
    progress_body,
    summary_body,
    summary_with_links,
)
from prewarm.core.report import report_csv, results_frame
from prewarm.core.results import ResultRow
from prewarm.engine.cluster import combined_ask, request_fetcher_nodes
from prewarm.engine.registry import coordinator_alive, get_state_actor, head_node_id, kill_coordinator
from prewarm.engine.store import Store
from prewarm.net.webhook import DeliveryStatus, deliver
from prewarm.schema import utcnow
from prewarm.settings import STATE_ACTOR_NAME, Settings

T = TypeVar("T")
log = logging.getLogger("prewarm.engine.state")
WATCH_EVERY_S = 1.0  # the watch loop's period: an overdue job is closed within about this long


def writes(method: Callable[..., T]) -> Callable[..., T]:
    """Serialise a method that changes state; reads run beside it, so polling never waits on a batch."""

    @functools.wraps(method)
    def locked(self: State, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class State:
    """All jobs of the cluster. The actor runs a few calls at once: writes hold one lock, reads do not."""

    def __init__(self, settings: Settings | None = None, watch: bool | None = None) -> None:
        settings = settings or Settings(persist=False)
        self.settings = settings
        self._lock = threading.RLock()
        self.namespace = settings.namespace
        self.book = JobBook(settings.max_active_jobs, settings.coordinator_silence_s)
        self.jobs: dict[str, Job] = self.book.jobs
        self._s3: Any = None
        self.desired_capacity = 0
        self._asked = 0
        self.store = Store(settings.state_dir if settings.persist else None)
        self._stop = threading.Event()  # ends the watch loop and cancels webhook deliveries
        self._learnt_recs: dict[str, str] = self.store.learnt_recs()
        self._reload()
        if ray.is_initialized() if watch is None else watch:  # as an actor; a plain object in unit tests
            threading.Thread(target=self._watch, name="state-watch", daemon=True).start()

    # -- durability ------------------------------------------------------------------------------
    def _persist(self, job: Job, urls: bool = False) -> None:
        beside: dict[str, Any] = {}
        if urls and job.selected is not None:
            beside["selected"] = job.selected
        if urls and job.source is not None:
            beside.update(source=job.source, manifest_urls=job.manifest_urls)
        self.store.save_job(job.req_id, job_meta(job), job.urls if urls else None, beside)

    def _reload(self) -> None:
        """Rebuild every stored job; a running job whose coordinator is gone ends FAILED with the reason."""
        for req_id, meta, urls, rows in self.store.jobs():
            try:
                job = job_from_meta(req_id, meta, urls)
                if meta.get("pops") is not None:
                    job.table = job.new_table(meta["pops"])
                    job.table.record(r for r in rows if isinstance(r[0], int))
            except (KeyError, TypeError, ValueError) as exc:  # a damaged record must not keep the service down
                log.error("job %s could not be reloaded from the store and is skipped: %s", req_id, exc)
                continue
            self.jobs[req_id] = job
            if not job.final and not coordinator_alive(req_id, self.namespace):
                self.finish(req_id, "FAILED", "the service restarted while the job was running; it did not resume")
            elif job.final and job.callback_url and not (job.webhook or {}).get("delivered") \
                    and not (job.webhook or {}).get("gave_up"):
                self._start_webhook(job)  # owed from before the restart: deliver in what is left of the window

    # -- the watch loop: the only place that closes a job its coordinator left -------------------------
    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            try:
                self.watch_step()
            except Exception:  # the loop must outlive a bug in one step
                log.exception("the state actor's watch step failed")

    def watch_step(self, now: datetime | None = None) -> list[Overdue]:
        """Act on what the job book finds overdue at ``now``: close, kill, or ask whether a coordinator lives.
        The Ray lookups run outside the lock, so result batches are not held behind them."""
        with self._lock:
            found = self.book.overdue(now or utcnow())
        for item in found:
            if item.rule is Watch.QUIET and coordinator_alive(item.req_id, self.namespace):
                continue
            self.finish(item.req_id, item.status, item.message)
            if item.rule is Watch.SILENT:
                kill_coordinator(item.req_id, self.namespace)
        return found

    # -- written by the API and the coordinators -------------------------------------------
    @writes
    def create_job(self, req_id: str, request: dict[str, Any], target_pops: list[str], cf_domain: str,
                   created_at: datetime, timeout_at: datetime, api_base: str = "",
                   selected: list[tuple[int, str, int]] | None = None) -> None:
        """Record an accepted request; ``selected`` restricts a retry job to the tasks it re-runs."""
        job = self.book.create(req_id, request, target_pops, cf_domain, created_at, timeout_at, api_base, selected)
        self._persist(job, urls=True)

    def retry_source(self, req_id: str) -> dict[str, Any]:
        """What a retry of ``req_id`` needs (``JobBook.retry_selection``); raises ``RetryRefused`` when it cannot
        be retried."""
        return self.book.retry_selection(req_id)

    @writes
    def admit(self, req_id: str) -> bool:
        """Let a job start fetching if fewer than ``max_active_jobs`` are; otherwise it stays queued."""
        allowed, admitted_now = self.book.admit(req_id)
        if admitted_now:
            self._persist(self.jobs[req_id])
            self._rescale()
        return allowed

    @writes
    def set_phase(self, req_id: str, phase: str) -> None:
        if self.book.set_phase(req_id, phase, time.time()):
            self._persist(self.jobs[req_id])

    @writes
    def set_tiering(self, req_id: str, tiering: str, rec_groups: dict[str, str] | None = None) -> None:
        job = self.jobs[req_id]
        if not job.final:
            job.tiering = tiering
            job.rec_groups = dict(rec_groups or {})
            self._persist(job)

    def learnt_recs(self) -> dict[str, str]:
        """POP -> REC as earlier jobs' Server-Timing showed it (over the catalogue's default)."""
        return dict(self._learnt_recs)

    @writes
    def learn_recs(self, learnt: dict[str, str]) -> None:
        self._learnt_recs.update(learnt)
        self.store.save_learnt_recs(learnt)

    def live_bytes(self, req_id: str, fetcher: int, total: int, origin_limit: int | None = None,
                   origin_low: int | None = None) -> None:
        """A fetcher's running count of the body bytes it has read for the job, and its first-tier concurrency
        limit now and at its lowest (about once a second, while they change)."""
        job = self.jobs.get(req_id)
        if job is None or job.final:
            return
        job.live[fetcher] = max(job.live.get(fetcher, 0), int(total))
        job.sample_bytes()
        if origin_limit is not None:
            job.origin_limits[fetcher] = int(origin_limit)
            job.origin_lows[fetcher] = int(origin_low if origin_low is not None else origin_limit)

    @writes
    def set_plan(self, req_id: str, pops: list[str], pop_failures: dict[str, str],
                 expansion: dict[str, Any] | None = None) -> None:
        """Fix the task table once POPs are resolved (``JobBook.set_plan``), the expansion with it in one call,
        so a restart sees all of it or none."""
        rows = self.book.set_plan(req_id, pops, pop_failures, expansion)
        if rows is None:
            return
        self._persist(self.jobs[req_id], urls=expansion is not None)
        if rows:
            self.store.save_results(req_id, rows)

    @writes
    def set_sizes(self, req_id: str, url_sizes: np.ndarray) -> None:
        """What the size probe learnt: each URL's size (0 when unknown)."""
        if self.book.set_sizes(req_id, url_sizes):
            self._persist(self.jobs[req_id])

    @writes
    def set_nodes(self, req_id: str, node_ids: list[str]) -> None:
        job = self.jobs[req_id]
        job.node_ids = list(node_ids)
        job.nodes_used = len(set(node_ids))
        self._persist(job)

    def nodes(self, req_id: str) -> list[str]:
        """The node ids of the job's fetchers (one entry per fetcher)."""
        return list(self.jobs[req_id].node_ids)

    @writes
    def dispatched(self, req_id: str, total_dispatched: int) -> None:
        """The coordinator's heartbeat: it runs, and has handed out this many tasks."""
        job = self.jobs[req_id]
        job.dispatched = total_dispatched
        job.last_checkin = utcnow()

    def resume_point(self, req_id: str) -> dict[str, Any]:
        """What a (re)started coordinator needs: is the job over, its POPs if planned, the tasks left."""
        return self.book.resume_point(req_id)

    @writes
    def record(self, req_id: str, rows: Sequence[ResultRow]) -> int:
        """Results of one batch; ignored once the job is final (a late batch after a timeout)."""
        added = self.book.record(req_id, rows)
        if added:
            self.store.save_results(req_id, rows)
        return added

    @writes
    def finish(self, req_id: str, status: str, error_message: str = "") -> str:
        """Close a job: unfinished tasks become failures named after the reason. First close wins."""
        failed = self.book.close(req_id, status, error_message)
        job = self.jobs[req_id]
        if failed is None:
            return job.status
        if failed:
            self.store.save_results(req_id, failed)
        assert job.table is not None  # close() made it
        csv = report_csv(job.table, job.pop_failures)
        if self.store.save_report(req_id, csv) is None:
            job.report = csv  # no store: keep it in memory
        job.report_key = self._upload_report(req_id, csv)
        self.book.mark_closed(req_id, status, error_message)  # final last: reads take no lock
        self._persist(job)
        self._rescale()
        if job.callback_url:
            self._start_webhook(job)
        return job.status

    # -- the job-end webhook -----------------------------------------------------------------------
    def _start_webhook(self, job: Job) -> None:
        """Deliver the summary to ``callback_url`` in the background, for what is left of the window."""
        started = job.last_update
        window = self.settings.webhook_window_s - (utcnow() - started).total_seconds()
        if window <= 0:  # the service was down for the rest of the window: a late POST would surprise
            job.webhook = {**DeliveryStatus(url=job.callback_url or "").to_dict(), **(job.webhook or {}),
                           "gave_up": True, "last_error": "the retry window ended while the service was down"}
            self._persist(job)
            return
        threading.Thread(target=self._deliver_webhook, args=(job.req_id, window),
                         name=f"webhook-{job.req_id}", daemon=True).start()

    def _deliver_webhook(self, req_id: str, window_s: float) -> None:
        job = self.jobs[req_id]
        summary = self.summary(req_id) or {}
        summary.pop("webhook", None)  # the delivery's own status is not part of what it delivers
        body = json.dumps(summary).encode()

        def on_attempt(status: DeliveryStatus) -> None:
            with self._lock:
                job.webhook = status.to_dict()
                self._persist(job)

        try:
            deliver(job.callback_url or "", body, self.settings.webhook_secret,
                    allow_private=self.settings.allow_private_edges, window_s=window_s,
                    timeout_s=self.settings.webhook_timeout_s, ca_bundle=self.settings.ca_bundle,
                    backoff_base_s=self.settings.webhook_backoff_s, on_attempt=on_attempt, stop=self._stop,
                    attempts_before=int((job.webhook or {}).get("attempts", 0)))
        except Exception:  # a delivery bug must not take the state actor down
            log.exception("[req_id=%s] webhook delivery failed", req_id, extra={"req_id": req_id})

    # -- reports in S3 ---------------------------------------------------------------------------
    def _s3_client(self) -> Any:
        if self._s3 is None:
            self._s3 = make_clients()[1]
        return self._s3

    def _upload_report(self, req_id: str, csv: bytes) -> str | None:
        """Upload the final report when PREWARM_REPORT_BUCKET is set; the service's own URL otherwise."""
        bucket = self.settings.report_bucket
        if not bucket:
            return None
        key = f"{self.settings.report_prefix}{req_id}/failed_pop_urls.csv"
        try:
            upload_report(self._s3_client(), bucket, key, csv)
        except CloudFrontError as exc:
            log.error("[req_id=%s] report upload to s3://%s/%s failed: %s", req_id, bucket, key, exc,
                      extra={"req_id": req_id})
            return None
        return key

    def _presigned_report(self, job: Job) -> str | None:
        if not job.report_key or not self.settings.report_bucket:
            return None
        try:
            return report_url(self._s3_client(), self.settings.report_bucket, job.report_key,
                              self.settings.report_url_expiry_s)
        except CloudFrontError as exc:
            log.error("presigning the report of %s failed: %s", job.req_id, exc)
            return None

    @writes
    def set_desired_capacity(self, value: int) -> None:
        self.desired_capacity = value
        self._rescale()

    def _rescale(self) -> None:
        """Keep the autoscaler's request at max(desired capacity, running jobs' instance_count)."""
        running = [j.instance_count for j in self.book.running() if j.admitted]
        ask = combined_ask(self.desired_capacity, running)
        if ask != self._asked:
            try:
                request_fetcher_nodes(ask)
                self._asked = ask
            except Exception as exc:  # the autoscaler is advisory: a failure must not stop a job
                log.warning("could not ask the autoscaler for %d fetcher nodes: %s", ask, exc)

    def get_desired_capacity(self) -> int:
        return self.desired_capacity

    # -- read by the API: reads only read ------------------------------------------------------------------
    def exists(self, req_id: str) -> bool:
        return req_id in self.jobs

    def progress(self, req_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(req_id)
        return None if job is None else progress_body(job)

    def summary(self, req_id: str) -> dict[str, Any] | None:
        """The summary with its report link (``failure_pop_urls_report``: S3 when used, else this service's)."""
        job = self.jobs.get(req_id)
        if job is None:
            return None
        if job.final and job.summary is None:  # reloaded from the store: built on first read, then kept
            job.summary = summary_body(job)
        return summary_with_links(job, self._presigned_report(job))

    def report(self, req_id: str) -> bytes | None:
        job = self.jobs.get(req_id)
        if job is None:
            return None
        if job.final:
            stored = job.report or self.store.load_report(req_id)
            if stored is not None:
                return stored
        return report_csv(job.table or job.new_table([]), job.pop_failures)

    def results(self, req_id: str) -> pd.DataFrame | None:
        """Every finished (URL, POP) of a job with its outcome, as a DataFrame (for notebooks)."""
        job = self.jobs.get(req_id)
        if job is None:
            return None
        return results_frame(job.table or job.new_table([]))

    def list_jobs(self, status: str | None = None, limit: int | None = None,
                  since: datetime | None = None) -> list[dict[str, Any]]:
        """Progress bodies of the jobs with ``status`` created at or after ``since``, newest first, ``limit`` many."""
        return [progress_body(job) for job in self.book.select(status, limit, since)]

    def quiet(self, handed_out: str | None) -> bool:
        """Whether no job runs, counting the request id the API handed out last (``handed_out``) only once it
        is registered: the API starts its next standby then, so that its start-up takes no CPU from a job."""
        return (handed_out is None or handed_out in self.jobs) and not self.book.running()

    def pid(self) -> int:
        return os.getpid()


# Restarted after a crash (it reloads from the store), and calls in flight are retried against the new
# process: a result batch is applied once, since finished tasks ignore repeats.
StateActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=4)(State)


def ensure_state_actor(settings: Settings) -> ray.actor.ActorHandle:
    """The cluster's state actor, created on the head node if it is not there yet (detached: it outlives us).
    Only its creators import this module; every other part finds the actor through ``engine.registry``."""
    try:
        return get_state_actor(settings)
    except ValueError:
        pass
    options: dict[str, Any] = {"name": STATE_ACTOR_NAME, "namespace": settings.namespace, "lifetime": "detached",
                               "get_if_exists": True}
    head = head_node_id()
    if head is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
    return StateActor.options(**options).remote(settings)
