"""The testbed's edges: one nginx master with a caching server block per POP, and per tier above.

Each POP listens on its own loopback address(es), ports 80 and 443, and has its own
``proxy_cache_path``, so warming one POP leaves the others cold, as on CloudFront.

Tiers (``Testbed(tiers=...)``), as in CloudFront's "How CloudFront works with regional edge caches"
and "Using Amazon CloudFront Origin Shield":

* ``flat`` (default): each POP goes straight to the origin (the testbed as it always was).
* ``rec``: each POP sends its misses to its regional edge cache (REC), a server block of its own
  on 127.<slot>.0.(16+j):80 with its own cache, which goes to the origin.
* ``shield``: as ``rec``, and every REC goes through the Origin Shield. The shield is the REC of its
  Region ("Origin Shield leverages CloudFront's regional edge caches"): when that REC serves POPs of
  the testbed it is the shield (its POPs reach it directly, so the shield is no extra hop for them,
  as the guide's cost section says), otherwise a block of its own on 127.<slot>.0.3:80.
  It calls itself "Origin Shield" in every role (CloudFront's logs count a POP's hit at the REC
  acting as shield as ``Hit``, not ``OriginShieldHit``; the guide does not say what Server-Timing
  says then).

Between tiers the requests are plain HTTP/1.1 with keepalive; a REC adds ``X-Edge-Rec: <REC>``
and the shield ``X-Edge-Shield: <name>`` toward the origin, passing the POP's ``X-Edge-Pop`` on.
An upper tier answers a lower one with two internal headers, hidden from viewers:
``X-Tb-Cache`` (the layer that served from its cache: "REC" or "Origin Shield", absent when the
origin answered) and ``X-Tb-Up`` (the Server-Timing upstream metrics of the tier that asked the
origin). Every request, whatever its method, takes the same path through the tiers.

Headers added like CloudFront's: ``X-Cache`` ("Hit from cloudfront" when the POP, or a tier above it,
served the object from its cache, "RefreshHit from cloudfront" when the POP revalidated an expired
object, "Miss from cloudfront" when the origin was asked, and "Error from cloudfront" for every
answer of status 400 or more, whether the error came from the origin, from nginx itself or from an
edge cache: CloudFront's logs classify an error served from the cache as ``Error`` too),
``X-Amz-Cf-Pop``, ``X-Amz-Cf-Id`` and, on hits, ``Age``. That a REC hit says "Hit" at the POP follows
the guide's Server-Timing example of a cache hit (``cdn-cache-hit`` with ``cdn-hit-layer REC``); the
guide lists no X-Cache values. The edge forwards the client's Host, adds ``X-Edge-Pop: <POP>``
toward the origin (or REC), never retries (``proxy_next_upstream off``), passes origin errors
through unchanged, and, as CloudFront does, turns a HEAD into a GET toward the origin so it can fill
the cache. Objects are cached 200/206 for 10 min unless the origin's Cache-Control says otherwise
(``no-store`` is honoured); an expired object is revalidated (``proxy_cache_revalidate``: a 304 from
upstream makes the RefreshHit). The cache key is the host, the path with query, as with
CloudFront's compression settings the viewer's Accept-Encoding normalised to br, gzip or none, and
the viewer's Range header: each is its own cached variant.

Errors ("How CloudFront processes HTTP 4xx and 5xx status codes from your origin", "Control how long
CloudFront caches errors"): CloudFront caches 404, 405, 414, 500, 501, 502, 503 and 504 for the error
caching minimum TTL, 10 s by default, or longer when the origin sends ``max-age``/``s-maxage``; 400,
403, 412 and 415 only when the origin sends ``max-age``/``s-maxage``; never 416. With
``cache_errors=True`` every tier does the same (``proxy_cache_valid 404 405 414 500 501 502 503 504
10s``, or ``error_ttl`` seconds, and ``proxy_no_cache`` for the other codes); by default (``cache_errors=False``, unlike
CloudFront) no error is cached at all, even one the origin marks ``max-age``, so a retry through the
same POP reaches the origin again. Where nginx differs: it caches an error for the origin's
``max-age`` even when that is under 10 s (CloudFront takes the greater), honours ``no-store``,
``no-cache`` and ``private`` on every error (CloudFront ignores them except on 404, 410, 414 and 501),
and never caches its own 502/504 (an origin that resets or times out), while a REC's own 502 reaches
its POP as an upstream answer, which the POP caches like an origin's 502.

Collapsing ("Simultaneous requests for the same object (request collapsing)"): with ``collapse``
(default on for ``rec`` and ``shield``, off for ``flat`` so that tier behaves as before) each tier
has ``proxy_cache_lock on``: one request per cache key and location goes upstream, the others wait
for it. A waiter gives up after ``proxy_cache_lock_timeout`` (``lock_timeout``, 5 s as nginx's
default) and goes upstream itself without caching what it gets, and after ``proxy_cache_lock_age``
(set to the same) one more request may go upstream: a flat fan-out of an object slower than that
multiplies origin fetches. Where nginx differs: waiters look again every 500 ms, so they answer up
to 0.5 s after the object is stored (CloudFront sends them the response as it arrives); an answer
that may not be cached (no-store, an error by default) releases the waiters one at a time to go
upstream in turn, where CloudFront sends the first answer to all of them.

Server-Timing ("Server-Timing header" in "Understanding response headers policies"): with
``server_timing="pragma"`` (default) a POP adds the header when the request carries ``Pragma:
server-timing``, with ``"always"`` to every response, with ``"off"`` never. The metrics, in the
guide's order: on a miss ``cdn-upstream-layer;desc="EDGE"|"REC"|"Origin Shield"`` (the tier that
asked the origin), ``cdn-upstream-dns;dur=0`` (nginx resolves the origin once, at start: a cached
DNS result), ``cdn-upstream-connect;dur=`` (``$upstream_connect_time``, 0 on a reused keepalive
connection, as CloudFront's 0), ``cdn-upstream-fbl;dur=`` (``$upstream_header_time``, which unlike
CloudFront's includes the connect time), ``cdn-cache-miss``; on a hit ``cdn-cache-hit`` and after
``cdn-rid`` ``cdn-hit-layer;desc="EDGE"|"REC"|"Origin Shield"``; after a revalidation
``cdn-cache-refresh``; always ``cdn-pop;desc="<POP>"``, ``cdn-rid;desc="<X-Amz-Cf-Id>"`` and
``cdn-downstream-fbl;dur=`` (``$request_time`` when nginx sends the headers). Durations are whole
milliseconds. The origin's own Server-Timing header is not merged in (the testbed's origin sends
none). With "pragma" the flat tier's only per-request work is nginx ``map`` lookups.

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
``logs/edge.log``, one tab-separated line per POP request (the tiers above do not log), written
when the request ends (no buffer): ``$msec``, POP, method, URI, status, body bytes sent, Range ("-"
if none), upstream cache status ("-" if none), request time. Fields are escaped by nginx (no raw
tabs or newlines).

``Age`` without njs/perl/lua (nginx-light has none): the origin sends ``X-Origin-Epoch`` (unix
seconds when it answered), which nginx stores with the cached object and exposes again as
``$upstream_http_x_origin_epoch`` on a hit. A chain of ``map`` blocks then subtracts its last six
digits from those of ``$msec`` digit by digit, with borrows. Limits: it is exact only for ages
below 1,000,000 s (far beyond the origin's max-age of 3600 s), the origin time stands in for the
moment nginx stored the object (they differ by the transfer time only), and an origin that sends
no ``X-Origin-Epoch`` gets no ``Age``. A POP that missed but got the object from a REC's or the
shield's cache sends ``Age`` too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prewarm.testbed.proc import Child, find_binary, spawn

EDGE, REC, SHIELD = "EDGE", "REC", "Origin Shield"
"""The layers, spelled as CloudFront's Server-Timing cdn-hit-layer and cdn-upstream-layer values."""
SERVER_TIMING_MODES = ("always", "pragma", "off")
TIER_MODES = ("flat", "rec", "shield")
ALWAYS_CACHED_ERRORS = (404, 405, 414, 500, 501, 502, 503, 504)
"""Error codes CloudFront caches for the error caching minimum TTL (10 s) or the origin's max-age."""
MAX_AGE_CACHED_ERRORS = (400, 403, 412, 415)
"""Error codes CloudFront caches only when the origin sends Cache-Control max-age or s-maxage."""
ERROR_TTL = 10
"""CloudFront's default error caching minimum TTL, seconds."""
CACHE_STATUSES = ("HIT", "MISS", "EXPIRED", "BYPASS", "STALE", "UPDATING", "REVALIDATED", "")


