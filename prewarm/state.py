"""The detached state actor: one per cluster, aggregates every job's progress and builds its report.

Find it from a notebook with ``ray.get_actor(STATE_ACTOR_NAME, namespace="prewarm")``. Fetchers report
results in batches; the API reads progress and summaries from here, so those stay fast while jobs run.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from prewarm.cloudfront import CloudFrontError, make_clients, report_url, upload_report
from prewarm.cluster import combined_ask, request_fetcher_nodes
from prewarm.models import FINAL_STATUSES, fmt_time, utcnow
from prewarm.progress import ResultRow, TaskTable, counts, percentage
from prewarm.report import pop_table, report_csv, results_frame
from prewarm.settings import Settings
from prewarm.store import Store

T = TypeVar("T")
STATE_ACTOR_NAME = "prewarm-state"
log = logging.getLogger("prewarm.state")
# A job whose coordinator vanished is closed this long after its deadline, so none stays IN_PROGRESS.
DEADLINE_GRACE = timedelta(seconds=30)
# A job with no news for this long has its coordinator's liveness checked.
STALE_AFTER = timedelta(seconds=5)

STOP_ERRORS = {"TIMEOUT": "timeout", "STOPPED": "stopped", "FAILED": "job_failed"}


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
    table: TaskTable | None = None
    pop_failures: dict[str, str] = field(default_factory=dict)
    total_size: int = 0
    dispatched: int = 0
    nodes_used: int = 0
    node_ids: list[str] = field(default_factory=list)
    report: bytes | None = None
    report_key: str | None = None
    summary: dict[str, Any] | None = None

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
        self._reload()

    # -- durability ------------------------------------------------------------------------------
    def _persist(self, job: Job, urls: bool = False) -> None:
        self.store.save_job(job.req_id, job_meta(job), job.urls if urls else None)

    def _reload(self) -> None:
        """Rebuild every stored job; a running job whose coordinator is gone ends FAILED with the reason."""
        for req_id, meta, urls, rows in self.store.jobs():
            try:
                job = job_from_meta(req_id, meta, urls)
                if meta.get("pops") is not None:
                    job.table = TaskTable(urls, meta["pops"])
                    job.table.record(r for r in rows if isinstance(r[0], int))
            except (KeyError, TypeError, ValueError) as exc:  # a damaged record must not keep the service down
                log.error("job %s could not be reloaded from the store and is skipped: %s", req_id, exc)
                continue
            self.jobs[req_id] = job
            if not job.final and not coordinator_alive(req_id, self.namespace):
                self.finish(req_id, "FAILED", "the service restarted while the job was running; it did not resume")

    # -- written by the API and the coordinators -------------------------------------------
    @writes
    def create_job(self, req_id: str, urls: list[str], target_pops: list[str], cf_domain: str,
                   created_at: datetime, timeout_at: datetime, instance_count: int = 1) -> None:
        job = Job(req_id, urls, target_pops, cf_domain, created_at, timeout_at, instance_count=instance_count)
        self.jobs[req_id] = job
        self._persist(job, urls=True)

    @writes
    def admit(self, req_id: str) -> bool:
        """Let a job start fetching if fewer than ``max_active_jobs`` are; otherwise it stays queued.

        Each active job holds fetcher processes on the cluster: the cap keeps a burst of requests from
        starting hundreds of processes at once.
        """
        job = self.jobs[req_id]
        if job.final:
            return True
        if job.phase != "queued":
            return True
        active = sum(1 for j in self.jobs.values() if not j.final and j.phase != "queued")
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
            job.touch()
            self._persist(job)

    @writes
    def set_plan(self, req_id: str, pops: list[str], pop_failures: dict[str, str], total_size: int,
                 probe_failures: list[ResultRow] | None = None) -> None:
        """Fix the task table once POPs are resolved: tasks are the URLs x the resolved POPs. Once only."""
        job = self.jobs[req_id]
        if job.table is not None or job.final:
            return
        job.table = TaskTable(job.urls, pops)
        job.pop_failures = dict(pop_failures)
        job.total_size = total_size
        if probe_failures:
            job.table.record(probe_failures)
            self.store.save_results(req_id, probe_failures)
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
        self.jobs[req_id].dispatched = total_dispatched

    def resume_point(self, req_id: str) -> dict[str, Any]:
        """What a (re)started coordinator needs: is the job over, its POPs if planned, the tasks left."""
        job = self.jobs[req_id]
        if job.final or job.table is None:
            return {"final": job.final, "pops": None, "pending": None, "done": 0}
        pending = np.flatnonzero(~job.table.done)
        return {"final": False, "pops": list(job.table.pops), "pending": pending, "done": job.table.done_count}

    @writes
    def record(self, req_id: str, rows: list[ResultRow]) -> int:
        """Results of one batch; ignored once the job is final (a late batch after a timeout)."""
        job = self.jobs.get(req_id)
        if job is None or job.final or job.table is None:
            return 0
        added = job.table.record(rows)
        if added:
            self.store.save_results(req_id, rows)
        job.touch()
        return added

    @writes
    def finish(self, req_id: str, status: str, error_message: str = "") -> str:
        """Close a job: unfinished tasks become failures named after the reason. First close wins."""
        job = self.jobs[req_id]
        if job.final:
            return job.status
        if job.table is None:  # closed before POPs were resolved: count against every targeted POP
            job.table = TaskTable(job.urls, job.target_pops)
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
        return job.status

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
        elif now - job.last_update > STALE_AFTER and now - job.last_liveness_check > STALE_AFTER:
            # Quiet for a while: make sure somebody still drives it, so none stays IN_PROGRESS forever.
            job.last_liveness_check = now
            if not coordinator_alive(req_id, self.namespace):
                self.finish(req_id, "FAILED", "the job's coordinator died and could not be restarted")
        return job

    def exists(self, req_id: str) -> bool:
        return req_id in self.jobs

    def progress(self, req_id: str) -> dict[str, Any] | None:
        job = self._get(req_id)
        if job is None:
            return None
        table = job.table
        if table is None:
            total, done, success, size = len(job.urls) * len(job.target_pops), 0, 0, 0
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
        return {**body, "report_url": self._report_url(job), "timestamp": fmt_time(utcnow())}

    @staticmethod
    def _summarise(job: Job) -> dict[str, Any]:
        table = job.table or TaskTable(job.urls, [])
        return {
            "request_id": job.req_id,
            "status": job.status,
            "failure_pops": list(dict.fromkeys([*job.pop_failures, *table.all_failed_pops()])),
            "failure_urls": table.failure_urls(),
            "success_count": table.success_count,
            "failure_count": table.failure_count,
            "pops": pop_table(table),
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
        return report_csv(job.table or TaskTable(job.urls, []), job.pop_failures)

    def results(self, req_id: str) -> pd.DataFrame | None:
        """Every finished (URL, POP) of a job with its outcome, as a DataFrame (for notebooks)."""
        job = self._get(req_id)
        if job is None:
            return None
        return results_frame(job.table or TaskTable(job.urls, []))

    def list_jobs(self) -> list[dict[str, Any]]:
        return [p for req_id in list(self.jobs) if (p := self.progress(req_id))]

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
    }


def job_from_meta(req_id: str, meta: dict[str, Any], urls: list[str]) -> Job:
    def when(key: str) -> datetime:
        return datetime.fromtimestamp(meta[key], UTC)

    job = Job(req_id, urls, meta["target_pops"], meta["cf_domain"], when("created_at"), when("timeout_at"),
              status=meta["status"], phase=meta["phase"], error_message=meta["error_message"],
              last_update=when("last_update"), pop_failures=meta["pop_failures"], total_size=meta["total_size"],
              node_ids=meta["node_ids"], nodes_used=len(set(meta["node_ids"])),
              instance_count=meta.get("instance_count", 1), report_key=meta.get("report_key"))
    return job


# Restarted after a crash (it reloads from the store), and calls in flight are retried against the new
# process: a result batch is applied once, since finished tasks ignore repeats.
StateActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=4)(State)


def head_node_id() -> str | None:
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    return None


def get_state_actor(settings: Settings) -> ray.actor.ActorHandle:
    """The cluster's state actor, created on the head node on first use (detached: it outlives us)."""
    namespace = settings.namespace
    try:
        return ray.get_actor(STATE_ACTOR_NAME, namespace=namespace)
    except ValueError:
        pass
    options: dict[str, Any] = {
        "name": STATE_ACTOR_NAME, "namespace": namespace, "lifetime": "detached", "get_if_exists": True,
    }
    head = head_node_id()
    if head is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
    return StateActor.options(**options).remote(settings)


def coordinator_alive(req_id: str, namespace: str) -> bool:
    """Whether the job's coordinator actor exists (alive or being restarted)."""
    try:
        ray.get_actor(coordinator_name(req_id), namespace=namespace)
    except ValueError:
        return False
    return True


def coordinator_name(req_id: str) -> str:
    return f"prewarm-coordinator-{req_id}"
