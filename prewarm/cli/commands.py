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
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from prewarm.client import ApiError, PrewarmClient

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
TARGET_FIELDS = {"pop": "pops", "region": "regions", "country": "countries"}
WATCH_GRACE_S = 120.0  # watching stops this long after the job's own deadline (the service closes it by then)


class UsageError(Exception):
    """Bad arguments or input found after argparse (no URLs, conflicting targets, unreadable file)."""


def _serve(args: argparse.Namespace) -> int:
    from prewarm.cli.quiet import ray_log_file, ray_writes_to, send_ray_output_to
    from prewarm.settings import Settings

    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a bad setting
        raise UsageError(str(exc)) from None
    log_path = ray_log_file(settings.state_dir, "serve")
    sink = send_ray_output_to(log_path)
    stop = threading.Event()
    try:
        with ray_writes_to(sink):
            from prewarm.api.service import start_service, stop_service

            url = start_service(settings, args.host, args.port, args.address)
    except ValueError as exc:  # a public address without PREWARM_API_KEYS
        raise UsageError(str(exc)) from None
    except Exception as exc:  # Ray or Serve could not start: say so, with where Ray said why
        print(f"error: the service did not start: {type(exc).__name__}: {exc} (Ray's log: {log_path})",
              file=sys.stderr)
        return EXIT_FAILED
    # After ray.init: Ray installs its own SIGTERM handler, which would abort instead of shutting down.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"prewarm service listening on {url} (OpenAPI at {url}/docs); Ctrl-C stops it", flush=True)
    print(f"Ray's and Serve's lines: {log_path}; the cluster's own logs: /tmp/ray/session_latest/logs", flush=True)
    stop.wait()
    print("shutting down", flush=True)
    with ray_writes_to(sink):
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
    from prewarm.cli.demo import run_demo

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
    from prewarm.cli.sitemap import SitemapError, load_sitemap

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
        **warming_options(args),
        **expand_options(args),
    }


def expand_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--expand`` and its options as the request's fields; the options alone are a usage error."""
    first_seconds, max_bandwidth = getattr(args, "first_seconds", None), getattr(args, "max_bandwidth", None)
    if not getattr(args, "expand", False):
        if first_seconds is not None or max_bandwidth is not None:
            raise UsageError("--first-seconds and --max-bandwidth go with --expand")
        return {}
    fields: dict[str, Any] = {"expand": True}
    if first_seconds is not None:
        fields["expand_first_seconds"] = first_seconds
    if max_bandwidth is not None:
        fields["expand_max_bandwidth"] = max_bandwidth
    return fields


