"""``prewarm testbed up|down|env``: a testbed that outlives the command, for trying the service by hand.

``up`` starts the processes detached and records them in ``<dir>/state.json``; ``down`` and
``env`` read that file, so they work from any shell. ``prewarm/cli.py`` registers these commands
with ``add_testbed_commands``; each action sets ``func`` (``args.func(args) -> int``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from prewarm.testbed.core import STATE_FILE, Testbed, remove_state
from prewarm.testbed.proc import TestbedError

DIR_ENV = "PREWARM_TESTBED_DIR"
DEFAULT_DIR = "/tmp/prewarm-testbed"


def state_dir(args: argparse.Namespace) -> Path:
    """``--dir``, else $PREWARM_TESTBED_DIR, else /tmp/prewarm-testbed (read at run time)."""
    return Path(args.dir or os.environ.get(DIR_ENV) or DEFAULT_DIR)


def _print_env(tb: Testbed, as_json: bool) -> None:
    env = tb.env()
    if as_json:
        print(json.dumps(env, indent=2))
    else:
        for name, value in env.items():
            print(f"export {name}={shlex.quote(value)}")


def _attached(directory: Path) -> Testbed | None:
    """The testbed recorded in ``directory``, or None when there is no state file."""
    if not (directory / STATE_FILE).exists():
        return None
    try:
        return Testbed.from_state_dir(directory)
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise TestbedError(f"unreadable testbed state in {directory}: {exc}") from exc


def _friendly(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report TestbedError as one clear line and exit status 1, whoever dispatches the command."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except TestbedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapper


@_friendly
def cmd_up(args: argparse.Namespace) -> int:
    """Start a testbed unless the one in the state dir is already running (then just print env)."""
    directory = state_dir(args)
    existing = _attached(directory)
    if existing is not None:
        if existing.running:
            _print_env(existing, args.json)
            return 0
        existing.stop()  # half-dead leftovers: clear them before starting again
        remove_state(directory)
    pops = [p for p in args.pops.split(",") if p] if args.pops else None
    hosts = args.host or ("www.example.com", "static.example.com")
    if any("=" not in item for item in args.rec_of):
        raise TestbedError("--rec-of takes POP=REC")
    try:
        tb = Testbed(pops=pops, extra_pops=args.extra_pop, hosts=hosts, distribution=args.distribution,
                     two_address_pops=args.two_address_pop, workdir=directory, tiers=args.tiers,
                     rec_of=dict(item.split("=", 1) for item in args.rec_of) or None,
                     origin_shield=args.origin_shield, server_timing=args.server_timing,
                     cache_errors=args.cache_errors)
    except ValueError as exc:
        raise TestbedError(str(exc)) from exc
    tb.start(detach=True)
    tb.save_state()
    tiers = f", {len(tb.recs)} RECs" if tb.recs else ""
    tiers += f", Origin Shield {tb.origin_shield}" if tb.origin_shield else ""
    print(f"testbed up: {len(tb.pops)} POPs{tiers} on 127.{tb.slot}.0.0/16, DNS {tb.nameserver}, "
          f"origin {tb.origin_url}, state {directory / STATE_FILE}", file=sys.stderr)
    _print_env(tb, args.json)
    return 0


@_friendly
def cmd_down(args: argparse.Namespace) -> int:
    """Stop the recorded testbed and delete its state; succeeds when nothing is running."""
    directory = state_dir(args)
    tb = _attached(directory)
    if tb is None:
        print(f"no testbed state in {directory}", file=sys.stderr)
        return 0
    tb.stop()
    remove_state(directory)
    print("testbed down", file=sys.stderr)
    return 0


@_friendly
def cmd_env(args: argparse.Namespace) -> int:
    """Print the environment for the recorded testbed (exit 1 if it is not running)."""
    directory = state_dir(args)
    tb = _attached(directory)
    if tb is None or not tb.running:
        print(f"no running testbed in {directory}; run 'prewarm testbed up'", file=sys.stderr)
        return 1
    _print_env(tb, args.json)
    return 0


def add_testbed_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``testbed {up,down,env}`` on the main CLI's sub-parsers."""
    parser = subparsers.add_parser("testbed", help="local CloudFront-like CDN (origin, POP caches, DNS, CA)",
                                   description="Run a local CloudFront-like CDN that outlives the command: "
                                               "'up' starts it and records it in a state directory, "
                                               "'env' prints the variables that point prewarm at it, "
                                               "'down' stops it.")
    actions = parser.add_subparsers(dest="testbed_action", metavar="{up,down,env}", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", help=f"state directory (default: ${DIR_ENV} or {DEFAULT_DIR})")
        return p

    up = with_dir(actions.add_parser("up", help="start a testbed that keeps running (idempotent)"))
    up.add_argument("--pops", help="comma-separated POP codes (default: every POP in the catalogue)")
    up.add_argument("--extra-pop", action="append", default=[], help="add a POP code (repeatable)")
    up.add_argument("--host", action="append", default=[], help="customer host name (repeatable)")
    up.add_argument("--distribution", default="d111111abcdef8", help="distribution id (cloudfront.net label)")
    up.add_argument("--two-address-pop", action="append", default=[], help="POP with two addresses")
    up.add_argument("--tiers", choices=("flat", "rec", "shield"), default="flat",
                    help="flat: POPs go to the origin (default); rec: through their regional edge cache; "
                         "shield: and through the Origin Shield")
    up.add_argument("--rec-of", action="append", default=[], metavar="POP=REC",
                    help="put a POP in a regional edge cache other than the catalogue's (repeatable)")
    up.add_argument("--origin-shield", help="Region of the Origin Shield with --tiers shield (default us-east-1)")
    up.add_argument("--server-timing", choices=("pragma", "always", "off"), default="pragma",
                    help="Server-Timing on responses: when asked with 'Pragma: server-timing' (default), "
                         "always, or never")
    up.add_argument("--cache-errors", action="store_true",
                    help="cache errors as CloudFront does (10 s; default: errors are not cached)")
    up.add_argument("--json", action="store_true", help="print the environment as JSON")
    up.set_defaults(func=cmd_up)

    down = with_dir(actions.add_parser("down", help="stop the testbed and remove its state"))
    down.set_defaults(func=cmd_down)

    env = with_dir(actions.add_parser("env", help="print 'export NAME=value' lines for the testbed"))
    env.add_argument("--json", action="store_true", help="print the environment as JSON")
    env.set_defaults(func=cmd_env)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m prewarm.testbed.cli testbed up``) mirroring ``prewarm testbed``."""
    parser = argparse.ArgumentParser(prog="prewarm")
    add_testbed_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
