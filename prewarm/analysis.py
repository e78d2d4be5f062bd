"""Helpers for analysing prewarm jobs in a notebook: read results from the cluster, tabulate, plot.

Only ``connect``, ``list_jobs`` and ``load_results`` touch Ray (the detached state actor); every other
function takes a results DataFrame (``RESULT_COLUMNS``: one row per finished (URL, POP, variant), with the
verification HEAD's ``verify_x_cache`` and ``age``) so it can be tested without a cluster. Plots build
``matplotlib.figure.Figure`` objects without pyplot: no global figure state piles up in a long-running
kernel, and a figure left as a cell's last expression is displayed by the notebook.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from prewarm.core.results import is_hit
from prewarm.schema import TIME_FORMAT
from prewarm.settings import STATE_ACTOR_NAME, Settings

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_NAMESPACE = Settings.namespace
RAY_CALL_TIMEOUT_S = 60.0
RESULT_COLUMNS = ["url", "pop", "ok", "variant", "address", "status_code", "x_cache", "bytes", "attempts",
                  "elapsed_ms", "error_class", "error_message", "verify_x_cache", "age", "rounds"]
WARMTH_COLUMNS = ["success", "verified", "hits", "cold", "warm_ratio", "rewarmed"]
POP_TABLE_COLUMNS = ["tasks", "success", "failure", "success_rate", "bytes", "p50_ms", "p95_ms"]
TIME_COLUMNS = ("created_at", "last_update_time", "timestamp")
# Status classes of the heat map: (label, colour); index 0 is "no HTTP answer" (timeouts, resets, ...).
STATUS_CLASSES = [("no answer", "#9e9e9e"), ("2xx", "#4caf50"), ("3xx", "#2196f3"), ("4xx", "#ff9800"),
                  ("5xx", "#e53935")]

_namespace = DEFAULT_NAMESPACE


def _enable_token_auth_if_available() -> None:
    """Send the cluster's auth token when one is on this machine.

    Ray enables token auth by default for new local clusters but only looks for the token itself when the
    address is "auto"; a notebook given an explicit address would be refused. Sending a token to a cluster
    without auth is harmless, so do what Ray does for "auto" (mode unset and a token present -> token mode).
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:  # Ray's own check: every token source, and it refreshes Ray's cached config
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: the environment is read when the config is first loaded
        token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        if os.environ.get("RAY_AUTH_TOKEN") or Path(token_file).is_file():
            os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(address: str = "auto", namespace: str = DEFAULT_NAMESPACE) -> None:
    """Join the running cluster (unless this process already has) and remember the service's namespace."""
    import ray

    global _namespace
    _namespace = namespace
    if ray.is_initialized():
        return
    _enable_token_auth_if_available()
    ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="WARNING")


def _state_actor(namespace: str | None = None) -> Any:
    import ray

    try:
        return ray.get_actor(STATE_ACTOR_NAME, namespace=namespace or _namespace)
    except ValueError:
        raise LookupError(f"no {STATE_ACTOR_NAME!r} actor in namespace {namespace or _namespace!r}: is the "
                          "service running on this cluster, with this PREWARM_NAMESPACE?") from None


def jobs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Progress dicts -> DataFrame, times parsed (UTC), newest job first."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["request_id", "status", "phase", "total_count", "download_count",
                                     "success_count", "failure_count", "created_at"])
    for column in TIME_COLUMNS:
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], format=TIME_FORMAT, utc=True)
    return frame.sort_values("created_at", ascending=False, kind="stable").reset_index(drop=True)


def list_jobs(namespace: str | None = None) -> pd.DataFrame:
    """Every job the state actor knows, one row of progress each, newest first."""
    import ray

    return jobs_frame(ray.get(_state_actor(namespace).list_jobs.remote(), timeout=RAY_CALL_TIMEOUT_S))


def newest_job(jobs: pd.DataFrame) -> str:
    """The request id of the newest job in ``list_jobs()``'s frame."""
    if jobs.empty:
        raise LookupError("no prewarm jobs on this cluster yet")
    return str(jobs.sort_values("created_at", ascending=False).iloc[0]["request_id"])


def load_results(req_id: str, namespace: str | None = None) -> pd.DataFrame:
    """One row per finished (URL, POP) of a job, successes included."""
    import ray

    frame = ray.get(_state_actor(namespace).results.remote(req_id), timeout=RAY_CALL_TIMEOUT_S)
    if frame is None:
        raise KeyError(f"no job {req_id}")
    return frame


