"""Ray's own output off the terminal of ``prewarm serve`` and ``prewarm demo``: the product's lines are the
product's, and Ray's go to a file the command names once.

Ray's driver-side loggers (``ray``, ``ray.serve``) bind their stream when they are configured (at ``import ray``,
in ``ray.init`` and in ``serve.start``), so the service is started with ``sys.stderr`` pointing at the file;
Ray's notes about tasks that failed and are retried (``(raylet) ...``) are printed through
``ray._private.worker.print_to_stdstream`` at the time they arrive, so that one function is pointed at the file
as well (a private name: if a Ray release renames it, those notes reach the terminal again, nothing breaks).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

_sink: TextIO | None = None


def ray_log_file(state_dir: str, command: str) -> Path:
    """Where this command's Ray lines go: ``<state dir>/logs/<command>-<time>.log``."""
    folder = Path(state_dir).expanduser() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def _to_sink(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    sink = _sink
    if sink is None:
        return
    for line in data.get("lines", ()):
        sink.write(f"({data.get('pid', '')}) {line}\n")
    sink.flush()


def send_ray_output_to(path: Path) -> TextIO:
    """Open ``path`` for Ray's lines and point Ray's error-note printer at it (for the rest of the process)."""
    global _sink
    _sink = path.open("a", encoding="utf-8", buffering=1)
    with contextlib.suppress(ImportError, AttributeError):
        import ray._private.worker as ray_worker

        ray_worker.print_to_stdstream = _to_sink
    return _sink


@contextlib.contextmanager
def ray_writes_to(sink: TextIO) -> Iterator[None]:
    """Within the block, what writes to ``sys.stderr`` (and every logger configured meanwhile) writes to ``sink``."""
    before = sys.stderr
    sys.stderr = sink
    try:
        yield
    finally:
        sys.stderr = before
