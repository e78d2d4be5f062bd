"""The lean HTTP/1.1 client (prewarm.net.wire) through PopClient, against scripted loopback servers.

Each test's server answers every request with what its ``respond`` function returns, so the framings a
CDN edge may use (Content-Length, chunked, until close), the failures it may produce (short bodies,
silence, resets, refusals, bad certificates) and keep-alive behaviour are exercised byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from prewarm.core.pacing import ByteBudget
from prewarm.net.popclient import FetchResult, PopClient, Slots, age_seconds, preload_trust_store, ssl_context
from prewarm.net.wire import (
    DEADLINE_CHECK_S,
    Limits,
    Pool,
    Response,
    Target,
    build_head,
    exchange,
    header_block,
    target_of,
)
from prewarm.settings import Settings

HOST = "www.example.com"
Respond = Callable[[bytes, int], "bytes | tuple[bytes, bool] | Paced | None"]
"""(request head, request number from 1) -> reply, (reply, close afterwards), a ``Paced`` reply, or None to stay
silent."""


class Paced(list):
    """A reply sent as (seconds to wait first, bytes) pieces; ``close`` afterwards when the last piece is None."""


class Server:
    """A loopback server that records request heads and connections and answers from a script."""

    def __init__(self, respond: Respond, trickle: bool = False) -> None:
        self.respond = respond
        self.trickle = trickle
        self.heads: list[bytes] = []
        self.connections = 0
        self.sni: list[str | None] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                reply = self.respond(head, len(self.heads))
                if reply is None:
                    await asyncio.sleep(3600)
                    return
                if isinstance(reply, Paced):
                    for wait_s, piece in reply:
                        await asyncio.sleep(wait_s)
                        if piece is None:
                            return
                        writer.write(piece)
                        await writer.drain()
                    continue
                data, close = reply if isinstance(reply, tuple) else (reply, False)
                if self.trickle:
                    for i in range(len(data)):
                        writer.write(data[i:i + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(data)
                    await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@asynccontextmanager
async def serving(respond: Respond, *, trickle: bool = False, tls: ssl.SSLContext | None = None
                  ) -> AsyncIterator[Server]:
    server = Server(respond, trickle)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"attempts": 3, "backoff_base_s": 0.001, "fetch_timeout_s": 0.5, "connect_timeout_s": 0.5}
    return Settings(**{**base, **kw})


def fetch_all(respond: Respond, paths: list[str], *, method: str = "GET", trickle: bool = False,
              headers: dict[str, str] | None = None, pace: Any = None, **kw: Any) -> tuple[list[FetchResult], Server]:
    """Fetch each path in turn through one PopClient; the results and the server that answered."""

    async def main() -> tuple[list[FetchResult], Server]:
        async with serving(respond, trickle=trickle) as server:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(**kw), headers or {})
            try:
                results = [await client.fetch(f"http://{HOST}:{server.port}{p}", method, pace=pace) for p in paths]
            finally:
                await client.close()
            return results, server

    return asyncio.run(main())


def ok(body: bytes = b"x" * 1024, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Cache: Hit from cloudfront\r\n{extra}\r\n"
            .encode() + body)


def chunked(*parts: bytes, trailer: str = "") -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + f"0\r\n{trailer}\r\n".encode()


def test_content_length_body_is_counted_and_the_connection_kept() -> None:
    results, server = fetch_all(lambda head, n: ok(extra="Age: 17\r\n"), ["/a", "/b", "/c"])
    for r in results:
        assert r.ok and r.status == 200 and r.nbytes == 1024 and r.content_length == 1024
        assert r.x_cache == "Hit from cloudfront" and r.age == 17 and r.attempts == 1 and r.address == "127.0.0.1"
    assert server.connections == 1


def test_request_head_is_what_a_viewer_sends() -> None:
    _, server = fetch_all(lambda head, n: ok(), ["/p%20q/é?x=1"], headers={"X-Variant": "b"})
    head = server.heads[0].decode()
    assert head == (f"GET /p%20q/%C3%A9?x=1 HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
                    "Accept-Encoding: gzip, deflate, br\r\nUser-Agent: cdn-prewarm/0.1\r\nPragma: server-timing\r\n"
                    "X-Variant: b\r\n"
                    "Accept: */*\r\n\r\n")


def test_host_header_drops_default_ports_and_brackets_ipv6() -> None:
    block = header_block({})
    assert build_head("HEAD", Target("https://WWW.Example.com:443/x"), block).startswith(
        b"HEAD /x HTTP/1.1\r\nHost: www.example.com\r\n")
    assert b"Host: [::1]:8080\r\n" in build_head("GET", Target("http://[::1]:8080"), block)
    assert Target("http://h.test").target == "/"
    assert Target('http://h.test/a"b<c>/%41;x=1?q=a,b&r=[1]').target == "/a%22b%3Cc%3E/%41;x=1?q=a,b&r=%5B1%5D"
    with pytest.raises(ValueError):
        Target("ftp://h.test/x")


def test_chunked_body_counts_decoded_bytes_and_keeps_the_connection() -> None:
    reply = chunked(b"a" * 100, b"b" * 3000, b"c", trailer="X-T: 1\r\n")
    results, server = fetch_all(lambda head, n: reply, ["/a", "/b"])
    assert [(r.ok, r.nbytes, r.content_length) for r in results] == [(True, 3101, None)] * 2
    assert server.connections == 1


def test_bodies_survive_byte_by_byte_delivery() -> None:
    replies = [ok(b"y" * 300, "Age: 3\r\n"), chunked(b"z" * 40, b"w" * 7)]
    results, _ = fetch_all(lambda head, n: replies[n - 1], ["/a", "/b"], trickle=True, fetch_timeout_s=5)
    assert [(r.ok, r.nbytes, r.age) for r in results] == [(True, 300, 3), (True, 47, None)]


def test_body_until_close_is_counted() -> None:
    results, server = fetch_all(lambda head, n: (b"HTTP/1.0 200 OK\r\n\r\n" + b"q" * 5000, True), ["/a", "/b"])
    assert [(r.ok, r.nbytes, r.content_length) for r in results] == [(True, 5000, None)] * 2
    assert server.connections == 2


def test_short_content_length_body_is_truncated_and_retried() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"t" * 1000
    results, server = fetch_all(lambda head, n: (reply, True), ["/a"])
    r = results[0]  # a body cut short is tried PREWARM_BODY_ATTEMPTS (2) times, not PREWARM_ATTEMPTS (3)
    assert r.error_class == "truncated" and r.attempts == 2 and r.error_message == "1000 of 4096 bytes"
    assert r.retryable and len(server.heads) == 2 and (r.nbytes, r.wasted) == (1000, 2000)
    results, server = fetch_all(lambda head, n: (reply, True), ["/a"], body_attempts=3)
    assert results[0].attempts == 3 and results[0].wasted == 3000 and len(server.heads) == 3


def test_chunked_body_without_its_last_chunk_is_truncated() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"t" * 1024 + b"\r\n"
    results, _ = fetch_all(lambda head, n: (reply, True), ["/a"], attempts=1)
    assert results[0].error_class == "truncated" and "1024" in results[0].error_message


def test_malformed_chunk_size_is_truncated() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    results, _ = fetch_all(lambda head, n: reply, ["/a"], attempts=1)
    assert results[0].error_class == "truncated"


def test_head_reads_no_body_and_reports_the_length() -> None:
    head_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n"
    results, server = fetch_all(lambda head, n: head_reply, ["/a", "/b"], method="HEAD")
    assert [(r.ok, r.nbytes, r.content_length) for r in results] == [(True, 0, 123456)] * 2
    assert server.connections == 1 and server.heads[0].startswith(b"HEAD /a HTTP/1.1\r\n")


def test_interim_answers_are_skipped() -> None:
    results, _ = fetch_all(lambda head, n: b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + ok(b"k"), ["/a"])
    assert results[0].ok and results[0].status == 200 and results[0].nbytes == 1


def test_no_body_statuses_and_redirects_are_not_followed() -> None:
    replies = [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
               b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"]
    results, server = fetch_all(lambda head, n: replies[n - 1], ["/a", "/b"])
    assert (results[0].status, results[0].error_class, results[0].nbytes) == (304, "http_304", 0)
    assert (results[1].status, results[1].error_class, results[1].attempts) == (302, "http_302", 1)
    assert results[1].error_message == "HTTP 302 Found" and len(server.heads) == 2


def test_5xx_is_retried_with_retry_after_and_4xx_is_not() -> None:
    replies = [b"HTTP/1.1 503 Slow Down\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n", ok(b"fine")]
    results, _ = fetch_all(lambda head, n: replies[min(n, 2) - 1], ["/a"])
    assert results[0].ok and results[0].attempts == 2 and results[0].nbytes == 4
    results, server = fetch_all(lambda head, n: b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!", ["/a"])
    assert (results[0].error_class, results[0].attempts, results[0].nbytes) == ("http_404", 1, 3)
    assert len(server.heads) == 1


def test_the_rate_cap_is_awaited_before_every_attempt_and_not_counted_as_latency() -> None:
    paced: list[int] = []

    async def pace() -> None:  # held back 0.3 s by the job's cap each time
        paced.append(1)
        await asyncio.sleep(0.3)

    replies = [b"HTTP/1.1 503 Slow Down\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n", ok(b"fine")]
    results, server = fetch_all(lambda head, n: replies[min(n, 2) - 1], ["/a", "/b"], pace=pace)
    assert [r.attempts for r in results] == [2, 1] and len(server.heads) == 3
    assert len(paced) == 3  # the retry waited for the cap too
    assert results[0].elapsed_ms < 550, results[0].elapsed_ms  # 600+ if the two paced waits counted


def test_silence_is_a_fetch_timeout_per_attempt() -> None:
    results, server = fetch_all(lambda head, n: None, ["/a"], fetch_timeout_s=0.2, attempts=2)
    r = results[0]
    assert r.error_class == "fetch_timeout" and r.attempts == 2 and "0.2 s" in r.error_message
    assert 350 <= r.elapsed_ms < 2000 and server.connections == 2


def test_a_stalled_body_is_a_stall_with_its_bytes_wasted() -> None:
    def respond(head: bytes, n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"  # then nothing, connection left open

    results, server = fetch_all(respond, ["/a"], fetch_timeout_s=5, stall_timeout_s=0.2)
    r = results[0]
    assert r.error_class == "stall" and "0.2 s after 3 bytes" in r.error_message
    assert r.attempts == 2 and len(server.heads) == 2 and r.wasted == 6  # PREWARM_BODY_ATTEMPTS, then given up
    assert 350 <= r.elapsed_ms < 2000


def test_a_long_body_is_never_cut_for_its_length() -> None:
    """The head timeout bounds the head only: a body that takes four times as long, but keeps coming, is read."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 8000\r\n\r\n"
    reply = Paced([(0, head), *[(0.1, b"b" * 1000) for _ in range(8)]])
    results, _ = fetch_all(lambda h, n: reply, ["/a"], fetch_timeout_s=0.2, stall_timeout_s=0.5, attempts=1)
    assert results[0].ok and results[0].nbytes == 8000 and results[0].elapsed_ms >= 750


