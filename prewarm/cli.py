"""The ``prewarm`` command: run the service, the testbed, the demo, and talk to a running service.

Exit codes (so CI can gate a release on a warm-up):
  0  success (for ``submit --watch``: the job FINISHED with no failed (URL, POP))
  1  the job ended with failures, or not FINISHED (TIMEOUT, STOPPED, FAILED)
  2  usage error, unreadable input, unreachable service, or an error answer from the API
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.error
from collections.abc import Iterable
from typing import Any, TextIO

from prewarm.client import ApiError, PrewarmClient

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
TARGET_FIELDS = {"pop": "pops", "region": "regions", "country": "countries"}
WATCH_GRACE_S = 120.0  # watching stops this long after the job's own deadline (the service closes it by then)


class UsageError(Exception):
    """Bad arguments or input found after argparse (no URLs, conflicting targets, unreadable file)."""


def _serve(args: argparse.Namespace) -> int:
    from prewarm.service import start_service, stop_service
    from prewarm.settings import Settings

    stop = threading.Event()
    try:
        url = start_service(Settings.from_env(), args.host, args.port, args.address)
    except ValueError as exc:  # a bad setting, or a public address without PREWARM_API_KEYS
        raise UsageError(str(exc)) from None
    # After ray.init: Ray installs its own SIGTERM handler, which would abort instead of shutting down.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"prewarm service listening on {url} (OpenAPI at {url}/docs); Ctrl-C stops it", flush=True)
    stop.wait()
    print("shutting down", flush=True)
    stop_service()
    return 0


def _print(obj: Any, as_json: bool = True) -> None:
    print(json.dumps(obj, indent=2) if as_json else obj)


def _client(args: argparse.Namespace) -> PrewarmClient:
    """``--url``/``--api-key`` win over PREWARM_URL/PREWARM_API_KEY (read when the command runs)."""
    url = args.url or os.environ.get("PREWARM_URL") or DEFAULT_URL
    return PrewarmClient(url, args.api_key or os.environ.get("PREWARM_API_KEY"))


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


# -- submit -------------------------------------------------------------------------------------------


def parse_header(value: str) -> str:
    """``-H 'Name: Value'`` -> ``'Name: Value'`` (normalised); the service checks names and values fully."""
    name, sep, val = value.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"header must look like 'Name: Value', got {value!r}")
    if any(c in val for c in "\r\n\x00"):
        raise argparse.ArgumentTypeError(f"header {name!r} value contains CR, LF or NUL")
    return f"{name}: {val.strip()}"


def split_list(values: Iterable[str] | None) -> list[str]:
    """Repeated and comma-separated options as one list: ``['a,b', 'c']`` -> ``['a', 'b', 'c']``."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def read_url_lines(stream: TextIO) -> list[str]:
    """URLs one a line; blank lines and ``#`` comments (whole-line or trailing after a space) skipped."""
    urls = []
    for line in stream:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        urls.append(line.split(" #", 1)[0].strip())
    return urls


def collect_urls(args: argparse.Namespace, stdin: TextIO | None = None) -> list[str]:
    """URLs from the arguments, then ``--file``s, then ``--sitemap``s, duplicates dropped, order kept."""
    from prewarm.sitemap import SitemapError, load_sitemap

    urls = list(args.urls)
    for name in args.file or ():
        if name == "-":
            urls += read_url_lines(stdin if stdin is not None else sys.stdin)
            continue
        try:
            with open(name, encoding="utf-8") as fh:
                urls += read_url_lines(fh)
        except OSError as exc:
            raise UsageError(f"--file {name}: {exc.strerror or exc}") from None
    for source in args.sitemap or ():
        try:
            urls += load_sitemap(source, timeout_s=args.sitemap_timeout)
        except SitemapError as exc:
            raise UsageError(f"--sitemap: {exc}") from None
    if not urls:
        raise UsageError("no URLs: give them as arguments, with --file FILE (- for stdin) or --sitemap")
    return list(dict.fromkeys(urls))


def infer_target_type(args: argparse.Namespace) -> str:
    """``--target-type`` if given, else pop/region/country from whichever list was given, else pop."""
    given = [kind for kind, field in TARGET_FIELDS.items() if getattr(args, field)]
    if args.target_type:
        stray = [f"--{TARGET_FIELDS[k]}" for k in given if k != args.target_type]
        if stray:
            raise UsageError(f"{', '.join(stray)} not used with --target-type {args.target_type}")
        return str(args.target_type)
    if len(given) > 1:
        raise UsageError("give only one of --pops, --regions, --countries (or --target-type)")
    return given[0] if given else "pop"


def build_request(args: argparse.Namespace, urls: list[str]) -> dict[str, Any]:
    """The ``POST /prewarm`` body, shaped like the spec's example."""
    return {
        "url_list": urls,
        "cf_domain": args.cf_domain,
        "target_type": infer_target_type(args),
        "pops": args.pops,
        "regions": args.regions,
        "countries": args.countries,
        "timeout": args.timeout,
        "header": args.header,
        "instance_count": args.instance_count,
        "need_invalidate": args.invalidate,
    }


