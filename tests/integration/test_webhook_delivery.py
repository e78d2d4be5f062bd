"""Webhook delivery against a real HTTP(S) receiver on 127.0.0.1: signing, retries, give-up rules, TLS."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prewarm.net.webhook import SIGNATURE_HEADER, DeliveryStatus, deliver, verify_signature
from prewarm.testbed.ca import TlsFiles, make_tls
from prewarm.testbed.proc import TestbedError

SECRET = "webhook-test-secret"
BODY = json.dumps({"req_id": "r-1", "status": "FINISHED", "succeeded": 3, "failed": 0}).encode()


@dataclass
class Reply:
    """One scripted answer: status, extra headers, and how long to stall before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0
    trickle: bool = False  # send the status line, then one header byte at a time, slowly


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A real local HTTP server answering from a script (the last reply repeats) and recording requests."""

    def __init__(self, script: list[Reply], tls: tuple[Path, Path] | None = None,
                 bind: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.script = list(script)
        self.requests: list[Received] = []
        self.connections = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body, time.monotonic()))
                    reply = receiver.script.pop(0) if len(receiver.script) > 1 else receiver.script[0]
                time.sleep(reply.stall_s)
                if reply.trickle:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    for _ in range(50):
                        self.wfile.write(b"a")
                        self.wfile.flush()
                        time.sleep(0.1)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, object]:
                sock, addr = super().get_request()
                with receiver._lock:
                    receiver.connections += 1
                if tls is not None:
                    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    ctx.load_cert_chain(str(tls[0]), str(tls[1]))
                    sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, addr

            def handle_error(self, request: object, client_address: object) -> None:  # e.g. failed handshakes
                return

        self.server = Server(bind, Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def fast(**kwargs: object) -> dict[str, object]:
    """Small windows and backoff so each test takes seconds, not minutes."""
    return {"allow_private": True, "window_s": 5.0, "backoff_base_s": 0.05, "backoff_cap_s": 0.2,
            "timeout_s": 2.0, **kwargs}


def test_one_signed_delivery() -> None:
    seen: list[DeliveryStatus] = []
    with Receiver([Reply(204)]) as rx:
        status = deliver(rx.url("/hook?team=cdn"), BODY, SECRET, on_attempt=seen.append, **fast())
    assert status.delivered and not status.gave_up
    assert status.attempts == 1 and status.last_status == 204 and status.last_error == ""
    assert status.last_attempt_at  # project time format, e.g. 2026-01-01 00:00:00.000000
    assert time.strptime(status.last_attempt_at.split(".")[0], "%Y-%m-%d %H:%M:%S")
    assert len(rx.requests) == 1
    got = rx.requests[0]
    assert got.path == "/hook?team=cdn"
    assert got.body == BODY
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("cdn-prewarm")
    assert verify_signature(got.body, SECRET, got.headers[SIGNATURE_HEADER])
    assert not verify_signature(got.body, "wrong", got.headers[SIGNATURE_HEADER])
    assert seen == [status]


def test_unsigned_without_secret() -> None:
    with Receiver([Reply(200)]) as rx:
        status = deliver(rx.url(), BODY, None, **fast())
    assert status.delivered
    assert SIGNATURE_HEADER not in rx.requests[0].headers


def test_host_header_is_the_url_host_while_connecting_to_the_checked_address() -> None:
    first = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)[0][4][0]
    if first != "127.0.0.1":
        pytest.skip(f"localhost resolves to {first} first here")
    with Receiver([Reply(200)]) as rx:
        status = deliver(rx.url(host="localhost"), BODY, SECRET, **fast())
    assert status.delivered
    assert rx.requests[0].headers["Host"] == f"localhost:{rx.port}"


def test_server_error_then_success_is_retried() -> None:
    seen: list[DeliveryStatus] = []
    with Receiver([Reply(500), Reply(200)]) as rx:
        status = deliver(rx.url(), BODY, SECRET, on_attempt=seen.append, **fast())
    assert status.delivered and status.attempts == 2 and status.last_status == 200
    assert len(rx.requests) == 2
    assert all(r.body == BODY for r in rx.requests)
    assert [s.attempts for s in seen] == [1, 2]
    assert seen[0].last_status == 500 and "HTTP 500" in seen[0].last_error and not seen[0].delivered


def test_permanent_client_error_gives_up_at_once() -> None:
    with Receiver([Reply(404)]) as rx:
        status = deliver(rx.url(), BODY, SECRET, **fast())
    assert status.gave_up and not status.delivered
    assert status.attempts == 1 and status.last_status == 404 and "permanent" in status.last_error
    assert len(rx.requests) == 1


@pytest.mark.parametrize("code", [408, 429, 503])
def test_retryable_statuses(code: int) -> None:
    with Receiver([Reply(code), Reply(200)]) as rx:
        status = deliver(rx.url(), BODY, SECRET, **fast())
    assert status.delivered and status.attempts == 2 and len(rx.requests) == 2


def test_retry_after_is_honoured() -> None:
    with Receiver([Reply(503, {"Retry-After": "1"}), Reply(200)]) as rx:
        status = deliver(rx.url(), BODY, SECRET, **fast(backoff_cap_s=5.0))
    assert status.delivered and status.attempts == 2
    assert rx.requests[1].at - rx.requests[0].at >= 1.0  # our own backoff alone would be ≤ 0.05 s


def test_retry_after_is_capped() -> None:
    with Receiver([Reply(429, {"Retry-After": "30"}), Reply(200)]) as rx:
        status = deliver(rx.url(), BODY, SECRET, **fast(backoff_cap_s=0.3))
    assert status.delivered and status.attempts == 2
    assert 0.3 <= rx.requests[1].at - rx.requests[0].at < 5.0  # 30 s asked, capped at 0.3 s


def test_redirect_is_not_followed_nor_retried() -> None:
    with Receiver([Reply(200)]) as elsewhere, Receiver([Reply(302, {"Location": elsewhere.url()}), Reply(200)]) as rx:
        status = deliver(rx.url(), BODY, SECRET, **fast())
    assert status.gave_up and not status.delivered and status.attempts == 1 and len(rx.requests) == 1
    assert status.last_status == 302 and "redirects are not followed; not retried" in status.last_error
    assert elsewhere.requests == [] and elsewhere.connections == 0


def test_receiver_that_does_not_answer_in_time_is_retried() -> None:
    seen: list[DeliveryStatus] = []
    with Receiver([Reply(200, stall_s=3.0), Reply(200)]) as rx:
        started = time.monotonic()
        status = deliver(rx.url(), BODY, SECRET, on_attempt=seen.append, **fast(timeout_s=0.5))
        elapsed = time.monotonic() - started
    assert status.delivered and status.attempts == 2 and len(rx.requests) == 2
    assert seen[0].last_status is None and "timed out" in seen[0].last_error
    assert elapsed < 2.5


def test_trickling_receiver_is_cut_off_by_the_overall_timeout() -> None:
    """Each byte arrives well within the socket timeout, but the whole answer would take 5 s."""
    with Receiver([Reply(trickle=True), Reply(200)]) as rx:
        started = time.monotonic()
        seen: list[DeliveryStatus] = []
        status = deliver(rx.url(), BODY, SECRET, on_attempt=seen.append, **fast(timeout_s=0.8))
        elapsed = time.monotonic() - started
    assert status.delivered and status.attempts == 2
    assert "timed out" in seen[0].last_error
    assert elapsed < 3.0


def test_connection_refused_is_retried_until_the_window_ends() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    status = deliver(f"http://127.0.0.1:{port}/", BODY, SECRET, **fast(window_s=1.0))
    elapsed = time.monotonic() - started
    assert status.gave_up and not status.delivered and status.attempts >= 3
    assert status.last_status is None and "retry window of 1 s ended" in status.last_error
    assert "refused" in status.last_error.lower()
    assert elapsed < 3.0


def test_window_expiry_gives_up() -> None:
    with Receiver([Reply(503)]) as rx:
        started = time.monotonic()
        status = deliver(rx.url(), BODY, SECRET, **fast(window_s=1.0, backoff_base_s=0.1, backoff_cap_s=0.3))
        elapsed = time.monotonic() - started
    assert status.gave_up and not status.delivered
    assert status.last_status == 503 and "HTTP 503" in status.last_error and "window" in status.last_error
    assert status.attempts == len(rx.requests) >= 3
    assert elapsed < 3.0
    assert rx.requests[-1].at - rx.requests[0].at < 1.5  # no attempt starts after the 1 s window


def test_stop_cancels_between_attempts() -> None:
    stop = threading.Event()

    def on_attempt(status: DeliveryStatus) -> None:
        stop.set()

    with Receiver([Reply(503)]) as rx:
        started = time.monotonic()
        status = deliver(rx.url(), BODY, SECRET, on_attempt=on_attempt, stop=stop,
                         **fast(backoff_base_s=20, backoff_cap_s=20, window_s=60))
        elapsed = time.monotonic() - started
    assert status.attempts == 1 and len(rx.requests) == 1
    assert not status.delivered and not status.gave_up and "cancelled" in status.last_error
    assert elapsed < 3.0  # the 10-20 s backoff was cut short


def test_private_receiver_refused_when_private_addresses_are_not_allowed() -> None:
    with Receiver([Reply(200)]) as rx:
        status = deliver(rx.url(host="localhost"), BODY, SECRET, **fast(allow_private=False))
    assert status.gave_up and status.attempts == 0 and "loopback" in status.last_error
    assert rx.connections == 0 and rx.requests == []


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    try:
        return make_tls(tmp_path_factory.mktemp("webhook-tls"), ["localhost", "127.0.0.1"], label="webhook test")
    except TestbedError as exc:
        pytest.skip(f"no openssl: {exc}")


def test_the_post_goes_to_the_address_that_was_checked_even_if_dns_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name answers 127.0.0.1 when checked, 127.0.0.2 a moment later. Delivery must
    connect to the checked address (with the name in Host), never look the name up again."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: str, *args: object, **kwargs: object) -> object:
        if host == "hook.rebind.test":
            lookups.append(host)
            return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", *args, **kwargs)  # type: ignore[arg-type]
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    with Receiver([Reply(200)]) as rx, Receiver([Reply(200)], bind=("127.0.0.2", rx.port)) as elsewhere:
        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        status = deliver(rx.url(host="hook.rebind.test"), BODY, SECRET, **fast())
    assert status.delivered and len(rx.requests) == 1 and elsewhere.requests == []
    assert rx.requests[0].headers["Host"] == f"hook.rebind.test:{rx.port}" and len(lookups) == 1


def test_https_delivery_verifies_the_certificate(tls_files: TlsFiles) -> None:
    first = socket.getaddrinfo("localhost", 443, type=socket.SOCK_STREAM)[0][4][0]
    if first != "127.0.0.1":  # the receiver listens on 127.0.0.1 only
        pytest.skip(f"localhost resolves to {first} first here")
    with Receiver([Reply(200)], tls=(tls_files.server_cert, tls_files.server_key)) as rx:
        status = deliver(rx.url(scheme="https"), BODY, SECRET, ca_bundle=str(tls_files.ca_cert), **fast())
        assert status.delivered and status.attempts == 1
        assert verify_signature(rx.requests[0].body, SECRET, rx.requests[0].headers[SIGNATURE_HEADER])
        # the name in the URL is what the certificate is checked against (SNI/Host), not the address
        status = deliver(rx.url(scheme="https", host="localhost"), BODY, SECRET,
                         ca_bundle=str(tls_files.ca_cert), **fast())
        assert status.delivered
        assert rx.requests[-1].headers["Host"] == f"localhost:{rx.port}"


def test_https_with_an_untrusted_certificate_is_never_delivered(tls_files: TlsFiles) -> None:
    with Receiver([Reply(200)], tls=(tls_files.server_cert, tls_files.server_key)) as rx:
        status = deliver(rx.url(scheme="https"), BODY, SECRET, **fast(window_s=0.5))
    assert not status.delivered and status.gave_up and status.attempts >= 1
    assert "TLS" in status.last_error or "certificate" in status.last_error.lower()
    assert rx.requests == []


# -- a delivery owed across a state-actor restart (the State class itself, on a real store) --------
def _ended_job_with_webhook(state: object, url: str) -> str:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    request = {"url_list": ["https://www.example.com/a.css"], "instance_count": 1, "callback_url": url}
    state.create_job("job-1", request, ["ATL56-C1"], "d111111abcdef8.cloudfront.net", now,  # type: ignore[attr-defined]
                     now + timedelta(minutes=5))
    state.finish("job-1", "STOPPED", "stopped by the test")  # type: ignore[attr-defined]
    return "job-1"


def _wait_webhook(state: object, req_id: str, done: object, timeout_s: float = 10.0) -> dict:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        webhook = state.jobs[req_id].webhook or {}  # type: ignore[attr-defined]
        if done(webhook):  # type: ignore[operator]
            return webhook
        time.sleep(0.05)
    raise AssertionError(f"webhook state not reached: {state.jobs[req_id].webhook}")  # type: ignore[attr-defined]


def _state_settings(tmp_path: Path, window_s: float) -> object:
    from prewarm.settings import Settings

    return Settings(persist=True, state_dir=str(tmp_path), webhook_secret=SECRET, allow_private_edges=True,
                    webhook_window_s=window_s, webhook_backoff_s=0.1, webhook_timeout_s=2.0)


def test_owed_delivery_resumes_after_a_restart_and_keeps_counting_attempts(tmp_path: Path) -> None:
    from prewarm.engine.state import State

    with Receiver([Reply(503)]) as rx:
        first = State(_state_settings(tmp_path, 60.0))  # type: ignore[arg-type]
        req_id = _ended_job_with_webhook(first, rx.url())
        before = _wait_webhook(first, req_id, lambda w: w.get("attempts", 0) >= 2)
        first._stop.set()  # the actor goes away mid-delivery
        time.sleep(0.3)
        sent = len(rx.requests)
        assert sent >= 2 and not before["delivered"] and not before["gave_up"]
        rx.script = [Reply(200)]
        second = State(_state_settings(tmp_path, 60.0))  # type: ignore[arg-type]  # reloads the store
        after = _wait_webhook(second, req_id, lambda w: w.get("delivered"))
    assert len(rx.requests) == sent + 1 and after["attempts"] == sent + 1 and after["last_status"] == 200
    summary = json.loads(rx.requests[-1].body)
    assert summary["request_id"] == req_id and summary["status"] == "STOPPED"
    assert verify_signature(rx.requests[-1].body, SECRET, rx.requests[-1].headers[SIGNATURE_HEADER])


def test_owed_delivery_whose_window_passed_while_down_is_given_up_unsent(tmp_path: Path) -> None:
    from prewarm.engine.state import State

    with Receiver([Reply(503)]) as rx:
        first = State(_state_settings(tmp_path, 1.5))  # type: ignore[arg-type]
        req_id = _ended_job_with_webhook(first, rx.url())
        _wait_webhook(first, req_id, lambda w: w.get("attempts", 0) >= 1)
        first._stop.set()
        time.sleep(2.0)  # down for longer than the window
        sent = len(rx.requests)
        rx.script = [Reply(200)]
        second = State(_state_settings(tmp_path, 1.5))  # type: ignore[arg-type]
        after = second.jobs[req_id].webhook
        time.sleep(0.5)
    assert after["gave_up"] and not after["delivered"] and after["attempts"] == sent
    assert "window ended while the service was down" in after["last_error"]
    assert len(rx.requests) == sent  # no late POST
