"""The testbed behaves like CloudFront: per-POP caches, headers, TLS, DNS, origin faults, lifecycle.

Everything here talks to real processes over real sockets on 127.0.0.0/8.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.resolver
import pytest

from prewarm.testbed import STATE_FILE, Testbed, TestbedError, catalog_pops
from prewarm.testbed.origin import object_bytes, object_etag
from prewarm.testbed.proc import alive, find_binary, group_members

HOST = "www.example.com"
SOME_POPS = ("FRA60-P1", "NRT51-P2", "GRU1-C2")
TWO_ADDRESS_POP = "IAD89-P1"  # the session fixture gives this POP two addresses


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def fetch(address: str, path: str, *, host: str = HOST, method: str = "GET",
          tls: ssl.SSLContext | None = None, sni: str | None = None, timeout: float = 10.0,
          origin_port: int | None = None, headers: dict[str, str] | None = None) -> Reply:
    """One request pinned to ``address`` (a POP, or the origin with ``origin_port``)."""
    port = origin_port or (443 if tls else 80)
    start = time.monotonic()
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    sock = socket.create_connection((address, port), timeout=timeout)
    conn.sock = tls.wrap_socket(sock, server_hostname=sni or host) if tls else sock
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return Reply(resp.status, headers, body, time.monotonic() - start)
    finally:
        conn.close()


def origin(tb: Testbed) -> tuple[str, int]:
    host, port = tb.origin_url.removeprefix("http://").split(":")
    return host, int(port)


def direct(tb: Testbed, path: str, method: str = "GET", **kw: object) -> Reply:
    host, port = origin(tb)
    return fetch(host, path, method=method, origin_port=port, **kw)  # type: ignore[arg-type]


def via(tb: Testbed, pop: str, path: str, **kw: object) -> Reply:
    return fetch(tb.pop_addresses[pop][0], path, **kw)  # type: ignore[arg-type]


def count(tb: Testbed, path: str, edge: str | None = None, method: str = "GET") -> int:
    return sum(r["count"] for r in tb.origin_counts()["requests"]
               if r["path"] == path and r["method"] == method and (edge is None or r["edge"] == edge))


def resolver(tb: Testbed) -> dns.resolver.Resolver:
    ip, port = tb.nameserver.split(":")
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [ip]
    res.port = int(port)
    res.lifetime = 3.0
    return res


# -- POPs, caching, headers ---------------------------------------------------------------------------
def test_default_pops_are_the_catalogue(testbed: Testbed) -> None:
    expected = catalog_pops()
    assert len(expected) == len(set(expected)) > 30
    assert testbed.pops == expected
    assert testbed.cf_domain == "d111111abcdef8.cloudfront.net"
    assert Testbed(extra_pops=["ATL56-C1", "FRA60-P1"]).pops == [*expected, "ATL56-C1"]
    assert testbed.env() == {"PREWARM_NAMESERVERS": testbed.nameserver, "PREWARM_CA_BUNDLE": testbed.ca_file,
                             "PREWARM_ALLOW_PRIVATE_EDGES": "1"}
    assert testbed.url("/obj/1kb/a") == "https://www.example.com/obj/1kb/a"
    assert testbed.url("/x", host="static.example.com", scheme="http") == "http://static.example.com/x"


def test_addresses_are_loopback_and_distinct(testbed: Testbed) -> None:
    addrs = [a for pop in testbed.pops for a in testbed.pop_addresses[pop]]
    assert len(addrs) == len(set(addrs)) == len(testbed.pops) + 1
    assert len(testbed.pop_addresses[TWO_ADDRESS_POP]) == 2
    assert all(a.startswith("127.") and a != "127.0.0.1" for a in addrs)
    assert testbed.origin_url.startswith("http://127.") and testbed.nameserver.startswith("127.")


def test_every_pop_answers_once(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/obj/1b/every-pop"
    for pop in tb.pops:
        for address in tb.pop_addresses[pop]:
            r = fetch(address, path)
            assert r.status == 200 and r.body == object_bytes("every-pop", 1)
            assert r.headers["x-amz-cf-pop"] == pop
    edges = {r["edge"]: r["count"] for r in tb.origin_counts()["requests"] if r["path"] == path}
    assert edges == dict.fromkeys(tb.pops, 1)


def test_miss_then_hit_per_pop_and_others_stay_cold(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/obj/1kb/warm-me"
    for i, pop in enumerate(SOME_POPS):
        for other in SOME_POPS[i:]:
            assert count(tb, path, other) == 0  # not touched yet
        first = via(tb, pop, path)
        assert first.status == 200 and first.headers["x-cache"] == "Miss from cloudfront"
        assert first.headers["x-amz-cf-pop"] == pop and "age" not in first.headers
        second = via(tb, pop, path)
        assert second.headers["x-cache"] == "Hit from cloudfront"
        assert second.headers["x-amz-cf-pop"] == pop
        assert 0 <= int(second.headers["age"]) <= 2
        assert second.body == first.body == object_bytes("warm-me", 1024)
        assert second.headers["etag"] == object_etag("warm-me", 1024)
    for pop in SOME_POPS:
        assert count(tb, path, pop) == 1
    assert count(tb, path) == len(SOME_POPS)


def test_age_grows_on_hits(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/obj/10b/aging"
    assert via(tb, "SFO5-P1", path).headers["x-cache"] == "Miss from cloudfront"
    time.sleep(1.5)
    hit = via(tb, "SFO5-P1", path)
    assert hit.headers["x-cache"] == "Hit from cloudfront"
    assert 1 <= int(hit.headers["age"]) <= 3


def test_cache_key_is_host_and_uri(clean_testbed: Testbed) -> None:
    tb, pop, path = clean_testbed, "CDG50-P1", "/obj/2kb/keyed"
    assert via(tb, pop, path).headers["x-cache"] == "Miss from cloudfront"
    assert via(tb, pop, path, host="static.example.com").headers["x-cache"] == "Miss from cloudfront"
    assert via(tb, pop, path + "?v=2").headers["x-cache"] == "Miss from cloudfront"
    assert via(tb, pop, path).headers["x-cache"] == "Hit from cloudfront"
    https = ssl.create_default_context(cafile=tb.ca_file)
    assert via(tb, pop, path, tls=https).headers["x-cache"] == "Hit from cloudfront"  # scheme not in key


def test_head_through_pop_is_a_get_at_the_origin(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/obj/3kb/head"
    r = via(tb, "DUB2-C1", path, method="HEAD")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "3072"
    assert count(tb, path, "DUB2-C1", "GET") == 1 and count(tb, path, method="HEAD") == 0
    assert via(tb, "DUB2-C1", path).headers["x-cache"] == "Hit from cloudfront"


def test_reset_purges_every_pop(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/obj/1kb/purge"
    for pop in tb.pops:
        via(tb, pop, path)
        assert via(tb, pop, path).headers["x-cache"] == "Hit from cloudfront"
    tb.add_fault({"path": "/obj/1kb/other", "status": 500})
    tb.reset()
    assert tb.origin_counts() == {"requests": [], "total": 0, "by_encoding": []}
    assert tb.origin_log() == [] and tb.origin_sent() == []
    for pop in tb.pops:
        assert via(tb, pop, path).headers["x-cache"] == "Miss from cloudfront", pop
    assert via(tb, SOME_POPS[0], "/obj/1kb/other").status == 200  # fault rules are gone too


def test_control_path_not_exposed_by_edges(testbed: Testbed) -> None:
    assert via(testbed, SOME_POPS[0], "/_control/counts").status == 404


# -- TLS -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sni", [HOST, "static.example.com", "d111111abcdef8.cloudfront.net",
                                 "d111111abcdef8.NRT51-P2.cloudfront.net"])
def test_https_pinned_to_pop_verifies_against_testbed_ca(clean_testbed: Testbed, sni: str) -> None:
    ctx = ssl.create_default_context(cafile=clean_testbed.ca_file)
    r = via(clean_testbed, "NRT51-P2", "/obj/1kb/tls", tls=ctx, sni=sni)
    assert r.status == 200 and r.headers["x-amz-cf-pop"] == "NRT51-P2"


def test_https_fails_without_ca_or_with_wrong_name(testbed: Testbed) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        via(testbed, "NRT51-P2", "/obj/1kb/tls", tls=ssl.create_default_context())
    ctx = ssl.create_default_context(cafile=testbed.ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        via(testbed, "NRT51-P2", "/obj/1kb/tls", tls=ctx, sni="www.example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        via(testbed, "NRT51-P2", "/obj/1kb/tls", tls=ctx, sni="a.b.cloudfront.net")


# -- DNS -----------------------------------------------------------------------------------------------
def test_dns_pop_names_any_case(testbed: Testbed) -> None:
    res = resolver(testbed)
    for pop in ("FRA60-P1", TWO_ADDRESS_POP):
        for name in (f"d111111abcdef8.{pop}.cloudfront.net", f"D111111ABCDEF8.{pop.lower()}.CloudFront.NET",
                     f"d111111abcdef8.{pop.upper()}.cloudfront.net"):
            got = sorted(r.to_text() for r in res.resolve(name, "A"))
            assert got == sorted(testbed.pop_addresses[pop]), name
    assert len(testbed.pop_addresses[TWO_ADDRESS_POP]) == 2


def test_dns_customer_hosts_cname_to_distribution(testbed: Testbed) -> None:
    res = resolver(testbed)
    for host in ("www.example.com", "static.example.com"):
        answer = res.resolve(host, "A")
        assert answer.canonical_name.to_text() == "d111111abcdef8.cloudfront.net."
        cnames = [rr for rr in answer.response.answer if rr.rdtype == dns.rdatatype.CNAME]
        assert cnames and cnames[0][0].target.to_text() == "d111111abcdef8.cloudfront.net."
        assert [r.to_text() for r in answer] == [testbed.pop_addresses[testbed.pops[0]][0]]


def test_dns_unknown_names_are_nxdomain(testbed: Testbed) -> None:
    res = resolver(testbed)
    names = ("d111111abcdef8.XYZ99-C9.cloudfront.net", "dzzzzzzzzzzzzz.cloudfront.net", "nope.example.com")
    for name in names:
        with pytest.raises(dns.resolver.NXDOMAIN):
            res.resolve(name, "A")


# -- origin objects and faults ------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "size"), [("5b", 5), ("3kb", 3072), ("1mb", 1048576), ("0b", 0)])
def test_origin_objects(testbed: Testbed, spec: str, size: int) -> None:
    r = direct(testbed, f"/obj/{spec}/dir/name.bin")
    assert r.status == 200 and len(r.body) == size == int(r.headers["content-length"])
    assert r.body == object_bytes("dir/name.bin", size)
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert r.headers["etag"] == object_etag("dir/name.bin", size)
    assert "date" in r.headers and r.headers["content-type"] == "application/octet-stream"
    head = direct(testbed, f"/obj/{spec}/dir/name.bin", method="HEAD")
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == str(size)


def test_origin_content_type_and_unknown_paths(testbed: Testbed) -> None:
    assert direct(testbed, "/obj/1kb/app.js").headers["content-type"].endswith("javascript")
    for path in ("/", "/nope", "/obj/12/x", "/obj/1kb", "/obj/zz/x"):
        assert direct(testbed, path).status == 404, path
    assert direct(testbed, "/fault/bogus/x").status == 400


@pytest.mark.parametrize("code", [404, 500, 503])
def test_fault_status_passes_through_uncached(clean_testbed: Testbed, code: int) -> None:
    """Without cache_errors=True (the default) no error is cached, even one marked max-age."""
    tb, path = clean_testbed, f"/fault/status/{code}/obj/1kb/s"
    marked = f"/fault/max-age/60/fault/status/{code}/obj/1kb/s"
    for _ in range(2):
        r = via(tb, "ICN51-C1", path)
        assert r.status == code and r.body == f"status {code}\n".encode()
        assert r.headers["x-cache"] == "Error from cloudfront" and r.headers["x-amz-cf-pop"] == "ICN51-C1"
        assert "age" not in r.headers
        m = via(tb, "ICN51-C1", marked)
        assert m.status == code and m.headers["cache-control"] == "max-age=60"
        assert m.headers["x-cache"] == "Error from cloudfront" and "age" not in m.headers
    assert count(tb, path, "ICN51-C1") == 2 and count(tb, marked, "ICN51-C1") == 2


def test_fault_delay(clean_testbed: Testbed) -> None:
    r = via(clean_testbed, "BOM51-C1", "/fault/delay/400/obj/1kb/d")
    assert r.status == 200 and r.seconds >= 0.4 and len(r.body) == 1024
    fast = via(clean_testbed, "BOM51-C1", "/fault/delay/400/obj/1kb/d")
    assert fast.headers["x-cache"] == "Hit from cloudfront" and fast.seconds < 0.3


def test_fault_slowbody(clean_testbed: Testbed) -> None:
    host, port = origin(clean_testbed)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    start = time.monotonic()
    conn.request("GET", "/fault/slowbody/500/obj/2kb/sb")
    resp = conn.getresponse()
    headers_at = time.monotonic() - start
    body = resp.read()
    total = time.monotonic() - start
    conn.close()
    assert resp.status == 200 and body == object_bytes("sb", 2048)
    assert headers_at < 0.3 and total >= 0.45
    assert via(clean_testbed, "BOM51-C1", "/fault/slowbody/300/obj/1kb/sb").seconds >= 0.28


def test_fault_reset(clean_testbed: Testbed) -> None:
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        direct(clean_testbed, "/fault/reset/obj/1kb/r")
    r = via(clean_testbed, "SIN2-P1", "/fault/reset/obj/1kb/r")
    assert r.status == 502 and r.headers["x-cache"] == "Error from cloudfront"  # nginx's own 502
    assert count(clean_testbed, "/fault/reset/obj/1kb/r", "SIN2-P1") == 1  # no retry by the edge


def test_fault_truncate(clean_testbed: Testbed) -> None:
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        direct(clean_testbed, "/fault/truncate/obj/4kb/t")
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        via(clean_testbed, "SIN2-P1", "/fault/truncate/obj/4kb/t")
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):  # not cached either
        via(clean_testbed, "SIN2-P1", "/fault/truncate/obj/4kb/t")


@pytest.mark.parametrize("code", [429, 503])
def test_fault_retry_after(clean_testbed: Testbed, code: int) -> None:
    r = via(clean_testbed, "SYD1-C1", f"/fault/retry-after/{code}/7/obj/1kb/ra")
    assert r.status == code and r.headers["retry-after"] == "7"
    assert r.headers["x-cache"] == "Error from cloudfront"


def test_fault_fail_first_is_per_edge(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/fault/fail-first/2/503/obj/1kb/ff"
    statuses = [via(tb, "ARN54-C1", path).status for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert via(tb, "ARN54-C1", path).headers["x-cache"] == "Hit from cloudfront"
    assert [via(tb, "ARN56-P1", path).status for _ in range(3)] == [503, 503, 200]
    assert count(tb, path, "ARN54-C1") == 3 and count(tb, path, "ARN56-P1") == 3


def test_fault_nocache_stays_miss(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/fault/nocache/obj/1kb/nc"
    for _ in range(3):
        r = via(tb, "YUL62-C1", path)
        assert r.status == 200 and r.headers["cache-control"] == "no-store"
        assert r.headers["x-cache"] == "Miss from cloudfront" and "age" not in r.headers
    assert count(tb, path, "YUL62-C1") == 3


def test_control_rule_503_then_success(clean_testbed: Testbed) -> None:
    tb, path = clean_testbed, "/obj/1kb/ctl"
    tb.add_fault({"path": path, "status": 503, "count": 1, "retry_after": 1})
    first = via(tb, "LHR61-P3", path)
    assert first.status == 503 and first.headers["retry-after"] == "1"
    assert via(tb, "LHR61-P3", path).status == 200
    assert via(tb, "LHR61-P3", path).headers["x-cache"] == "Hit from cloudfront"
    assert via(tb, "LHR50-P2", path).status == 503  # count is per edge by default
    assert direct(tb, path).status == 503  # ... and direct requests are edge "-"
    assert count(tb, path, "LHR61-P3") == 2


def test_control_rules_other_actions(clean_testbed: Testbed) -> None:
    tb = clean_testbed
    tb.add_fault({"path": "/obj/1kb/g", "status": 500, "count": 1, "per_edge": False})
    assert via(tb, "GRU1-C2", "/obj/1kb/g").status == 500
    assert via(tb, "GRU3-P1", "/obj/1kb/g").status == 200  # global count spent
    tb.add_fault({"path": "/obj/1kb/rs", "action": "reset"})
    assert via(tb, "GRU1-C2", "/obj/1kb/rs").status == 502
    tb.add_fault({"path": "/obj/1kb/slow", "delay_ms": 300})
    assert direct(tb, "/obj/1kb/slow").seconds >= 0.3
    tb.add_fault({"path": "/obj/1kb/nc", "action": "nocache"})
    caches = [via(tb, "GRU1-C2", "/obj/1kb/nc").headers["x-cache"] for _ in range(2)]
    assert caches == ["Miss from cloudfront"] * 2
    tb.add_fault({"path": "/any/prefix/*", "status": 429, "headers": {"X-Test": "1"}})
    r = direct(tb, "/any/prefix/deep/x")
    assert r.status == 429 and r.headers["x-test"] == "1"
    host, port = origin(tb)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("POST", "/_control/faults", body=json.dumps({"path": "/x", "bogus": 1}))
    assert conn.getresponse().status == 400
    conn.close()


def test_counts_shape(clean_testbed: Testbed) -> None:
    tb = clean_testbed
    direct(tb, "/obj/1kb/a")
    direct(tb, "/obj/1kb/a", method="HEAD")
    via(tb, "ICN54-C2", "/obj/1kb/a")
    counts = tb.origin_counts()
    assert counts == {"requests": [
        {"method": "GET", "path": "/obj/1kb/a", "edge": "-", "count": 1, "bytes": 1024, "complete": 1},
        {"method": "HEAD", "path": "/obj/1kb/a", "edge": "-", "count": 1, "bytes": 0, "complete": 0},
        {"method": "GET", "path": "/obj/1kb/a", "edge": "ICN54-C2", "count": 1, "bytes": 1024, "complete": 1},
    ], "total": 3, "by_encoding": [
        {"method": m, "path": "/obj/1kb/a", "edge": e, "encoding": "", "count": 1}
        for m, e in (("GET", "-"), ("HEAD", "-"), ("GET", "ICN54-C2"))
    ]}
    log = tb.origin_log()
    assert [(m, p, e) for _, m, p, e in log] == [(r["method"], r["path"], r["edge"]) for r in counts["requests"]]
    assert log[0][0] <= log[1][0] <= log[2][0] <= time.time()


def test_accept_encoding_is_part_of_the_cache_key(clean_testbed: Testbed) -> None:
    """As with CloudFront's compression settings: br, gzip and none are three cached variants."""
    tb, path, pop = clean_testbed, "/obj/1kb/encodings", "ICN54-C2"
    address = tb.pop_addresses[pop][0]

    def get(accept_encoding: str | None) -> str:
        conn = http.client.HTTPConnection(address, 80, timeout=10)
        headers = {"Host": HOST, **({"Accept-Encoding": accept_encoding} if accept_encoding else {})}
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.getheader("X-Cache", "")
        finally:
            conn.close()

    assert [get(ae) for ae in ("gzip", "gzip, deflate", "br", "gzip, deflate, br", None, "identity")] == [
        "Miss from cloudfront", "Hit from cloudfront", "Miss from cloudfront", "Hit from cloudfront",
        "Miss from cloudfront", "Hit from cloudfront"]
    seen = sorted((r["encoding"], r["count"]) for r in tb.origin_counts()["by_encoding"])
    assert seen == [("", 1), ("br", 1), ("gzip", 1)]


