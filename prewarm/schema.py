"""Request and response models of the HTTP API (shared/spec/prewarm-api.md) and their validation.

Validation is pure: every rule lives here or in ``targets``, so it is unit-tested without Ray or
sockets, and every failure names the field that caused it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from prewarm.core.targets import TargetError, expand_targets
from prewarm.core.validation import HOSTNAME, callback_url_problem, url_problem

TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
MAX_TIMEOUT_MINUTES = 24 * 60
MAX_INSTANCES = 300
MAX_CONCURRENCY = 1024
MAX_VARIANTS = 16
MAX_UNTIL_HIT = 5
MAX_RPS = 100_000
MIN_RPS = 0.01  # one request per 100 s; smaller shares would round to "no cap"
MAX_COLD_PAIRS = 10_000  # listed in a summary; the count is always exact
STATUSES = ("IN_PROGRESS", "FINISHED", "TIMEOUT", "FAILED", "STOPPED")
FINAL_STATUSES = frozenset(STATUSES[1:])

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers a caller may not set: they would change where or how the request is framed, not what a viewer sends.
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def fmt_time(moment: datetime) -> str:
    """The spec's timestamp format, always UTC: ``2024-04-16 03:12:21.046535``."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


class InvalidURLs(ValueError):
    """Raised by the ``url_list`` validator; carries the offending URLs for ``error_urls``."""

    def __init__(self, urls: list[str], reasons: list[str]) -> None:
        shown = "; ".join(f"{u!r}: {r}" for u, r in list(zip(urls, reasons, strict=True))[:5])
        more = f" (and {len(urls) - 5} more)" if len(urls) > 5 else ""
        super().__init__(f"{len(urls)} invalid URL(s): {shown}{more}")
        self.urls = urls


def _number(value: Any) -> Any:
    """JSON numbers only: reject strings and booleans that lax parsing would coerce."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


def _integer(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        value = int(value)
    return value


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


Number = Annotated[float, BeforeValidator(_number)]
Integer = Annotated[int, BeforeValidator(_integer)]
Boolean = Annotated[bool, BeforeValidator(_boolean)]
StrList = list[Annotated[str, Field(strict=True)]]


def parse_headers(value: Any) -> dict[str, str]:
    """Accept the published list form (``["Name: Value"]``) or an object; return a checked dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for item in value:
            if not isinstance(item, str) or ":" not in item:
                raise ValueError(f"list items must be 'Name: Value' strings, got {item!r}")
            name, _, val = item.partition(":")
            pairs.append((name.strip(), val.strip()))
    else:
        raise ValueError("must be a list of 'Name: Value' strings or an object")
    headers: dict[str, str] = {}
    for name, val in pairs:
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"invalid header name {name!r}")
        if not isinstance(val, str):
            raise ValueError(f"header {name!r} value must be a string")
        if any(c in val for c in "\r\n\x00"):
            raise ValueError(f"header {name!r} value contains CR, LF or NUL")
        if name.lower() in FORBIDDEN_HEADERS:
            raise ValueError(f"header {name!r} may not be set (the URL decides it)")
        headers[name] = val
    return headers


TIERINGS = ("auto", "rec", "shield", "off")