@dataclass(frozen=True)
class Options:
    """How every tier caches and what the POPs tell viewers (see the module docstring)."""

    server_timing: str = "pragma"
    cache_errors: bool = False
    collapse: bool = False
    lock_timeout: float = 5.0
    error_ttl: int = ERROR_TTL


@dataclass(frozen=True)
class Tiers:
    """The tiers above the POPs: ``rec_of`` maps each POP to its REC (empty: flat), ``rec_addresses``
    each REC to its address, ``shield`` names the Origin Shield (None: none) and ``shield_address``
    is where a shield that is not one of the RECs listens (None when it is a REC)."""

    rec_of: Mapping[str, str] = field(default_factory=dict)
    rec_addresses: Mapping[str, str] = field(default_factory=dict)
    shield: str | None = None
    shield_address: str | None = None

    @property
    def flat(self) -> bool:
        return not self.rec_of


def cache_dir(prefix: Path, name: str, kind: str = "pop") -> Path:
    """Cache directory of a POP (``kind`` "pop"), a REC ("rec") or a stand-alone shield ("shield")."""
    return prefix / "cache" / name if kind == "pop" else prefix / "cache" / f"_{kind}" / name


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


def _ms_map(source: str, target: str) -> str:
    """A map turning an nginx time in seconds ("0.012", "1.234") into whole milliseconds ("12", "1234")."""
    return (f'map {source} {target} {{ "~^0\\.0*(\\d+)$" $1; "~^(\\d+)\\.(\\d+)$" $1$2; default 0; }}')


