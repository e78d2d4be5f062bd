"""The fetcher actor: owns lanes of one request, keeps a pool per POP, reports results per batch."""

from __future__ import annotations

import asyncio
import os
from collections import deque

import ray

from prewarm.fetch import PopClient
from prewarm.metrics import record_batch
from prewarm.progress import ResultRow
from prewarm.settings import Settings
from prewarm.state import get_state_actor


class Fetcher:
    """Fetches batches of (task id, URL) through one POP each; one actor call per batch, never per URL."""

    def __init__(self, req_id: str, settings: Settings, headers: dict[str, str]) -> None:
        self._req_id = req_id
        self._settings = settings
        self._headers = headers
        self._clients: dict[tuple[str, int], PopClient] = {}
        self._state = get_state_actor(settings)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        return os.getpid()

    def _client(self, pop: str, addresses: list[str], limit: int) -> PopClient:
        """The pool for a POP at a concurrency cap (the probe and the warm-up may use different caps)."""
        client = self._clients.get((pop, limit))
        if client is None or client.addresses != addresses:
            client = PopClient(pop, addresses, self._settings, self._headers, limit)
            self._clients[(pop, limit)] = client
        return client

    async def fetch_batch(
        self, pop: str, addresses: list[str], tasks: list[tuple[int, str]], deadline: float, limit: int
    ) -> int:
        """Fetch every task of the batch, hand the results to the state actor, return how many.

        ``limit`` is this fetcher's share of the job's per-POP concurrency cap.
        """
        client = self._client(pop, addresses, limit)
        queue = deque(tasks)
        rows: list[ResultRow] = []

        async def worker() -> None:  # a few long-lived workers: cheaper than a task per URL
            while queue:
                task_id, url = queue.popleft()
                r = await client.fetch(url, "GET", deadline)
                rows.append((task_id, r.status, r.x_cache, r.address, r.nbytes, r.attempts,
                             round(r.elapsed_ms, 1), r.error_class, r.error_message))

        await asyncio.gather(*(worker() for _ in range(min(len(tasks), client.concurrency))))
        await self._state.record.remote(self._req_id, rows)
        record_batch(pop, rows)
        return len(rows)

    async def probe_batch(
        self, pop: str, addresses: list[str], items: list[tuple[int, str]], deadline: float, limit: int
    ) -> list[ProbeRow]:
        """HEAD each URL through one POP: its size, or the 4xx that spares sending it to every POP."""
        return await probe_urls(self._client(pop, addresses, limit), items, deadline)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)


# num_cpus=0: a fetcher waits on the network; placement, not CPU accounting, decides where it runs.
FetcherActor = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1000)(Fetcher)


ProbeRow = tuple[int, int, int | None, str, str]
"""(url_index, status_code, content_length, error_class, error_message) of one size probe."""


async def probe_urls(client: PopClient, items: list[tuple[int, str]], deadline: float) -> list[ProbeRow]:
    async def one(index: int, url: str) -> ProbeRow:
        r = await client.fetch(url, "HEAD", deadline)
        return (index, r.status, r.content_length, r.error_class, r.error_message)

    return list(await asyncio.gather(*(one(i, u) for i, u in items)))