def tiering_mode(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in TIERINGS:
        raise ValueError(f"must be one of {', '.join(TIERINGS)}")
    return value.strip().lower()


def origin_concurrency(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_CONCURRENCY * MAX_INSTANCES:
        raise ValueError(f"must be between 1 and {MAX_CONCURRENCY * MAX_INSTANCES}")
    return value


def positive_byte_rate(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ValueError("must be a positive number of bytes per second")
    return value


ByteRate = Annotated[float, BeforeValidator(_number), AfterValidator(positive_byte_rate)]
Tiering = Annotated[str, BeforeValidator(tiering_mode)]
OriginConcurrency = Annotated[int, BeforeValidator(_integer), AfterValidator(origin_concurrency)]


class PrewarmRequest(BaseModel):
    """``POST /prewarm`` body, as published, plus an object form for ``header``."""

    model_config = ConfigDict(extra="forbid")

    url_list: StrList = Field(description="URLs to warm (absolute http/https).")
    cf_domain: str | None = Field(
        default=None,
        description="CloudFront domain (*.cloudfront.net), or a name whose CNAME chain leads to one; "
        "when absent, found from the URLs' hosts.",
    )
    timeout: Number = Field(description="Time limit in minutes (0.1 is six seconds); at most one day.")
    target_type: str = Field(description="pop, country or region.")
    pops: StrList = Field(default_factory=list)
    countries: StrList = Field(default_factory=list)
    regions: StrList = Field(default_factory=list)
    instance_count: Integer = Field(description="Number of fetcher nodes (1..300).")
    need_invalidate: Boolean = False
    header: Annotated[dict[str, str], BeforeValidator(parse_headers)] = Field(
        default_factory=dict, description="Extra request headers: ['Name: Value'] or {name: value}."
    )
    max_concurrency: Integer | None = Field(
        default=None,
        description=f"Cap on concurrent fetches per POP for this job (1..{MAX_CONCURRENCY}); "
        "default PREWARM_MAX_CONCURRENCY.",
    )
    verify: Boolean = Field(
        default=True, description="After each successful fetch, HEAD it through the same POP address and read X-Cache."
    )
    until_hit: Integer = Field(
        default=0, description=f"Re-warm pairs that verify cold up to this many rounds (0..{MAX_UNTIL_HIT})."
    )
    variants: list[Annotated[dict[str, str], BeforeValidator(parse_headers)]] | None = Field(
        default=None,
        description="Header sets a cache keys on (e.g. Accept-Encoding); each (URL, POP, variant) is a task. "
        "Each is added to `header`. Default: one variant, `header` alone.",
    )
    callback_url: str | None = Field(
        default=None, description="POSTed the signed summary (JSON) when the job ends."
    )
    max_rps: Number | None = Field(
        default=None, description="Cap on requests per second for the whole job, across every fetcher and node."
    )
    retry_of: str | None = Field(
        default=None, description="Set by the service on a retry job: the job whose failed tasks it re-runs."
    )
    max_bytes_per_s: ByteRate | None = Field(
        default=None, description="Cap on body bytes per second for the whole job, across every fetcher and node, "
        "counted where the bytes arrive."
    )
    skip_warm: Boolean = Field(
        default=False, description="HEAD each pair through its POP first; a Hit is recorded as already warm and "
        "its body is not downloaded."
    )
    tiering: Tiering = Field(
        default="auto", description="How a URL reaches its POPs: 'rec' (first through one POP per regional edge "
        "cache, then the REC's other POPs), 'shield' (one first fetch, then every POP), 'off' (every POP once the "
        "size probe answered), 'auto' (shield when the distribution has Origin Shield on, else rec)."
    )
    max_origin_concurrency: OriginConcurrency | None = Field(
        default=None, description="At most this many first-tier fetches (those that reach the origin) in flight "
        "across the job, adapted down when the origin shows trouble; default PREWARM_MAX_ORIGIN_CONCURRENCY."
    )

    expand: Boolean = Field(
        default=False, description="Read each URL that is an HLS playlist or a DASH MPD through the first targeted "
        "POP and warm what a player fetches from it too: child playlists, keys, init segments, segments (byte "
        "ranges as the ranges a player asks for), in the order a player needs them."
    )
    expand_max_bandwidth: Integer | None = Field(
        default=None, description="With expand: renditions that declare a bandwidth above this (bits/s) are left out."
    )
    expand_first_seconds: Number = Field(
        default=0, description="With expand: only the segments that cover each rendition's first N seconds; 0: all "
        "(a live window is always warmed whole)."
    )

    @field_validator("expand_max_bandwidth")
    @classmethod
    def _max_bandwidth(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be a positive number of bits per second")
        return value

    @field_validator("expand_first_seconds")
    @classmethod
    def _first_seconds(cls, value: float) -> float:
        if not 0 <= value <= 7 * 24 * 3600:
            raise ValueError("must be between 0 and 604800 seconds")
        return value

    @field_validator("url_list")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("must not be empty")
        bad = [(u, p) for u in urls if (p := url_problem(u))]
        if bad:
            raise InvalidURLs([u for u, _ in bad], [p for _, p in bad])
        return urls

    @field_validator("cf_domain")
    @classmethod
    def _cf_domain(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip().rstrip(".").lower()
        if not HOSTNAME.match(value) or "." not in value:
            raise ValueError(f"{value!r} is not a domain name")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= MAX_TIMEOUT_MINUTES:
            raise ValueError(f"must be more than 0 and at most {MAX_TIMEOUT_MINUTES} minutes")
        return value

    @field_validator("target_type")
    @classmethod
    def _target_type(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("max_concurrency")
    @classmethod
    def _concurrency(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_CONCURRENCY:
            raise ValueError(f"must be between 1 and {MAX_CONCURRENCY}")
        return value

    @field_validator("until_hit")
    @classmethod
    def _until_hit(cls, value: int) -> int:
        if not 0 <= value <= MAX_UNTIL_HIT:
            raise ValueError(f"must be between 0 and {MAX_UNTIL_HIT}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
        if value is None:
            return None
        if not 1 <= len(value) <= MAX_VARIANTS:
            raise ValueError(f"must hold 1 to {MAX_VARIANTS} header objects")
        for headers in value:
            names = [k.lower() for k in headers]
            if len(set(names)) != len(names):
                raise ValueError(f"names one header twice (header names are case-insensitive): {headers}")
        keys = [tuple(sorted((k.lower(), v) for k, v in v_.items())) for v_ in value]
        if len(set(keys)) != len(keys):
            raise ValueError("holds the same variant twice")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = callback_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("max_rps")
    @classmethod
    def _max_rps(cls, value: float | None) -> float | None:
        if value is not None and not MIN_RPS <= value <= MAX_RPS:
            raise ValueError(f"must be between {MIN_RPS} and {MAX_RPS}")
        return value

    @field_validator("retry_of")
    @classmethod
    def _retry_of(cls, value: str | None) -> str | None:
        return None if value is None else parse_req_id(value)

    @field_validator("instance_count")
    @classmethod
    def _instances(cls, value: int) -> int:
        if not 1 <= value <= MAX_INSTANCES:
            raise ValueError(f"must be between 1 and {MAX_INSTANCES}")
        return value

    @model_validator(mode="after")
    def _targets(self) -> PrewarmRequest:
        self.target_pops()  # raises TargetError naming the field
        return self

    def target_pops(self) -> list[str]:
        return expand_targets(self.target_type, self.pops, self.countries, self.regions)

    def deadline(self, start: datetime) -> datetime:
        return start + timedelta(minutes=self.timeout)

    def variant_headers(self) -> list[dict[str, str]]:
        """The request headers of each variant: ``header`` with the variant's headers on top."""
        def merged(variant: dict[str, str]) -> dict[str, str]:
            mine = {k.lower() for k in variant}  # header names are case-insensitive: the variant's wins
            return {**{k: v for k, v in self.header.items() if k.lower() not in mine}, **variant}

        return [merged(v) for v in (self.variants or [{}])]

    def variant_labels(self) -> list[str]:
        """How reports name each variant (empty for the single default variant)."""
        return [variant_label(v) for v in (self.variants or [{}])]


def variant_label(headers: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in headers.items())


# Fields a retry job takes from the job it retries; they may not be given beside ``retry_of``.
INHERITED_FIELDS = ("url_list", "cf_domain", "target_type", "pops", "countries", "regions", "header", "variants",
                    "expand", "expand_max_bandwidth", "expand_first_seconds")


class RetryRequest(BaseModel):
    """``POST /prewarm`` with ``retry_of``: re-run the failed and unfinished tasks of an ended job.

    URLs, targets, headers and variants come from that job; the other fields may be changed.
    """

    model_config = ConfigDict(extra="forbid")

    retry_of: str
    timeout: Number | None = None
    instance_count: Integer | None = None
    need_invalidate: Boolean = False
    max_concurrency: Integer | None = None
    verify: Boolean | None = None
    until_hit: Integer | None = None
    callback_url: str | None = None
    max_rps: Number | None = None
    max_bytes_per_s: ByteRate | None = None
    skip_warm: Boolean | None = None
    tiering: Tiering | None = None
    max_origin_concurrency: OriginConcurrency | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inherited(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [f for f in INHERITED_FIELDS if f in data]
            if given:
                raise ValueError(
                    f"field '{given[0]}' cannot be given with retry_of: a retry re-runs the failed tasks of that "
                    "job with its URLs, targets and headers"
                )
        return data

    @field_validator("retry_of")
    @classmethod
    def _retry_of(cls, value: str) -> str:
        return parse_req_id(value)

    @field_validator("need_invalidate")
    @classmethod
    def _no_invalidation(cls, value: bool) -> bool:
        if value:
            raise ValueError("a retry does not invalidate: CloudFront would empty every edge of those URLs, "
                             "and the retry fetches them only through the POPs where they failed")
        return value

    def build(self, original: dict[str, Any]) -> PrewarmRequest:
        """The retry job's full request: the original's, with the fields given here on top; never an
        invalidation, which would undo the original's successes at the other POPs. An expanded job's URLs are what
        its manifests held: the retry fetches them, it does not expand again."""
        changes = self.model_dump(exclude_unset=True)
        merged = {k: v for k, v in original.items() if k != "retry_of"}
        merged.update(changes, need_invalidate=False, expand=False)
        return PrewarmRequest.model_validate(merged)


class RequestError(Exception):
    """A bad request, already phrased for the caller; becomes the spec's error shape."""

    def __init__(self, message: str, *, status_code: int = 400, error_urls: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_urls = error_urls or []


def request_error(exc: ValidationError) -> RequestError:
    """Turn pydantic's errors into one message naming each field, plus the invalid URLs."""
    return describe_errors(exc.errors())


def describe_errors(errors: Sequence[Any]) -> RequestError:
    """The one error formatter: pydantic's (or FastAPI's, for a body or query it could not read) errors as one
    message naming each field, in the API's error shape, plus the invalid URLs."""
    messages: list[str] = []
    error_urls: list[str] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
        field = loc[0] if loc else "body"
        for part in loc[1:]:
            field += f"[{part}]" if part.isdigit() else f".{part}"
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidURLs):
            error_urls.extend(cause.urls)
            messages.append(f"field 'url_list': {cause}")
        elif isinstance(cause, TargetError):
            messages.append(f"field '{cause.field}': {cause}")
        elif err.get("type") == "missing":
            messages.append(f"field '{field}' is required")
        elif err.get("type") == "extra_forbidden":
            messages.append(f"field '{field}' is not a known field")
        elif err.get("type") == "json_invalid":
            messages.append(f"request body is not valid JSON: {err.get('msg', '')}")
        elif field == "body":
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            messages.append(msg if msg.startswith("field '") else f"request body: {msg}")
        else:
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            messages.append(f"field '{field}': {msg}")
    return RequestError("; ".join(dict.fromkeys(messages)) or "invalid request", error_urls=error_urls)


def parse_req_id(value: str) -> str:
    """The canonical form of a request id (a UUID); ValueError says why it is not one."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{value[:80]!r} is not a valid request id (UUID)") from None


def check_req_id(value: str | None) -> str:
    """A request id from the query string; a missing or malformed one is a 400 naming ``req_id``."""
    if not value:
        raise RequestError("field 'req_id' is required (query string)")
    try:
        return parse_req_id(value)
    except ValueError as exc:
        raise RequestError(f"field 'req_id': {exc}") from None


class PrewarmResponse(BaseModel):
    status: Literal["Success", "Failed"]
    error_message: str = ""
    error_urls: list[str] = Field(default_factory=list)
    request_id: str = ""
    timestamp: str
    timeout_at: str = ""


ErrorResponse = PrewarmResponse


class PopStats(BaseModel):
    pop: str
    success: int
    failure: int
    bytes: int
    p50_ms: float | None
    p95_ms: float | None


class ProgressResponse(BaseModel):
    request_id: str
    status: str
    phase: str
    total_count: int
    download_count: int
    percentage_complete: int
    in_progress_task_count: int
    available_task_count: int
    download_size: int
    total_size: int
    success_count: int
    failure_count: int
    nodes_used: int
    verified_hit_count: int = Field(
        default=0, description="Successful pairs whose verification HEAD through the same POP address was a Hit."
    )
    warm_ratio: float | None = Field(
        default=None, description="verified_hit_count / success_count (1.0: every success is a Hit); null "
        "without verification or before the first success."
    )
    bytes_wasted: int = Field(
        default=0, description="Body bytes received by attempts cut short (stall, reset, truncation, too slow): "
        "billed, warmed nothing."
    )
    bytes_received: int = Field(
        default=0, description="Body bytes received so far, those of fetches still running included."
    )
    byte_rate: float = Field(
        default=0.0, description="Body bytes per second: over the last seconds while the job runs, over the job "
        "once it ended."
    )
    already_warm_count: int = Field(
        default=0, description="Pairs that answered a Hit to skip_warm's HEAD: recorded as warm, nothing downloaded."
    )
    origin_fetches: int = Field(
        default=0, description="Warm-up GETs that reached the origin: a miss in every tier by Server-Timing "
        "(cdn-cache-miss), or, where the edges send none, an X-Cache Miss."
    )
    tiering: str = Field(default="", description="The tiering the job uses (rec, shield or off), once decided.")
    origin_concurrency_limit: int | None = Field(
        default=None, description="First-tier fetches allowed in flight now, across the job's fetchers "
        "(max_origin_concurrency as adapted to the origin's health); null before any."
    )
    error_message: str = ""
    created_at: str
    last_update_time: str
    timestamp: str


class ColdPair(BaseModel):
    """A pair fetched successfully whose verification was not a Hit."""

    url: str
    pop: str
    variant: str = ""
    x_cache: str


class WebhookStatus(BaseModel):
    url: str
    attempts: int
    delivered: bool
    last_status: int | None = None
    last_error: str = ""
    last_attempt_at: str = ""
    gave_up: bool = False


class ManifestSummary(BaseModel):
    url: str
    format: str = Field(description="hls or dash; empty when it could not be told.")
    live: bool = Field(description="A live playlist (no EXT-X-ENDLIST, or type=dynamic): its window when read.")
    entries: int = Field(description="What it named: child playlists, keys, init segments, segments.")
    error: str = Field(description="Why it could not be read or parsed (its row in the report says so too).")


class ExpansionSummary(BaseModel):
    manifests: list[ManifestSummary] = Field(description="The manifests read (the first 1,000).")
    manifest_count: int
    expanded_count: int = Field(description="URLs added to the job (each warmed at every targeted POP).")
    found_count: int = Field(description="URLs the manifests held beyond those given.")
    left_out_count: int = Field(description="Of those, not warmed: over PREWARM_MAX_EXPANDED_URLS.")
    max_expanded_urls: int
    live: bool
    renditions_left_out: list[str] = Field(description="Renditions above expand_max_bandwidth.")
    not_http: list[str] = Field(description="URIs no CDN serves (such as skd:// keys): not warmed.")
    message: str = Field(description="The above in a sentence or two.")


class SummaryResponse(BaseModel):
    request_id: str
    status: str
    failure_pops: list[str]
    failure_urls: list[str]
    failure_pop_urls_report: str
    success_count: int
    failure_count: int
    pops: list[PopStats]
    verified_hit_count: int = 0
    warm_ratio: float | None = None
    cold_pairs: list[ColdPair] = Field(
        default_factory=list, description=f"Pairs that did not verify as a Hit (the first {MAX_COLD_PAIRS:,})."
    )
    cold_pair_count: int = 0
    retry_of: str | None = None
    webhook: WebhookStatus | None = None
    download_size: int = 0
    bytes_wasted: int = 0
    byte_rate: float = 0.0
    already_warm_count: int = 0
    origin_fetches: int = 0
    tiering: str = Field(default="", description="The tiering the job used (rec, shield or off), once decided.")
    rec_groups: dict[str, str] = Field(
        default_factory=dict, description="With rec tiering: the regional edge cache each POP was taken to use (the "
        "catalogue's, or what earlier jobs' Server-Timing showed; '<POP> (own)': none known to share)."
    )
    origin_concurrency_low: int | None = Field(
        default=None, description="The lowest the adaptive first-tier concurrency limit went, each fetcher's "
        "lowest added (below max_origin_concurrency: the origin showed trouble and was spared)."
    )
    hit_layers: dict[str, int] = Field(
        default_factory=dict, description="Verified pairs by the tier that answered their verification from its "
        "cache (Server-Timing cdn-hit-layer: EDGE, REC, Origin Shield; \"\" where absent); adds up to the verified "
        "pairs."
    )
    expansion: ExpansionSummary | None = Field(
        default=None, description="With expand: the manifests read, what they added, and what was left out and why."
    )
    failure_manifests: dict[str, int] = Field(
        default_factory=dict, description="With expand: failed tasks by the manifest their URL came from."
    )
    error_message: str = ""
    created_at: str
    last_update_time: str
    timestamp: str


class InstancesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    DesiredCapacity: Integer | None = Field(default=None, description="Target number of fetcher nodes (0..300).")
    req_id: str | None = None
    force_stop: Boolean = False

    @field_validator("DesiredCapacity")
    @classmethod
    def _capacity(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_INSTANCES:
            raise ValueError(f"must be between 0 and {MAX_INSTANCES}")
        return value

    @model_validator(mode="after")
    def _something(self) -> InstancesRequest:
        if self.DesiredCapacity is None and not self.force_stop:
            raise ValueError("give DesiredCapacity, or force_stop with req_id")
        if self.force_stop and not self.req_id:
            raise ValueError("force_stop needs req_id")
        return self

    @field_validator("req_id")
    @classmethod
    def _req_id(cls, value: str | None) -> str | None:
        return None if value is None else parse_req_id(value)


class InstancesResponse(BaseModel):
    status: Literal["success", "failed"]
    timestamp: str
    message: str


class InstancesQueryResponse(InstancesResponse):
    desiredcapacity: int
    alive_count: int = Field(description="Alive Ray nodes, head included.")
    fetcher_count: int = Field(description="Alive nodes marked as fetcher nodes (prewarm_fetcher).")


class JobsResponse(BaseModel):
    """``GET /jobs``: the selected jobs' progress bodies, newest first."""

    jobs: list[ProgressResponse]
    count: int = Field(description="Number of jobs in this answer (at most limit).")
    timestamp: str