def test_a_trickle_under_the_rate_floor_is_too_slow() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    reply = Paced([(0, head), *[(0.05, b"t" * 10) for _ in range(100)]])  # ~200 bytes/s: never silent
    results, _ = fetch_all(lambda h, n: reply, ["/a"], stall_timeout_s=0.5, min_rate=1000, min_rate_window_s=0.3,
                           body_attempts=1)
    r = results[0]
    assert r.error_class == "too_slow" and "under the floor of 1000 bytes/s" in r.error_message
    assert r.attempts == 1 and 0 < r.wasted < 1000 and r.elapsed_ms < 900


def test_the_jobs_deadline_ends_a_body_that_still_flows() -> None:
    async def main() -> FetchResult:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
        reply = Paced([(0, head), *[(0.05, b"d" * 1000) for _ in range(100)]])
        async with serving(lambda h, n: reply) as server:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(), {})
            try:
                return await client.fetch(f"http://{HOST}:{server.port}/a", deadline=time.time() + 0.4)
            finally:
                await client.close()

    r = asyncio.run(main())
    assert r.error_class == "timeout" and "deadline" in r.error_message and r.attempts == 1
    assert 300 <= r.elapsed_ms < 400 + DEADLINE_CHECK_S * 1000 + 200


def test_a_range_is_asked_for_and_its_206_checked() -> None:
    def respond(head: bytes, n: int) -> bytes:
        if b"/ignored" in head:
            return ok(b"w" * 2_000_000)  # an edge that ignores Range sends the whole object
        if b"/wrong" in head:
            return b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 0-9/5000\r\nContent-Length: 10\r\n\r\n" + b"r" * 10
        return b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 100-199/5000\r\nContent-Length: 100\r\n\r\n" + b"r" * 100

    async def main() -> tuple[list[FetchResult], Server]:
        async with serving(respond) as server:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(), {})
            try:
                got = [await client.fetch(f"http://{HOST}:{server.port}{p}", byte_range=(100, 199))
                       for p in ("/ok", "/ignored", "/wrong")]
            finally:
                await client.close()
            return got, server

    (good, ignored, wrong), server = asyncio.run(main())
    assert b"Range: bytes=100-199\r\n" in server.heads[0] and server.heads[0].startswith(b"GET /ok HTTP/1.1\r\n")
    assert good.ok and (good.status, good.nbytes, good.size) == (206, 100, 5000)
    assert ignored.error_class == "range_unsupported" and ignored.attempts == 1  # and its body left unread:
    assert ignored.status == 200 and ignored.size == 2_000_000 and ignored.nbytes < 1_000_000
    assert wrong.error_class == "range_mismatch" and "bytes 0-9/5000" in wrong.error_message


