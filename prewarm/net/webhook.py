"""Job-end webhooks: POST a job's summary to the request's ``callback_url``, signed, retried, pinned.

Synchronous on purpose: the service runs one delivery per finished job in a background thread of an
actor, so plain ``http.client`` with socket timeouts is simpler to bound than an event loop.

Safety follows the POP rule (``edge_address_problem``): the callback host is resolved once per
attempt, every address it has must pass the private-address rule, and the connection goes to the
checked address itself (Host header and TLS SNI stay the URL's host), so a DNS answer that changes
between check and connect (rebinding) cannot point the request somewhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import http.client
import ipaddress
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prewarm.core.validation import callback_url_problem
from prewarm.net.popclient import retry_after_seconds
from prewarm.net.resolve import edge_address_problem
from prewarm.schema import fmt_time

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Prewarm-Signature"
SIGNATURE_PREFIX = "sha256="
USER_AGENT = "cdn-prewarm/0.1"
# Statuses that say "try again later" although they are 4xx.
RETRYABLE_4XX = frozenset({408, 429})



# --- signing -----------------------------------------------------------------------------------------

def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``: lets the receiver check the summary came from us, unchanged."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_signature(body: bytes, secret: str, header_value: str | None) -> bool:
    """Whether ``header_value`` is the signature of ``body``; constant-time so it leaks nothing by timing."""
    if not header_value:
        return False
    return hmac.compare_digest(sign(body, secret).encode("ascii"), header_value.strip().encode("utf-8"))


# --- validation and resolution -------------------------------------------------------------------------

def _host_port(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    return parts.hostname or "", parts.port or (443 if https else 80), https


def _getaddrinfo(host: str, port: int, timeout_s: float) -> list[str]:
    """System DNS in a daemon thread, so a hung resolver costs at most ``timeout_s`` of our time."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # reported to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"webhook-dns-{host}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"DNS lookup of {host} timed out after {timeout_s:g} s")
    if "error" in outcome:
        exc = outcome["error"]
        raise OSError(f"DNS lookup of {host} failed: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in outcome["infos"]))


def _resolve(url: str, allow_private: bool, timeout_s: float) -> tuple[str, str | None, bool]:
    """(address, problem, refused): refused means the private rule said no (final), else DNS failed."""
    host, port, _ = _host_port(url)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = _getaddrinfo(host, port, timeout_s)
        except OSError as exc:  # TimeoutError is an OSError
            return "", str(exc), False
    if not addresses:
        return "", f"{host} has no addresses", False
    for address in addresses:
        problem = edge_address_problem(address, allow_private)
        if problem:
            named = "" if host == address else f" {host}"
            return address, f"callback host{named} refused: {problem}", True
    return addresses[0], None, False


def resolve_callback(url: str, allow_private: bool, timeout_s: float) -> tuple[str, str | None]:
    """(address to connect to, problem or None).

    Every address the host has must pass the private-address rule (one bad address refuses the
    host, so it cannot pass the check with a public address and then be used via another); the
    first one is chosen.
    """
    address, problem, _ = _resolve(url, allow_private, timeout_s)
    return address, problem


# --- delivery status and backoff --------------------------------------------------------------------------

@dataclass
class DeliveryStatus:
    """What the job summary shows about the webhook: attempts and the last result.

    ``delivered`` and ``gave_up`` are both False while delivery is under way, and also when it was
    cancelled (service shutdown) before it ended, so the owner can tell "still owed" from "given up".
    """

    url: str
    attempts: int = 0
    delivered: bool = False
    last_status: int | None = None
    last_error: str = ""
    last_attempt_at: str = ""
    gave_up: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def retry_delay(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential (base · 2^(attempt-1), at most ``cap_s``) with jitter in [half, full] so many
    services failing at once do not retry in lockstep; a receiver's ``Retry-After`` is honoured up
    to ``cap_s`` so it cannot park the delivery for longer than our own backoff would.
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 62))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap_s))
    return max(0.0, delay)


# --- one pinned POST ---------------------------------------------------------------------------------------

def _pinned(conn: http.client.HTTPConnection, address: str) -> http.client.HTTPConnection:
    """Make ``conn`` dial the already checked ``address``; Host, SNI and the certificate check keep the
    URL's host (http.client resolves the host again otherwise: a DNS-rebinding hole)."""

    def connect(target: tuple[str, int], timeout: float, source: Any = None) -> socket.socket:
        return socket.create_connection((address, target[1]), timeout, source)

    conn._create_connection = connect  # type: ignore[attr-defined]
    return conn


@dataclass
class _Outcome:
    status: int | None = None
    reason: str = ""
    error: str = ""
    retry_after_s: float | None = None


