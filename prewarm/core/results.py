"""Per-job progress: a compact per-task result table and the arithmetic behind the progress fields.

Task ``t`` is (URL ``t // n_cols``, column ``t % n_cols``), a column being (POP ``c // n_variants``,
variant ``c % n_variants``); with one variant that is the plain (URL, POP) grid. Results are kept in
numpy columns indexed by task id, so memory is a few bytes per task whatever the job's size, and a
task recorded twice (a batch retried after a fetcher died) is counted once: the first result wins.
A retry job holds only some tasks of its grid: the others are ``skipped`` and count nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

Item = TypeVar("Item")

X_CACHE_CODES = ("", "Hit from cloudfront", "Miss from cloudfront")

PartRow = tuple[str, int, str, int, int, float, str, str, str]
"""One ``Range`` part of a pair warmed in parts: (range, status_code, x_cache, bytes, attempts, elapsed_ms,
error_class, error_message, verify_x_cache); ``range`` as sent, e.g. ``bytes=0-1048575``."""

ResultRow = tuple[int, int, str, str, int, int, float, str, str, str, int, int, int, int, bool, tuple[PartRow, ...],
                  str, int]
"""(task_id, status_code, x_cache, address, bytes, attempts, elapsed_ms, error_class, error_message,
verify_x_cache, age, rounds, bytes_wasted, size, already_warm, parts); ``error_class`` is empty for a success,
``verify_x_cache`` empty when the pair was not verified, ``age`` -1 when unknown, ``rounds`` the GETs sent
(1 + re-warms), ``bytes_wasted`` the body bytes of attempts cut short, ``size`` the object's (-1 unknown),
``already_warm`` a pair that answered a Hit before any GET (``skip_warm``), ``parts`` the ranges of an object
warmed in parts (empty otherwise), ``hit_layer`` the tier that answered the verification (else the GET) from its
cache by ``Server-Timing`` (EDGE, REC, Origin Shield; empty without the header), ``served_by`` who answered the
warm-up GET (``fetch.SERVED_*``: the origin, a tier above the POP, the POP; by X-Cache alone where the edge sent no
Server-Timing). Rows stored before later fields existed are read as without them (a stored ``true`` or ``false``
``served_by`` is an older row's "reached the origin")."""

ROW_FIELDS = 18
ORIGIN_CODES = frozenset({1, 4})  # fetch.REACHED_ORIGIN (the origin answered): counted as origin_fetches
_ROW_DEFAULTS = ("", -1, 0, 0, -1, False, (), "", 0)  # the fields from verify_x_cache on, for shorter rows


def result_row(task: int, status: int = 0, x_cache: str = "", address: str = "", nbytes: int = 0,
               attempts: int = 0, elapsed_ms: float = 0.0, error_class: str = "", message: str = "",
               verify_x_cache: str = "", age: int = -1, rounds: int = 0, wasted: int = 0, size: int = -1,
               already_warm: bool = False, parts: tuple[PartRow, ...] = (), hit_layer: str = "",
               served_by: int = 0) -> ResultRow:
    return (task, status, x_cache, address, nbytes, attempts, elapsed_ms, error_class, message,
            verify_x_cache, age, rounds, wasted, size, already_warm, parts, hit_layer, served_by)


def full_row(row: Sequence) -> Sequence:
    """A result row with every field: a row written before later fields existed gets their defaults."""
    return row if len(row) >= ROW_FIELDS else (*row, *_ROW_DEFAULTS[len(row) - 9:])


def one_piece(rows: Iterable[Item]) -> tuple[Item, ...]:
    """Rows (or tasks) as a tuple, the form they cross a Ray call in: Ray packs a list argument item by item,
    pickling each row tuple on its own; a tuple of rows goes in one piece, at less CPU for the sender."""
    return tuple(rows)


NO_X_CACHE = "(no X-Cache)"
"""What verification records when the edge answered without an X-Cache header: not a Hit, so cold."""


def is_hit(x_cache: str) -> bool:
    """CloudFront's X-Cache says the edge answered from its cache (``Hit`` or ``RefreshHit``)."""
    value = x_cache.strip().lower()
    return value.startswith("hit") or value.startswith("refreshhit")


@dataclass
class TaskTable:
    urls: list[str]
    pops: list[str]
    variants: list[str] = field(default_factory=lambda: [""])
    done: np.ndarray = field(init=False)
    ok: np.ndarray = field(init=False)
    skipped: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    nbytes: np.ndarray = field(init=False)
    elapsed_ms: np.ndarray = field(init=False)
    attempts: np.ndarray = field(init=False)
    x_cache: np.ndarray = field(init=False)
    address: np.ndarray = field(init=False)
    error: np.ndarray = field(init=False)
    verify_x_cache: np.ndarray = field(init=False)
    age: np.ndarray = field(init=False)
    rounds: np.ndarray = field(init=False)
    already_warm: np.ndarray = field(init=False)
    hit_layer: np.ndarray = field(init=False)
    messages: dict[int, str] = field(default_factory=dict)
    hit_layer_values: list[str] = field(default_factory=lambda: ["", "EDGE", "REC", "Origin Shield"])
    parts: dict[int, tuple[PartRow, ...]] = field(default_factory=dict)  # tasks warmed in ranges (large objects)
    error_classes: list[str] = field(default_factory=lambda: [""])
    x_cache_values: list[str] = field(default_factory=lambda: list(X_CACHE_CODES))
    addresses: list[str] = field(default_factory=lambda: [""])
    manifest_of: list[str] | None = None  # an expanded job's: per URL, the manifest it came from ("" if given)
    done_count: int = 0
    success_count: int = 0
    verified_count: int = 0
    verified_hit_count: int = 0
    download_size: int = 0
    bytes_wasted: int = 0
    already_warm_count: int = 0
    origin_fetches: int = 0
    skipped_count: int = 0

    def __post_init__(self) -> None:
        if not self.variants:
            self.variants = [""]
        n = self.grid
        self.done = np.zeros(n, dtype=bool)
        self.ok = np.zeros(n, dtype=bool)
        self.skipped = np.zeros(n, dtype=bool)
        self.status = np.zeros(n, dtype=np.int16)
        self.nbytes = np.zeros(n, dtype=np.int64)
        self.elapsed_ms = np.zeros(n, dtype=np.float32)
        self.attempts = np.zeros(n, dtype=np.int8)
        self.x_cache = np.zeros(n, dtype=np.int16)
        self.address = np.zeros(n, dtype=np.int32)
        self.error = np.zeros(n, dtype=np.int16)
        self.verify_x_cache = np.zeros(n, dtype=np.int16)
        self.age = np.full(n, -1, dtype=np.int32)
        self.rounds = np.zeros(n, dtype=np.int8)
        self.already_warm = np.zeros(n, dtype=bool)
        self.hit_layer = np.zeros(n, dtype=np.int8)

    @property
    def n_cols(self) -> int:
        """Columns of the grid: one per (POP, variant)."""
        return len(self.pops) * len(self.variants)

    @property
    def grid(self) -> int:
        return len(self.urls) * self.n_cols

    @property
    def total(self) -> int:
        return self.grid - self.skipped_count

    @property
    def failure_count(self) -> int:
        return self.done_count - self.success_count

    @property
    def warm_ratio(self) -> float | None:
        """Verified hits / successes; None until something verified."""
        return None if not self.verified_count else round(self.verified_hit_count / self.success_count, 4)

    def task_id(self, url_index: int, pop_index: int, variant: int = 0) -> int:
        return url_index * self.n_cols + pop_index * len(self.variants) + variant

    def url_index(self, tasks: np.ndarray | int) -> np.ndarray | int:
        return tasks // max(1, self.n_cols)

    def pop_index(self, tasks: np.ndarray | int) -> np.ndarray | int:
        return (tasks % max(1, self.n_cols)) // len(self.variants)

    def variant_index(self, tasks: np.ndarray | int) -> np.ndarray | int:
        return tasks % len(self.variants)

    def keep_only(self, tasks: Sequence[int]) -> None:
        """Make the job hold only these tasks of its grid (a retry job); call before any result."""
        keep = np.zeros(self.grid, dtype=bool)
        ids = np.asarray([t for t in tasks if 0 <= t < self.grid], dtype=np.int64)
        keep[ids] = True
        self.skipped = ~keep
        self.done |= self.skipped
        self.skipped_count = int(self.skipped.sum())

    def record(self, rows: Iterable[Sequence]) -> int:
        """Store ``ResultRow``s; returns how many were new (duplicates of finished tasks are ignored)."""
        added = 0
        for row in rows:
            (task, status, x_cache, address, nbytes, attempts, elapsed, error_class, message, verify, age, rounds,
             wasted, _size, warm, parts, layer, served_by) = row if len(row) == ROW_FIELDS else full_row(row)
            if not 0 <= task < self.grid or self.done[task]:
                continue
            self.done[task] = True
            self.status[task] = status
            self.nbytes[task] = nbytes
            self.elapsed_ms[task] = elapsed
            self.attempts[task] = min(attempts, 127)
            self.x_cache[task] = _intern(self.x_cache_values, x_cache)
            self.address[task] = _intern(self.addresses, address)
            self.download_size += nbytes
            self.bytes_wasted += wasted
            self.origin_fetches += served_by in ORIGIN_CODES
            if layer:
                self.hit_layer[task] = _intern(self.hit_layer_values, layer)
            if parts:
                self.parts[task] = tuple(tuple(p) for p in parts)  # type: ignore[misc]
            if error_class:
                self.error[task] = _intern(self.error_classes, error_class)
                if message:
                    self.messages[task] = message[:500]
            else:
                self.ok[task] = True
                self.success_count += 1
                if verify:
                    self.verify_x_cache[task] = _intern(self.x_cache_values, verify)
                    self.verified_count += 1
                    self.verified_hit_count += is_hit(verify)
                if warm:
                    self.already_warm[task] = True
                    self.already_warm_count += 1
            self.age[task] = -1 if age is None else min(max(int(age), -1), 2**31 - 1)  # int32
            self.rounds[task] = min(int(rounds), 127)
            added += 1
        self.done_count += added
        return added

    def fail_unfinished(self, error_class: str, message: str) -> list[ResultRow]:
        """Close every task not yet done as a failure (job timeout, stop or failure); returns those rows."""
        pending = np.flatnonzero(~self.done)
        rows = [result_row(int(t), error_class=error_class, message=message) for t in pending]
        self.record(rows)
        return rows

    def hit_layers(self) -> dict[str, int]:
        """Verified pairs by the tier that answered their verification from its cache ("" where the edge sent no
        ``Server-Timing`` or no tier had it): the counts add up to the verified pairs."""
        verified = self.ok & (self.verify_x_cache != 0)
        counts = np.bincount(self.hit_layer[verified], minlength=len(self.hit_layer_values))
        return {self.hit_layer_values[i]: int(n) for i, n in enumerate(counts) if n}

    def failed_task_ids(self) -> np.ndarray:
        return np.flatnonzero(self.done & ~self.ok & ~self.skipped)

    def cold_task_ids(self) -> np.ndarray:
        """Successful, verified tasks whose verification was not a Hit."""
        hit_codes = [i for i, v in enumerate(self.x_cache_values) if is_hit(v)]
        verified = self.ok & (self.verify_x_cache != 0)
        return np.flatnonzero(verified & ~np.isin(self.verify_x_cache, hit_codes))

    def _by_url(self, mask: np.ndarray) -> np.ndarray:
        return mask.reshape(len(self.urls), len(self.pops), len(self.variants))

    def failure_urls(self) -> list[str]:
        if not self.grid:
            return []
        failed = self._by_url(self.done & ~self.ok & ~self.skipped).any(axis=(1, 2))
        return [self.urls[i] for i in np.flatnonzero(failed)]

    def failures_by_manifest(self) -> dict[str, int]:
        """An expanded job's failed tasks by the manifest their URL came from (given URLs left out)."""
        if self.manifest_of is None or not self.grid:
            return {}
        urls = self.failed_task_ids() // self.n_cols
        out: dict[str, int] = {}
        for u, n in zip(*np.unique(urls, return_counts=True), strict=True):
            manifest = self.manifest_of[int(u)]
            if manifest:
                out[manifest] = out.get(manifest, 0) + int(n)
        return out

    def all_failed_pops(self) -> list[str]:
        """POPs where tasks were finished and every one of them failed: the POP itself did not work."""
        if not self.grid:
            return []
        done = self._by_url(self.done & ~self.skipped).any(axis=(0, 2))
        ok = self._by_url(self.ok).any(axis=(0, 2))
        return [self.pops[i] for i in np.flatnonzero(done & ~ok)]


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