def test_a_body_over_max_body_is_left_unread_with_its_size() -> None:
    async def main() -> tuple[FetchResult, FetchResult, Server]:
        async with serving(lambda h, n: ok(b"z" * 2_000_000)) as srv:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(), {})
            try:
                big = await client.fetch(f"http://{HOST}:{srv.port}/a", max_body=10_000)
                whole = await client.fetch(f"http://{HOST}:{srv.port}/b", max_body=2_000_000)
                return big, whole, srv
            finally:
                await client.close()

    big, whole, server = asyncio.run(main())
    assert big.ok and big.oversize and big.size == 2_000_000 and big.nbytes < 1_000_000  # only the first read
    assert whole.ok and not whole.oversize and whole.nbytes == 2_000_000
    assert server.connections == 2  # the unread body's connection is not reused


def test_a_byte_gate_holds_the_read_rate() -> None:
    """A 600 KB body read under a 1 MB/s budget takes about 0.6 s less its last read (the reader pauses, the
    kernel's window slows the sender); the same body without one takes a fraction of that."""

    async def main(rate: float | None) -> tuple[FetchResult, float]:
        async with serving(lambda h, n: ok(b"g" * 600_000)) as srv:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(), {})
            budget = ByteBudget(rate)
            try:
                began = time.monotonic()
                r = await client.fetch(f"http://{HOST}:{srv.port}/a", gate=budget if rate else None)
                return r, time.monotonic() - began
            finally:
                await client.close()

    capped, capped_s = asyncio.run(main(1_000_000))
    free, free_s = asyncio.run(main(None))
    assert capped.ok and free.ok and capped.nbytes == free.nbytes == 600_000
    assert 0.34 <= capped_s < 1.2 and free_s < 0.15, (capped_s, free_s)


