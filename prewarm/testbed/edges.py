"""The testbed's edges: one nginx master with one caching server block per POP.

Each POP listens on its own loopback address(es), ports 80 and 443, and has its own
``proxy_cache_path``, so warming one POP leaves the others cold, as on CloudFront.

Headers added like CloudFront's: ``X-Cache`` ("Hit from cloudfront" when nginx served the object
from cache, "Miss from cloudfront" for everything else, including errors and uncacheable
objects), ``X-Amz-Cf-Pop``, ``X-Amz-Cf-Id`` and, on hits, ``Age``. Unlike CloudFront, errors
(origin 4xx/5xx passed through, nginx's own 502/504) say "Miss from cloudfront", not "Error from
cloudfront". The edge forwards the client's Host, adds ``X-Edge-Pop: <POP>`` toward the origin,
never retries (``proxy_next_upstream off``), passes origin errors through unchanged, caches only
200/206 (for 10 min unless the origin's Cache-Control says otherwise; ``no-store`` is honoured),
and, as CloudFront does, turns a HEAD into a GET toward the origin so it can fill the cache.
Concurrent misses for one object are not collapsed (``proxy_cache_lock`` is off). The cache key
is the host, the path with query, as with CloudFront's compression settings the viewer's
Accept-Encoding normalised to br, gzip or none, and the viewer's Range header: each is its own
cached variant.

Range GETs, as in CloudFront's "How CloudFront processes partial requests for an object": on a miss
the viewer's ``Range`` (and ``If-Range``) go to the origin, whose 206 is served and cached under
that range, so the same range again through the same POP is a hit (a HEAD with that Range too: the
HEAD's key is the GET's). Range-keyed caching rather than the ``slice`` module: slice would send
every GET, small objects included, to the origin as a 1 MiB-aligned range and ``X-Cache`` would
reflect only the first slice, while CloudFront forwards the viewer's range and says exactly
hit or miss. Limits: CloudFront serves a range from a whole cached object and may widen a range
toward the origin; here a range is a hit only after that same range was fetched through the POP.
nginx answers a HEAD that missed as soon as the origin's headers arrive and stores the object a
moment later, so a request right after such a HEAD can miss again (a GET then a HEAD is exact).
nginx drops the origin's ``Accept-Ranges`` on 206 answers (it adds its own on 200s).

Access log (``edge_log=True`` only; off by default because it costs CPU in benchmarks):
``logs/edge.log``, one tab-separated line per request, written when the request ends (no
buffer): ``$msec``, POP, method, URI, status, body bytes sent, Range ("-" if none), upstream cache
status ("-" if none), request time. Fields are escaped by nginx (no raw tabs or newlines).

``Age`` without njs/perl/lua (nginx-light has none): the origin sends ``X-Origin-Epoch`` (unix
seconds when it answered), which nginx stores with the cached object and exposes again as
``$upstream_http_x_origin_epoch`` on a hit. A chain of ``map`` blocks then subtracts its last six
digits from those of ``$msec`` digit by digit, with borrows. Limits: it is exact only for ages
below 1,000,000 s (far beyond the origin's max-age of 3600 s), the origin time stands in for the
moment nginx stored the object (they differ by the transfer time only), and an origin that sends
no ``X-Origin-Epoch`` gets no ``Age``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from prewarm.testbed.proc import Child, find_binary, spawn

AGE_DIGITS = 6


def _digits(count: int) -> str:
    """Regex for ``count`` digits ('' for none)."""
    return f"\\d{{{count}}}" if count else ""


def _age_maps() -> str:
    """nginx ``map`` blocks computing ``$tb_age`` (seconds since the origin answered) on hits."""
    n = AGE_DIGITS
    out = [
        f'map $msec $tb_now {{ "~(\\d{{{n}}})\\.\\d+$" $1; default ""; }}',
        f'map $upstream_http_x_origin_epoch $tb_epoch {{ "~^\\d*(\\d{{{n}}})$" $1; default ""; }}',
    ]
    for k in range(n):
        left, right = _digits(n - 1 - k), _digits(k)
        out.append(f'map "${{tb_now}}${{tb_epoch}}" $tb_p{k} {{ '
                   f'"~^{left}(\\d){right}{left}(\\d){right}$" "$1$2"; default ""; }}')
    for k in range(n):
        borrow_in = "0" if k == 0 else f"${{tb_b{k - 1}}}"
        digits, borrows = [], []
        for a in range(10):
            for b in range(10):
                for c in (0, 1):
                    diff = a - b - c
                    digits.append(f"{a}{b}{c} {diff % 10};")
                    borrows.append(f"{a}{b}{c} {1 if diff < 0 else 0};")
        out.append(f'map "${{tb_p{k}}}{borrow_in}" $tb_d{k} {{ default ""; {" ".join(digits)} }}')
        out.append(f'map "${{tb_p{k}}}{borrow_in}" $tb_b{k} {{ default ""; {" ".join(borrows)} }}')
    joined = "".join(f"${{tb_d{k}}}" for k in reversed(range(n)))
    # A final borrow means the epoch is ahead of nginx's clock (sub-second skew): Age 0.
    out.append(f'map "${{tb_b{n - 1}}}{joined}" $tb_age_calc {{ '
               f'"~^1\\d{{{n}}}$" 0; "~^00*(\\d+)$" $1; default ""; }}')
    out.append('map $upstream_cache_status $tb_age { HIT $tb_age_calc; default ""; }')
    out.append('map $upstream_cache_status $tb_x_cache { HIT "Hit from cloudfront"; '
               'default "Miss from cloudfront"; }')
    # CloudFront's cache key holds the viewer's Accept-Encoding normalised to br, gzip or nothing.
    out.append('map $http_accept_encoding $tb_encoding { "~*(^|[ ,])br($|[ ,;])" br; '
               '"~*(^|[ ,])gzip($|[ ,;])" gzip; default ""; }')
    return "\n    ".join(out)


EDGE_LOG = "edge.log"
EDGE_LOG_FIELDS = ("$msec", "{pop}", "$request_method", "$request_uri", "$status", "$body_bytes_sent",
                   "$http_range", "$upstream_cache_status", "$request_time")


def edge_log_path(prefix: Path) -> Path:
    """The access log that ``nginx_conf(..., edge_log=True)`` writes."""
    return prefix / "logs" / EDGE_LOG


def _edge_log_formats(pops: Sequence[str]) -> str:
    """One ``log_format`` per POP (its code is a constant in the line: no per-request work)."""
    return "\n    ".join(
        f"log_format tb_edge_{i} '" + "\\t".join(EDGE_LOG_FIELDS).replace("{pop}", pop) + "';"
        for i, pop in enumerate(pops))


def nginx_conf(prefix: Path, pops: Sequence[str], pop_addresses: Mapping[str, Sequence[str]],
               origin: str, cert: Path, key: Path, http_port: int = 80, https_port: int = 443,
               edge_log: bool = False) -> str:
    """Full nginx.conf text for the given POPs; ``origin`` is "host:port"."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = prefix / "tmp"
    formats = f"\n    {_edge_log_formats(pops)}\n" if edge_log else ""
    lines = [f"""{user}worker_processes {min(4, os.cpu_count() or 1)};
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "logs" / "error.log"} warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    default_type application/octet-stream;
    server_tokens off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:tb_ssl:4m;
    variables_hash_max_size 2048;

    upstream tb_origin {{ server {origin}; keepalive 64; }}

    {_age_maps()}
{formats}"""]
    for i, pop in enumerate(pops):
        cache = prefix / "cache" / pop
        listens = "".join(f"        listen {a}:{http_port};\n        listen {a}:{https_port} ssl;\n"
                          for a in pop_addresses[pop])
        log = f"        access_log {edge_log_path(prefix)} tb_edge_{i};\n" if edge_log else ""
        lines.append(f"""
    proxy_cache_path {cache} keys_zone=tb_{i}:16m max_size=1g inactive=7d use_temp_path=off;
    server {{
{listens}        server_name _;
{log}        location /_control/ {{ return 404; }}
        location / {{
            proxy_pass http://tb_origin;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Connection "";
            proxy_set_header X-Edge-Pop {pop};
            proxy_set_header Range $http_range;
            proxy_set_header If-Range $http_if_range;
            proxy_buffering on;
            proxy_intercept_errors off;
            proxy_next_upstream off;
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
            proxy_cache tb_{i};
            proxy_cache_key $host$request_uri|$tb_encoding|$http_range;
            proxy_cache_valid 200 206 10m;
            add_header X-Cache $tb_x_cache always;
            add_header X-Amz-Cf-Pop {pop} always;
            add_header X-Amz-Cf-Id $request_id always;
            add_header Age $tb_age;
        }}
    }}
""")
    lines.append("}\n")
    return "".join(lines)


def prepare_dirs(prefix: Path, pops: Sequence[str]) -> None:
    """Create nginx's log, temp and per-POP cache directories."""
    for sub in ("logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    for pop in pops:
        (prefix / "cache" / pop).mkdir(parents=True, exist_ok=True)


def start_nginx(prefix: Path, conf: Path) -> Child:
    """Start the nginx master in the foreground of its own session (workers share its group)."""
    nginx = find_binary("nginx")
    args = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log")]
    return spawn("nginx", args, prefix / "logs" / "stdout.log", marker=str(conf))


def purge(prefix: Path, pops: Sequence[str]) -> None:
    """Delete every cached file of every POP.

    nginx keeps the keys in shared memory, but a hit whose file is gone (ENOENT) is served as a
    miss and the file is written anew, so no reload is needed and the purge takes effect at once.
    """
    for pop in pops:
        cache = prefix / "cache" / pop
        if not cache.is_dir():
            continue
        for entry in cache.rglob("*"):
            if entry.is_file():
                entry.unlink(missing_ok=True)