def _error_maps(cache_errors: bool) -> list[str]:
    """``$tb_no_cache``: 1 for an upstream status that must not be cached; ``$tb_x_cache``: X-Cache."""
    cacheable = set(ALWAYS_CACHED_ERRORS) | set(MAX_AGE_CACHED_ERRORS) if cache_errors else set()
    no_cache = " ".join(f"{code} 1;" for code in range(400, 600) if code not in cacheable)
    errors = " ".join(f'{code} "Error from cloudfront";' for code in range(400, 600))
    return [
        f"map $upstream_status $tb_no_cache {{ default 0; {no_cache} }}",
        'map $upstream_cache_status $tb_x_cache_hm { HIT "Hit from cloudfront"; '
        'REVALIDATED "RefreshHit from cloudfront"; default "Miss from cloudfront"; }',
        f"map $status $tb_x_cache {{ default $tb_x_cache_hm; {errors} }}",
        # Tiered POPs: a hit in a tier above is a hit for the viewer.
        'map $upstream_http_x_tb_cache $tb_x_cache_above { "" "Miss from cloudfront"; '
        'default "Hit from cloudfront"; }',
        'map $upstream_cache_status $tb_x_cache_hm_t { HIT "Hit from cloudfront"; '
        'REVALIDATED "RefreshHit from cloudfront"; default $tb_x_cache_above; }',
        f"map $status $tb_x_cache_t {{ default $tb_x_cache_hm_t; {errors} }}",
        'map $upstream_http_x_tb_cache $tb_age_above { "" ""; default $tb_age_calc; }',
        'map $upstream_cache_status $tb_age_t { HIT $tb_age_calc; default $tb_age_above; }',
        # CloudFront's cache key holds the viewer's Accept-Encoding normalised to br, gzip or nothing.
        'map $http_accept_encoding $tb_encoding { "~*(^|[ ,])br($|[ ,;])" br; '
        '"~*(^|[ ,])gzip($|[ ,;])" gzip; default ""; }',
    ]


def _upstream_metrics(layer: str) -> str:
    """Server-Timing's upstream metrics of a tier that asked the origin, as nginx measured them."""
    return (f'cdn-upstream-layer;desc="{layer}",cdn-upstream-dns;dur=0,'
            'cdn-upstream-connect;dur=$tb_uconn,cdn-upstream-fbl;dur=$tb_ufbl')


_COMMON = 'cdn-pop;desc="$tb_pop",cdn-rid;desc="$request_id"'


def _st_hit(layer: str) -> str:
    return f'\'cdn-cache-hit,{_COMMON},cdn-hit-layer;desc="{layer}",cdn-downstream-fbl;dur=$tb_dfbl\''


