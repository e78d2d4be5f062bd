"""Terminal output shared by ``prewarm submit --watch`` and the demo: a live progress bar and the summary table.

The bar redraws in place (``\\r``) on a terminal and writes one plain line every few seconds otherwise,
so CI logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from prewarm.client import EVENTS_READ_TIMEOUT_S, ApiError, EventStreamError, PrewarmClient
from prewarm.schema import FINAL_STATUSES

LOG_INTERVAL_S = 5.0  # one line this often when the stream is not a terminal
RATE_WINDOW_S = 10.0  # the rate is measured over this much recent history, so it follows changes
MAX_LISTED = 20  # failure URLs shown in the summary table before "... and N more"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """Seconds as H:MM:SS, or '--:--' when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


MIB = 1024 * 1024


def render(progress: dict[str, Any], rate: float | None, width: int = 24, byte_rate: float | None = None) -> str:
    """One line: bar, done/total, percent, rate, bytes, failures, ETA and status/phase.

    Once the job knows its bytes (``total_size``, from the size probe) the bar, rate and ETA go by bytes, in MiB:
    a job of a few large objects moves by bytes long before a task ends. ``byte_rate`` is the service's, or else
    measured here."""
    total = int(progress.get("total_count") or 0)
    done = int(progress.get("download_count") or 0)
    status = progress.get("status", "?")
    ended = status in FINAL_STATUSES
    total_size = int(progress.get("total_size") or 0)
    failed = f"failed={progress.get('failure_count', 0)}"
    wasted = int(progress.get("bytes_wasted") or 0)
    if wasted:
        failed += f" wasted={wasted / MIB:.1f} MiB"
    tail = f"{status}/{progress.get('phase', '?')}"
    if total_size and not ended:
        useful = min(total_size, max(0, int(progress.get("bytes_received") or 0) - wasted))
        fraction = useful / total_size
        bytes_per_s = progress.get("byte_rate") or byte_rate
        eta = (total_size - useful) / bytes_per_s if bytes_per_s else None
        speed = f"{bytes_per_s / MIB:.1f} MiB/s" if bytes_per_s else "- MiB/s"
        return (f"[{_bar(fraction, width)}] {useful / MIB:.1f}/{total_size / MIB:.1f} MiB {fraction * 100:3.0f}% "
                f"{speed} {done}/{total} {failed} ETA {human_duration(eta)} {tail}")
    fraction = done / total if total else (1.0 if ended else 0.0)
    eta = (total - done) / rate if rate and total > done else (0.0 if total and done >= total else None)
    rate_text = f"{rate:.1f}/s" if rate is not None else "-/s"
    return (
        f"[{_bar(fraction, width)}] {done}/{total} {fraction * 100:3.0f}% {rate_text} "
        f"{human_bytes(progress.get('download_size') or 0)} {failed} ETA {human_duration(eta)} {tail}"
    )


def _bar(fraction: float, width: int) -> str:
    filled = min(width, int(fraction * width))  # floor: a full bar only when everything is done
    return "#" * filled + "." * (width - filled)


class ProgressBar:
    """Draws progress dicts on ``stream``; feed it with ``update`` and end with ``close``."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 log_interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self._isatty(self.stream) if tty is None else tty
        self.log_interval_s = log_interval_s
        self.clock = clock
        self.samples: deque[tuple[float, int]] = deque()
        self.byte_samples: deque[tuple[float, int]] = deque()
        self.last_log: float | None = None
        self.last_width = 0

    @staticmethod
    def _isatty(stream: TextIO) -> bool:
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def rate(self, samples: deque[tuple[float, int]] | None = None) -> float | None:
        """Tasks (or, given ``byte_samples``, bytes) per second over the recent window (None until there are two
        samples a moment apart)."""
        samples = self.samples if samples is None else samples
        if len(samples) < 2:
            return None
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def update(self, progress: dict[str, Any], *, force: bool = False) -> None:
        now = self.clock()
        for samples, value in ((self.samples, progress.get("download_count")),
                               (self.byte_samples, progress.get("bytes_received"))):
            samples.append((now, int(value or 0)))
            while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_S:
                samples.popleft()
        line = render(progress, self.rate(), byte_rate=self.rate(self.byte_samples))
        if self.tty:
            pad = " " * max(0, self.last_width - len(line))
            self.stream.write("\r" + line + pad)
            self.last_width = len(line)
        elif force or self.last_log is None or now - self.last_log >= self.log_interval_s:
            self.stream.write(line + "\n")
            self.last_log = now
        self.stream.flush()

    def close(self, progress: dict[str, Any]) -> None:
        """Draw the final state once more and end the line."""
        self.update(progress, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class WatchTimeout(Exception):
    """The job was still running when the watcher's own deadline passed."""


