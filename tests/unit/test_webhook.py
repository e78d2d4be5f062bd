"""Webhook pieces that need no receiver: signing, URL syntax, the private-address refusal, backoff."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
from collections.abc import Iterator

import pytest

from prewarm.core.validation import callback_url_problem
from prewarm.net.webhook import (
    SIGNATURE_HEADER,
    DeliveryStatus,
    deliver,
    resolve_callback,
    retry_delay,
    sign,
    verify_signature,
)


def test_signature_header_name() -> None:
    assert SIGNATURE_HEADER == "X-Prewarm-Signature"


def test_sign_matches_an_independent_hmac() -> None:
    body = b'{"req_id": "abc", "status": "FINISHED"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret") == f"sha256={expected}"


def test_sign_known_vector() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    assert sign(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_verify_round_trip_and_rejections() -> None:
    body = b'{"a": 1}'
    header = sign(body, "k")
    assert verify_signature(body, "k", header)
    assert verify_signature(body, "k", f"  {header} ")
    assert not verify_signature(body, "other", header)
    assert not verify_signature(b'{"a": 2}', "k", header)
    assert not verify_signature(body, "k", header.removeprefix("sha256="))
    assert not verify_signature(body, "k", "")
    assert not verify_signature(body, "k", None)
    assert not verify_signature(body, "k", "sha256=ünïcode")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/prewarm",
        "http://127.0.0.1:8080/cb?token=x",
        "https://[2001:db8::1]:8443/x",
        "http://localhost/",
        "HTTPS://Hooks.Example.com",
    ],
)
def test_callback_url_accepted(url: str) -> None:
    assert callback_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("ftp://example.com/x", "http"),
        ("/relative/path", "http"),
        ("example.com/hook", "http"),
        ("https://", "has no host"),  # the same words as for a url_list entry
        ("https://user:pass@example.com/", "user info"),
        ("https://user@example.com/", "user info"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com/\x00", "control"),
        ("https://example.com/\x7f", "control"),
        ("https://example.com:0/", "port 0"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://exa_mple..com/", "invalid host"),
        ("https://" + "a" * 2048 + ".com/", "longer than 2048"),
    ],
)
def test_callback_url_rejected(url: str, reason: str) -> None:
    problem = callback_url_problem(url)
    assert problem is not None
    assert reason in problem


def test_resolve_callback_ip_literals_and_localhost() -> None:
    assert resolve_callback("http://127.0.0.1:1/", allow_private=True, timeout_s=2) == ("127.0.0.1", None)
    address, problem = resolve_callback("http://127.0.0.1:1/", allow_private=False, timeout_s=2)
    assert address == "127.0.0.1"
    assert problem is not None and "loopback" in problem and "PREWARM_ALLOW_PRIVATE_EDGES" in problem
    _, problem = resolve_callback("http://[::1]/", allow_private=False, timeout_s=2)
    assert problem is not None and "loopback" in problem
    _, problem = resolve_callback("http://169.254.169.254/latest/meta-data", allow_private=False, timeout_s=2)
    assert problem is not None and "169.254.169.254 is a" in problem
    # names go through the system resolver (localhost is answered from /etc/hosts, no network)
    address, problem = resolve_callback("http://localhost:9/", allow_private=True, timeout_s=2)
    assert problem is None and address in ("127.0.0.1", "::1")
    _, problem = resolve_callback("http://localhost:9/", allow_private=False, timeout_s=2)
    assert problem is not None and "localhost refused" in problem
    # multicast stays refused even where private addresses are allowed
    _, problem = resolve_callback("http://224.0.0.1/", allow_private=True, timeout_s=2)
    assert problem is not None and "unicast" in problem


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that nobody accepts from: any connection would sit in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _accepted_nothing(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def test_private_callback_is_never_contacted(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    seen: list[DeliveryStatus] = []
    status = deliver(f"http://127.0.0.1:{port}/hook", b"{}", "secret", allow_private=False,
                     window_s=5, on_attempt=seen.append)
    assert status.gave_up and not status.delivered
    assert status.attempts == 0 and status.last_status is None and status.last_attempt_at == ""
    assert "127.0.0.1 is a loopback address" in status.last_error
    assert _accepted_nothing(listener)
    assert seen == [status]  # the refusal is reported once, for the summary


def test_invalid_url_and_bad_ca_bundle_give_up_without_attempts(tmp_path) -> None:
    status = deliver("ftp://127.0.0.1/x", b"{}", None, allow_private=True)
    assert status.gave_up and status.attempts == 0 and "invalid callback_url" in status.last_error
    status = deliver("https://127.0.0.1:1/x", b"{}", None, allow_private=True,
                     ca_bundle=str(tmp_path / "missing.pem"))
    assert status.gave_up and status.attempts == 0 and "CA bundle" in status.last_error


def test_stop_before_start_sends_nothing(listener: socket.socket) -> None:
    stop = threading.Event()
    stop.set()
    port = listener.getsockname()[1]
    status = deliver(f"http://127.0.0.1:{port}/", b"{}", None, allow_private=True, stop=stop)
    assert status.attempts == 0 and not status.gave_up and not status.delivered
    assert "cancelled" in status.last_error
    assert _accepted_nothing(listener)


def test_delivery_status_to_dict() -> None:
    status = DeliveryStatus(url="https://h/x", attempts=2, last_status=500)
    assert status.to_dict() == {
        "url": "https://h/x", "attempts": 2, "delivered": False, "last_status": 500, "last_error": "",
        "last_attempt_at": "", "gave_up": False,
    }


def test_retry_delay_bounds() -> None:
    for attempt in range(1, 12):
        ceiling = min(60.0, 1.0 * 2 ** (attempt - 1))
        for _ in range(50):
            delay = retry_delay(attempt, 1.0, 60.0)
            assert ceiling / 2 <= delay <= ceiling
    assert retry_delay(10_000, 1.0, 60.0) <= 60.0  # no overflow for absurd attempt numbers
    # Retry-After is honoured, but never beyond the cap
    assert retry_delay(1, 0.1, 60.0, retry_after_s=5.0) >= 5.0
    assert retry_delay(1, 0.1, 2.0, retry_after_s=3600.0) == 2.0
    assert retry_delay(1, 0.0, 2.0) == 0.0