# -- large objects: byte rate, stalls, ranges, what the origin sent ------------------------------------
MIB = 1024 * 1024


def _stream(tb: Testbed, path: str, *, timeout: float = 10.0,
            headers: dict[str, str] | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A GET straight to the origin whose body the caller reads (and times) piece by piece."""
    host, port = origin(tb)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.request("GET", path, headers=headers or {})
    return conn, conn.getresponse()


def test_fault_rate_path_and_rule(clean_testbed: Testbed) -> None:
    tb = clean_testbed
    start = time.monotonic()
    conn, resp = _stream(tb, "/fault/rate/1048576/obj/2mb/big/rate.bin")
    headers_at = time.monotonic() - start
    half = resp.read(MIB)
    half_at = time.monotonic() - start
    rest = resp.read()
    total = time.monotonic() - start
    conn.close()
    assert resp.status == 200 and half + rest == object_bytes("big/rate.bin", 2 * MIB)
    assert headers_at < 0.3  # the headers go at once, only the body is paced
    assert 0.7 <= half_at <= 1.5 and 1.7 <= total <= 3.0  # 2 MiB at 1 MiB/s, evenly
    # The rule key does the same, and the pace applies to a range's body too.
    tb.add_fault({"path": "/obj/1mb/rate-rule.bin", "rate": 524288})
    start = time.monotonic()
    ranged = direct(tb, "/obj/1mb/rate-rule.bin", headers={"Range": "bytes=0-262143"})
    assert ranged.status == 206 and ranged.body == object_bytes("rate-rule.bin", MIB)[:262144]
    assert 0.4 <= time.monotonic() - start <= 1.2  # 256 KiB at 512 KiB/s
    assert direct(tb, "/fault/rate/0/obj/1kb/x").status == 400
    with pytest.raises(TestbedError):
        tb.add_fault({"path": "/x", "rate": -1})


def test_fault_stall_path_rule_and_client_giving_up(clean_testbed: Testbed) -> None:
    tb = clean_testbed
    start = time.monotonic()
    conn, resp = _stream(tb, "/fault/stall/1000/600/obj/4kb/stall.bin")
    first = resp.read(1000)
    first_at = time.monotonic() - start
    rest = resp.read()
    end_at = time.monotonic() - start
    conn.close()
    assert resp.status == 200 and first + rest == object_bytes("stall.bin", 4096)
    assert first_at < 0.3 and end_at - first_at >= 0.55 and end_at < 2.0
    tb.add_fault({"path": "/obj/2kb/stall-rule", "stall_after": 0, "stall_ms": 300})
    start = time.monotonic()
    conn, resp = _stream(tb, "/obj/2kb/stall-rule")
    headers_at = time.monotonic() - start
    body = resp.read()
    conn.close()
    assert headers_at < 0.2 and time.monotonic() - start >= 0.28 and body == object_bytes("stall-rule", 2048)
    assert direct(tb, "/fault/stall/10/x").status == 400 and direct(tb, "/fault/stall/-1/5/x").status == 400

    # A client that gives up during the stall: the origin stops quietly and keeps serving.
    log = Path(tb.workdir or ".") / "origin.log"
    log_size = log.stat().st_size
    gone = "/fault/stall/100/800/obj/4kb/give-up"
    start = time.monotonic()
    conn, resp = _stream(tb, gone, timeout=0.3)
    assert resp.read(100) == object_bytes("give-up", 4096)[:100]
    with pytest.raises(TimeoutError):
        resp.read()
    conn.close()
    during = direct(tb, "/obj/1kb/during-stall")  # the origin is not blocked by the stalled request
    assert during.status == 200 and during.body == object_bytes("during-stall", 1024)
    time.sleep(max(0.0, start + 1.0 - time.monotonic()))  # the stall is over: the origin tried to go on
    assert direct(tb, "/obj/1kb/after-stall").status == 200
    rows = {r["path"]: (r["count"], r["bytes"], r["complete"]) for r in tb.origin_counts()["requests"]}
    assert rows[gone] == (1, 100, 0)
    new_log = log.read_bytes()[log_size:].decode(errors="replace")
    assert "Traceback" not in new_log and "Error handling request" not in new_log, new_log


def test_origin_range_answers(testbed: Testbed) -> None:
    path, size = "/obj/100kb/ranges/r.bin", 102400
    data = object_bytes("ranges/r.bin", size)
    full = direct(testbed, path)
    assert full.status == 200 and full.headers["accept-ranges"] == "bytes" and full.body == data
    for spec, first, last in (("bytes=0-99", 0, 99), ("bytes=100000-", 100000, size - 1),
                              ("bytes=-500", size - 500, size - 1), ("bytes=102000-999999", 102000, size - 1),
                              ("bytes=-999999", 0, size - 1), ("bytes=7-7", 7, 7)):
        r = direct(testbed, path, headers={"Range": spec})
        assert r.status == 206, spec
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}", spec
        assert int(r.headers["content-length"]) == last - first + 1 == len(r.body), spec
        assert r.body == data[first : last + 1], spec
        assert r.headers["etag"] == full.headers["etag"] == object_etag("ranges/r.bin", size)
        assert r.headers["cache-control"] == full.headers["cache-control"] == "public, max-age=3600"
        assert r.headers["accept-ranges"] == "bytes"
    for spec in ("bytes=102400-", "bytes=999999-1000000", "bytes=-0"):
        r = direct(testbed, path, headers={"Range": spec})
        assert r.status == 416, spec
        assert r.headers["content-range"] == f"bytes */{size}" and r.headers["cache-control"] == "no-store"
    empty = direct(testbed, "/obj/0b/ranges/empty", headers={"Range": "bytes=0-"})
    assert empty.status == 416 and empty.headers["content-range"] == "bytes */0"
    for spec in ("bytes=0-1,5-6", "bytes=5-2", "items=0-1", "bytes=abc", "bytes=-", "bytes=1-2-3"):
        r = direct(testbed, path, headers={"Range": spec})
        assert r.status == 200 and r.body == data and "content-range" not in r.headers, spec
    head = direct(testbed, path, method="HEAD", headers={"Range": "bytes=10-19"})
    assert head.status == 206 and head.body == b"" and head.headers["content-length"] == "10"
    assert head.headers["content-range"] == f"bytes 10-19/{size}"
    etag = full.headers["etag"]
    assert direct(testbed, path, headers={"Range": "bytes=0-9", "If-Range": etag}).status == 206
    other = direct(testbed, path, headers={"Range": "bytes=0-9", "If-Range": '"another-version"'})
    assert other.status == 200 and other.body == data
    nocache = direct(testbed, "/fault/nocache/obj/100kb/ranges/r.bin", headers={"Range": "bytes=0-9"})
    assert nocache.status == 206 and nocache.body == data[:10] and nocache.headers["cache-control"] == "no-store"


def test_range_is_cached_at_the_edge(clean_testbed: Testbed) -> None:
    tb, pop, other = clean_testbed, "FRA60-P1", "NRT51-P2"
    path, size = "/obj/1mb/edge/range.bin", MIB
    data = object_bytes("edge/range.bin", size)
    wanted = {"Range": "bytes=1000-1999"}
    first = via(tb, pop, path, headers=wanted)
    assert first.status == 206 and first.headers["x-cache"] == "Miss from cloudfront"
    assert first.headers["content-range"] == f"bytes 1000-1999/{size}" and first.body == data[1000:2000]
    second = via(tb, pop, path, headers=wanted)
    assert second.status == 206 and second.headers["x-cache"] == "Hit from cloudfront"
    assert second.headers["content-range"] == first.headers["content-range"] and second.body == data[1000:2000]
    assert second.headers["etag"] == first.headers["etag"] and 0 <= int(second.headers["age"]) <= 2
    head = via(tb, pop, path, method="HEAD", headers=wanted)  # a HEAD's cache key is the GET's
    assert head.status == 206 and head.headers["x-cache"] == "Hit from cloudfront" and head.body == b""
    assert head.headers["content-length"] == "1000" and head.headers["content-range"] == f"bytes 1000-1999/{size}"
    another = via(tb, pop, path, headers={"Range": "bytes=0-999"})
    assert another.headers["x-cache"] == "Miss from cloudfront" and another.body == data[:1000]
    elsewhere = via(tb, other, path, headers=wanted)
    assert elsewhere.headers["x-cache"] == "Miss from cloudfront" and elsewhere.body == data[1000:2000]
    whole = via(tb, pop, path)
    assert whole.status == 200 and whole.headers["x-cache"] == "Miss from cloudfront" and whole.body == data
    for _ in range(2):  # 416 is not cached
        r = via(tb, pop, path, headers={"Range": "bytes=2000000-"})
        assert r.status == 416 and r.headers["x-cache"] == "Error from cloudfront"
    cold_head = via(tb, pop, "/obj/1mb/edge/head.bin", method="HEAD", headers={"Range": "bytes=5-9"})
    assert cold_head.status == 206 and cold_head.headers["x-cache"] == "Miss from cloudfront"
    assert cold_head.body == b"" and cold_head.headers["content-length"] == "5"
    assert tb.origin_sent() == [
        {"path": path, "edge": pop, "range": "bytes=1000-1999", "bytes": 1000, "complete": 1},
        {"path": path, "edge": pop, "range": "bytes=0-999", "bytes": 1000, "complete": 1},
        {"path": path, "edge": other, "range": "bytes=1000-1999", "bytes": 1000, "complete": 1},
        {"path": path, "edge": pop, "range": "", "bytes": size, "complete": 1},
        {"path": path, "edge": pop, "range": "bytes=2000000-", "bytes": 2 * len(b"range not satisfiable\n"),
         "complete": 2},
        {"path": "/obj/1mb/edge/head.bin", "edge": pop, "range": "bytes=5-9", "bytes": 5, "complete": 1},
    ]
    assert count(tb, path, pop) == 5 and count(tb, path, method="HEAD") == 0
    assert count(tb, "/obj/1mb/edge/head.bin", pop) == 1  # the HEAD went to the origin as a GET


def test_counts_bytes_and_complete(clean_testbed: Testbed) -> None:
    tb, cut = clean_testbed, "/fault/truncate/obj/4kb/cut"
    assert direct(tb, "/obj/3kb/full").status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        direct(tb, cut)
    assert direct(tb, "/obj/3kb/full", headers={"Range": "bytes=0-99"}).status == 206
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        direct(tb, cut, headers={"Range": "bytes=0-999"})  # half of the range, then the connection drops
    assert direct(tb, "/obj/3kb/full", method="HEAD").status == 200
    assert direct(tb, "/nope").status == 404
    for _ in range(2):  # through a POP: sent once, then a hit
        assert via(tb, "GRU1-C2", "/obj/1kb/popped").status == 200
    rows = {(r["method"], r["path"], r["edge"]): (r["count"], r["bytes"], r["complete"])
            for r in tb.origin_counts()["requests"]}
    assert rows == {
        ("GET", "/obj/3kb/full", "-"): (2, 3072 + 100, 2),
        ("GET", cut, "-"): (2, 2048 + 500, 0),
        ("HEAD", "/obj/3kb/full", "-"): (1, 0, 0),
        ("GET", "/nope", "-"): (1, len(b"not found\n"), 1),
        ("GET", "/obj/1kb/popped", "GRU1-C2"): (1, 1024, 1),
    }
    assert tb.origin_sent() == [
        {"path": "/obj/3kb/full", "edge": "-", "range": "", "bytes": 3072, "complete": 1},
        {"path": cut, "edge": "-", "range": "", "bytes": 2048, "complete": 0},
        {"path": "/obj/3kb/full", "edge": "-", "range": "bytes=0-99", "bytes": 100, "complete": 1},
        {"path": cut, "edge": "-", "range": "bytes=0-999", "bytes": 500, "complete": 0},
        {"path": "/nope", "edge": "-", "range": "", "bytes": len(b"not found\n"), "complete": 1},
        {"path": "/obj/1kb/popped", "edge": "GRU1-C2", "range": "", "bytes": 1024, "complete": 1},
    ]


# -- edge access log ----------------------------------------------------------------------------------
LOG_POPS = ("LOGA1-C1", "LOGB2-C2")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A small testbed of its own with the edges' access log on."""
    with Testbed(pops=LOG_POPS, edge_log=True, workdir=tmp_path_factory.mktemp("edgelog")) as tb:
        yield tb


@pytest.fixture
def clean_logged(logged: Testbed) -> Iterator[Testbed]:
    logged.reset()
    yield logged


def edge_rows(tb: Testbed, n: int, timeout: float = 3.0) -> list[dict[str, object]]:
    """The edge log once it holds ``n`` lines: nginx writes a line as the request ends, which for a
    HEAD that missed is after it has read the object into the cache, a moment after the client is done."""
    deadline = time.monotonic() + timeout
    while True:
        rows = tb.edge_log()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


def _fields(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k not in ("time", "request_time")}


def test_edge_log_rows_for_get_and_head(clean_logged: Testbed) -> None:
    tb, (a, b) = clean_logged, LOG_POPS
    before = time.time()
    assert via(tb, a, "/obj/1kb/logged?v=1").status == 200
    assert len(edge_rows(tb, 1)) == 1
    assert via(tb, b, "/obj/1kb/logged", method="HEAD", headers={"Range": "bytes=0-9"}).status == 206
    assert len(edge_rows(tb, 2)) == 2
    assert via(tb, a, "/obj/1kb/logged?v=1").headers["x-cache"] == "Hit from cloudfront"
    head_hit = via(tb, b, "/obj/1kb/logged", method="HEAD", headers={"Range": "bytes=0-9"})
    assert head_hit.headers["x-cache"] == "Hit from cloudfront"
    control = via(tb, a, "/_control/counts")  # nginx's own 404: no cache status
    assert control.status == 404
    rows = edge_rows(tb, 5)
    assert [_fields(r) for r in rows] == [
        {"pop": a, "method": "GET", "uri": "/obj/1kb/logged?v=1", "status": 200, "bytes": 1024, "range": "",
         "cache": "MISS"},
        {"pop": b, "method": "HEAD", "uri": "/obj/1kb/logged", "status": 206, "bytes": 0, "range": "bytes=0-9",
         "cache": "MISS"},
        {"pop": a, "method": "GET", "uri": "/obj/1kb/logged?v=1", "status": 200, "bytes": 1024, "range": "",
         "cache": "HIT"},
        {"pop": b, "method": "HEAD", "uri": "/obj/1kb/logged", "status": 206, "bytes": 0, "range": "bytes=0-9",
         "cache": "HIT"},
        {"pop": a, "method": "GET", "uri": "/_control/counts", "status": 404, "bytes": len(control.body),
         "range": "", "cache": ""},
    ]
    times = [float(r["time"]) for r in rows]  # type: ignore[arg-type]
    assert before - 0.01 <= times[0] <= times[1] <= times[2] <= times[3] <= times[4] <= time.time() + 0.01
    assert all(isinstance(r["request_time"], float) and 0 <= r["request_time"] < 1 for r in rows)  # type: ignore[operator]


def test_edge_log_reset_state_and_default_off(clean_logged: Testbed, testbed: Testbed, tmp_path: Path) -> None:
    tb = clean_logged
    via(tb, LOG_POPS[0], "/obj/1b/reset-me")
    assert len(edge_rows(tb, 1)) == 1
    tb.reset()
    assert tb.edge_log() == []
    assert via(tb, LOG_POPS[0], "/obj/1b/reset-me").headers["x-cache"] == "Miss from cloudfront"
    rows = edge_rows(tb, 1)
    assert [(r["uri"], r["cache"]) for r in rows] == [("/obj/1b/reset-me", "MISS")]
    assert tb.state()["edge_log"] is True
    tb.save_state(tmp_path / "state")
    attached = Testbed.from_state_dir(tmp_path / "state")
    assert attached.edge_logging and attached.state()["edge_log"] is True
    assert attached.edge_log() == rows
    # Off by default: no log line is written and edge_log() says so.
    assert testbed.edge_logging is False and testbed.state()["edge_log"] is False
    assert not testbed.edge_log_path.exists()
    assert "tb_edge" not in (Path(testbed.workdir or ".") / "nginx" / "nginx.conf").read_text()
    with pytest.raises(TestbedError, match="edge_log=True"):
        testbed.edge_log()


# -- lifecycle ----------------------------------------------------------------------------------------
def _all_gone(pids: dict[str, int]) -> bool:
    return not any(alive(p) or group_members(p) for p in pids.values())


def test_two_testbeds_at_once(testbed: Testbed, tmp_path: Path) -> None:
    other = Testbed(pops=["AAA1-C1", "BBB2-C2"], two_address_pops=["BBB2-C2"], hosts=["cdn.shop.test"],
                    distribution="dabcdefabcdef0", workdir=tmp_path / "tb2")
    with other:
        assert other.start() is other  # idempotent
        mine = {a for v in testbed.pop_addresses.values() for a in v}
        mine |= {testbed.nameserver, testbed.origin_url}
        theirs = {a for v in other.pop_addresses.values() for a in v} | {other.nameserver, other.origin_url}
        assert not mine & theirs and other.slot != testbed.slot
        r = fetch(other.pop_addresses["BBB2-C2"][1], "/obj/1kb/two", host="cdn.shop.test",
                  tls=ssl.create_default_context(cafile=other.ca_file))
        assert r.status == 200 and r.headers["x-amz-cf-pop"] == "BBB2-C2"
        assert via(testbed, SOME_POPS[0], "/obj/1kb/two").status == 200
        answer = resolver(other).resolve("cdn.shop.test", "A")
        assert answer.canonical_name.to_text() == "dabcdefabcdef0.cloudfront.net."
        pids = other.pids
        assert set(pids) == {"origin", "dnsmasq", "nginx"} and all(alive(p) for p in pids.values())
    assert _all_gone(pids)
    other.stop()  # stop twice is fine
    assert via(testbed, SOME_POPS[0], "/obj/1kb/two").status == 200


def test_stop_without_workdir_cleans_up() -> None:
    tb = Testbed(pops=["CCC3-C1"]).start()
    workdir, pids = tb.workdir, tb.pids
    assert workdir is not None and workdir.is_dir()
    tb.stop()
    assert _all_gone(pids) and not workdir.exists()


def test_missing_tool_is_a_clear_error() -> None:
    with pytest.raises(TestbedError, match="not found"):
        find_binary("no-such-tool-prewarm")
    with pytest.raises(ValueError):
        Testbed(pops=["bad pop"])
    with pytest.raises(ValueError):
        Testbed(pops=["A1"], two_address_pops=["B2"])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prewarm.testbed.cli", "testbed", *args],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_cli_up_env_down_round_trip(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {**os.environ, "PREWARM_TESTBED_DIR": str(state_dir)}
    up = _cli("up", "--pops", "DDD4-C1,EEE5-C1", "--two-address-pop", "EEE5-C1", env=env)
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert exports == state["env"] and exports["PREWARM_ALLOW_PRIVATE_EDGES"] == "1"
        pids = {p["name"]: p["pid"] for p in state["processes"]}
        assert all(alive(p) for p in pids.values())
        again = _cli("up", env=env)
        assert again.returncode == 0 and again.stdout == up.stdout  # idempotent
        as_json = _cli("env", "--json", "--dir", str(state_dir))
        assert json.loads(as_json.stdout) == state["env"]
        tb = Testbed.from_state_dir(state_dir)
        assert tb.running and len(tb.pop_addresses["EEE5-C1"]) == 2
        ctx = ssl.create_default_context(cafile=tb.ca_file)
        r = fetch(tb.pop_addresses["EEE5-C1"][1], "/obj/1kb/cli", tls=ctx)
        assert r.status == 200 and r.headers["x-amz-cf-pop"] == "EEE5-C1"
        assert tb.origin_counts()["total"] == 1
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert _all_gone(pids) and not (state_dir / STATE_FILE).exists()
    assert _cli("env", env=env).returncode == 1
    assert _cli("down", env=env).returncode == 0