def test_one_deadline_check_per_pool_fails_each_exchange_on_time_and_stops_when_none_is_in_flight() -> None:
    """Deadlines are enforced by the pool's periodic check, not a timer per request: a silent exchange still
    fails within the check's period of its own deadline while a quick one beside it succeeds, and the check
    stops once nothing is in flight (no timer left behind on an idle pool)."""

    async def main() -> tuple[float, list[Any], bool, bool]:
        async with serving(lambda head, n: None if b"/silent" in head else ok()) as server:
            pool = Pool("127.0.0.1", ssl.create_default_context(), 1.0)
            loop = asyncio.get_running_loop()

            async def one(path: str, timeout_s: float) -> Any:
                target = Target(f"http://{HOST}:{server.port}{path}")
                try:
                    return await exchange(pool, target, build_head("GET", target, header_block({})), False,
                                          Limits(head_s=timeout_s))
                except Exception as exc:
                    return exc

            start = loop.time()
            silent = asyncio.ensure_future(one("/silent", 0.3))
            quick = [await one("/quick", 0.3) for _ in range(3)]
            checking = pool._check is not None  # the silent exchange is still in flight
            answers = [await silent, *quick]
            elapsed = loop.time() - start
            await asyncio.sleep(DEADLINE_CHECK_S * 3)
            idle = pool._check is None
            pool.close()
            return elapsed, answers, checking, idle

    elapsed, answers, checking, idle = asyncio.run(main())
    timed_out, *quick = answers
    assert getattr(timed_out, "error_class", None) == "fetch_timeout" and "no response head within 0.3 s" in \
        timed_out.message
    assert 0.3 <= elapsed < 0.3 + DEADLINE_CHECK_S + 0.25
    assert all(isinstance(r, Response) and r.status == 200 and r.nbytes == 1024 for r in quick)
    assert checking and idle