def warming_options(args: argparse.Namespace) -> dict[str, Any]:
    """The fields beyond the published API, only when given (the service's defaults apply otherwise)."""
    fields: dict[str, Any] = {}
    if getattr(args, "no_verify", False):
        fields["verify"] = False
    if getattr(args, "until_hit", None) is not None:
        fields["until_hit"] = args.until_hit
    if getattr(args, "variant", None):
        fields["variants"] = [dict([header.split(": ", 1)]) for header in args.variant]
    for name in ("callback_url", "max_rps", "max_bytes_per_s", "tiering", "max_origin_concurrency"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if getattr(args, "skip_warm", False):
        fields["skip_warm"] = True
    return fields


def _retry(args: argparse.Namespace) -> int:
    """Re-run the failed and unfinished (URL, POP, variant) tasks of an ended job as a new job."""
    body: dict[str, Any] = {"retry_of": args.req_id, **warming_options(args)}
    for name in ("timeout", "instance_count"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    what = f"retrying the failed tasks of {args.req_id}"
    return _post_job(args, body, (args.timeout or 24 * 60) * 60 + WATCH_GRACE_S,
                     lambda req_id, accepted: [f"request_id {req_id}: {what}"], what)


def job_exit_code(progress: dict[str, Any]) -> int:
    """0 only for a FINISHED job without failures: what a release gate needs."""
    ok = progress.get("status") == "FINISHED" and not progress.get("failure_count")
    return EXIT_OK if ok else EXIT_FAILED


def _submit(args: argparse.Namespace) -> int:
    args.pops, args.regions, args.countries = (split_list(args.pops), split_list(args.regions),
                                               split_list(args.countries))
    request = build_request(args, collect_urls(args))
    n = len(request["url_list"])

    def accepted_lines(req_id: str, accepted: dict[str, Any]) -> list[str]:
        return [f"request_id {req_id}: {n} URLs, timeout at {accepted['timeout_at']} UTC",
                f"follow it with: prewarm status {req_id}"]

    return _post_job(args, request, args.timeout * 60 + WATCH_GRACE_S, accepted_lines, f"{n} URLs")


def _post_job(args: argparse.Namespace, body: dict[str, Any], deadline_s: float,
              accepted_lines: Callable[[str, dict[str, Any]], list[str]], what: str) -> int:
    """POST a job; without --watch say it was accepted (or print the answer as JSON), with it follow it."""
    client = _client(args)
    accepted = client.prewarm(body)
    req_id = accepted["request_id"]
    if not args.watch:
        if args.json:
            _print(accepted)
        else:
            print("\n".join(accepted_lines(req_id, accepted)))
        return EXIT_OK
    print(f"request {req_id}: {what}, watching (Ctrl-C stops watching, not the job)", file=sys.stderr, flush=True)
    return _follow_job(args, client, req_id, deadline_s, {"submit": accepted})


def _follow_job(args: argparse.Namespace, client: PrewarmClient, req_id: str, deadline_s: float,
                extra: dict[str, Any]) -> int:
    """Watch a job to its end (event stream, else polling), print its summary, exit by its outcome."""
    from prewarm.cli.progressbar import WatchTimeout, follow, format_summary

    try:
        progress, summary = follow(client, req_id, poll_s=args.poll, deadline_s=deadline_s,
                                   use_events=not args.no_events)
    except KeyboardInterrupt:
        print(f"\nstopped watching; the job goes on (prewarm stop {req_id} ends it)", file=sys.stderr)
        return 130
    except WatchTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if summary is None:  # polled: the summary is one more call
        summary = client.summary(req_id)
    if args.json:
        _print({"request_id": req_id, "status": progress["status"], **extra, "progress": progress,
                "summary": summary})
    else:
        print(format_summary(summary))
    return job_exit_code(progress)


def _watch(args: argparse.Namespace) -> int:
    """Follow an already submitted job like ``submit --watch`` does."""
    client = _client(args)
    print(f"request {args.req_id}: watching (Ctrl-C stops watching, not the job)", file=sys.stderr, flush=True)
    return _follow_job(args, client, args.req_id, args.deadline, {})


JOB_COLUMNS = (("request_id", "request_id"), ("status", "status"), ("phase", "phase"), ("done", None),
               ("%", "percentage_complete"), ("ok", "success_count"), ("failed", "failure_count"),
               ("created_at (UTC)", "created_at"))


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    """``GET /jobs``'s jobs as a table, newest first as the service sent them."""
    if not jobs:
        return "no jobs"
    rows = [[f"{j.get('download_count', 0)}/{j.get('total_count', 0)}" if key is None else str(j.get(key, ""))
             for _, key in JOB_COLUMNS] for j in jobs]
    headers = [name for name, _ in JOB_COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = {3, 4, 5, 6}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _jobs(args: argparse.Namespace) -> int:
    answer = _client(args).jobs(status=args.status, limit=args.limit, since=args.since)
    if args.json:
        _print(answer)
    else:
        print(format_jobs(answer["jobs"]))
    return EXIT_OK


def _add_remote(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--url", default=None, help=f"service base URL (default: $PREWARM_URL or {DEFAULT_URL})")
    cmd.add_argument("--api-key", default=None, help="x-api-key header (default: $PREWARM_API_KEY)")


def _add_warming_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--no-verify", action="store_true",
                     help="skip the HEAD after each fetch that checks the edge now answers Hit")
    cmd.add_argument("--until-hit", type=int, default=None, metavar="N",
                     help="re-warm pairs that verify cold up to N rounds (0..5)")
    cmd.add_argument("--callback-url", default=None, metavar="URL",
                     help="POST the signed summary here when the job ends")
    cmd.add_argument("--max-rps", type=float, default=None, metavar="N",
                     help="cap on the job's requests per second, across all fetchers")
    cmd.add_argument("--max-bytes-per-s", type=float, default=None, metavar="BYTES",
                     help="cap on the job's body bytes per second, across all fetchers")
    cmd.add_argument("--skip-warm", action="store_true",
                     help="HEAD each pair first and download nothing where the edge already answers a Hit")
    cmd.add_argument("--tiering", choices=["auto", "rec", "shield", "off"], default=None,
                     help="first through one POP per regional edge cache (rec), one in all (shield), or none (off)")
    cmd.add_argument("--max-origin-concurrency", type=int, default=None, metavar="N",
                     help="at most N fetches that reach the origin in flight across the job")


def _add_retry(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    retry = sub.add_parser("retry", help="re-run only the failed and unfinished tasks of an ended job",
                           description="A new job with exactly the failed and unfinished (URL, POP, variant) "
                                       "tasks of REQ_ID, with its URLs, POPs, headers and variants.")
    retry.add_argument("req_id")
    retry.add_argument("--timeout", type=float, default=None, metavar="MINUTES",
                       help="time limit (default: the original job's)")
    retry.add_argument("--instance-count", type=int, default=None, help="fetcher nodes (default: the original's)")
    _add_warming_options(retry)
    retry.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    retry.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    retry.add_argument("--no-events", action="store_true", help=argparse.SUPPRESS)
    retry.add_argument("--json", action="store_true", help="print JSON")
    _add_remote(retry)
    retry.set_defaults(func=_retry)


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
    _add_warming_options(submit)
    submit.add_argument("--expand", action="store_true",
                        help="read HLS playlists and DASH MPDs among the URLs and warm every rendition, key, init "
                             "segment and segment a player fetches from them")
    submit.add_argument("--first-seconds", type=float, default=None, metavar="N",
                        help="with --expand: only the segments of each rendition's first N seconds")
    submit.add_argument("--max-bandwidth", type=int, default=None, metavar="B",
                        help="with --expand: leave out renditions above B bits/s")
    submit.add_argument("--variant", action="append", default=[], type=parse_header, metavar="'NAME: VALUE'",
                        help="a cache-key variant (repeatable): each (URL, POP, variant) is warmed, e.g. "
                             "--variant 'Accept-Encoding: gzip' --variant 'Accept-Encoding: br'")
    submit.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    submit.add_argument("--poll", type=float, default=0.5, metavar="SECONDS", help=argparse.SUPPRESS)
    submit.add_argument("--no-events", action="store_true", help=argparse.SUPPRESS)  # poll, never stream
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
    _add_retry(sub)
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
    watch = sub.add_parser("watch", help="follow a job with a progress bar until it ends, then its summary",
                           description="Like submit --watch for a job already submitted: exit 0 when "
                                       "everything was warmed, 1 otherwise, 2 on API errors.")
    watch.add_argument("req_id")
    watch.add_argument("--json", action="store_true", help="print {request_id, status, progress, summary}")
    watch.add_argument("--deadline", type=float, default=24 * 3600 + WATCH_GRACE_S, metavar="SECONDS",
                       help="stop watching after this long (default: a day, the longest job, plus a grace)")
    watch.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    watch.add_argument("--no-events", action="store_true", help=argparse.SUPPRESS)
    _add_remote(watch)
    watch.set_defaults(func=_watch)
    jobs = sub.add_parser("jobs", help="list jobs, newest first",
                          description="Jobs newest first with their progress, as a table or --json.")
    jobs.add_argument("--status", default=None, help="only jobs in this status (IN_PROGRESS, FINISHED, TIMEOUT, "
                                                     "FAILED, STOPPED)")
    jobs.add_argument("--limit", type=int, default=None, help="at most this many (1..1000, default 100)")
    jobs.add_argument("--since", default=None, metavar="TIME",
                      help="only jobs created at or after TIME ('2024-04-16 03:12:21' UTC, or ISO 8601)")
    jobs.add_argument("--json", action="store_true", help="print the API's JSON answer")
    _add_remote(jobs)
    jobs.set_defaults(func=_jobs)
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
        if getattr(args, "json", False) and args.command in ("submit", "watch", "retry"):
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
