"""The standby: the next job's coordinator, and its fetchers, started before the job arrives.

Starting Ray worker processes is most of a small job's time (BENCHMARKS.md, the standby). The API keeps one
coordinator started ahead under a request id it has not handed out yet; the next POST takes that id and that
coordinator. The next standby starts once no job runs (or after ``START_WITHIN_S``): starting processes takes
CPU from the jobs running. Each coordinator and its fetchers still serve exactly one request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

import ray

from prewarm.engine.coordinator import create_coordinator
from prewarm.engine.registry import get_state_actor
from prewarm.settings import Settings

log = logging.getLogger("prewarm.api.standby")

REPLACE_AFTER_S = 600.0
"""A standby unused this long is replaced by a fresh one, well before it would leave by itself."""
LEAVE_AFTER_S = 1800.0
"""A standby that no POST took in this time leaves with its fetchers (the API that made it is gone)."""
CHECK_EVERY_S = 30.0
START_WITHIN_S = 60.0
"""The next standby waits for the running jobs to end, at most this long."""


class Standby:
    """Holds at most one started coordinator for the next request; a background thread keeps it there."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._next: tuple[str, Any, float] | None = None  # (request id, coordinator, started at)
        self._taken: str | None = None  # the request id handed out last
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._keep, name="prewarm-standby", daemon=True)
        self._thread.start()

    def take(self) -> tuple[str, Any]:
        """(request id, its started coordinator), or a new id and None when no standby is ready."""
        with self._lock:
            taken, self._next = self._next, None
            req_id, coordinator = taken[:2] if taken else (str(uuid.uuid4()), None)
            self._taken = req_id
        self._wake.set()  # the next one starts once this job and any others have ended
        return req_id, coordinator

    def close(self) -> None:
        """Stop keeping a standby and remove the one held (its fetchers go with it)."""
        self._closed = True
        self._wake.set()
        with self._lock:
            held, self._next = self._next, None
        if held is not None:
            _remove(held[1])

    def _keep(self) -> None:
        while not self._closed:
            with self._lock:
                stale = self._next if self._next and time.monotonic() - self._next[2] > REPLACE_AFTER_S else None
                if stale is not None:
                    self._next = None
                missing = self._next is None
            if stale is not None:
                _remove(stale[1])
            if missing and not self._closed:
                try:
                    self._wait_for_quiet()
                    self._start_one()
                except Exception:  # the cluster is busy or going away: jobs start their own coordinator
                    log.warning("could not start a standby coordinator", exc_info=True)
            self._wake.wait(CHECK_EVERY_S)
            self._wake.clear()

    def _wait_for_quiet(self) -> None:
        """Until no job runs, the one handed out last included (once the state actor has it), at most
        ``START_WITHIN_S``."""
        state = get_state_actor(self._settings)
        until = time.monotonic() + START_WITHIN_S
        while not self._closed and time.monotonic() < until:
            if ray.get(state.quiet.remote(self._taken), timeout=10):
                return
            time.sleep(0.5)

    def _start_one(self) -> None:
        req_id = str(uuid.uuid4())
        coordinator = create_coordinator(req_id, self._settings, prestart=True)
        # Not retried: the standby is killed when replaced, and that is not a failure.
        coordinator.leave_unless_claimed.options(max_task_retries=0).remote(LEAVE_AFTER_S)
        with self._lock:
            if self._closed:
                _remove(coordinator)
                return
            self._next = (req_id, coordinator, time.monotonic())


def _remove(coordinator: Any) -> None:
    with contextlib.suppress(Exception):
        ray.kill(coordinator, no_restart=True)
