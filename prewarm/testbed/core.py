"""``Testbed``: a local CDN that behaves like CloudFront, for tests, benchmarks and trying the service.

One testbed = an aiohttp origin, one nginx with a caching server block per POP (and, with
``tiers="rec"`` or ``"shield"``, per regional edge cache and Origin Shield), and dnsmasq, all on its
own 127.<slot>.0.0/16 slice (see ``net``), so several testbeds can run at once. ``edge_log=True``
makes the POPs write an access log that ``edge_log()`` reads back. What each tier does, and where
nginx differs from CloudFront, is in ``edges``.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode

import prewarm
from prewarm.core.catalog import dedupe, load_catalog
from prewarm.testbed import ca, dnsmasq, edges, net
from prewarm.testbed.proc import Child, TestbedError, alive, cmdline, find_binary, spawn, tail, terminate

STATE_FILE = "state.json"
START_TIMEOUT = 20.0
_POP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def _catalog() -> dict[str, Any]:
    text = resources.files("prewarm").joinpath("data/pop-catalog.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def catalog_pops() -> list[str]:
    """Every POP code in the packaged catalogue's region and country lists, deduplicated, in order."""
    return load_catalog().all_pops()


def catalog_recs() -> dict[str, list[str]]:
    """The catalogue's ``recs`` table: each regional edge cache (by AWS Region) and its POPs."""
    return {rec: list(pops) for rec, pops in _catalog().get("recs", {}).items()}


def catalog_shield_regions() -> list[str]:
    """The AWS Regions where CloudFront offers Origin Shield, as the catalogue lists them."""
    return list(_catalog().get("origin_shield_regions", []))