def _post_once(url: str, address: str, body: bytes, headers: dict[str, str], timeout_s: float,
               context: ssl.SSLContext | None) -> _Outcome:
    """One POST to ``address``; the socket timeout bounds each step and a watchdog bounds the whole."""
    host, port, https = _host_port(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if https:
        assert context is not None
        conn = _pinned(http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context), address)
    else:
        conn = _pinned(http.client.HTTPConnection(host, port, timeout=timeout_s), address)
    expired = threading.Event()

    def watchdog() -> None:  # a receiver that trickles bytes must not hold us past the timeout
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout_s, watchdog)
    timer.daemon = True
    timer.start()
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        if expired.is_set():  # the watchdog cut the answer short; what was parsed may be truncated
            raise TimeoutError
        outcome = _Outcome(status=resp.status, reason=resp.reason or "",
                           retry_after_s=retry_after_seconds(resp.headers.get("Retry-After")))
        with contextlib.suppress(OSError, http.client.HTTPException):
            resp.read(64 * 1024)  # the body is not used; read a little so the receiver sees a clean close
        return outcome
    except TimeoutError:
        return _Outcome(error=f"timed out after {timeout_s:g} s")
    except ssl.SSLError as exc:
        return _Outcome(error=f"TLS error: {exc}")
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            return _Outcome(error=f"timed out after {timeout_s:g} s")
        return _Outcome(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    finally:
        timer.cancel()
        conn.close()


# --- the delivery loop ---------------------------------------------------------------------------------------

def _now() -> str:
    return fmt_time(datetime.now(UTC))


def deliver(
    url: str,
    body: bytes,
    secret: str | None,
    *,
    allow_private: bool,
    window_s: float = 600.0,
    backoff_base_s: float = 1.0,
    backoff_cap_s: float = 60.0,
    timeout_s: float = 10.0,
    ca_bundle: str | None = None,
    on_attempt: Callable[[DeliveryStatus], None] | None = None,
    stop: threading.Event | None = None,
    attempts_before: int = 0,
) -> DeliveryStatus:
    """POST ``body`` (JSON) to ``url`` until a 2xx, a permanent failure, or ``window_s`` has passed.

    2xx: delivered. 3xx (never followed, as for POPs) and 4xx other than 408/429: gave up at once
    (repeating will not help). 408, 429, 5xx, DNS failures, connection errors and timeouts: retried
    with ``retry_delay`` backoff while the next attempt can still start within ``window_s`` of the
    first. An address refused by the private rule is never contacted: gave up, reason in
    ``last_error``. ``on_attempt`` gets a copy of the status after every attempt (and after a
    refusal), for the job summary. ``stop`` cancels between attempts. ``attempts_before`` carries
    the count of a delivery interrupted by a restart on.
    """
    status = DeliveryStatus(url=url, attempts=attempts_before)
    stop = stop or threading.Event()

    def report() -> None:
        if on_attempt is None:
            return
        try:
            on_attempt(dataclasses.replace(status))
        except Exception:  # storing the status must not end the delivery
            log.exception("webhook on_attempt callback failed for %s", url)

    def give_up(reason: str) -> DeliveryStatus:
        status.gave_up = True
        status.last_error = reason
        report()
        return status

    problem = callback_url_problem(url)
    if problem:
        return give_up(f"invalid callback_url: {problem}")
    context: ssl.SSLContext | None = None
    if _host_port(url)[2]:
        try:
            context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        except (OSError, ssl.SSLError) as exc:
            return give_up(f"cannot load CA bundle {ca_bundle!r}: {exc}")

    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Connection": "close"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)

    deadline = time.monotonic() + window_s
    while not stop.is_set():
        address, problem, refused = _resolve(url, allow_private, timeout_s)
        if refused:
            return give_up(problem or "refused")
        status.attempts += 1
        status.last_attempt_at = _now()
        if problem:
            status.last_status, status.last_error, retry_after = None, problem, None
        else:
            outcome = _post_once(url, address, body, headers, timeout_s, context)
            status.last_status, retry_after = outcome.status, outcome.retry_after_s
            if outcome.status is not None and 200 <= outcome.status < 300:
                status.delivered, status.last_error = True, ""
                report()
                return status
            if outcome.status is None:
                status.last_error = outcome.error
            else:
                status.last_error = f"HTTP {outcome.status} {outcome.reason}".strip()
                if 300 <= outcome.status < 400:  # never followed (as for POPs); asking again gets the same
                    return give_up(status.last_error + " (redirects are not followed; not retried)")
                if 400 <= outcome.status < 500 and outcome.status not in RETRYABLE_4XX:
                    return give_up(status.last_error + " (permanent, not retried)")
        delay = retry_delay(status.attempts, backoff_base_s, backoff_cap_s, retry_after)
        if time.monotonic() + delay >= deadline:
            return give_up(f"{status.last_error}; retry window of {window_s:g} s ended")
        report()
        stop.wait(delay)
    status.last_error = (status.last_error + "; " if status.last_error else "") + "cancelled before delivery"
    report()
    return status
