"""The detached state actor: one per cluster, aggregates every job's progress and builds its report.

Find it from a notebook with ``ray.get_actor("prewarm-state", namespace="prewarm")``; other parts of
the service find it through ``prewarm.engine.registry``, which does not import this module's pandas and
boto3. Fetchers report results in batches; the API reads progress and summaries from here, so those stay
fast while jobs run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from prewarm.aws.cloudfront import CloudFrontError, make_clients, report_url, upload_report
from prewarm.core.report import cold_pairs, pop_table, report_csv, results_frame
from prewarm.core.results import ResultRow, TaskTable, counts, percentage
from prewarm.engine.cluster import combined_ask, request_fetcher_nodes
from prewarm.engine.registry import coordinator_alive, get_state_actor, head_node_id, kill_coordinator
from prewarm.engine.store import Store
from prewarm.net.webhook import DeliveryStatus, deliver
from prewarm.schema import FINAL_STATUSES, MAX_COLD_PAIRS, fmt_time, utcnow, variant_label
from prewarm.settings import STATE_ACTOR_NAME, Settings

T = TypeVar("T")
log = logging.getLogger("prewarm.engine.state")
# A job whose coordinator vanished is closed this long after its deadline, so none stays IN_PROGRESS.
DEADLINE_GRACE = timedelta(seconds=30)
# A job with no news for this long has its coordinator's liveness checked.
STALE_AFTER = timedelta(seconds=5)

STOP_ERRORS = {"TIMEOUT": "timeout", "STOPPED": "stopped", "FAILED": "job_failed"}
BYTE_RATE_WINDOW_S = 10.0  # the running byte rate follows this much recent history


@dataclass
class Job:
    req_id: str
    urls: list[str]
    target_pops: list[str]
    cf_domain: str
    created_at: datetime
    timeout_at: datetime
    instance_count: int = 1
    status: str = "IN_PROGRESS"
    phase: str = "queued"
    error_message: str = ""
    last_update: datetime = field(default_factory=utcnow)
    last_liveness_check: datetime = field(default_factory=utcnow)
    last_checkin: datetime = field(default_factory=utcnow)  # the coordinator's last admit() or heartbeat
    table: TaskTable | None = None
    pop_failures: dict[str, str] = field(default_factory=dict)
    total_size: int = 0
    dispatched: int = 0
    nodes_used: int = 0
    node_ids: list[str] = field(default_factory=list)
    report: bytes | None = None
    report_key: str | None = None
    summary: dict[str, Any] | None = None
    request: dict[str, Any] = field(default_factory=dict)  # the validated request, without url_list
    variants: list[str] = field(default_factory=lambda: [""])
    selected: list[tuple[int, str, int]] | None = None  # a retry job's tasks: (URL index, POP, variant)
    api_base: str = ""
    webhook: dict[str, Any] | None = None
    fetch_started: float | None = None  # unix time its first fetch went out (phase probing or warming)
    tiering: str = ""  # the tiering the coordinator chose (rec, shield, off)
    origin_limits: dict[int, int] = field(default_factory=dict)  # fetcher pid -> its first-tier concurrency limit
    origin_lows: dict[int, int] = field(default_factory=dict)  # fetcher pid -> the lowest that limit has been
    rec_groups: dict[str, str] = field(default_factory=dict)  # POP -> the REC it was taken to use (rec tiering)
    source: list[int] | None = None  # expanded: per URL, its manifest's index in manifest_urls (-1: given)
    manifest_urls: list[str] = field(default_factory=list)
    expansion: dict[str, Any] | None = None  # expanded: the summary's account of it
    live: dict[int, int] = field(default_factory=dict)  # fetcher pid -> body bytes it has read for this job
    byte_samples: deque[tuple[float, int]] = field(default_factory=deque)  # (monotonic time, bytes received)

    def bytes_received(self) -> int:
        """Body bytes read so far: the fetchers' live counts, or the finished results' when larger."""
        table = self.table
        done = 0 if table is None else table.download_size + table.bytes_wasted
        return max(done, sum(self.live.values()))

    def byte_rate(self) -> float:
        """Bytes per second: over the last ``BYTE_RATE_WINDOW_S`` while running, over the fetching once ended."""
        if self.final:
            if self.fetch_started is None or self.table is None:
                return 0.0
            seconds = self.last_update.timestamp() - self.fetch_started
            return round(self.table.download_size / seconds, 1) if seconds > 0 else 0.0
        now = time.monotonic()
        samples = self.byte_samples
        if not samples:
            return 0.0
        anchor_at, anchor = samples[0]
        return round((samples[-1][1] - anchor) / (now - anchor_at), 1) if now - anchor_at >= 0.5 else 0.0

    def sample_bytes(self) -> None:
        now = time.monotonic()
        samples = self.byte_samples
        samples.append((now, self.bytes_received()))
        while len(samples) > 2 and now - samples[1][0] >= BYTE_RATE_WINDOW_S:
            samples.popleft()

    @property
    def callback_url(self) -> str | None:
        return self.request.get("callback_url")

    def new_table(self, pops: list[str]) -> TaskTable:
        """The job's task grid over ``pops``; a retry job keeps only its selected tasks."""
        table = TaskTable(self.urls, pops, self.variants)
        if self.source is not None:
            names = [*self.manifest_urls, ""]  # index -1: a given URL
            table.manifest_of = [names[i] for i in self.source]
        if self.selected is not None:
            index = {p: i for i, p in enumerate(pops)}
            table.keep_only([table.task_id(u, index[p], v) for u, p, v in self.selected if p in index])
        return table

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def touch(self) -> None:
        self.last_update = utcnow()