def test_slots_hand_a_freed_slot_to_the_first_waiter_and_never_lose_one_to_a_cancelled_waiter() -> None:
    async def main() -> list[str]:
        slots = Slots(1)
        order: list[str] = []
        assert slots.take() and not slots.take()  # the only slot is taken at once; no second one

        async def waiter(name: str) -> None:
            await slots.acquire()
            order.append(name)

        first, gone, second = (asyncio.ensure_future(waiter(n)) for n in ("first", "gone", "second"))
        await asyncio.sleep(0)
        gone.cancel()  # cancelled while waiting: it must not keep a place or a slot
        await asyncio.sleep(0)
        slots.release()  # to "first", not to the free count
        await first
        assert slots.free == 0 and order == ["first"]
        slots.release()  # to "second" ("gone" is skipped)
        await second
        # Handed a slot and cancelled before it ran: the slot passes on instead of leaking.
        late = asyncio.ensure_future(waiter("late"))
        await asyncio.sleep(0)
        slots.release()
        late.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await late
        assert slots.free == 1 and not slots.waiters
        await slots.acquire()
        slots.release()
        assert slots.free == 1
        return order

    assert asyncio.run(main()) == ["first", "second"]


def test_refused_connection_is_a_connection_error() -> None:
    async def main() -> FetchResult:
        client = PopClient("TST1-P1", ["127.0.0.1"], settings(attempts=2), {})
        try:
            return await client.fetch(f"http://{HOST}:9/x")  # discard port: nothing listens
        finally:
            await client.close()

    r = asyncio.run(main())
    assert r.error_class == "connection" and r.attempts == 2 and "refused" in r.error_message.lower()


def test_garbage_answer_is_a_connection_error() -> None:
    results, _ = fetch_all(lambda head, n: (b"SSH-2.0-OpenSSH\r\n\r\n", True), ["/a"], attempts=1)
    assert results[0].error_class == "connection" and "status line" in results[0].error_message


