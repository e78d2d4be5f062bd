"""Every PREWARM_* setting in one place, read from the environment once.

The driver (``prewarm serve``, ``serve run``) reads the settings and hands them down to the
ingress, coordinators and fetchers as a plain object, so a Ray worker never depends on which
environment the raylet happened to inherit.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_ACTOR_NAME = "prewarm-state"
"""The detached state actor's name in ``Settings.namespace``: the API, the actors and notebooks find it by it."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _tristate(name: str, value: str | None) -> bool | None:
    """``1``/``0`` (or true/false, yes/no, on/off) as a bool; unset or empty as None."""
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"setting {name}={value!r} must be 1 or 0")


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Service configuration; ``from_env`` is the only reader of the environment."""

    api_keys: tuple[str, ...] = ()
    nameservers: tuple[str, ...] = ()
    ca_bundle: str | None = None
    allow_private_edges: bool = False
    state_dir: str = field(default_factory=lambda: str(Path.home() / ".prewarm"))
    namespace: str = "prewarm"
    persist: bool = True
    max_urls: int = 100_000
    max_body_bytes: int = 32 * 1024 * 1024
    max_expanded_urls: int = 100_000  # URLs a job's manifests may add (``expand``); over it the summary says so
    max_manifest_bytes: int = 16 * 1024 * 1024  # a manifest longer than this is not read
    max_url_length: int = 2048
    fetch_timeout_s: float = 30.0  # to the response head; a body is bounded by the stall and rate limits
    stall_timeout_s: float = 30.0
    min_rate: float = 4096.0  # body bytes/s averaged over min_rate_window_s; 0: no floor
    min_rate_window_s: float = 30.0
    body_attempts: int = 2
    range_part_bytes: int = 30 * 1024**3  # CloudFront caches at most 30 GB per object: larger ones in ranges
    max_origin_concurrency: int = 64
    origin_shield: bool | None = None  # PREWARM_ORIGIN_SHIELD=1|0; None: asked of CloudFront when credentials exist
    connect_timeout_s: float = 5.0
    dns_timeout_s: float = 5.0
    attempts: int = 3
    backoff_base_s: float = 0.2
    retry_after_cap_s: float = 30.0
    max_concurrency: int = 32
    batch_size: int = 1024
    fetchers_per_node: int = 0  # 0: the node's CPU count
    max_active_jobs: int = 4
    standby: bool = True  # keep the next job's coordinator and fetchers started (prewarm/standby.py)
    coordinator_silence_s: float = 300.0  # a job whose coordinator sent nothing this long is FAILED
    report_bucket: str | None = None
    report_prefix: str = "prewarm/"
    report_url_expiry_s: int = 3600
    webhook_secret: str | None = None
    webhook_window_s: float = 600.0
    webhook_timeout_s: float = 10.0
    webhook_backoff_s: float = 1.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        base = cls()

        def num(name: str, default: float, kind: type = int, least: float = 0, above: bool = False) -> float:
            """The setting as ``kind``, refused unless finite and at least ``least`` (``above``: more than it)."""
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = kind(raw)
            except ValueError as exc:
                raise ValueError(f"setting {name}={raw!r} is not a valid {kind.__name__}") from exc
            if not math.isfinite(value):
                raise ValueError(f"setting {name}={raw!r} is not a finite number")
            if value < least or (above and value == least):
                raise ValueError(f"setting {name}={raw!r} must be {'more than' if above else 'at least'} {least:g}")
            return value

        return cls(
            api_keys=_csv(env.get("PREWARM_API_KEYS")),
            nameservers=_csv(env.get("PREWARM_NAMESERVERS")),
            ca_bundle=env.get("PREWARM_CA_BUNDLE") or None,
            allow_private_edges=_flag(env.get("PREWARM_ALLOW_PRIVATE_EDGES")),
            state_dir=env.get("PREWARM_STATE_DIR") or base.state_dir,
            namespace=env.get("PREWARM_NAMESPACE") or base.namespace,
            persist=_flag(env.get("PREWARM_PERSIST", "1")),
            max_urls=int(num("PREWARM_MAX_URLS", base.max_urls, least=1)),
            max_body_bytes=int(num("PREWARM_MAX_BODY_BYTES", base.max_body_bytes, least=1)),
            max_expanded_urls=int(num("PREWARM_MAX_EXPANDED_URLS", base.max_expanded_urls)),
            max_manifest_bytes=int(num("PREWARM_MAX_MANIFEST_BYTES", base.max_manifest_bytes, least=1)),
            max_url_length=int(num("PREWARM_MAX_URL_LENGTH", base.max_url_length, least=1)),
            fetch_timeout_s=float(num("PREWARM_FETCH_TIMEOUT", base.fetch_timeout_s, float, above=True)),
            stall_timeout_s=float(num("PREWARM_STALL_TIMEOUT", base.stall_timeout_s, float, above=True)),
            min_rate=float(num("PREWARM_MIN_RATE", base.min_rate, float)),
            min_rate_window_s=float(num("PREWARM_MIN_RATE_WINDOW", base.min_rate_window_s, float, above=True)),
            body_attempts=int(num("PREWARM_BODY_ATTEMPTS", base.body_attempts, least=1)),
            range_part_bytes=int(num("PREWARM_RANGE_PART_BYTES", base.range_part_bytes, least=1)),
            max_origin_concurrency=int(num("PREWARM_MAX_ORIGIN_CONCURRENCY", base.max_origin_concurrency, least=1)),
            origin_shield=_tristate("PREWARM_ORIGIN_SHIELD", env.get("PREWARM_ORIGIN_SHIELD")),
            connect_timeout_s=float(num("PREWARM_CONNECT_TIMEOUT", base.connect_timeout_s, float, above=True)),
            dns_timeout_s=float(num("PREWARM_DNS_TIMEOUT", base.dns_timeout_s, float, above=True)),
            attempts=int(num("PREWARM_ATTEMPTS", base.attempts, least=1)),  # 0 would fetch nothing
            backoff_base_s=float(num("PREWARM_BACKOFF_BASE", base.backoff_base_s, float)),
            retry_after_cap_s=float(num("PREWARM_RETRY_AFTER_CAP", base.retry_after_cap_s, float)),
            max_concurrency=int(num("PREWARM_MAX_CONCURRENCY", base.max_concurrency, least=1)),
            batch_size=int(num("PREWARM_BATCH_SIZE", base.batch_size, least=1)),
            fetchers_per_node=int(num("PREWARM_FETCHERS_PER_NODE", base.fetchers_per_node)),
            max_active_jobs=int(num("PREWARM_MAX_ACTIVE_JOBS", base.max_active_jobs, least=1)),
            standby=_flag(env.get("PREWARM_STANDBY", "1")),
            coordinator_silence_s=float(num("PREWARM_COORDINATOR_SILENCE_TIMEOUT", base.coordinator_silence_s,
                                            float, above=True)),
            report_bucket=env.get("PREWARM_REPORT_BUCKET") or None,
            report_prefix=env.get("PREWARM_REPORT_PREFIX", base.report_prefix),
            report_url_expiry_s=int(num("PREWARM_REPORT_URL_EXPIRY", base.report_url_expiry_s, least=1)),
            webhook_secret=env.get("PREWARM_WEBHOOK_SECRET") or None,
            webhook_window_s=float(num("PREWARM_WEBHOOK_WINDOW", base.webhook_window_s, float)),
            webhook_timeout_s=float(num("PREWARM_WEBHOOK_TIMEOUT", base.webhook_timeout_s, float, above=True)),
            webhook_backoff_s=float(num("PREWARM_WEBHOOK_BACKOFF_BASE", base.webhook_backoff_s, float)),
        )

    def __repr__(self) -> str:  # never print API keys into logs
        shown = {**asdict(self), "api_keys": f"<{len(self.api_keys)} key(s)>",
                 "webhook_secret": "<set>" if self.webhook_secret else None}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"
