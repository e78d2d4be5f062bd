"""The ``prewarm`` command: run the service, the testbed, the demo, and talk to a running service."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from prewarm.client import ApiError, PrewarmClient

DEFAULT_URL = os.environ.get("PREWARM_URL", "http://127.0.0.1:8000")


def _serve(args: argparse.Namespace) -> int:
    from prewarm.service import start_service, stop_service
    from prewarm.settings import Settings

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = start_service(Settings.from_env(), args.host, args.port, args.address)
    print(f"prewarm service listening on {url} (OpenAPI at {url}/docs); Ctrl-C stops it", flush=True)
    stop.wait()
    print("shutting down", flush=True)
    stop_service()
    return 0


def _print(obj: Any, as_json: bool = True) -> None:
    print(json.dumps(obj, indent=2) if as_json else obj)


def _client(args: argparse.Namespace) -> PrewarmClient:
    return PrewarmClient(args.url, args.api_key or os.environ.get("PREWARM_API_KEY"))


def _status(args: argparse.Namespace) -> int:
    _print(_client(args).progress(args.req_id))
    return 0


def _summary(args: argparse.Namespace) -> int:
    _print(_client(args).summary(args.req_id))
    return 0


def _report(args: argparse.Namespace) -> int:
    sys.stdout.write(_client(args).report(args.req_id).decode())
    return 0


def _stop(args: argparse.Namespace) -> int:
    _print(_client(args).instances(req_id=args.req_id, force_stop=True))
    return 0


def _instances(args: argparse.Namespace) -> int:
    _print(_client(args).instances(desired=args.desired))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from prewarm.demo import run_demo

    return run_demo(port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prewarm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start (or join) a Ray cluster and serve the API until stopped")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto); default: start one")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="testbed + local Ray + Serve, one request end to end, then stop")
    demo.add_argument("--port", type=int, default=8000)
    demo.set_defaults(func=_demo)

    for name, func, help_text in (
        ("status", _status, "progress of a job"),
        ("summary", _summary, "summary of a job"),
        ("report", _report, "CSV failure report of a job"),
        ("stop", _stop, "force-stop a job"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("req_id")
        cmd.set_defaults(func=func)
    inst = sub.add_parser("instances", help="show, or set with --desired, the fetcher node count")
    inst.add_argument("--desired", type=int, default=None)
    inst.set_defaults(func=_instances)
    for cmd in sub.choices.values():
        if cmd.prog.split()[-1] in {"status", "summary", "report", "stop", "instances"}:
            cmd.add_argument("--url", default=DEFAULT_URL, help="service base URL (PREWARM_URL)")
            cmd.add_argument("--api-key", default=None, help="x-api-key (PREWARM_API_KEY)")

    from prewarm.testbed.cli import add_testbed_commands

    add_testbed_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