def test_keep_alive_closed_by_the_edge_is_replaced_without_an_attempt() -> None:
    async def main() -> tuple[list[FetchResult], Server]:
        async with serving(lambda head, n: (ok(), True)) as server:  # answers, then closes without saying so
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(), {})
            results = []
            for p in ("/a", "/b", "/c"):
                results.append(await client.fetch(f"http://{HOST}:{server.port}{p}"))
                await asyncio.sleep(0.05)
            await client.close()
            return results, server

    results, server = asyncio.run(main())
    assert [(r.ok, r.attempts) for r in results] == [(True, 1)] * 3
    assert server.connections == 3 and len(server.heads) == 3


def test_reused_connection_closed_before_answering_is_retried_once_for_free() -> None:
    replies: dict[int, bytes | tuple[bytes, bool]] = {1: ok(), 2: (b"", True)}  # drops the 2nd request unanswered
    results, server = fetch_all(lambda head, n: replies.get(n, ok()), ["/a", "/b"])
    assert [(r.ok, r.attempts) for r in results] == [(True, 1), (True, 1)]
    assert server.connections == 2 and len(server.heads) == 3


def test_fresh_connection_closed_before_answering_is_a_connection_error() -> None:
    results, server = fetch_all(lambda head, n: (b"", True), ["/a"])
    assert results[0].error_class == "connection" and results[0].attempts == 3 and len(server.heads) == 3


def test_connection_close_is_honoured() -> None:
    results, server = fetch_all(lambda head, n: ok(extra="Connection: close\r\n"), ["/a", "/b"])
    assert all(r.ok for r in results) and server.connections == 2


def test_retries_move_to_the_pops_next_address() -> None:
    async def main() -> FetchResult:
        async with serving(lambda head, n: ok()) as server:
            client = PopClient("TST1-P1", ["127.0.0.2", "127.0.0.1"], settings(), {})
            try:
                # 127.0.0.2 has no listener on this port: refused, then the second address answers.
                return await client.fetch(f"http://{HOST}:{server.port}/a")
            finally:
                await client.close()

    r = asyncio.run(main())
    assert r.ok and r.attempts == 2 and r.address == "127.0.0.1"


def test_concurrent_fetches_are_capped_and_share_connections() -> None:
    async def main() -> tuple[list[FetchResult], Server]:
        async with serving(lambda head, n: ok()) as server:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(), {}, limit=4)
            urls = [f"http://{HOST}:{server.port}/o{i}" for i in range(40)]
            results = await asyncio.gather(*(client.fetch(u) for u in urls))
            await client.close()
            return list(results), server

    results, server = asyncio.run(main())
    assert all(r.ok and r.nbytes == 1024 for r in results)
    assert server.connections <= 4 and len(server.heads) == 40


def test_response_headers_are_found_by_name() -> None:
    resp = Response(200, "OK", "\r\nX-Cache: Hit from cloudfront\r\nAGE: 7\r\nVia: a\r\nvia:  b \r\nX-Empty:")
    assert resp.header("x-cache") == "Hit from cloudfront" and resp.header("age") == "7"
    assert resp.header("via") == "b" and resp.header_values("via") == ["a", "b"]
    assert resp.header("x-empty") == "" and resp.header("x") is None and resp.header("cache") is None
    assert resp.headers == {"x-cache": "Hit from cloudfront", "age": "7", "via": "b", "x-empty": ""}
    assert Response(204, "", "").header("age") is None


def test_conflicting_content_lengths_are_refused() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    results, _ = fetch_all(lambda head, n: reply, ["/a"], attempts=1)
    assert results[0].error_class == "connection" and "conflicting" in results[0].error_message
    same = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\nabcd"
    results, _ = fetch_all(lambda head, n: same, ["/a"])
    assert results[0].ok and results[0].nbytes == 4


def test_age_parsing() -> None:
    assert age_seconds(None) is None
    assert age_seconds("12") == 12 and age_seconds(" 0 ") == 0
    assert age_seconds("abc") is None and age_seconds("1.5") is None and age_seconds("-3") is None
    assert age_seconds("1_000") is None and age_seconds("²") is None
    results, _ = fetch_all(lambda head, n: ok(extra="Age: soon\r\n"), ["/a"])
    assert results[0].ok and results[0].age is None


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    from prewarm.testbed.ca import make_tls

    return make_tls(Path(tmp_path_factory.mktemp("tls")), [HOST])


