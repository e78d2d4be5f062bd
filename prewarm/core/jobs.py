"""The job book: every job's record, its transitions, its progress and summary bodies, retry selection and the
watchdog's rules, with no Ray, threads or storage.

The state actor (``prewarm.engine.state``) is a thin shell over it: it holds the lock, persists what a
transition says changed, and acts on what ``JobBook.overdue`` finds in its watch loop. Keeping the rules here
lets the unit tests run them with a given clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import numpy as np

from prewarm.core.events import select_jobs
from prewarm.core.report import cold_pairs, pop_table
from prewarm.core.results import ResultRow, TaskTable, counts, percentage
from prewarm.schema import FINAL_STATUSES, MAX_COLD_PAIRS, fmt_time, utcnow, variant_label

# A job whose coordinator vanished is closed this long after its deadline, so none stays IN_PROGRESS.
DEADLINE_GRACE = timedelta(seconds=30)
# A job with no news for this long has its coordinator's liveness checked.
STALE_AFTER = timedelta(seconds=5)

STOP_ERRORS = {"TIMEOUT": "timeout", "STOPPED": "stopped", "FAILED": "job_failed"}
BYTE_RATE_WINDOW_S = 10.0  # the running byte rate follows this much recent history
FETCHING_PHASES = ("probing", "warming")  # a job's first fetch goes out in one of these


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
    summary: dict[str, Any] | None = None  # a final job's summary body, built once as it closes
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

    @property
    def admitted(self) -> bool:
        return self.phase != "queued"

    def touch(self) -> None:
        self.last_update = utcnow()


def service_report_url(api_base: str, req_id: str) -> str:
    """The service's own address of a job's CSV report (when no S3 link is given)."""
    return f"{api_base.rstrip('/')}/reports/{req_id}.csv"


class RetryRefused(ValueError):
    """A retry that cannot be made, named by the request field at fault (the API answers 400 with it)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(field_name, message)  # both in args: it pickles across a Ray call
        self.field = field_name
        self.message = message

    def __str__(self) -> str:
        return f"field '{self.field}': {self.message}"


class Watch(StrEnum):
    """What the watchdog found about a running job."""

    DEADLINE = "deadline"  # past its deadline and grace: close it TIMEOUT
    SILENT = "silent"  # its coordinator has not checked in: close it FAILED and kill the coordinator
    QUIET = "quiet"  # no news for a while: ask whether its coordinator lives; close it FAILED if not


@dataclass(frozen=True)
class Overdue:
    req_id: str
    rule: Watch
    status: str
    message: str


