"""Micro-batching for ``recpipe serve``: concurrent recommendation requests share one model call.

Requests queue up; one worker takes the first, gathers what else arrives within ``max_wait_s``
(or up to ``max_users`` users), and answers the batch with one ``serving_default`` call per model
(after a reload, requests already queued for the old model are answered by the old model) at the
batch's largest k, each request keeping its own first k columns. The call runs in a worker thread,
so the event loop keeps accepting requests, which then form the next batch. ``recpipe serve`` uses it
for models scored by their graph; a ranked export answers by array indexing, cheaper than a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Answer = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # item_ids, titles, scores [n, k]; known [n]


@dataclass
class _Request:
    model: Any
    user_ids: list[str]
    k: int
    future: asyncio.Future = field(repr=False)


def split_answer(answer: Answer, sizes: list[int], ks: list[int]) -> list[Answer]:
    """Cut a batched answer back into one answer per request (``sizes`` rows, first ``ks`` columns)."""
    out, start = [], 0
    for n, k in zip(sizes, ks):
        rows = slice(start, start + n)
        items, titles, scores, known = answer
        out.append((items[rows, :k], titles[rows, :k], scores[rows, :k], known[rows]))
        start += n
    return out


class MicroBatcher:
    """Collects ``submit`` calls into batches for ``call(model, user_ids, k) -> Answer``."""

    def __init__(
        self, call: Callable[[Any, list[str], int], Answer], max_wait_s: float = 0.0, max_users: int = 1024
    ) -> None:
        self.call, self.max_wait_s, self.max_users = call, max_wait_s, max_users
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recpipe-batch")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, model: Any, user_ids: list[str], k: int) -> Answer:
        """The answer for ``user_ids`` at ``k`` from ``model``, computed in a shared batch."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(model, user_ids, k, future))
        return await future

    async def _gather(self) -> list[_Request]:
        batch = [await self._queue.get()]
        n_users = len(batch[0].user_ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while n_users < self.max_users:
            try:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                else:
                    request = self._queue.get_nowait()
            except TimeoutError:
                break
            batch.append(request)
            n_users += len(request.user_ids)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            by_model: dict[int, list[_Request]] = {}
            for request in batch:
                by_model.setdefault(id(request.model), []).append(request)
            for requests in by_model.values():
                users = [u for r in requests for u in r.user_ids]
                ks = [r.k for r in requests]
                try:
                    answer = await loop.run_in_executor(self._executor, self.call, requests[0].model, users, max(ks))
                except Exception as e:  # handed to each waiting request
                    for r in requests:
                        if not r.future.done():
                            r.future.set_exception(e)
                    continue
                for r, part in zip(requests, split_answer(answer, [len(r.user_ids) for r in requests], ks)):
                    if not r.future.done():  # the client may have gone
                        r.future.set_result(part)
