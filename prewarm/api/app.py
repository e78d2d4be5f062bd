"""The HTTP API: a FastAPI ingress on Ray Serve. Validates, answers at once, reads state from the state actor."""


import asyncio
import hmac
import json
import time
import uuid
from typing import Any

import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.deployment import Application
from starlette.background import BackgroundTask

from prewarm import __version__
from prewarm.api.standby import Standby
from prewarm.api.stateclient import StateClient
from prewarm.aws.cloudfront import distribution_by_alias
from prewarm.core.events import MAX_JOBS_LIMIT, check_limit, check_status, job_events, parse_since
from prewarm.core.jobs import service_report_url
from prewarm.engine.cluster import ON_HEAD, node_counts
from prewarm.engine.coordinator import start_job
from prewarm.engine.registry import kill_coordinator
from prewarm.net.resolve import Resolver, find_distribution
from prewarm.net.webhook import resolve_callback
from prewarm.schema import (
    ErrorResponse,
    InstancesQueryResponse,
    InstancesRequest,
    InstancesResponse,
    JobsResponse,
    PrewarmRequest,
    PrewarmResponse,
    ProgressResponse,
    RequestError,
    RetryRequest,
    SummaryResponse,
    check_req_id,
    describe_errors,
    fmt_time,
    request_error,
    utcnow,
)
from prewarm.settings import Settings

api = FastAPI(
    title="cdn-prewarm",
    version=__version__,
    description="Warm CDN edge caches (POPs) before traffic arrives. See shared/spec/prewarm-api.md.",
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input; error_message names the field."},
    403: {"model": ErrorResponse, "description": "Missing or invalid x-api-key (when PREWARM_API_KEYS is set)."},
    404: {"model": ErrorResponse, "description": "Unknown req_id."},
    413: {"model": ErrorResponse, "description": "Request body over PREWARM_MAX_BODY_BYTES."},
    503: {"model": ErrorResponse, "description": "The state actor is unreachable for now; retry."},
}


def _error(status_code: int, message: str, error_urls: list[str] | None = None) -> JSONResponse:
    body = ErrorResponse(status="Failed", error_message=message, error_urls=error_urls or [],
                         timestamp=fmt_time(utcnow()))
    return JSONResponse(body.model_dump(), status_code=status_code)


@api.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status_code, exc.message, exc.error_urls)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(400, describe_errors(exc.errors()).message)


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # The state actor being unreachable is the only expected cause: a retryable 503, never a bare 500.
    return _error(503, f"service temporarily unavailable: {type(exc).__name__}: {str(exc)[:300]}")


# Set by the ingress from its settings; read by the middleware. Both go through module-level functions, which
# Serve's frozen copies of the app and of the ingress class resolve by reference, so they share this global.
_api_keys: tuple[bytes, ...] = ()
OPEN_PATHS = frozenset({"/healthz"})


def set_api_keys(keys: tuple[str, ...]) -> None:
    global _api_keys
    _api_keys = tuple(k.encode() for k in keys)


@api.middleware("http")
async def _authenticate(request: Request, call_next: Any) -> Any:
    """With PREWARM_API_KEYS set, every path but /healthz needs a valid ``x-api-key`` (constant-time check)."""
    if _api_keys and request.url.path not in OPEN_PATHS:
        given = request.headers.get("x-api-key", "").encode()
        valid = False
        for key in _api_keys:  # compare with every key: the time taken does not tell which matched
            valid |= hmac.compare_digest(given, key)
        if not valid:
            return _error(403, "missing or invalid x-api-key header")
    return await call_next(request)


def _json_schema(model: type) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}
            },
        }
    }


async def _json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body is larger than {limit} bytes (PREWARM_MAX_BODY_BYTES)", status_code=413)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise RequestError(f"request body is larger than {limit} bytes (PREWARM_MAX_BODY_BYTES)",
                               status_code=413)
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None


def validate_prewarm(raw: Any, settings: Settings) -> PrewarmRequest:
    """Validate a POST /prewarm body, including the limits that are settings."""
    if not isinstance(raw, dict):
        raise RequestError("request body must be a JSON object")
    try:
        req = PrewarmRequest.model_validate(raw)
    except ValidationError as exc:
        raise request_error(exc) from None
    if len(req.url_list) > settings.max_urls:
        raise RequestError(f"field 'url_list' has {len(req.url_list)} URLs; at most {settings.max_urls} "
                           "per request (PREWARM_MAX_URLS)")
    too_long = [u for u in req.url_list if len(u) > settings.max_url_length]
    if too_long:
        raise RequestError(f"field 'url_list': {len(too_long)} URL(s) longer than {settings.max_url_length} "
                           "characters (PREWARM_MAX_URL_LENGTH)", error_urls=too_long)
    return req