class JobBook:
    """Every job of the cluster and the rules that move them; the caller persists and does the I/O."""

    def __init__(self, max_active_jobs: int = 1, coordinator_silence_s: float = 60.0) -> None:
        self.jobs: dict[str, Job] = {}
        self.max_active_jobs = max(1, max_active_jobs)
        self.coordinator_silence_s = coordinator_silence_s

    # -- transitions: each returns whether anything changed (or what to persist) ---------------------------
    def create(self, req_id: str, request: dict[str, Any], target_pops: list[str], cf_domain: str,
               created_at: datetime, timeout_at: datetime, api_base: str = "",
               selected: list[tuple[int, str, int]] | None = None) -> Job:
        """Record an accepted request; ``selected`` restricts a retry job to the tasks it re-runs."""
        variants = [variant_label(v) for v in (request.get("variants") or [{}])]
        job = Job(req_id, list(request["url_list"]), target_pops, cf_domain, created_at, timeout_at,
                  instance_count=int(request.get("instance_count", 1)),
                  request={k: v for k, v in request.items() if k != "url_list"}, variants=variants,
                  selected=[tuple(t) for t in selected] if selected is not None else None, api_base=api_base)
        self.jobs[req_id] = job
        return job

    def running(self) -> list[Job]:
        return [job for job in list(self.jobs.values()) if not job.final]

    def admit(self, req_id: str) -> tuple[bool, bool]:
        """(may start fetching, was admitted now): fewer than ``max_active_jobs`` admitted jobs may run at once,
        since each holds fetcher processes on the cluster; the others stay queued."""
        job = self.jobs[req_id]
        job.last_checkin = utcnow()  # its coordinator runs; queued, it asks every 0.25 s
        if job.final or job.admitted:
            return True, False
        if sum(1 for j in self.running() if j.admitted) >= self.max_active_jobs:
            return False, False
        job.phase = "resolving"
        job.touch()
        return True, True

    def set_phase(self, req_id: str, phase: str, now_unix: float) -> bool:
        job = self.jobs[req_id]
        if job.final:
            return False
        job.phase = phase
        if phase in FETCHING_PHASES and job.fetch_started is None:
            job.fetch_started = now_unix
        job.touch()
        return True

    def set_plan(self, req_id: str, pops: list[str], pop_failures: dict[str, str],
                 expansion: dict[str, Any] | None = None) -> list[ResultRow] | None:
        """Fix the task grid once POPs are resolved (once only; None when it already was). With ``expansion``,
        the URL list becomes what the manifests held, and the manifests' GETs through the first POP are
        recorded as theirs there: the rows returned are those to store."""
        job = self.jobs[req_id]
        if job.table is not None or job.final:
            return None
        if expansion is not None:
            job.urls = list(expansion["urls"])
            job.source = [int(i) for i in expansion["source"]]
            job.manifest_urls = list(expansion["manifest_urls"])
            job.expansion = expansion["summary"]
        job.table = job.new_table(pops)
        job.pop_failures = dict(pop_failures)
        job.touch()
        if expansion is None or not expansion["rows"] or not pops:
            return []
        rows = [(job.table.task_id(int(u), 0, 0), *row[1:]) for u, row in expansion["rows"]]
        return rows if job.table.record(rows) else []

    def set_sizes(self, req_id: str, url_sizes: np.ndarray) -> bool:
        """``total_size`` counts a URL's size once per task the job holds, so a retry counts only its pairs."""
        job = self.jobs[req_id]
        if job.table is None or job.final:
            return False
        held = (~job.table.skipped).reshape(len(job.urls), -1).sum(axis=1)
        job.total_size = int(np.dot(np.asarray(url_sizes, dtype=np.int64), held))
        job.touch()
        return True

    def record(self, req_id: str, rows: Sequence[ResultRow]) -> int:
        """Results of one batch; ignored once the job is final (a late batch after a timeout)."""
        job = self.jobs.get(req_id)
        if job is None or job.final or job.table is None:
            return 0
        added = job.table.record(rows)
        if added:
            job.sample_bytes()
        job.touch()
        return added

    def close(self, req_id: str, status: str, error_message: str = "") -> list[ResultRow] | None:
        """Fail what is unfinished (named after the reason) and return those rows to store; None when the job had
        ended already (first close wins). The status is set by ``mark_closed``, once the report is kept."""
        job = self.jobs[req_id]
        if job.final:
            return None
        if job.table is None:  # closed before POPs were resolved: count against every targeted POP
            job.table = job.new_table(job.target_pops)
        if status == "FINISHED" and job.table.done_count >= job.table.total:
            return []
        reason = STOP_ERRORS.get(status, "unfinished")
        return job.table.fail_unfinished(reason, error_message or reason)

    def mark_closed(self, req_id: str, status: str, error_message: str) -> Job:
        """The final step of a close: a reader that sees the final status also sees the final report."""
        job = self.jobs[req_id]
        job.error_message = error_message
        job.phase = "done"
        job.status = status
        job.touch()
        job.summary = summary_body(job)  # a final job's summary never changes: built once, not per read
        return job

    # -- the watchdog's rules ------------------------------------------------------------------------------
    def overdue(self, now: datetime) -> list[Overdue]:
        """The running jobs the watch loop must act on at ``now``; a QUIET one is not asked about again for
        ``STALE_AFTER``."""
        found: list[Overdue] = []
        silence = timedelta(seconds=self.coordinator_silence_s)
        for job in self.running():
            if now > job.timeout_at + DEADLINE_GRACE:
                found.append(Overdue(job.req_id, Watch.DEADLINE, "TIMEOUT",
                                     "the job's coordinator did not close it by its deadline"))
            elif now - job.last_checkin > silence:
                # A coordinator that Ray is still creating or restarting keeps its name, so it looks alive, but
                # it sends nothing: do not wait for the job's deadline.
                found.append(Overdue(job.req_id, Watch.SILENT, "FAILED",
                                     f"the job's coordinator did not run for {self.coordinator_silence_s:g} s "
                                     "(it never started, or it is stuck restarting)"))
            elif now - job.last_update > STALE_AFTER and now - job.last_liveness_check > STALE_AFTER:
                job.last_liveness_check = now
                found.append(Overdue(job.req_id, Watch.QUIET, "FAILED",
                                     "the job's coordinator died and could not be restarted"))
        return found

    # -- reads -----------------------------------------------------------------------------------------------
    def retry_selection(self, req_id: str) -> dict[str, Any]:
        """What a retry of ``req_id`` needs: its request and its failed or unfinished tasks.

        The tasks are given on the retry job's own grid: the URLs that failed anywhere, in order (so the
        retry's url_list is short), with (new URL index, POP, variant) for each task to re-run. A POP that could
        not be resolved failed every URL of the job, so all its pairs are retried.
        """
        job = self.jobs.get(req_id)
        if job is None:
            raise RetryRefused("retry_of", f"no job {req_id}")
        if not job.final:
            raise RetryRefused("retry_of", f"job {req_id} is still {job.status}; retry it once it has ended")
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
            raise RetryRefused("retry_of", f"job {req_id} has no failed or unfinished tasks to retry")
        url_indices = sorted({u for u, _, _ in triples})
        renumber = {u: i for i, u in enumerate(url_indices)}
        failed_pops = {p for _, p, _ in triples}
        return {
            "request": {**job.request, "url_list": [job.urls[u] for u in url_indices]},
            "target_pops": [p for p in job.target_pops if p in failed_pops],
            "cf_domain": job.cf_domain,
            "selected": sorted((renumber[u], p, v) for u, p, v in triples),
        }

    def resume_point(self, req_id: str) -> dict[str, Any]:
        """What a (re)started coordinator needs: is the job over, its POPs if planned, the tasks left."""
        job = self.jobs[req_id]
        if job.final or job.table is None:
            return {"final": job.final, "pops": None, "pending": None, "done": 0, "phase": job.phase}
        pending = np.flatnonzero(~job.table.done)
        return {"final": False, "pops": list(job.table.pops), "pending": pending, "done": job.table.done_count,
                "phase": job.phase, "urls": job.urls if job.source is not None else None}

    def select(self, status: str | None = None, limit: int | None = None,
               since: datetime | None = None) -> list[Job]:
        return select_jobs(list(self.jobs.values()), status, limit, since)


