"""A typed client for the state actor, as Serve's ``ServeControllerClient`` is for its controller: the API calls
methods with signatures instead of naming actor methods in strings, and every call has the same time limit."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from ray.actor import ActorHandle
from ray.exceptions import RayTaskError

from prewarm.core.jobs import RetryRefused
from prewarm.schema import RequestError

STATE_CALL_TIMEOUT_S = 30.0  # the state actor answers in milliseconds; this long means it is restarting


class StateClient:
    def __init__(self, handle: ActorHandle, timeout_s: float = STATE_CALL_TIMEOUT_S) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    async def _call(self, ref: Any) -> Any:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.timeout_s)

    async def create_job(self, req_id: str, request: dict[str, Any], target_pops: list[str], cf_domain: str,
                         created_at: datetime, timeout_at: datetime, api_base: str,
                         selected: list[Any] | None) -> None:
        await self._call(self.handle.create_job.remote(req_id, request, target_pops, cf_domain, created_at,
                                                       timeout_at, api_base, selected))

    async def retry_source(self, req_id: str) -> dict[str, Any]:
        """The ended job's request and failed tasks; a ``RequestError`` naming ``retry_of`` when it has none."""
        try:
            return await self._call(self.handle.retry_source.remote(req_id))
        except RayTaskError as exc:
            if not isinstance(exc.cause, RetryRefused):
                raise
            raise RequestError(str(exc.cause)) from None

    async def exists(self, req_id: str) -> bool:
        return bool(await self._call(self.handle.exists.remote(req_id)))

    async def progress(self, req_id: str) -> dict[str, Any] | None:
        return await self._call(self.handle.progress.remote(req_id))

    async def summary(self, req_id: str) -> dict[str, Any] | None:
        return await self._call(self.handle.summary.remote(req_id))

    async def report(self, req_id: str) -> bytes | None:
        return await self._call(self.handle.report.remote(req_id))

    async def list_jobs(self, status: str | None, limit: int | None, since: datetime | None) -> list[dict[str, Any]]:
        return await self._call(self.handle.list_jobs.remote(status, limit, since))

    async def finish(self, req_id: str, status: str, error_message: str) -> str:
        return await self._call(self.handle.finish.remote(req_id, status, error_message))

    async def set_desired_capacity(self, value: int) -> None:
        await self._call(self.handle.set_desired_capacity.remote(value))

    async def desired_capacity(self) -> int:
        return int(await self._call(self.handle.get_desired_capacity.remote()))