def writes(method: Callable[..., T]) -> Callable[..., T]:
    """Serialise a method that changes state; reads run beside it, so polling never waits on a batch."""

    @functools.wraps(method)
    def locked(self: State, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class State:
    """All jobs of the cluster. The actor runs a few calls at once: writes hold one lock, reads do not."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or Settings(persist=False)
        self.settings = settings
        self._lock = threading.RLock()
        self.namespace = settings.namespace
        self.max_active_jobs = max(1, settings.max_active_jobs)
        self._s3: Any = None
        self.jobs: dict[str, Job] = {}
        self.desired_capacity = 0
        self._asked = 0
        self.store = Store(settings.state_dir if settings.persist else None)
        self._stop = threading.Event()  # cancels webhook deliveries when the actor goes away
        self._learnt_recs: dict[str, str] = self.store.learnt_recs()
        self._reload()

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

    # -- written by the API and the coordinators -------------------------------------------
    @writes
    def create_job(self, req_id: str, request: dict[str, Any], target_pops: list[str], cf_domain: str,
                   created_at: datetime, timeout_at: datetime, api_base: str = "",
                   selected: list[tuple[int, str, int]] | None = None) -> None:
        """Record an accepted request; ``selected`` restricts a retry job to the tasks it re-runs."""
        variants = [variant_label(v) for v in (request.get("variants") or [{}])]
        job = Job(req_id, list(request["url_list"]), target_pops, cf_domain, created_at, timeout_at,
                  instance_count=int(request.get("instance_count", 1)),
                  request={k: v for k, v in request.items() if k != "url_list"}, variants=variants,
                  selected=[tuple(t) for t in selected] if selected is not None else None, api_base=api_base)
        self.jobs[req_id] = job
        self._persist(job, urls=True)

    def retry_source(self, req_id: str) -> dict[str, Any]:
        """What a retry of ``req_id`` needs: its request and its failed or unfinished tasks.

        ``{"error": ...}`` when it cannot be retried (unknown, still running, nothing failed). The
        tasks are given on the retry job's own grid: the URLs that failed anywhere, in order (so the
        retry's url_list is short), with (new URL index, POP, variant) for each task to re-run.
        A POP that could not be resolved failed every URL of the job, so all its pairs are retried.
        """
        job = self._get(req_id)
        if job is None:
            return {"error": f"field 'retry_of': no job {req_id}"}
        if not job.final:
            return {"error": f"field 'retry_of': job {req_id} is still {job.status}; retry it once it has ended"}
        table = job.table or job.new_table([])
        triples: list[tuple[int, str, int]] = []
        for t in table.failed_task_ids():
            triples.append((int(table.url_index(t)), table.pops[int(table.pop_index(t))],
                            int(table.variant_index(t))))
        for pop in job.pop_failures:  # unresolvable: every pair the job held there failed
            if pop in table.pops:
                continue
            if job.selected is not None:  # a retry job held only some of them
                triples.extend((u, p, v) for u, p, v in job.selected if p == pop)
            else:
                triples.extend((u, pop, v) for u in range(len(job.urls)) for v in range(len(job.variants)))
        if not triples:
            return {"error": f"field 'retry_of': job {req_id} has no failed or unfinished tasks to retry"}
        url_indices = sorted({u for u, _, _ in triples})
        renumber = {u: i for i, u in enumerate(url_indices)}
        failed_pops = {p for _, p, _ in triples}
        pops = [p for p in job.target_pops if p in failed_pops]
        return {
            "request": {**job.request, "url_list": [job.urls[u] for u in url_indices]},
            "target_pops": pops,
            "cf_domain": job.cf_domain,
            "selected": sorted((renumber[u], p, v) for u, p, v in triples),
        }

    @writes
    def admit(self, req_id: str) -> bool:
        """Let a job start fetching if fewer than ``max_active_jobs`` are; otherwise it stays queued.

        Each active job holds fetcher processes on the cluster: the cap keeps a burst of requests from
        starting hundreds of processes at once.
        """
        job = self.jobs[req_id]
        job.last_checkin = utcnow()  # its coordinator runs (see _get); queued, it asks every 0.25 s
        if job.final:
            return True
        if job.phase != "queued":
            return True
        active = sum(1 for j in self._running() if j.phase != "queued")
        if active >= self.max_active_jobs:
            return False
        job.phase = "resolving"
        job.touch()
        self._persist(job)
        self._rescale()
        return True

    @writes
    def set_phase(self, req_id: str, phase: str) -> None:
        job = self.jobs[req_id]
        if not job.final:
            job.phase = phase
            if phase in ("probing", "warming") and job.fetch_started is None:
                job.fetch_started = time.time()
            job.touch()
            self._persist(job)

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
        """Fix the task table once POPs are resolved: tasks are the URLs x the resolved POPs. Once only.

        ``expansion`` (``expand``): the URL list with what the manifests held (``urls``, ``source``,
        ``manifest_urls``), the account for the summary, and the manifests' GETs through the first POP (``rows``:
        URL index -> row), which are their warm-up there. In the same call, so a restart sees all of it or none."""
        job = self.jobs[req_id]
        if job.table is not None or job.final:
            return
        if expansion is not None:
            job.urls = list(expansion["urls"])
            job.source = [int(i) for i in expansion["source"]]
            job.manifest_urls = list(expansion["manifest_urls"])
            job.expansion = expansion["summary"]
        job.table = job.new_table(pops)
        job.pop_failures = dict(pop_failures)
        job.touch()
        self._persist(job, urls=expansion is not None)
        if expansion is not None and expansion["rows"] and pops:
            rows = [(job.table.task_id(int(u), 0, 0), *row[1:]) for u, row in expansion["rows"]]
            if job.table.record(rows):
                self.store.save_results(req_id, rows)

    @writes
    def set_sizes(self, req_id: str, url_sizes: np.ndarray) -> None:
        """What the size probe learnt: each URL's size (0 when unknown).

        ``total_size`` counts a URL's size once per task the job holds, so a retry job counts only the pairs
        it re-runs.
        """
        job = self.jobs[req_id]
        if job.table is None or job.final:
            return
        held = (~job.table.skipped).reshape(len(job.urls), -1).sum(axis=1)
        job.total_size = int(np.dot(np.asarray(url_sizes, dtype=np.int64), held))
        job.touch()
        self._persist(job)

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
        job = self.jobs[req_id]
        if job.final or job.table is None:
            return {"final": job.final, "pops": None, "pending": None, "done": 0, "phase": job.phase}
        pending = np.flatnonzero(~job.table.done)
        return {"final": False, "pops": list(job.table.pops), "pending": pending, "done": job.table.done_count,
                "phase": job.phase, "urls": job.urls if job.source is not None else None}

    @writes
    def record(self, req_id: str, rows: Sequence[ResultRow]) -> int:
        """Results of one batch; ignored once the job is final (a late batch after a timeout)."""
        job = self.jobs.get(req_id)
        if job is None or job.final or job.table is None:
            return 0
        added = job.table.record(rows)
        if added:
            self.store.save_results(req_id, rows)
            job.sample_bytes()
        job.touch()
        return added

    @writes
    def finish(self, req_id: str, status: str, error_message: str = "") -> str:
        """Close a job: unfinished tasks become failures named after the reason. First close wins."""
        job = self.jobs[req_id]
        if job.final:
            return job.status
        if job.table is None:  # closed before POPs were resolved: count against every targeted POP
            job.table = job.new_table(job.target_pops)
        if status != "FINISHED" or job.table.done_count < job.table.total:
            reason = STOP_ERRORS.get(status, "unfinished")
            self.store.save_results(req_id, job.table.fail_unfinished(reason, error_message or reason))
        csv = report_csv(job.table, job.pop_failures)
        if self.store.save_report(req_id, csv) is None:
            job.report = csv  # no store: keep it in memory
        job.report_key = self._upload_report(req_id, csv)
        # Final last: a reader that sees the final status also sees the final report (reads take no lock).
        job.error_message = error_message
        job.phase = "done"
        job.status = status
        job.touch()
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
        summary["failure_pop_urls_report"] = summary.pop("report_url", None) or ""
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

    def _report_url(self, job: Job) -> str | None:
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
        running = [j.instance_count for j in self.jobs.values() if not j.final and j.phase != "queued"]
        ask = combined_ask(self.desired_capacity, running)
        if ask != self._asked:
            try:
                request_fetcher_nodes(ask)
                self._asked = ask
            except Exception as exc:  # the autoscaler is advisory: a failure must not stop a job
                log.warning("could not ask the autoscaler for %d fetcher nodes: %s", ask, exc)

    def get_desired_capacity(self) -> int:
        return self.desired_capacity

    # -- read by the API -------------------------------------------------------------------------
    def _get(self, req_id: str) -> Job | None:
        job = self.jobs.get(req_id)
        if job is None or job.final:
            return job
        now = utcnow()
        if now > job.timeout_at + DEADLINE_GRACE:
            self.finish(req_id, "TIMEOUT", "the job's coordinator did not close it by its deadline")
        elif now - job.last_checkin > timedelta(seconds=self.settings.coordinator_silence_s):
            # A coordinator that Ray is still creating or restarting keeps its name, so it looks alive, but it
            # sends nothing: do not wait for the job's deadline.
            self.finish(req_id, "FAILED", f"the job's coordinator did not run for "
                        f"{self.settings.coordinator_silence_s:g} s (it never started, or it is stuck restarting)")
            kill_coordinator(req_id, self.namespace)
        elif now - job.last_update > STALE_AFTER and now - job.last_liveness_check > STALE_AFTER:
            # Quiet for a while: make sure somebody still drives it, so none stays IN_PROGRESS forever.
            job.last_liveness_check = now
            if not coordinator_alive(req_id, self.namespace):
                self.finish(req_id, "FAILED", "the job's coordinator died and could not be restarted")
        return job

    def exists(self, req_id: str) -> bool:
        return req_id in self.jobs

    def _running(self) -> list[Job]:
        """The jobs that have not ended, after the watchdog of ``_get`` has looked at each: a job nobody
        polls must not hold an admission slot (or keep the API's standby waiting) once its coordinator is gone."""
        for job in [j for j in list(self.jobs.values()) if not j.final]:
            self._get(job.req_id)
        return [job for job in list(self.jobs.values()) if not job.final]

    def progress(self, req_id: str) -> dict[str, Any] | None:
        job = self._get(req_id)
        if job is None:
            return None
        table = job.table
        if table is None:  # before the plan: what the table will hold if every targeted POP resolves
            total = len(job.selected) if job.selected is not None else (
                len(job.urls) * len(job.target_pops) * len(job.variants))
            done, success, size = 0, 0, 0
        else:
            total, done, success, size = table.total, table.done_count, table.success_count, table.download_size
        in_progress, available = counts(total, done, job.dispatched)
        if job.final:
            in_progress, available = 0, 0
        return {
            "request_id": job.req_id,
            "status": job.status,
            "phase": job.phase,
            "total_count": total,
            "download_count": done,
            "percentage_complete": percentage(done, total),
            "in_progress_task_count": in_progress,
            "available_task_count": available,
            "download_size": size,
            "total_size": job.total_size,
            "success_count": success,
            "failure_count": done - success,
            "nodes_used": job.nodes_used,
            "verified_hit_count": 0 if table is None else table.verified_hit_count,
            "warm_ratio": None if table is None else table.warm_ratio,
            "bytes_wasted": 0 if table is None else table.bytes_wasted,
            "bytes_received": job.bytes_received(),
            "byte_rate": job.byte_rate(),
            "already_warm_count": 0 if table is None else table.already_warm_count,
            "origin_fetches": 0 if table is None else table.origin_fetches,
            "tiering": job.tiering,
            "origin_concurrency_limit": sum(job.origin_limits.values()) or None,
            "error_message": job.error_message,
            "created_at": fmt_time(job.created_at),
            "last_update_time": fmt_time(job.last_update),
            "timestamp": fmt_time(utcnow()),
        }

    def summary(self, req_id: str) -> dict[str, Any] | None:
        job = self._get(req_id)
        if job is None:
            return None
        body = job.summary if job.final and job.summary is not None else self._summarise(job)
        if job.final:
            job.summary = body  # a final job's summary never changes: built once, not per poll
        report = self._report_url(job) or (f"{job.api_base}/reports/{req_id}.csv" if job.api_base else None)
        return {**body, "report_url": report, "webhook": job.webhook, "timestamp": fmt_time(utcnow())}

    @staticmethod
    def _summarise(job: Job) -> dict[str, Any]:
        table = job.table or job.new_table([])
        cold, cold_count = cold_pairs(table, MAX_COLD_PAIRS)
        return {
            "request_id": job.req_id,
            "status": job.status,
            "failure_pops": list(dict.fromkeys([*job.pop_failures, *table.all_failed_pops()])),
            "failure_urls": table.failure_urls(),
            "success_count": table.success_count,
            "failure_count": table.failure_count,
            "pops": pop_table(table),
            "verified_hit_count": table.verified_hit_count,
            "warm_ratio": table.warm_ratio,
            "cold_pairs": cold,
            "cold_pair_count": cold_count,
            "retry_of": job.request.get("retry_of"),
            "download_size": table.download_size,
            "bytes_wasted": table.bytes_wasted,
            "byte_rate": job.byte_rate(),
            "already_warm_count": table.already_warm_count,
            "origin_fetches": table.origin_fetches,
            "tiering": job.tiering,
            "origin_concurrency_low": sum(job.origin_lows.values()) or None,
            "rec_groups": job.rec_groups,
            "hit_layers": table.hit_layers(),
            "expansion": job.expansion,
            "failure_manifests": table.failures_by_manifest(),
            "error_message": job.error_message,
            "created_at": fmt_time(job.created_at),
            "last_update_time": fmt_time(job.last_update),
        }

    def report(self, req_id: str) -> bytes | None:
        job = self._get(req_id)
        if job is None:
            return None
        if job.final:
            stored = job.report or self.store.load_report(req_id)
            if stored is not None:
                return stored
        return report_csv(job.table or job.new_table([]), job.pop_failures)

    def results(self, req_id: str) -> pd.DataFrame | None:
        """Every finished (URL, POP) of a job with its outcome, as a DataFrame (for notebooks)."""
        job = self._get(req_id)
        if job is None:
            return None
        return results_frame(job.table or job.new_table([]))

    def list_jobs(self, status: str | None = None, limit: int | None = None,
                  since: datetime | None = None) -> list[dict[str, Any]]:
        """Progress bodies of the jobs with ``status`` created at or after ``since``, newest first, ``limit`` many.

        Running jobs are refreshed first (a dead coordinator or a passed deadline closes them), so the
        status filter sees what a progress read would; only the selected jobs get a progress body.
        """
        from prewarm.core.events import select_jobs  # local: this method is the only user

        self._running()
        chosen = select_jobs(list(self.jobs.values()), status, limit, since)
        return [p for job in chosen if (p := self.progress(job.req_id))]

    def quiet(self, handed_out: str | None) -> bool:
        """Whether no job runs, counting the request id the API handed out last (``handed_out``) only once it
        is registered: the API starts its next standby then, so that its start-up takes no CPU from a job."""
        return (handed_out is None or handed_out in self.jobs) and not self._running()

    def pid(self) -> int:
        return os.getpid()


def job_meta(job: Job) -> dict[str, Any]:
    return {
        "target_pops": job.target_pops, "cf_domain": job.cf_domain,
        "created_at": job.created_at.timestamp(), "timeout_at": job.timeout_at.timestamp(),
        "status": job.status, "phase": job.phase, "error_message": job.error_message,
        "last_update": job.last_update.timestamp(), "pops": None if job.table is None else job.table.pops,
        "pop_failures": job.pop_failures, "total_size": job.total_size, "node_ids": job.node_ids,
        "instance_count": job.instance_count, "report_key": job.report_key,
        "request": job.request, "variants": job.variants, "api_base": job.api_base,
        "webhook": job.webhook, "fetch_started": job.fetch_started, "tiering": job.tiering,
        "rec_groups": job.rec_groups, "expansion": job.expansion,
    }


def job_from_meta(req_id: str, meta: dict[str, Any], urls: list[str]) -> Job:
    def when(key: str) -> datetime:
        return datetime.fromtimestamp(meta[key], UTC)

    job = Job(req_id, urls, meta["target_pops"], meta["cf_domain"], when("created_at"), when("timeout_at"),
              status=meta["status"], phase=meta["phase"], error_message=meta["error_message"],
              last_update=when("last_update"), pop_failures=meta["pop_failures"], total_size=meta["total_size"],
              node_ids=meta["node_ids"], nodes_used=len(set(meta["node_ids"])),
              instance_count=meta.get("instance_count", 1), report_key=meta.get("report_key"),
              request=meta.get("request") or {}, variants=meta.get("variants") or [""],
              selected=[tuple(t) for t in meta["selected"]] if meta.get("selected") is not None else None,
              api_base=meta.get("api_base", ""), webhook=meta.get("webhook"), fetch_started=meta.get("fetch_started"),
              tiering=meta.get("tiering", ""), rec_groups=meta.get("rec_groups") or {}, source=meta.get("source"),
              manifest_urls=meta.get("manifest_urls") or [], expansion=meta.get("expansion"))
    return job


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