def _st_other(up: str, what: str) -> str:
    return f"'{up}{what},{_COMMON},cdn-downstream-fbl;dur=$tb_dfbl'"


def _server_timing_maps(mode: str, pop_of_address: Mapping[str, str], tiered: bool) -> list[str]:
    """``$tb_server_timing`` (flat POPs) and ``$tb_server_timing_t`` (tiered POPs): the viewer's header,
    empty (so nginx adds none) unless the mode and the request's Pragma ask for it."""
    if mode == "off":
        return []
    on = "1" if mode == "always" else "$tb_st_on"
    out = [_ms_map("$upstream_connect_time", "$tb_uconn"), _ms_map("$upstream_header_time", "$tb_ufbl"),
           _ms_map("$request_time", "$tb_dfbl"),
           "map $server_addr $tb_pop { default \"\"; "
           + " ".join(f"{a} {pop};" for a, pop in pop_of_address.items()) + " }"]
    if mode == "pragma":
        out.append('map $http_pragma $tb_st_on { "" ""; default ""; "~*(^|[ ,])server-timing($|[ ,;])" 1; }')
    own = _upstream_metrics(EDGE) + ","
    flat = [f'"1{s}" ' + (_st_hit(EDGE) if s == "HIT" else _st_other(own, "cdn-cache-refresh")
                           if s == "REVALIDATED" else _st_other(own if s else "", "cdn-cache-miss")) + ";"
            for s in CACHE_STATUSES]
    out.append(f'map "{on}$upstream_cache_status" $tb_server_timing {{ default ""; {" ".join(flat)} }}')
    if tiered:
        out.append('map $upstream_http_x_tb_up $tb_up_above { "" ""; default "$upstream_http_x_tb_up,"; }')
        rows = []
        for s in CACHE_STATUSES:
            for above in ("", REC, SHIELD):
                if s == "HIT":
                    value = _st_hit(EDGE)
                elif s == "REVALIDATED":
                    value = _st_other("${tb_up_above}", "cdn-cache-refresh")
                elif above:
                    value = _st_hit(above)
                else:
                    value = _st_other("${tb_up_above}" if s else "", "cdn-cache-miss")
                rows.append(f'"1{s}|{above}" {value};')
        out.append(f'map "{on}$upstream_cache_status|$upstream_http_x_tb_cache" $tb_server_timing_t '
                   f'{{ default ""; {" ".join(rows)} }}')
    return out


def _tier_maps(tiers: Tiers, server_timing: bool) -> list[str]:
    """What an upper tier tells the tier below: ``$tb_cache_out_*`` (X-Tb-Cache) and ``$tb_up_out_*``
    (X-Tb-Up), for a tier in front of the origin (``_o``, one per layer) or of another tier (``_relay``)."""
    if tiers.flat:
        return []
    out = []  # X-Tb-Up (Server-Timing metrics only) uses $tb_uconn and $tb_ufbl of _server_timing_maps
    for suffix, layer in (("rec", REC), ("shield", SHIELD)):
        out.append(f'map $upstream_cache_status $tb_cache_out_{suffix}_o {{ HIT "{layer}"; default ""; }}')
        if server_timing:
            out.append(f"map $upstream_cache_status $tb_up_out_{suffix}_o {{ HIT \"\"; "
                       f"default '{_upstream_metrics(layer)}'; }}")
    out.append(f'map $upstream_cache_status $tb_cache_out_relay {{ HIT "{REC}"; '
               "default $upstream_http_x_tb_cache; }")
    if server_timing:
        out.append('map $upstream_cache_status $tb_up_out_relay { HIT ""; default $upstream_http_x_tb_up; }')
    if tiers.shield is not None and tiers.shield in tiers.rec_addresses:
        out.append(f'map $http_x_edge_rec $tb_shield_rec {{ "" "{tiers.shield}"; default $http_x_edge_rec; }}')
    return out


def _cache_settings(options: Options) -> str:
    """Cache directives every tier inherits from the http block."""
    lines = ["proxy_cache_key $host$request_uri|$tb_encoding|$http_range;",
             "proxy_cache_valid 200 206 10m;"]
    if options.cache_errors:
        lines.append(f"proxy_cache_valid {' '.join(map(str, ALWAYS_CACHED_ERRORS))} {options.error_ttl}s;")
    lines += ["proxy_no_cache $tb_no_cache;", "proxy_cache_revalidate on;"]
    if options.collapse:
        ms = max(1, round(options.lock_timeout * 1000))
        lines += ["proxy_cache_lock on;", f"proxy_cache_lock_timeout {ms}ms;", f"proxy_cache_lock_age {ms}ms;"]
    return "\n    ".join(lines)


