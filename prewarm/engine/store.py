"""Durable job storage: SQLite under PREWARM_STATE_DIR, written in batches by the state actor.

What is stored is enough to rebuild every job after a crash or a cluster restart: the request, the
plan (resolved POPs and POP failures), every per-task result, and the final CSV report (also written
to ``reports/<req_id>.csv`` atomically, so a crash never leaves half a file).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prewarm.core.results import ResultRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    req_id TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    urls TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    req_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    status INTEGER, x_cache TEXT, address TEXT, bytes INTEGER, attempts INTEGER,
    elapsed_ms REAL, error_class TEXT, error_message TEXT,
    verify_x_cache TEXT DEFAULT '', age INTEGER DEFAULT -1, rounds INTEGER DEFAULT 0,
    PRIMARY KEY (req_id, task_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS result_batches (
    req_id TEXT NOT NULL,
    rows TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS result_batches_by_job ON result_batches (req_id);
CREATE TABLE IF NOT EXISTS learnt_recs (
    pop TEXT PRIMARY KEY,
    rec TEXT NOT NULL
);
"""
"""``results`` holds a row per task, as stores written before ``result_batches`` did; it is still read. A batch is
one JSON array because an indexed row per task costs the state actor several times the CPU (BENCHMARKS.md)."""

MIGRATIONS = (("verify_x_cache", "TEXT DEFAULT ''"), ("age", "INTEGER DEFAULT -1"), ("rounds", "INTEGER DEFAULT 0"))

NOT_VERIFIED = ("", -1, 0)  # the verification fields of a row written without them


class Store:
    """One SQLite file; ``None`` as the directory keeps nothing (used to measure persistence's cost)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None
        self._db: sqlite3.Connection | None = None
        if self.directory is not None:
            (self.directory / "reports").mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.directory / "prewarm.sqlite3", check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Add the verification columns to a store written before they existed."""
        assert self._db is not None
        have = {row[1] for row in self._db.execute("PRAGMA table_info(results)")}
        with self._db:
            for column, kind in MIGRATIONS:
                if column not in have:
                    self._db.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")

    def save_job(self, req_id: str, meta: dict[str, Any], urls: list[str] | None = None,
                 beside: dict[str, Any] | None = None) -> None:
        """Insert or update a job's metadata; ``urls`` (and what is as large: a retry job's ``selected`` tasks, an
        expanded job's manifest per URL) only when they are set, so the many later updates stay small."""
        if self._db is None:
            return
        with self._db:
            if urls is not None:
                fixed: Any = {"urls": urls, **beside} if beside else urls
                self._db.execute(
                    "INSERT OR REPLACE INTO jobs (req_id, meta, urls) VALUES (?, ?, ?)",
                    (req_id, json.dumps(meta), json.dumps(fixed)),
                )
            else:
                self._db.execute("UPDATE jobs SET meta = ? WHERE req_id = ?", (json.dumps(meta), req_id))

    def save_results(self, req_id: str, rows: Sequence[ResultRow]) -> None:
        """A batch of results (the unit fetchers report in) as one row; a task's first result is the one read
        back, as the state actor keeps the first."""
        if self._db is None or not rows:
            return
        with self._db:
            self._db.execute("INSERT INTO result_batches VALUES (?, ?)",
                             (req_id, json.dumps(rows, separators=(",", ":"), default=int)))  # numpy ids as int

    def save_report(self, req_id: str, csv: bytes) -> Path | None:
        """Write the CSV report atomically (temp file, fsync, rename)."""
        if self.directory is None:
            return None
        target = self.directory / "reports" / f"{req_id}.csv"
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{req_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(csv)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load_report(self, req_id: str) -> bytes | None:
        if self.directory is None:
            return None
        path = self.directory / "reports" / f"{req_id}.csv"
        return path.read_bytes() if path.exists() else None

    def jobs(self) -> Iterator[tuple[str, dict[str, Any], list[str], list[ResultRow]]]:
        """Every stored job with its results, oldest first."""
        if self._db is None:
            return
        for req_id, meta, urls in self._db.execute("SELECT req_id, meta, urls FROM jobs").fetchall():
            meta_dict, fixed = json.loads(meta), json.loads(urls)
            if isinstance(fixed, dict):  # stored beside the URLs: a retry's selected tasks, an expansion's sources
                fixed = dict(fixed)
                urls_list = fixed.pop("urls")
                meta_dict.update(fixed)
                fixed = urls_list
            yield req_id, meta_dict, fixed, self._results(req_id)

    def _results(self, req_id: str) -> list[ResultRow]:
        """A job's results in task order, each task's first (rows of either table, without the verification
        fields from stores older than them, get their defaults)."""
        assert self._db is not None
        first: dict[int, ResultRow] = {}
        for (task, *rest) in self._db.execute(
            "SELECT task_id, status, x_cache, address, bytes, attempts, elapsed_ms, error_class, "
            "error_message, verify_x_cache, age, rounds FROM results WHERE req_id = ?", (req_id,)
        ):
            first[task] = (task, *rest)  # type: ignore[assignment]
        for (batch,) in self._db.execute("SELECT rows FROM result_batches WHERE req_id = ? ORDER BY rowid",
                                         (req_id,)):
            for row in json.loads(batch):  # every field a row has (older rows are shorter: record() fills them in)
                first.setdefault(row[0], tuple(row) if len(row) > 9 else (*row[:9], *NOT_VERIFIED))  # type: ignore
        return [first[task] for task in sorted(first)]

    def learnt_recs(self) -> dict[str, str]:
        """POP -> REC as jobs learnt it from Server-Timing."""
        if self._db is None:
            return {}
        return dict(self._db.execute("SELECT pop, rec FROM learnt_recs").fetchall())

    def save_learnt_recs(self, learnt: dict[str, str]) -> None:
        if self._db is None or not learnt:
            return
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO learnt_recs (pop, rec) VALUES (?, ?)", list(learnt.items()))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