def default_rec_of(pops: Iterable[str], overrides: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Each POP's REC: ``overrides`` first, then the catalogue's ``recs`` table, then the REC of a
    catalogue POP at the same airport (the code's letters before the digits); None when unknown."""
    by_pop = {pop: rec for rec, members in catalog_recs().items() for pop in members}
    by_airport: dict[str, str] = {}
    for pop, rec in by_pop.items():
        by_airport.setdefault(_airport(pop), rec)
    out: dict[str, str | None] = {}
    for pop in pops:
        if overrides and pop in overrides:
            out[pop] = overrides[pop]
        else:
            out[pop] = by_pop.get(pop) or by_airport.get(_airport(pop))
    return out


def _airport(pop: str) -> str:
    return re.sub(r"\d.*$", "", pop).upper()


def _wait(what: str, check: Callable[[], bool], child: Child | None, log: Path | None,
          timeout: float = START_TIMEOUT) -> None:
    """Poll ``check()`` until true; fail fast with the log tail if the child died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if child is not None and not alive(child.pid):
            raise TestbedError(f"{what} exited during start:\n{tail(log) if log else ''}")
        time.sleep(0.02)
    raise TestbedError(f"{what} not ready after {timeout:.0f}s:\n{tail(log) if log else ''}")


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Testbed:
    """A running (after ``start()``) local CloudFront: origin, per-POP edge caches, DNS and a CA.

    Attributes filled by ``start()``: ``pop_addresses``, ``nameserver``, ``ca_file``, ``origin_url``,
    and for a tiered testbed ``rec_addresses`` (REC -> address, port 80) and ``shield_address``.
    ``edge_log=True`` turns on the POPs' access log (``edge_log()``; off by default, it costs CPU).

    Tiers (see ``edges``): ``tiers="flat"`` (default: POPs go to the origin), ``"rec"`` (each POP goes
    to its regional edge cache, which goes to the origin) or ``"shield"`` (and every REC goes through
    the Origin Shield ``origin_shield``, by default the catalogue's first Origin Shield Region,
    us-east-1). The grouping is the catalogue's ``recs`` table; ``rec_of`` (POP -> REC name)
    overrides it for the POPs it names, e.g. to put 12 test POPs in 3 RECs. ``server_timing``:
    "pragma" (default: Server-Timing when the request has ``Pragma: server-timing``), "always" or
    "off". ``cache_errors=True`` caches errors as CloudFront does (default False: no error is cached),
    for ``error_ttl`` seconds (CloudFront's error caching minimum TTL, default 10) or the origin's max-age.
    ``collapse`` turns nginx's cache lock on (default: on for "rec" and "shield", off for "flat");
    ``lock_timeout`` (s, default nginx's 5) is its ``proxy_cache_lock_timeout`` and ``_age``.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, *, pops: Iterable[str] | None = None, extra_pops: Iterable[str] = (),
                 hosts: Iterable[str] = ("www.example.com", "static.example.com"),
                 distribution: str = "d111111abcdef8", two_address_pops: Iterable[str] = (),
                 workdir: str | Path | None = None, edge_log: bool = False, tiers: str = "flat",
                 rec_of: Mapping[str, str] | None = None, origin_shield: str | None = None,
                 server_timing: str = "pragma", cache_errors: bool = False, collapse: bool | None = None,
                 lock_timeout: float = 5.0, error_ttl: int = edges.ERROR_TTL) -> None:
        self.pops: list[str] = dedupe([*(catalog_pops() if pops is None else pops), *extra_pops])
        self.hosts: list[str] = dedupe(h.lower().rstrip(".") for h in hosts)
        self.distribution = distribution
        self.two_address_pops: list[str] = dedupe(two_address_pops)
        self.edge_logging = bool(edge_log)
        if not self.pops:
            raise ValueError("a testbed needs at least one POP")
        bad = [p for p in self.pops if not _POP_RE.match(p)]
        if bad:
            raise ValueError(f"invalid POP codes: {bad}")
        unknown = [p for p in self.two_address_pops if p not in self.pops]
        if unknown:
            raise ValueError(f"two_address_pops not among the POPs: {unknown}")
        if not _POP_RE.match(distribution):
            raise ValueError(f"invalid distribution id: {distribution!r}")
        bad = [h for h in self.hosts if not _HOST_RE.match(h)]
        if bad or not self.hosts:
            raise ValueError(f"invalid or missing customer host names: {bad}")
        if tiers not in edges.TIER_MODES:
            raise ValueError(f"tiers must be one of {edges.TIER_MODES}, not {tiers!r}")
        if server_timing not in edges.SERVER_TIMING_MODES:
            raise ValueError(f"server_timing must be one of {edges.SERVER_TIMING_MODES}, not {server_timing!r}")
        if not lock_timeout > 0:
            raise ValueError(f"lock_timeout must be positive, not {lock_timeout!r}")
        if int(error_ttl) < 1:
            raise ValueError(f"error_ttl must be at least 1 s, not {error_ttl!r}")
        self.error_ttl = int(error_ttl)
        self.tiers = tiers
        self.server_timing = server_timing
        self.cache_errors = bool(cache_errors)
        self.collapse = (tiers != "flat") if collapse is None else bool(collapse)
        self.lock_timeout = float(lock_timeout)
        self.rec_of_override: dict[str, str] = dict(rec_of or {})
        bad = [r for r in self.rec_of_override.values() if not _POP_RE.match(r)]
        if bad:
            raise ValueError(f"invalid REC names: {bad}")
        self.rec_map: dict[str, str | None] = default_rec_of(self.pops, self.rec_of_override)
        if tiers != "flat":
            unknown = [p for p, r in self.rec_map.items() if r is None]
            if unknown:
                raise ValueError(f"no regional edge cache known for POPs {unknown}: name one with rec_of")
        self.recs: list[str] = dedupe(r for r in self.rec_map.values() if r) if tiers != "flat" else []
        if len(self.recs) > net.MAX_RECS:
            raise ValueError(f"too many regional edge caches (max {net.MAX_RECS})")
        shield = origin_shield if origin_shield is not None else (
            (catalog_shield_regions() or ["us-east-1"])[0] if tiers == "shield" else None)
        if shield is not None and not _POP_RE.match(shield):
            raise ValueError(f"invalid Origin Shield name: {shield!r}")
        if shield is not None and tiers != "shield":
            raise ValueError("origin_shield needs tiers='shield'")
        self.origin_shield: str | None = shield
        self.cf_domain = f"{distribution}.cloudfront.net"
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = self._workdir_arg
        self.pop_addresses: dict[str, list[str]] = {}
        self.rec_addresses: dict[str, str] = {}
        self.shield_address: str | None = None
        self.nameserver = ""
        self.ca_file = ""
        self.origin_url = ""
        self.slot: int | None = None
        self._children: list[Child] = []
        self._lease: net.SlotLease | None = None
        self._running = False
        self._own_workdir = False
        self._atexit_registered = False

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, *, detach: bool = False) -> Testbed:
        """Start origin, DNS and edges (no-op if already running); returns self.

        ``detach=True`` (used by ``prewarm testbed up``) leaves the processes running when this
        Python process exits; otherwise an atexit hook stops them.
        """
        if self._running:
            return self
        missing = []
        for tool in ("nginx", "dnsmasq", "openssl"):
            try:
                find_binary(tool)
            except TestbedError as exc:
                missing.append(str(exc))
        if missing:
            raise TestbedError("cannot start the testbed:\n" + "\n".join(missing))
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="prewarm-testbed-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lease = net.lease_slot(extra_check=self._slot_addresses_free)
        try:
            self._start_in_slot(self._lease.slot)
        except BaseException:
            self._stop_children()
            self._lease.release()
            self._lease = None
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir, self._own_workdir = None, False
            raise
        self._running = True
        if not detach and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        return self

    def _slot_addresses_free(self, slot: int) -> bool:
        recs, shield = self._tier_addresses(slot)
        return all(net.can_bind(a, port)
                   for i, pop in enumerate(self.pops)
                   for a in net.pop_addresses(slot, i, 2 if pop in self.two_address_pops else 1)
                   for port in (80, 443)) and all(
            net.can_bind(a, 80) for a in [*recs.values(), *([shield] if shield else [])])

    def _tier_addresses(self, slot: int) -> tuple[dict[str, str], str | None]:
        """Each REC's address, and a stand-alone shield's (None without one, or when it is a REC)."""
        recs = {rec: net.rec_address(slot, j) for j, rec in enumerate(self.recs)}
        shield = None
        if self.origin_shield is not None and self.origin_shield not in recs:
            shield = net.shield_address(slot)
        return recs, shield

    def _edge_tiers(self) -> edges.Tiers:
        if self.tiers == "flat":
            return edges.Tiers()
        return edges.Tiers(rec_of={p: r for p, r in self.rec_map.items() if r}, rec_addresses=self.rec_addresses,
                           shield=self.origin_shield, shield_address=self.shield_address)

    def _edge_options(self) -> edges.Options:
        return edges.Options(server_timing=self.server_timing, cache_errors=self.cache_errors,
                             collapse=self.collapse, lock_timeout=self.lock_timeout, error_ttl=self.error_ttl)

    def _start_in_slot(self, slot: int) -> None:
        assert self.workdir is not None
        wd = self.workdir
        self.slot = slot
        self.pop_addresses = {pop: net.pop_addresses(slot, i, 2 if pop in self.two_address_pops else 1)
                              for i, pop in enumerate(self.pops)}
        self.rec_addresses, shield_address = self._tier_addresses(slot)
        self.shield_address = shield_address if shield_address else self.rec_addresses.get(self.origin_shield or "")
        origin_host = net.origin_address(slot)
        origin_port = net.free_port(origin_host)
        dns_host = net.dns_address(slot)
        dns_port = net.free_port(dns_host, udp_too=True, prefer=53)
        self.origin_url = f"http://{origin_host}:{origin_port}"
        self.nameserver = f"{dns_host}:{dns_port}"

        names = [*self.hosts, "*.cloudfront.net", self.cf_domain,
                 *(f"*.{pop}.cloudfront.net" for pop in self.pops),
                 *(a for addrs in self.pop_addresses.values() for a in addrs)]
        tls = ca.make_tls(wd / "tls", names, label=f"prewarm testbed {slot}")
        self.ca_file = str(tls.ca_cert)

        prefix = wd / "nginx"
        shutil.rmtree(prefix / "cache", ignore_errors=True)  # a reused workdir must not start warm
        tiers = self._edge_tiers()
        edges.prepare_dirs(prefix, self.pops, tiers)
        nginx_conf = prefix / "nginx.conf"
        origin_hostport = f"{origin_host}:{origin_port}"
        nginx_conf.write_text(edges.nginx_conf(prefix, self.pops, self.pop_addresses, origin_hostport,
                                               tls.server_cert, tls.server_key, edge_log=self.edge_logging,
                                               tiers=tiers, options=self._edge_options()))
        edges.edge_log_path(prefix).unlink(missing_ok=True)  # a reused workdir starts with an empty log
        dns_conf = wd / "dnsmasq.conf"
        dns_conf.write_text(dnsmasq.dnsmasq_conf(wd, dns_host, dns_port, self.distribution,
                                                 self.pop_addresses, self.hosts))
        ready = wd / "origin.ready"
        ready.unlink(missing_ok=True)
        env = dict(os.environ)
        pkg_root = str(Path(prewarm.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        origin_log = wd / "origin.log"
        origin = spawn("origin", [sys.executable, "-m", "prewarm.testbed.origin", "--host", origin_host,
                                  "--port", str(origin_port), "--ready-file", str(ready)],
                       origin_log, marker=str(ready), env=env)
        self._children.append(origin)
        dns_log = wd / "dnsmasq.out"
        dns_child = dnsmasq.start_dnsmasq(dns_conf, dns_log)
        self._children.append(dns_child)
        nginx_child = edges.start_nginx(prefix, nginx_conf)
        self._children.append(nginx_child)

        first, last = self.pop_addresses[self.pops[0]][0], self.pop_addresses[self.pops[-1]][-1]
        nginx_log = prefix / "logs" / "error.log"
        tier_addrs = [*self.rec_addresses.values()][-1:] + ([self.shield_address] if self.shield_address else [])
        _wait("nginx", lambda: all(_can_connect(a, p) for a in (first, last) for p in (80, 443))
              and all(_can_connect(a, 80) for a in tier_addrs), nginx_child, nginx_log)
        _wait("dnsmasq", lambda: self._dns_answers(dns_host, dns_port), dns_child, wd / "dnsmasq.log")
        _wait("origin", ready.exists, origin, origin_log)

    def _dns_answers(self, host: str, port: int) -> bool:
        query = dns.message.make_query(self.cf_domain, "A")
        try:
            reply = dns.query.udp(query, host, port=port, timeout=0.2)
        except (OSError, dns.exception.DNSException):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    def stop(self) -> None:
        """Stop every process this testbed started (nothing is left running); idempotent."""
        self._stop_children()
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        self._running = False
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._own_workdir = False
            self.workdir = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def _stop_children(self) -> None:
        for child in reversed(self._children):
            terminate(child)
        self._children.clear()

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while started and every process is alive."""
        return self._running and bool(self._children) and all(
            alive(c.pid) and c.marker in cmdline(c.pid) for c in self._children)

    @property
    def pids(self) -> dict[str, int]:
        """Pid of each started process (origin, dnsmasq, nginx master)."""
        return {c.name: c.pid for c in self._children}

    # -- use -----------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment that points the prewarm service at this testbed."""
        return {"PREWARM_NAMESERVERS": self.nameserver, "PREWARM_CA_BUNDLE": self.ca_file,
                "PREWARM_ALLOW_PRIVATE_EDGES": "1"}

    def url(self, path: str, host: str = "www.example.com", scheme: str = "https") -> str:
        """URL of ``path`` on a customer host (resolve it through ``nameserver`` to reach a POP)."""
        if not path.startswith("/"):
            path = "/" + path
        return f"{scheme}://{host}{path}"

    def _origin_call(self, method: str, path: str, body: Any = None) -> Any:
        """JSON call to the origin's control API (http.client: no proxy settings apply)."""
        if not self.origin_url:
            raise TestbedError("testbed not started")
        hostport = self.origin_url.removeprefix("http://")
        conn = http.client.HTTPConnection(hostport, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status >= 400:
                raise TestbedError(f"origin {method} {path}: {resp.status} {data.decode(errors='replace')}")
            return json.loads(data)
        finally:
            conn.close()

    def _tiers_query(self, tiers: bool | None) -> str:
        return "?tiers=1" if (self.tiers != "flat" if tiers is None else tiers) else ""

    def origin_counts(self, tiers: bool | None = None) -> dict[str, Any]:
        """``{"requests": [{"method", "path", "edge", "count", "bytes", "complete"}, ...], "total": N,
        "by_encoding": [...]}``, first seen first.

        ``by_encoding`` counts again by the normalised Accept-Encoding (``encoding``: br, gzip or "").
        ``edge`` is the POP whose request led to this one ("-" for a direct request). In a tiered
        testbed the rows are by (method, path, edge, rec, shield) and also have ``rec`` (the REC that
        passed it on, or ""), ``shield`` (the Origin Shield, or "") and ``tier``, the tier that sent it
        as Server-Timing's cdn-upstream-layer spells it: "EDGE", "REC", "Origin Shield" or "-"
        (``tiers=True`` asks for these keys in a flat testbed too, ``False`` leaves them out).
        """
        result: dict[str, Any] = self._origin_call("GET", "/_control/counts" + self._tiers_query(tiers))
        return result

    def origin_log(self) -> list[tuple[float, str, str, str]]:
        """Every request the origin counted: (unix time, method, path, edge), oldest first."""
        return [tuple(r) for r in self._origin_call("GET", "/_control/log")["requests"]]  # type: ignore[misc]

    def origin_sent(self, tiers: bool | None = None) -> list[dict[str, Any]]:
        """Bodies the origin sent, grouped by (path, edge, Range header or ""), first seen first:
        ``[{"path", "edge", "range", "bytes", "complete"}, ...]``; ``bytes`` counts partial sends too,
        ``complete`` how many bodies went out to their end. HEAD answers (no body) are not listed. In a
        tiered testbed rows are by (path, edge, rec, shield, range) and have ``rec``, ``shield`` and
        ``tier`` too (as in ``origin_counts``)."""
        rows: list[dict[str, Any]] = self._origin_call("GET", "/_control/sent" + self._tiers_query(tiers))["sent"]
        return rows

    def origin_concurrency(self) -> dict[str, Any]:
        """The origin's requests over time: ``{"requests": [{"start", "end", "method", "path", "edge",
        "rec", "shield", "tier"}, ...], "samples": [(time, in_flight), ...], "peak": n, "in_flight": n}``.

        ``start`` is when the origin's handler began, ``end`` when its answer was written (or the
        connection dropped; None while running), unix seconds; ``samples`` is the number of requests
        in flight after each start and end, in time order; ``peak`` its maximum."""
        result: dict[str, Any] = self._origin_call("GET", "/_control/concurrency")
        result["samples"] = [(float(t), int(n)) for t, n in result["samples"]]
        return result

    @property
    def edge_log_path(self) -> Path:
        """``<workdir>/nginx/logs/edge.log``, written only with ``edge_log=True``."""
        if self.workdir is None:
            raise TestbedError("testbed not started")
        return edges.edge_log_path(self.workdir / "nginx")

    def edge_log(self) -> list[dict[str, Any]]:
        """The edges' access log, oldest first: one dict per request with ``time`` (float, unix),
        ``pop``, ``method``, ``uri``, ``status`` (int), ``bytes`` (body bytes sent, int), ``range``
        and ``cache`` ("" when nginx logged "-"), ``request_time`` (float, seconds).

        nginx writes a line as the request ends, just after the last byte went out, so a line can
        lag the client's read of the response by a moment.
        """
        if not self.edge_logging:
            raise TestbedError("the edge log is off: start the Testbed with edge_log=True")
        try:
            text = self.edge_log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            f = line.split("\t")
            if len(f) != len(edges.EDGE_LOG_FIELDS):
                continue  # a line being written right now
            rows.append({"time": float(f[0]), "pop": f[1], "method": f[2], "uri": f[3], "status": int(f[4]),
                         "bytes": int(f[5]), "range": "" if f[6] == "-" else f[6],
                         "cache": "" if f[7] == "-" else f[7], "request_time": float(f[8])})
        return rows

    def add_fault(self, rule: dict[str, Any]) -> None:
        """Install an origin fault rule (see ``prewarm.testbed.origin.Rule`` for the keys)."""
        self._origin_call("POST", "/_control/faults", rule)

    def rec_of_pop(self, pop: str) -> str:
        """The regional edge cache this POP sends its misses to (in a flat testbed: the one it would)."""
        if pop not in self.rec_map:
            raise TestbedError(f"{pop} is not a POP of this testbed")
        rec = self.rec_map[pop]
        if rec is None:
            raise TestbedError(f"no regional edge cache known for {pop}: name one with rec_of")
        return rec

    def pops_of_rec(self, rec: str) -> list[str]:
        """The testbed's POPs that send their misses to this REC."""
        return [p for p, r in self.rec_map.items() if r == rec]

    def _cache_dirs(self) -> dict[str, Path]:
        if self.workdir is None:
            raise TestbedError("testbed not started")
        return edges.tier_cache_dirs(self.workdir / "nginx", self.pops, self._edge_tiers())

    def purge(self, name: str | None = None) -> None:
        """Empty one cache: a POP's (by code), a REC's or the Origin Shield's (by name); every cache
        of every tier when ``name`` is None. Origin counters are left alone (``reset()`` clears all).

        Done twice, as in ``reset()``, to catch a file nginx renamed into place a moment late."""
        dirs = self._cache_dirs()
        if name is not None and name not in dirs:
            raise TestbedError(f"no cache named {name!r}: POPs, RECs and the shield are {sorted(dirs)}")
        chosen = list(dirs.values()) if name is None else [dirs[name]]
        edges.purge_dirs(chosen)
        time.sleep(0.01)
        edges.purge_dirs(chosen)

    def reset(self) -> None:
        """Purge every cache of every tier, clear the origin's counters and fault rules, empty the edge log.

        The second purge catches a cache file that nginx renamed into place just after the
        first one (nginx may finish writing it right after the client got the last byte).
        """
        dirs = list(self._cache_dirs().values())
        edges.purge_dirs(dirs)
        self._origin_call("POST", "/_control/reset")
        edges.purge_dirs(dirs)
        if self.edge_logging:
            with contextlib.suppress(FileNotFoundError), self.edge_log_path.open("r+b") as log:
                log.truncate(0)  # nginx appends (O_APPEND): its next line starts the file again

    # -- state (shared with ``prewarm testbed up/down``) ----------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to use or stop this testbed from another process."""
        return {
            "version": 1, "workdir": str(self.workdir), "slot": self.slot, "pops": self.pops,
            "hosts": self.hosts, "distribution": self.distribution,
            "two_address_pops": self.two_address_pops, "edge_log": self.edge_logging,
            "tiers": self.tiers, "rec_of": self.rec_of_override, "origin_shield": self.origin_shield,
            "server_timing": self.server_timing, "cache_errors": self.cache_errors, "collapse": self.collapse,
            "lock_timeout": self.lock_timeout, "error_ttl": self.error_ttl, "rec_addresses": self.rec_addresses,
            "shield_address": self.shield_address, "cf_domain": self.cf_domain,
            "pop_addresses": self.pop_addresses, "nameserver": self.nameserver, "ca_file": self.ca_file,
            "origin_url": self.origin_url, "env": self.env(),
            "processes": [{"name": c.name, "pid": c.pid, "marker": c.marker} for c in self._children],
        }

    def save_state(self, path: str | Path | None = None) -> Path:
        """Write ``state.json`` into ``path`` (default: the workdir); returns the file."""
        directory = Path(path) if path is not None else self.workdir
        if directory is None:
            raise TestbedError("testbed not started")
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / STATE_FILE
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        tmp.replace(target)
        return target

    @classmethod
    def from_state_dir(cls, path: str | Path) -> Testbed:
        """Attach to a testbed started elsewhere (e.g. by ``prewarm testbed up``); ``stop()`` works."""
        state = json.loads((Path(path) / STATE_FILE).read_text())
        tb = cls(pops=state["pops"], hosts=state["hosts"], distribution=state["distribution"],
                 two_address_pops=state["two_address_pops"], workdir=state["workdir"],
                 edge_log=bool(state.get("edge_log", False)), tiers=state.get("tiers", "flat"),
                 rec_of=state.get("rec_of") or None, origin_shield=state.get("origin_shield"),
                 server_timing=state.get("server_timing", "pragma"), cache_errors=bool(state.get("cache_errors")),
                 collapse=state.get("collapse"), lock_timeout=float(state.get("lock_timeout", 5.0)),
                 error_ttl=int(state.get("error_ttl", edges.ERROR_TTL)))
        tb.slot = state["slot"]
        tb.pop_addresses = {k: list(v) for k, v in state["pop_addresses"].items()}
        tb.rec_addresses = dict(state.get("rec_addresses") or {})
        tb.shield_address = state.get("shield_address")
        tb.nameserver, tb.ca_file, tb.origin_url = state["nameserver"], state["ca_file"], state["origin_url"]
        tb._children = [Child(p["name"], int(p["pid"]), p["marker"]) for p in state["processes"]]
        tb._running = True
        return tb


def remove_state(path: str | Path) -> None:
    """Delete a state dir's state file and the files a testbed generated there."""
    directory = Path(path)
    (directory / STATE_FILE).unlink(missing_ok=True)
    for name in ("nginx", "tls"):
        shutil.rmtree(directory / name, ignore_errors=True)
    for name in ("dnsmasq.conf", "dnsmasq.log", "dnsmasq.out", "origin.log", "origin.ready"):
        (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()