_PROXY_COMMON = """            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Connection "";
{extra}            proxy_set_header Range $http_range;
            proxy_set_header If-Range $http_if_range;
            proxy_buffering on;
            proxy_intercept_errors off;
            proxy_next_upstream off;
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 60s;
"""


def _upper_block(name: str, address: str, zone: str, cache: Path, *, layer: str, upstream: str,
                 relay: bool, headers: Iterable[str], server_timing: bool, http_port: int) -> str:
    """A REC's or the shield's server block: plain HTTP on its own address, its own cache."""
    suffix = "relay" if relay else ("rec" if layer == REC else "shield") + "_o"
    extra = "".join(f"            proxy_set_header {h};\n" for h in headers)
    hide = ("            proxy_hide_header X-Tb-Cache;\n            proxy_hide_header X-Tb-Up;\n" if relay else "")
    up = f"            add_header X-Tb-Up $tb_up_out_{suffix} always;\n" if server_timing else ""
    return f"""
    # {layer}: {name}
    proxy_cache_path {cache} keys_zone={zone}:16m max_size=1g inactive=7d use_temp_path=off;
    server {{
        listen {address}:{http_port};
        server_name _;
        location /_control/ {{ return 404; }}
        location / {{
            proxy_pass http://{upstream};
{_PROXY_COMMON.format(extra=extra)}            proxy_cache {zone};
{hide}            add_header X-Tb-Cache $tb_cache_out_{suffix} always;
{up}        }}
    }}
"""


def nginx_conf(prefix: Path, pops: Sequence[str], pop_addresses: Mapping[str, Sequence[str]],
               origin: str, cert: Path, key: Path, http_port: int = 80, https_port: int = 443,
               edge_log: bool = False, *, tiers: Tiers | None = None, options: Options | None = None) -> str:
    """Full nginx.conf text for the given POPs and tiers; ``origin`` is "host:port"."""
    tiers = tiers or Tiers()
    options = options or Options()
    if options.server_timing not in SERVER_TIMING_MODES:
        raise ValueError(f"server_timing must be one of {SERVER_TIMING_MODES}, not {options.server_timing!r}")
    st_on = options.server_timing != "off"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = prefix / "tmp"
    formats = f"\n    {_edge_log_formats(pops)}\n" if edge_log else ""
    rec_names = list(tiers.rec_addresses)
    upstreams = [f"upstream tb_origin {{ server {origin}; keepalive 64; }}"]
    upstreams += [f"upstream tb_rec_{j} {{ server {tiers.rec_addresses[r]}:{http_port}; keepalive 64; }}"
                  for j, r in enumerate(rec_names)]
    shield_addr = None
    if tiers.shield is not None:
        shield_addr = tiers.rec_addresses.get(tiers.shield, tiers.shield_address)
        if shield_addr is None:
            raise ValueError("a shield that is not one of the RECs needs an address")
        upstreams.append(f"upstream tb_shield {{ server {shield_addr}:{http_port}; keepalive 64; }}")
    pop_of_address = {a: pop for pop in pops for a in pop_addresses[pop]}
    maps = [_age_maps(), *_error_maps(options.cache_errors),
            *_server_timing_maps(options.server_timing, pop_of_address, not tiers.flat),
            *_tier_maps(tiers, st_on)]
    joined_upstreams = "\n    ".join(upstreams)
    joined_maps = "\n    ".join(maps)
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
    map_hash_bucket_size 128;
    {_cache_settings(options)}

    {joined_upstreams}

    {joined_maps}
{formats}"""]
    for i, pop in enumerate(pops):
        cache = cache_dir(prefix, pop)
        listens = "".join(f"        listen {a}:{http_port};\n        listen {a}:{https_port} ssl;\n"
                          for a in pop_addresses[pop])
        log = f"        access_log {edge_log_path(prefix)} tb_edge_{i};\n" if edge_log else ""
        if tiers.flat:
            upstream, extra, hide, t = "tb_origin", "", "", ""
        else:
            rec = tiers.rec_of[pop]
            upstream = "tb_shield" if rec == tiers.shield else f"tb_rec_{rec_names.index(rec)}"
            extra = ('            proxy_set_header X-Edge-Rec "";\n'
                     '            proxy_set_header X-Edge-Shield "";\n')
            hide = "            proxy_hide_header X-Tb-Cache;\n            proxy_hide_header X-Tb-Up;\n"
            t = "_t"
        st = f"            add_header Server-Timing $tb_server_timing{t} always;\n" if st_on else ""
        proxy = _PROXY_COMMON.format(extra=f"            proxy_set_header X-Edge-Pop {pop};\n{extra}")
        lines.append(f"""
    proxy_cache_path {cache} keys_zone=tb_{i}:16m max_size=1g inactive=7d use_temp_path=off;
    server {{
{listens}        server_name _;
{log}        location /_control/ {{ return 404; }}
        location / {{
            proxy_pass http://{upstream};
{proxy}            proxy_cache tb_{i};
{hide}            add_header X-Cache $tb_x_cache{t} always;
            add_header X-Amz-Cf-Pop {pop} always;
            add_header X-Amz-Cf-Id $request_id always;
            add_header Age $tb_age{t} always;
{st}        }}
    }}
