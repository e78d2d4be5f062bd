"""Per-job progress: a compact per-task result table and the arithmetic behind the progress fields.

Task ``t`` is (URL ``t // n_pops``, POP ``t % n_pops``). Results are kept in numpy columns indexed by
task id, so memory is a few bytes per task whatever the job's size, and a task recorded twice (a
batch retried after a fetcher died) is counted once: the first result wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

X_CACHE_CODES = ("", "Hit from cloudfront", "Miss from cloudfront")

ResultRow = tuple[int, int, str, str, int, int, float, str, str]
"""(task_id, status_code, x_cache, address, bytes, attempts, elapsed_ms, error_class, error_message);
``error_class`` is empty for a success."""


@dataclass
class TaskTable:
    urls: list[str]
    pops: list[str]
    done: np.ndarray = field(init=False)
    ok: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    nbytes: np.ndarray = field(init=False)
    elapsed_ms: np.ndarray = field(init=False)
    attempts: np.ndarray = field(init=False)
    x_cache: np.ndarray = field(init=False)
    address: np.ndarray = field(init=False)
    error: np.ndarray = field(init=False)
    messages: dict[int, str] = field(default_factory=dict)
    error_classes: list[str] = field(default_factory=lambda: [""])
    x_cache_values: list[str] = field(default_factory=lambda: list(X_CACHE_CODES))
    addresses: list[str] = field(default_factory=lambda: [""])
    done_count: int = 0
    success_count: int = 0
    download_size: int = 0

    def __post_init__(self) -> None:
        n = self.total
        self.done = np.zeros(n, dtype=bool)
        self.ok = np.zeros(n, dtype=bool)
        self.status = np.zeros(n, dtype=np.int16)
        self.nbytes = np.zeros(n, dtype=np.int64)
        self.elapsed_ms = np.zeros(n, dtype=np.float32)
        self.attempts = np.zeros(n, dtype=np.int8)
        self.x_cache = np.zeros(n, dtype=np.int16)
        self.address = np.zeros(n, dtype=np.int32)
        self.error = np.zeros(n, dtype=np.int16)

    @property
    def total(self) -> int:
        return len(self.urls) * len(self.pops)

    @property
    def failure_count(self) -> int:
        return self.done_count - self.success_count

    def task_id(self, url_index: int, pop_index: int) -> int:
        return url_index * len(self.pops) + pop_index

    def record(self, rows: Iterable[ResultRow]) -> int:
        """Store results; returns how many were new (duplicates of finished tasks are ignored)."""
        added = 0
        for task, status, x_cache, address, nbytes, attempts, elapsed, error_class, message in rows:
            if not 0 <= task < self.total or self.done[task]:
                continue
            self.done[task] = True
            self.status[task] = status
            self.nbytes[task] = nbytes
            self.elapsed_ms[task] = elapsed
            self.attempts[task] = min(attempts, 127)
            self.x_cache[task] = _intern(self.x_cache_values, x_cache)
            self.address[task] = _intern(self.addresses, address)
            self.download_size += nbytes
            if error_class:
                self.error[task] = _intern(self.error_classes, error_class)
                if message:
                    self.messages[task] = message[:500]
            else:
                self.ok[task] = True
                self.success_count += 1
            added += 1
        self.done_count += added
        return added

    def fail_unfinished(self, error_class: str, message: str) -> list[ResultRow]:
        """Close every task not yet done as a failure (job timeout, stop or failure); returns those rows."""
        pending = np.flatnonzero(~self.done)
        rows: list[ResultRow] = [(int(t), 0, "", "", 0, 0, 0.0, error_class, message) for t in pending]
        self.record(rows)
        return rows

    def failed_task_ids(self) -> np.ndarray:
        return np.flatnonzero(self.done & ~self.ok)

    def failure_urls(self) -> list[str]:
        if not self.total:
            return []
        failed = (self.done & ~self.ok).reshape(len(self.urls), len(self.pops)).any(axis=1)
        return [self.urls[i] for i in np.flatnonzero(failed)]

    def all_failed_pops(self) -> list[str]:
        """POPs where tasks were finished and every one of them failed: the POP itself did not work."""
        if not self.total:
            return []
        done = self.done.reshape(len(self.urls), len(self.pops))
        ok = self.ok.reshape(len(self.urls), len(self.pops))
        dead = done.any(axis=0) & ~ok.any(axis=0)
        return [self.pops[i] for i in np.flatnonzero(dead)]


def _intern(values: list[str], value: str) -> int:
    try:
        return values.index(value)
    except ValueError:
        values.append(value)
        return len(values) - 1


def percentage(done: int, total: int) -> int:
    """floor(done / total * 100), and 100 for an empty job."""
    return 100 if total == 0 else (done * 100) // total


def counts(total: int, done: int, dispatched: int) -> tuple[int, int]:
    """(in_progress, available): handed to a fetcher and not done, and not yet handed out."""
    in_progress = max(0, min(dispatched, total) - done)
    return in_progress, max(0, total - done - in_progress)