def tls_fetch(tls_files: Any, host: str, ca_bundle: str | None) -> tuple[FetchResult, Server]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    seen: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment,misc]

    async def main() -> tuple[FetchResult, Server]:
        async with serving(lambda head, n: ok(), tls=server_ctx) as server:
            client = PopClient("TST1-P1", ["127.0.0.1"], settings(ca_bundle=ca_bundle, attempts=1), {})
            try:
                r = await client.fetch(f"https://{host}:{server.port}/secure")
                server.sni = seen
                return r, server
            finally:
                await client.close()

    return asyncio.run(main())


def test_tls_sends_the_urls_host_as_sni_and_verifies_it(tls_files: Any) -> None:
    r, server = tls_fetch(tls_files, HOST, str(tls_files.ca_cert))
    assert r.ok and r.nbytes == 1024 and server.sni == [HOST]
    assert f"Host: {HOST}:{server.port}\r\n".encode() in server.heads[0]


@pytest.mark.parametrize(("host", "with_ca"), [(HOST, False), ("other.example.org", True)])
def test_tls_refuses_an_unverified_edge(tls_files: Any, host: str, with_ca: bool) -> None:
    r, server = tls_fetch(tls_files, host, str(tls_files.ca_cert) if with_ca else None)
    assert r.error_class == "tls" and "CERTIFICATE_VERIFY_FAILED" in r.error_message and not server.heads


def test_each_trust_store_is_loaded_once_per_process_and_still_verifies(
        tls_files: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetcher keeps a client per POP; loading the system trust store costs ~57 ms of CPU, so it is loaded
    once per process and bundle, and the shared context still verifies each edge against the URL's host."""
    loads: list[str | None] = []
    create = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        if not args:  # a client context (the test server's own is made with Purpose.CLIENT_AUTH)
            loads.append(kwargs.get("cafile"))
        return create(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    ssl_context.cache_clear()
    try:
        ca = str(tls_files.ca_cert)
        preload_trust_store(ca)  # as a fetcher does when it starts
        for i in range(5):
            PopClient(f"TST{i}-P1", ["127.0.0.1"], settings(ca_bundle=ca), {})
            PopClient(f"TST{i}-P1", ["127.0.0.1"], settings(), {})
        assert loads == [ca, None]
        r, server = tls_fetch(tls_files, HOST, ca)
        assert r.ok and r.nbytes == 1024 and server.sni == [HOST]
        r, server = tls_fetch(tls_files, "other.example.org", ca)
        assert r.error_class == "tls" and "CERTIFICATE_VERIFY_FAILED" in r.error_message and not server.heads
        r, server = tls_fetch(tls_files, HOST, None)  # the system store does not know the test CA
        assert r.error_class == "tls" and not server.heads
        assert loads == [ca, None]
    finally:
        ssl_context.cache_clear()


def test_a_bundle_that_cannot_load_fails_the_client_not_the_preload(tmp_path: Path) -> None:
    """A fetcher must start even with a bad PREWARM_CA_BUNDLE, so that the job fails with the reason."""
    missing = str(tmp_path / "missing.pem")
    preload_trust_store(missing)
    with pytest.raises(FileNotFoundError):
        PopClient("TST1-P1", ["127.0.0.1"], settings(ca_bundle=missing), {})


def test_target_of_remembers_a_urls_target_and_still_refuses_bad_urls() -> None:
    url = "https://www.example.com:8443/a b/c?q=1"
    first = target_of(url)
    assert first is target_of(url)  # parsed once, shared by every POP the URL goes through
    fresh = Target(url)
    assert (first.scheme, first.host, first.port, first.host_header, first.target) == (
        fresh.scheme, fresh.host, fresh.port, fresh.host_header, fresh.target)
    for bad in ("ftp://www.example.com/x", "http:///nohost"):
        with pytest.raises(ValueError):
            target_of(bad)