def watch(client: PrewarmClient, req_id: str, *, stream: TextIO | None = None, tty: bool | None = None,
          poll_s: float = 0.5, deadline_s: float | None = None) -> dict[str, Any]:
    """Follow a job until it ends, drawing the bar; returns the last progress (see ``follow``)."""
    return follow(client, req_id, stream=stream, tty=tty, poll_s=poll_s, deadline_s=deadline_s)[0]


def follow(client: PrewarmClient, req_id: str, *, stream: TextIO | None = None, tty: bool | None = None,
           poll_s: float = 0.5, deadline_s: float | None = None, use_events: bool = True,
           read_timeout_s: float = EVENTS_READ_TIMEOUT_S) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Follow a job until it ends, drawing the bar: (last progress, summary of the ``done`` event or None).

    The service's event stream (``GET /prewarm/events``) is used when it has one; a service without it
    (404/405, or 503 when it has no stream to spare), or a stream that breaks, falls back to polling
    ``GET /prewarm`` every ``poll_s`` (then the summary is None: the caller asks for it). ``deadline_s``
    bounds the wait (the service closes every job by its own deadline, so this only matters when it stops
    answering properly); reaching it raises WatchTimeout.
    """
    bar = ProgressBar(stream, tty=tty)
    give_up = None if deadline_s is None else time.monotonic() + deadline_s
    if use_events:
        try:
            followed = _follow_events(client, req_id, bar, give_up, deadline_s, read_timeout_s)
        except ApiError as exc:
            if exc.status not in (404, 405, 503):
                raise
            # No such endpoint (an older service), no such job, or no stream to spare: polling says which.
            followed = None
        except EventStreamError:
            followed = None
        if followed is not None:
            return followed
    return _poll(client, req_id, bar, give_up, deadline_s, poll_s), None


def _follow_events(client: PrewarmClient, req_id: str, bar: ProgressBar, give_up: float | None,
                   deadline_s: float | None, read_timeout_s: float
                   ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The event stream's way; None when it ended without ``done`` (an ``error`` event or an early close)."""
    progress: dict[str, Any] | None = None
    for event, data in client.events(req_id, read_timeout_s=read_timeout_s, heartbeats=True):
        if event == "progress":
            progress = data
            if progress.get("status") not in FINAL_STATUSES:  # the final state is drawn once, by close
                bar.update(progress)
        elif event == "done":
            if progress is None or progress.get("status") not in FINAL_STATUSES:
                progress = client.progress(req_id)
            bar.close(progress)
            return progress, data
        elif event == "error":
            return None
        if give_up is not None and time.monotonic() > give_up:
            _give_up(req_id, bar, progress, deadline_s)
    return None


def _poll(client: PrewarmClient, req_id: str, bar: ProgressBar, give_up: float | None, deadline_s: float | None,
          poll_s: float) -> dict[str, Any]:
    while True:
        progress = client.progress(req_id)
        if progress["status"] in FINAL_STATUSES:
            bar.close(progress)
            return progress
        bar.update(progress)
        if give_up is not None and time.monotonic() > give_up:
            _give_up(req_id, bar, progress, deadline_s)
        time.sleep(poll_s)