""")
    for j, rec in enumerate(rec_names):
        is_shield = rec == tiers.shield
        if is_shield:
            headers = ["X-Edge-Rec $tb_shield_rec", f'X-Edge-Shield "{rec}"']
        else:
            headers = [f'X-Edge-Rec "{rec}"', 'X-Edge-Shield ""']
        relay = tiers.shield is not None and not is_shield
        lines.append(_upper_block(rec, tiers.rec_addresses[rec], f"tb_r{j}", cache_dir(prefix, rec, "rec"),
                                  layer=SHIELD if is_shield else REC,
                                  upstream="tb_shield" if relay else "tb_origin", relay=relay,
                                  headers=headers, server_timing=st_on, http_port=http_port))
    if tiers.shield is not None and tiers.shield not in tiers.rec_addresses:
        assert shield_addr is not None
        lines.append(_upper_block(tiers.shield, shield_addr, "tb_s", cache_dir(prefix, tiers.shield, "shield"),
                                  layer=SHIELD, upstream="tb_origin", relay=False,
                                  headers=[f'X-Edge-Shield "{tiers.shield}"'], server_timing=st_on,
                                  http_port=http_port))
    lines.append("}\n")
    return "".join(lines)


def tier_cache_dirs(prefix: Path, pops: Sequence[str], tiers: Tiers) -> dict[str, Path]:
    """Every cache directory by its owner's name: each POP, each REC, and a stand-alone shield."""
    dirs = {pop: cache_dir(prefix, pop) for pop in pops}
    dirs.update({rec: cache_dir(prefix, rec, "rec") for rec in tiers.rec_addresses})
    if tiers.shield is not None and tiers.shield not in tiers.rec_addresses:
        dirs[tiers.shield] = cache_dir(prefix, tiers.shield, "shield")
    return dirs


def prepare_dirs(prefix: Path, pops: Sequence[str], tiers: Tiers | None = None) -> None:
    """Create nginx's log, temp and cache directories (every POP's and tier's)."""
    for sub in ("logs", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    for directory in tier_cache_dirs(prefix, pops, tiers or Tiers()).values():
        directory.mkdir(parents=True, exist_ok=True)


def start_nginx(prefix: Path, conf: Path) -> Child:
    """Start the nginx master in the foreground of its own session (workers share its group)."""
    nginx = find_binary("nginx")
    args = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log")]
    return spawn("nginx", args, prefix / "logs" / "stdout.log", marker=str(conf))


def purge_dirs(dirs: Iterable[Path]) -> None:
    """Delete every cached file in these cache directories.

    nginx keeps the keys in shared memory, but a hit whose file is gone (ENOENT) is served as a
    miss and the file is written anew, so no reload is needed and the purge takes effect at once.
    """
    for cache in dirs:
        if not cache.is_dir():
            continue
        for entry in cache.rglob("*"):
            if entry.is_file():
                entry.unlink(missing_ok=True)


def purge(prefix: Path, pops: Sequence[str]) -> None:
    """Delete every cached file of these POPs (see ``purge_dirs``)."""
    purge_dirs(cache_dir(prefix, pop) for pop in pops)