def progress_body(job: Job, now: datetime | None = None) -> dict[str, Any]:
    """The body of ``GET /prewarm`` for ``job``."""
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
        "timestamp": fmt_time(now or utcnow()),
    }


def summary_body(job: Job) -> dict[str, Any]:
    """The body of ``GET /summary`` for ``job``, without what changes per read (report link, webhook, time)."""
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


def summary_with_links(job: Job, presigned: str | None, now: datetime | None = None) -> dict[str, Any]:
    """The summary as the API and the webhook give it: ``failure_pop_urls_report`` is the report's S3 link when
    there is one, else the service's own address ("" when the job was made without one)."""
    body = job.summary if job.final and job.summary is not None else summary_body(job)
    report = presigned or (service_report_url(job.api_base, job.req_id) if job.api_base else "")
    return {**body, "failure_pop_urls_report": report, "webhook": job.webhook, "timestamp": fmt_time(now or utcnow())}


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

    return Job(req_id, urls, meta["target_pops"], meta["cf_domain"], when("created_at"), when("timeout_at"),
               status=meta["status"], phase=meta["phase"], error_message=meta["error_message"],
               last_update=when("last_update"), pop_failures=meta["pop_failures"], total_size=meta["total_size"],
               node_ids=meta["node_ids"], nodes_used=len(set(meta["node_ids"])),
               instance_count=meta.get("instance_count", 1), report_key=meta.get("report_key"),
               request=meta.get("request") or {}, variants=meta.get("variants") or [""],
               selected=[tuple(t) for t in meta["selected"]] if meta.get("selected") is not None else None,
               api_base=meta.get("api_base", ""), webhook=meta.get("webhook"),
               fetch_started=meta.get("fetch_started"), tiering=meta.get("tiering", ""),
               rec_groups=meta.get("rec_groups") or {}, source=meta.get("source"),
               manifest_urls=meta.get("manifest_urls") or [], expansion=meta.get("expansion"))