def summary_response(body: dict[str, Any], base_url: str, req_id: str) -> SummaryResponse:
    """The state actor's summary as the API's answer; a job made without the service's address (not through
    this API) gets this request's."""
    if not body.get("failure_pop_urls_report"):
        body = {**body, "failure_pop_urls_report": service_report_url(base_url, req_id)}
    return SummaryResponse(**body)


def no_job(req_id: str) -> RequestError:
    return RequestError(f"field 'req_id': no job {req_id}", status_code=404)


# Each open event stream holds one of the replica's ongoing requests for as long as its job runs, so the
# replica takes many more than Serve's default (5), and streams are capped below that: they can never
# starve the short calls.
MAX_EVENT_STREAMS = 256
MAX_ONGOING_REQUESTS = MAX_EVENT_STREAMS + 256
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@serve.deployment(name="prewarm-api", ray_actor_options={"num_cpus": 0, "resources": ON_HEAD},
                  max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress(api)
class PrewarmIngress:
    def __init__(self, settings: Settings) -> None:
        set_api_keys(settings.api_keys)
        self.settings = settings
        from prewarm.engine.state import ensure_state_actor  # this process creates it: the others only find it

        self.state = StateClient(ensure_state_actor(settings))
        self.resolver = Resolver(settings.nameservers, settings.dns_timeout_s)
        self._streams = 0  # open GET /prewarm/events streams (at most MAX_EVENT_STREAMS)
        self.standby = Standby(settings) if settings.standby else None

    def __del__(self) -> None:  # Serve calls this when it shuts the replica down
        if getattr(self, "standby", None) is not None:
            self.standby.close()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @api.post("/prewarm", response_model=PrewarmResponse, responses=_ERRORS,
              openapi_extra=_json_schema(PrewarmRequest))
    async def prewarm(self, request: Request) -> PrewarmResponse:
        """Accept a prewarm job and answer at once; the work runs on the cluster."""
        raw = await _json_body(request, self.settings.max_body_bytes)
        selected = None
        if isinstance(raw, dict) and raw.get("retry_of") is not None:  # "retry_of": null is a plain job
            req, cf_domain, selected = await self._retry(raw)
        else:
            req = validate_prewarm(raw, self.settings)
            try:
                cf_domain = await find_distribution(self.resolver, req.cf_domain, req.url_list, distribution_by_alias)
            except ValueError as exc:
                raise RequestError(str(exc)) from None
        if req.callback_url:
            if not self.settings.webhook_secret:
                raise RequestError("field 'callback_url': this service has no PREWARM_WEBHOOK_SECRET, and it "
                                   "sends only signed webhooks")
            _, problem = await asyncio.to_thread(
                resolve_callback, req.callback_url, self.settings.allow_private_edges, self.settings.dns_timeout_s
            )
            if problem:
                raise RequestError(f"field 'callback_url': {problem}")
        req_id, coordinator = self.standby.take() if self.standby else (str(uuid.uuid4()), None)
        now = utcnow()
        timeout_at = req.deadline(now)
        try:
            await self.state.create_job(req_id, req.model_dump(), req.target_pops(), cf_domain, now,
                                        timeout_at, str(request.base_url).rstrip("/"), selected)
        except BaseException:
            if coordinator is not None:  # it was started for this request id only
                ray.kill(coordinator, no_restart=True)
            raise
        start_job(req_id, req, cf_domain, time.time() + req.timeout * 60, self.settings, coordinator)
        return PrewarmResponse(status="Success", request_id=req_id, timestamp=fmt_time(now),
                               timeout_at=fmt_time(timeout_at))

    async def _retry(self, raw: dict[str, Any]) -> tuple[PrewarmRequest, str, list[Any]]:
        """A retry job: the failed and unfinished tasks of an ended job, with its targets and headers."""
        try:
            retry = RetryRequest.model_validate(raw)
        except ValidationError as exc:
            raise request_error(exc) from None
        source = await self.state.retry_source(retry.retry_of)
        # The retry targets exactly the POPs that had failures, by code, whatever the original's target type.
        original = {**source["request"], "target_type": "pop", "pops": source["target_pops"], "countries": [],
                    "regions": [], "cf_domain": source["cf_domain"]}
        try:
            req = retry.build(original)
        except ValidationError as exc:
            raise request_error(exc) from None
        return req, source["cf_domain"], source["selected"]

    @api.get("/prewarm", response_model=ProgressResponse, responses=_ERRORS)
    async def progress(self, req_id: str | None = None) -> ProgressResponse:
        body = await self.state.progress(check_req_id(req_id))
        if body is None:
            raise no_job(req_id)
        return ProgressResponse(**body)

    @api.get("/summary", response_model=SummaryResponse, responses=_ERRORS)
    async def summary(self, request: Request, req_id: str | None = None) -> SummaryResponse:
        req_id = check_req_id(req_id)
        body = await self.state.summary(req_id)
        if body is None:
            raise no_job(req_id)
        return summary_response(body, str(request.base_url), req_id)

    @api.get("/prewarm/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "Server-Sent Events: `progress` (the GET /prewarm body) at most "
                                             "once a second while it changes, then one `done` (the GET "
                                             "/summary body); `: keep-alive` comments in silences."},
                        **_ERRORS})
    async def events(self, request: Request, req_id: str | None = None) -> StreamingResponse:
        """Stream a job's progress until it ends, so watchers need not poll; errors answer before streaming."""
        req_id = check_req_id(req_id)
        first = await self.state.progress(req_id)
        if first is None:
            raise no_job(req_id)
        if self._streams >= MAX_EVENT_STREAMS:
            raise RequestError(f"too many event streams open ({MAX_EVENT_STREAMS}); poll GET /prewarm instead",
                               status_code=503)
        base_url = str(request.base_url)
        # The slot is taken now, not when Starlette starts the body, so a burst cannot pass the check together;
        # it is given back once, by the stream's end or by the response's background task (a stream never
        # started because its client left first).
        self._streams += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._streams -= 1

        async def progress() -> dict[str, Any] | None:
            body = await self.state.progress(req_id)
            return None if body is None else ProgressResponse(**body).model_dump()

        async def summary() -> dict[str, Any]:
            return summary_response(await self.state.summary(req_id), base_url, req_id).model_dump()

        async def stream() -> Any:
            try:
                async for frame in job_events(progress, summary, first=ProgressResponse(**first).model_dump()):
                    yield frame
            finally:
                release()

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS,
                                 background=BackgroundTask(release))

    @api.get("/jobs", response_model=JobsResponse, responses=_ERRORS)
    async def jobs(self, status: str | None = Query(None, description="One of IN_PROGRESS, FINISHED, TIMEOUT, "
                                                                      "FAILED, STOPPED."),
                   limit: int | None = Query(None, ge=1, le=MAX_JOBS_LIMIT, description="1..1000, default 100."),
                   since: str | None = Query(None, description="Jobs created at or after this time: "
                                                               "'2024-04-16 03:12:21.046535' (UTC) or ISO 8601.")
                   ) -> JobsResponse:
        """Jobs newest first, each with its progress; the state actor filters before building bodies."""
        try:
            chosen_status, chosen_limit, after = check_status(status), check_limit(limit), parse_since(since)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        bodies = await self.state.list_jobs(chosen_status, chosen_limit, after)
        jobs = [ProgressResponse(**b) for b in bodies]
        return JobsResponse(jobs=jobs, count=len(jobs), timestamp=fmt_time(utcnow()))

    @api.get("/reports/{name}", responses={200: {"content": {"text/csv": {}}}, **_ERRORS})
    async def report(self, name: str) -> Response:
        """The failure report: one row per failed (URL, POP), with a header row."""
        req_id = check_req_id(name.removesuffix(".csv"))
        csv = await self.state.report(req_id)
        if csv is None:
            raise no_job(req_id)
        return Response(csv, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{req_id}.csv"'})

    @api.post("/instances", response_model=InstancesResponse, responses=_ERRORS,
              openapi_extra=_json_schema(InstancesRequest))
    async def set_instances(self, request: Request, req_id: str | None = None) -> InstancesResponse:
        raw = await _json_body(request, 64 * 1024)
        if not isinstance(raw, dict):
            raise RequestError("request body must be a JSON object")
        if req_id is not None and "req_id" not in raw:
            raw = {**raw, "req_id": req_id}
        try:
            body = InstancesRequest.model_validate(raw)
        except ValidationError as exc:
            raise request_error(exc) from None
        messages = []
        if body.force_stop and body.req_id:
            if not await self.state.exists(body.req_id):
                raise no_job(body.req_id)
            status = await self.state.finish(body.req_id, "STOPPED", "stopped by force_stop")
            await asyncio.to_thread(kill_coordinator, body.req_id, self.settings.namespace)
            messages.append(f"job {body.req_id} is {status}")
        if body.DesiredCapacity is not None:
            await self.state.set_desired_capacity(body.DesiredCapacity)  # it asks the autoscaler
            messages.append(f"desired capacity set to {body.DesiredCapacity} fetcher node(s)")
        return InstancesResponse(status="success", timestamp=fmt_time(utcnow()), message="; ".join(messages))

    @api.get("/instances", response_model=InstancesQueryResponse)
    async def get_instances(self) -> InstancesQueryResponse:
        desired = await self.state.desired_capacity()
        alive, fetchers = await asyncio.to_thread(node_counts)
        return InstancesQueryResponse(status="success", timestamp=fmt_time(utcnow()), message="query success",
                                      desiredcapacity=desired, alive_count=alive, fetcher_count=fetchers)


def build_app(settings: Settings | None = None) -> Application:
    """The Serve application; settings are read here, in the driver, and handed to every actor."""
    return PrewarmIngress.bind(settings or Settings.from_env())

