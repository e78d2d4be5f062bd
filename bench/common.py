"""What every benchmark of the service does first: say how it was run, keep its traffic on loopback, bound its time."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from typing import Any

import prewarm


def start_run(module: str, argv: list[str], max_minutes: float) -> None:
    """Print the command line and where ``prewarm`` comes from; no proxies; Ray on 127.0.0.1; an alarm that ends
    the run after ``max_minutes``. Call before Ray is imported."""
    pythonpath = os.environ.get("PYTHONPATH")
    print("command: " + (f"PYTHONPATH={shlex.quote(pythonpath)} " if pythonpath else "")
          + shlex.join([sys.executable, "-m", module, *argv]), flush=True)
    print(f"prewarm imported from {prewarm.__file__} (driver); started {time.strftime('%Y-%m-%d %H:%M:%S')}",
          flush=True)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(name, None)  # everything here is on loopback: never through a proxy
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "*"
    # Ray's node address is the machine's own (non-loopback) address unless clustering is off: then it is
    # 127.0.0.1 for the GCS, raylet, workers and agents alike (read when ray is first imported; inherited).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

    def out_of_time(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the run passed --max-minutes {max_minutes:g}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(max(1, int(max_minutes * 60)))