def job_exit_code(progress: dict[str, Any]) -> int:
    """0 only for a FINISHED job without failures: what a release gate needs."""
    ok = progress.get("status") == "FINISHED" and not progress.get("failure_count")
    return EXIT_OK if ok else EXIT_FAILED


def _submit(args: argparse.Namespace) -> int:
    from prewarm.progressbar import WatchTimeout, format_summary, watch

    args.pops, args.regions, args.countries = (split_list(args.pops), split_list(args.regions),
                                               split_list(args.countries))
    request = build_request(args, collect_urls(args))
    client = _client(args)
    accepted = client.prewarm(request)
    req_id = accepted["request_id"]
    if not args.watch:
        if args.json:
            _print(accepted)
        else:
            print(f"request_id {req_id}: {len(request['url_list'])} URLs, timeout at {accepted['timeout_at']} UTC")
            print(f"follow it with: prewarm status {req_id}")
        return EXIT_OK
    print(f"request {req_id}: {len(request['url_list'])} URLs, watching (Ctrl-C stops watching, not the job)",
          file=sys.stderr, flush=True)
    try:
        progress = watch(client, req_id, poll_s=args.poll, deadline_s=args.timeout * 60 + WATCH_GRACE_S)
    except KeyboardInterrupt:
        print(f"\nstopped watching; the job goes on (prewarm stop {req_id} ends it)", file=sys.stderr)
        return 130
    except WatchTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary = client.summary(req_id)
    if args.json:
        _print({"request_id": req_id, "status": progress["status"], "submit": accepted,
                "progress": progress, "summary": summary})
    else:
        print(format_summary(summary))
    return job_exit_code(progress)


def _add_remote(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--url", default=None, help=f"service base URL (default: $PREWARM_URL or {DEFAULT_URL})")
    cmd.add_argument("--api-key", default=None, help="x-api-key header (default: $PREWARM_API_KEY)")


def _add_submit(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    submit = sub.add_parser(
        "submit", help="submit a prewarm job (and --watch it)",
        description="Submit URLs to warm through the targeted POPs. With --watch, show a live progress bar "
                    "on stderr until the job ends, then the summary; exit 0 when everything was warmed, "
                    "1 when anything failed or the job did not finish, 2 on usage or API errors.",
    )
    submit.add_argument("urls", nargs="*", metavar="URL", help="URLs to warm")
    submit.add_argument("-f", "--file", action="append", metavar="FILE",
                        help="file of URLs, one a line ('-' for stdin; blank lines and # comments skipped)")
    submit.add_argument("--sitemap", action="append", metavar="PATH_OR_URL",
                        help="sitemap (urlset or index, .gz ok) as a path or http(s) URL; repeatable")
    submit.add_argument("--sitemap-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="timeout of each sitemap download (default 30)")
    submit.add_argument("--target-type", choices=sorted(TARGET_FIELDS), default=None,
                        help="default: pop with --pops, region with --regions, country with --countries, else pop")
    for field in TARGET_FIELDS.values():
        submit.add_argument(f"--{field}", action="append", default=[], metavar="A,B",
                            help=f"{field} to target (comma-separated or repeated)")
    submit.add_argument("--cf-domain", default=None, help="CloudFront domain (default: found from the URLs' CNAME)")
    submit.add_argument("--timeout", type=float, default=30.0, metavar="MINUTES", help="job time limit (default 30)")
    submit.add_argument("--instance-count", type=int, default=1, help="fetcher nodes (default 1)")
    submit.add_argument("--invalidate", action="store_true", help="invalidate the paths before warming")
    submit.add_argument("-H", "--header", action="append", default=[], type=parse_header, metavar="'NAME: VALUE'",
                        help="extra request header for every fetch (repeatable)")
    submit.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    submit.add_argument("--poll", type=float, default=0.5, metavar="SECONDS", help=argparse.SUPPRESS)
    submit.add_argument("--json", action="store_true",
                        help="print JSON: the submit answer, or with --watch {submit, progress, summary}")
    _add_remote(submit)
    submit.set_defaults(func=_submit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prewarm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start (or join) a Ray cluster and serve the API until stopped")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto); default: start one")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="testbed + local Ray + Serve, one request end to end, then stop")
    demo.add_argument("--port", type=int, default=8000)
    demo.set_defaults(func=_demo)

    _add_submit(sub)
    for name, func, help_text in (
        ("status", _status, "progress of a job"),
        ("summary", _summary, "summary of a job"),
        ("report", _report, "CSV failure report of a job"),
        ("stop", _stop, "force-stop a job"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("req_id")
        _add_remote(cmd)
        cmd.set_defaults(func=func)
    inst = sub.add_parser("instances", help="show, or set with --desired, the fetcher node count")
    inst.add_argument("--desired", type=int, default=None)
    _add_remote(inst)
    inst.set_defaults(func=_instances)

    from prewarm.testbed.cli import add_testbed_commands

    add_testbed_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ApiError as exc:
        if getattr(args, "json", False) and args.command == "submit":
            body = exc.body if isinstance(exc.body, dict) else {"status": "Failed", "error_message": exc.message}
            _print({**body, "http_status": exc.status})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except UsageError as exc:
        print(f"prewarm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # refused, DNS failure, timeout
        reason = getattr(exc, "reason", None) or exc
        print(f"error: cannot reach the prewarm service: {reason}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
