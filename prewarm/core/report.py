"""The failure report and per-POP table, built with pandas from a job's task table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prewarm.core.results import TaskTable

REPORT_COLUMNS = [
    "url",
    "pop",
    "variant",
    "address",
    "status_code",
    "x_cache",
    "bytes",
    "attempts",
    "elapsed_ms",
    "error_class",
    "error_message",
    "verify_x_cache",
    "age",
    "rounds",
    "part",
    "outcome",
    "hit_layer",
]
"""``part``: the ``Range`` of one part of an object warmed in parts (empty for a whole object); ``outcome``:
``warmed``, ``already_warm`` (a Hit before any GET, ``skip_warm``) or ``failed``; ``hit_layer``: the tier that answered
the verification from its cache (``Server-Timing``'s ``cdn-hit-layer``: EDGE, REC, Origin Shield; empty without it)."""

PART_FIELDS = ("part", "status_code", "x_cache", "bytes", "attempts", "elapsed_ms", "error_class", "error_message",
               "verify_x_cache")


def failures_frame(table: TaskTable) -> pd.DataFrame:
    """One row per failed (URL, POP), in task order; a pair warmed in parts has a row per failed part."""
    return with_parts(table, table.failed_task_ids(), failed_only=True)


def results_frame(table: TaskTable) -> pd.DataFrame:
    """One row per finished task, successes included, with an ``ok`` column: for analysis; a pair warmed in parts
    has a row per part."""
    ids = np.flatnonzero(table.done & ~table.skipped)
    frame = tasks_frame(table, ids)
    frame.insert(2, "ok", table.ok[ids])
    return expand_parts(table, ids, frame, failed_only=False)


def with_parts(table: TaskTable, ids: np.ndarray, failed_only: bool) -> pd.DataFrame:
    """``tasks_frame`` with the pairs warmed in parts expanded (``expand_parts``)."""
    return expand_parts(table, ids, tasks_frame(table, ids), failed_only)


def expand_parts(table: TaskTable, ids: np.ndarray, frame: pd.DataFrame, failed_only: bool) -> pd.DataFrame:
    """Each pair warmed in ``Range`` parts becomes a row per part (only its failed parts with ``failed_only``), the
    pair's URL, POP, address, age and rounds on each; parts are rare, so the common frame is left as it is."""
    if not table.parts:
        return frame
    split = [i for i, t in enumerate(ids) if int(t) in table.parts]
    if not split:
        return frame
    pieces: list[pd.DataFrame] = []
    done = 0
    for i in split:
        pieces.append(frame.iloc[done:i])
        base = frame.iloc[i].to_dict()
        rows = []
        for part in table.parts[int(ids[i])]:
            values = dict(zip(PART_FIELDS, part, strict=True))
            if failed_only and not values["error_class"]:
                continue
            row = {**base, **values}
            row["outcome"] = "failed" if values["error_class"] else (
                "already_warm" if base["outcome"] == "already_warm" else "warmed")
            if "ok" in row:
                row["ok"] = not values["error_class"]
            rows.append(row)
        pieces.append(pd.DataFrame(rows, columns=frame.columns))
        done = i + 1
    pieces.append(frame.iloc[done:])
    kept = [p for p in pieces if len(p)]
    return pd.concat(kept, ignore_index=True) if kept else frame.iloc[:0]


def outcomes(table: TaskTable, ids: np.ndarray) -> np.ndarray:
    return np.where(~table.ok[ids], "failed", np.where(table.already_warm[ids], "already_warm", "warmed"))


def tasks_frame(table: TaskTable, ids: np.ndarray) -> pd.DataFrame:
    """The report columns for the given task ids (a pair warmed in parts as one row: see ``expand_parts``)."""
    urls = np.asarray(table.urls, dtype=object)
    pops = np.asarray(table.pops, dtype=object)
    variants = np.asarray(table.variants, dtype=object)
    frame = pd.DataFrame(
        {
            "url": urls[table.url_index(ids)] if len(ids) else [],
            "pop": pops[table.pop_index(ids)] if len(ids) else [],
            "variant": variants[table.variant_index(ids)] if len(ids) else [],
            "address": np.asarray(table.addresses, dtype=object)[table.address[ids]],
            "status_code": table.status[ids].astype(np.int64),
            "x_cache": np.asarray(table.x_cache_values, dtype=object)[table.x_cache[ids]],
            "bytes": table.nbytes[ids],
            "attempts": table.attempts[ids].astype(np.int64),
            "elapsed_ms": np.round(table.elapsed_ms[ids].astype(np.float64), 1),
            "error_class": np.asarray(table.error_classes, dtype=object)[table.error[ids]],
            "error_message": [table.messages.get(int(t), "") for t in ids],
            "verify_x_cache": np.asarray(table.x_cache_values, dtype=object)[table.verify_x_cache[ids]],
            "age": pd.Series(table.age[ids], dtype="Int64").mask(table.age[ids] < 0),  # -1: no Age header
            "rounds": table.rounds[ids].astype(np.int64),
            "part": "",
            "outcome": outcomes(table, ids) if len(ids) else [],
            "hit_layer": np.asarray(table.hit_layer_values, dtype=object)[table.hit_layer[ids]],
        },
        columns=REPORT_COLUMNS,
    )
    if table.manifest_of is not None:  # an expanded job's: which manifest each URL came from
        frame["manifest"] = np.asarray(table.manifest_of, dtype=object)[table.url_index(ids)] if len(ids) else []
    return frame


def extra_failure_rows(pop_failures: dict[str, str]) -> pd.DataFrame:
    """Rows for POPs that never got work (unresolvable or refused): the URL column is empty."""
    return pd.DataFrame(
        [
            {"url": "", "pop": pop, "variant": "", "address": "", "status_code": 0, "x_cache": "", "bytes": 0,
             "attempts": 0, "elapsed_ms": 0.0, "error_class": "pop_unavailable", "error_message": reason,
             "verify_x_cache": "", "age": None, "rounds": 0, "part": "", "outcome": "failed",
             "hit_layer": ""}
            for pop, reason in pop_failures.items()
        ],
        columns=REPORT_COLUMNS,
    )


def report_csv(table: TaskTable, pop_failures: dict[str, str]) -> bytes:
    frame = pd.concat([extra_failure_rows(pop_failures), failures_frame(table)], ignore_index=True)
    if "manifest" in frame:
        frame["manifest"] = frame["manifest"].fillna("")
    return frame.to_csv(index=False).encode()


def cold_pairs(table: TaskTable, limit: int) -> tuple[list[dict[str, str]], int]:
    """The first ``limit`` pairs that verified as something other than a Hit, and how many there are."""
    ids = table.cold_task_ids()
    shown = ids[:limit]
    rows = [
        {"url": table.urls[int(table.url_index(t))], "pop": table.pops[int(table.pop_index(t))],
         "variant": table.variants[int(table.variant_index(t))],
         "x_cache": table.x_cache_values[int(table.verify_x_cache[t])]}
        for t in shown
    ]
    return rows, len(ids)


def pop_table(table: TaskTable) -> list[dict[str, object]]:
    """Per-POP success, failure, bytes and p50/p95 latency of successful fetches (all variants together)."""
    if not table.total:
        return []
    ids = np.flatnonzero(table.done & ~table.skipped)
    frame = pd.DataFrame(
        {
            "pop": table.pop_index(ids),
            "ok": table.ok[ids],
            "bytes": table.nbytes[ids],
            "ms": table.elapsed_ms[ids].astype(np.float64),
        }
    )
    grouped = frame.groupby("pop")
    success = grouped["ok"].sum()
    done = grouped["ok"].count()
    nbytes = grouped["bytes"].sum()
    ok_ms = frame[frame["ok"]].groupby("pop")["ms"]
    p50 = ok_ms.quantile(0.5)
    p95 = ok_ms.quantile(0.95)
    rows = []
    for index, pop in enumerate(table.pops):
        rows.append(
            {
                "pop": pop,
                "success": int(success.get(index, 0)),
                "failure": int(done.get(index, 0) - success.get(index, 0)),
                "bytes": int(nbytes.get(index, 0)),
                "p50_ms": _ms(p50.get(index)),
                "p95_ms": _ms(p95.get(index)),
            }
        )
    return rows


def _ms(value: float | None) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 1)