def pop_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per POP (in the job's order): tasks, success, failure, success_rate, bytes, p50/p95 of successful fetches."""
    if df.empty:
        return pd.DataFrame(columns=POP_TABLE_COLUMNS, index=pd.Index([], name="pop"))
    ok = df["ok"].astype(bool)
    grouped = df.groupby("pop", sort=False)
    table = pd.DataFrame({"tasks": grouped.size(), "success": grouped["ok"].sum().astype(int)})
    table["failure"] = table["tasks"] - table["success"]
    table["success_rate"] = (table["success"] / table["tasks"]).round(4)
    table["bytes"] = grouped["bytes"].sum().astype(int)
    latency = df[ok].groupby("pop", sort=False)["elapsed_ms"]
    table["p50_ms"] = latency.quantile(0.5).round(1)
    table["p95_ms"] = latency.quantile(0.95).round(1)
    table.index.name = "pop"
    return table[POP_TABLE_COLUMNS]


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots()


def _empty(ax: Axes, title: str, text: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _pop_bars(df: pd.DataFrame, ax: Axes | None, title: str) -> tuple[Figure, Axes, pd.DataFrame | None]:
    """The figure, axes and per-POP table of a bar chart by POP; the table is None when there is nothing."""
    fig, ax = _axes(ax, (7, 3.5))
    table = pop_table(df)
    ax.set_title(title)
    if table.empty:
        _empty(ax, title, "no results")
        return fig, ax, None
    return fig, ax, table


def plot_success_rate(df: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Bar per POP: share of its (URL, POP) tasks that were warmed."""
    fig, ax, table = _pop_bars(df, ax, "success rate by POP")
    if table is None:
        return fig
    rates = table["success_rate"] * 100
    bars = ax.bar(table.index.astype(str), rates, color=["#4caf50" if r == 100 else "#ff9800" for r in rates])
    ax.bar_label(bars, labels=[f"{r:.1f}%" for r in rates])
    ax.set_ylim(0, 110)
    ax.set_ylabel("success rate (%)")
    return fig


def plot_latency(df: pd.DataFrame, ax: Axes | None = None, only_ok: bool = True) -> Figure:
    """Box plot per POP of fetch time (successful fetches only, unless ``only_ok`` is False)."""
    fig, ax = _axes(ax, (7, 3.5))
    data = df[df["ok"].astype(bool)] if only_ok else df
    pops = list(dict.fromkeys(data["pop"]))
    if not pops:
        _empty(ax, "latency by POP", "no successful fetches")
        return fig
    ax.boxplot([data.loc[data["pop"] == p, "elapsed_ms"].to_numpy() for p in pops], tick_labels=pops)
    ax.set_ylabel("elapsed (ms)")
    ax.set_title("fetch latency by POP" + (" (successful fetches)" if only_ok else ""))
    return fig


def plot_bytes(df: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Bar per POP: bytes fetched through it (what its cache now holds from this job)."""
    fig, ax, table = _pop_bars(df, ax, "bytes fetched by POP")
    if table is None:
        return fig
    scale, unit = next(((1024.0**i, u) for i, u in reversed(list(enumerate(["B", "KiB", "MiB", "GiB"])))
                        if table["bytes"].max() >= 1024.0**i), (1.0, "B"))
    bars = ax.bar(table.index.astype(str), table["bytes"] / scale, color="#2196f3")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel(f"bytes ({unit})")
    return fig


def plot_failures(df: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Horizontal bars: failed (URL, POP) tasks per error class, stacked by POP."""
    fig, ax = _axes(ax, (7, 3.5))
    failed = df[~df["ok"].astype(bool)]
    if failed.empty:
        _empty(ax, "failures by error class", "no failures")
        return fig
    counts = pd.crosstab(failed["error_class"], failed["pop"])
    counts = counts.loc[counts.sum(axis=1).sort_values().index]
    left = np.zeros(len(counts))
    for pop in counts.columns:
        ax.barh(counts.index.astype(str), counts[pop], left=left, label=str(pop))
        left += counts[pop].to_numpy()
    ax.set_xlabel("failed tasks")
    ax.legend(title="POP", fontsize="small")
    ax.set_title("failures by error class")
    return fig


def status_class(code: float) -> float:
    """Index into STATUS_CLASSES for a status code (NaN stays NaN: the task did not finish)."""
    if code != code:  # NaN
        return np.nan
    return float(int(code) // 100 - 1) if 200 <= code < 600 else 0.0


def plot_status_heatmap(df: pd.DataFrame, ax: Axes | None = None, max_urls: int = 40) -> Figure:
    """URL x POP grid coloured by the status class, codes written in non-200 cells; failing URLs first."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    grid = df.pivot_table(index="url", columns="pop", values="status_code", aggfunc="last", sort=False)
    if grid.empty:
        fig, ax = _axes(ax, (7, 3))
        _empty(ax, "status code by URL and POP", "no results")
        return fig
    failing = df.loc[~df["ok"].astype(bool), "url"].unique()
    failing_set = set(failing)
    order = [*failing, *(u for u in grid.index if u not in failing_set)]
    shown = grid.loc[order[:max_urls]]
    fig, ax = _axes(ax, (max(6.0, 1.2 * len(shown.columns) + 4), max(3.0, 0.22 * len(shown) + 1.5)))
    classes = shown.map(status_class).to_numpy(dtype=float)
    cmap = ListedColormap([c for _, c in STATUS_CLASSES]).with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(classes), cmap=cmap, aspect="auto", interpolation="nearest",
              norm=BoundaryNorm(np.arange(-0.5, len(STATUS_CLASSES)), cmap.N))
    ax.set_xticks(range(len(shown.columns)), labels=[str(c) for c in shown.columns])
    labels = [(urlsplit(u).path or u)[-50:] for u in shown.index]
    ax.set_yticks(range(len(shown)), labels=labels, fontsize=7 if len(shown) > 20 else 9)
    for (row, col), code in np.ndenumerate(shown.to_numpy(dtype=float)):
        if code == code and code != 200:
            ax.text(col, row, str(int(code)), ha="center", va="center", fontsize=7)
    ax.legend(handles=[Patch(color=c, label=label) for label, c in STATUS_CLASSES], loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize="small", title="status")
    more = f" (first {len(shown)} of {len(grid)} URLs, failing first)" if len(grid) > len(shown) else ""
    ax.set_title("status code by URL and POP" + more)
    return fig


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """The failed rows, most common error class first: what to look at after the plots."""
    failed = df[~df["ok"].astype(bool)]
    rank = failed["error_class"].map(failed["error_class"].value_counts())
    return failed.assign(_rank=rank).sort_values(["_rank", "url", "pop"], ascending=[False, True, True]) \
        .drop(columns="_rank").reset_index(drop=True)


def _verification(df: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(successful, verified, verified as a Hit) masks; frames without the verification columns count as
    unverified."""
    ok = df["ok"].astype(bool)
    seen = (df["verify_x_cache"] if "verify_x_cache" in df else pd.Series("", index=df.index)).fillna("").astype(str)
    verified = ok & (seen != "")
    return ok, verified, verified & seen.map(is_hit).astype(bool)


def warmth_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per POP (and variant, when the job had several): is the edge warm now?

    ``verified`` successes had a verification HEAD, ``hits`` of them answered a Hit, ``cold`` did not,
    ``warm_ratio`` is hits / success as in the summary (NaN without verification), ``rewarmed`` pairs
    needed more than one GET (``until_hit``); ``held_<tier>`` counts the verified pairs by the tier that
    answered from its cache (``hit_layer``: EDGE, REC, Origin Shield; ``held_none`` where no tier said).
    """
    keys = ["pop", "variant"] if "variant" in df and df["variant"].fillna("").nunique() > 1 else ["pop"]
    if df.empty:
        return pd.DataFrame(columns=WARMTH_COLUMNS, index=pd.Index([], name="pop"))
    ok, verified, hits = _verification(df)
    rounds = df["rounds"].fillna(1) if "rounds" in df else pd.Series(1, index=df.index)
    flags = pd.DataFrame({"success": ok, "verified": verified, "hits": hits, "rewarmed": ok & (rounds > 1)})
    flags[keys] = df[keys].fillna("")
    table = flags.groupby(keys, sort=False)[["success", "verified", "hits", "rewarmed"]].sum().astype(int)
    table["cold"] = table["verified"] - table["hits"]
    table["warm_ratio"] = (table["hits"] / table["success"]).where(table["verified"] > 0).round(4)
    if "hit_layer" in df and df["hit_layer"].fillna("").ne("").any():  # the edges sent Server-Timing
        layers = pd.crosstab([df.loc[verified, k].fillna("") for k in keys],
                             df.loc[verified, "hit_layer"].fillna("").replace("", "none"))
        layers.index.names = keys
        layers = layers.reindex(table.index, fill_value=0).astype(int)
        return pd.concat([table[WARMTH_COLUMNS], layers.add_prefix("held_")], axis=1)
    return table[WARMTH_COLUMNS]


def cold_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Successful pairs whose verification was not a Hit: what ``until_hit`` or a retry should look at."""
    _, verified, hits = _verification(df)
    columns = [c for c in ("url", "pop", "variant", "address", "verify_x_cache", "age", "rounds") if c in df]
    return df.loc[verified & ~hits, columns].reset_index(drop=True)


def plot_warmth(df: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Bar per POP: share of its successful pairs that verified as a Hit afterwards (warm_ratio)."""
    fig, ax = _axes(ax, (7, 3.5))
    table = warmth_table(df)
    if "variant" in table.index.names:
        table = table.groupby(level="pop", sort=False).sum()
        table["warm_ratio"] = (table["hits"] / table["success"]).where(table["verified"] > 0)
    table = table.dropna(subset=["warm_ratio"])
    if table.empty:
        _empty(ax, "verified warm by POP", "no verified pairs (verify: false?)")
        return fig
    ratios = table["warm_ratio"].astype(float) * 100
    bars = ax.bar(table.index.astype(str), ratios, color=["#4caf50" if r == 100 else "#ff9800" for r in ratios])
    ax.bar_label(bars, labels=[f"{r:.1f}%" for r in ratios])
    ax.set_ylim(0, 110)
    ax.set_ylabel("verified Hit (% of successes)")
    ax.set_title("verified warm by POP")
    return fig