def _give_up(req_id: str, bar: ProgressBar, progress: dict[str, Any] | None, deadline_s: float | None) -> None:
    if progress is not None:
        bar.close(progress)
    status = progress["status"] if progress else "running"
    raise WatchTimeout(f"job {req_id} still {status} after {deadline_s or 0:.0f} s of watching")


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                         enumerate(zip(cells, widths, strict=True))).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text: status line, per-POP table, failing POPs and URLs, and the report's URL."""
    ok, failed = summary.get("success_count", 0), summary.get("failure_count", 0)
    lines = [f"request {summary.get('request_id', '?')}: {summary.get('status', '?')}, "
             f"{ok} succeeded, {failed} failed"]
    if summary.get("tiering"):
        layers = ", ".join(f"{name or 'none'} {count}" for name, count in (summary.get("hit_layers") or {}).items())
        lines.append(f"tiering {summary['tiering']}: {summary.get('origin_fetches', 0)} fetches reached the origin"
                     + (f"; verified pairs held by tier: {layers}" if layers else ""))
    if summary.get("already_warm_count"):
        lines.append(f"already warm: {summary['already_warm_count']} pairs answered a Hit before any GET "
                     "(no body downloaded)")
    if summary.get("download_size"):
        moved = f"downloaded {human_bytes(summary['download_size'])}"
        if summary.get("byte_rate"):
            moved += f" at {summary['byte_rate'] / MIB:.1f} MiB/s"
        if summary.get("bytes_wasted"):
            moved += f"; {human_bytes(summary['bytes_wasted'])} wasted by bodies cut short (billed, warmed nothing)"
        lines.append(moved)
    if summary.get("expansion"):
        lines.append(f"expanded: {summary['expansion']['message']}")
    if summary.get("error_message"):
        lines.append(f"error: {summary['error_message']}")
    rows = [
        [r["pop"], str(r["success"]), str(r["failure"]), human_bytes(r["bytes"]),
         "-" if r.get("p50_ms") is None else f"{r['p50_ms']:.1f}",
         "-" if r.get("p95_ms") is None else f"{r['p95_ms']:.1f}"]
        for r in summary.get("pops") or []
    ]
    if rows:
        lines += ["", *_table(["POP", "success", "failure", "bytes", "p50 ms", "p95 ms"], rows, {1, 2, 3, 4, 5})]
    if summary.get("failure_pops"):
        lines += ["", f"failed POPs: {', '.join(summary['failure_pops'])}"]
    by_manifest = summary.get("failure_manifests") or {}
    if by_manifest:
        lines += ["", "failed tasks by the manifest they came from:"]
        lines += [f"  {n:>6}  {url}" for url, n in list(by_manifest.items())[:MAX_LISTED]]
    failure_urls = summary.get("failure_urls") or []
    if failure_urls:
        lines += ["", f"failed URLs ({len(failure_urls)}):"]
        lines += [f"  {u}" for u in failure_urls[:MAX_LISTED]]
        if len(failure_urls) > MAX_LISTED:
            lines.append(f"  ... and {len(failure_urls) - MAX_LISTED} more")
    lines += _verification_lines(summary)
    if summary.get("webhook"):
        lines += ["", _webhook_line(summary["webhook"])]
    if summary.get("failure_pop_urls_report"):
        lines += ["", f"report: {summary['failure_pop_urls_report']}"]
    return "\n".join(lines)


def _webhook_line(webhook: dict[str, Any]) -> str:
    """Where the end-of-job callback stands: delivered, still retrying, or given up (with the last error)."""
    if webhook.get("delivered"):
        outcome = f"delivered (HTTP {webhook.get('last_status')})"
    else:
        outcome = "gave up" if webhook.get("gave_up") else "not delivered yet"
    why = f", last error: {webhook['last_error']}" if webhook.get("last_error") and not webhook.get("delivered") else ""
    return f"webhook {webhook.get('url', '?')}: {outcome} after {webhook.get('attempts', 0)} attempt(s){why}"


def _verification_lines(summary: dict[str, Any]) -> list[str]:
    """Whether the edges are warm now: verified Hits out of the successes, and the pairs that were not."""
    ratio = summary.get("warm_ratio")
    if ratio is None:
        return []  # not verified (verify: false), or nothing succeeded
    hits, ok = summary.get("verified_hit_count", 0), summary.get("success_count", 0)
    lines = ["", f"verified warm: {hits} of {ok} successful pairs answered a Hit afterwards (warm_ratio {ratio:.3f})"]
    cold = summary.get("cold_pairs") or []
    count = summary.get("cold_pair_count", len(cold))
    if count:
        lines.append(f"cold pairs ({count}):")
        for pair in cold[:MAX_LISTED]:
            variant = f" [{pair['variant']}]" if pair.get("variant") else ""
            lines.append(f"  {pair['pop']}  {pair['url']}{variant}: {pair.get('x_cache') or 'no X-Cache'}")
        if count > min(len(cold), MAX_LISTED):
            lines.append(f"  ... and {count - min(len(cold), MAX_LISTED)} more")
    return lines
