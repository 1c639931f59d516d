"""Dynamic micro-batching: requests that arrive together are searched together.

One brute-force search streams the whole index through memory whatever the number
of queries, so 32 single-row requests cost about as much as one when searched as a
32-row batch. :class:`MicroBatcher` queues the parsed rows of every request; a
collector task takes whatever is queued, waits at most ``max_wait_ms`` for requests
that are still being read (never when none are), and hands the batch to a single
search thread. Searching off the event loop keeps ``/ping`` answering; a single
thread serialises access to the index (GPU faiss is not thread-safe, and the CPU
search already uses every core).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gpuknn.model.answer import Answer
from gpuknn.model.knn_model import KNNModel

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Coalesce concurrent queries into search batches.

    Parameters
    ----------
    model : KNNModel
    max_batch_rows : int
        Stop adding requests to a batch once it holds this many rows (a single larger
        request is still searched whole).
    max_wait_ms : float
        Longest wait for requests still being read before a batch starts.
    executor : ThreadPoolExecutor, optional
        The search thread, shared with other batchers (a multi-model server has one for
        all its models); by default the batcher starts and stops one of its own.
    warm_up : bool
        Search one row when starting (:meth:`start`).
    """

    def __init__(self, model: KNNModel, *, max_batch_rows: int = 4096,
                 max_wait_ms: float = 2.0, executor: ThreadPoolExecutor | None = None,
                 warm_up: bool = True):
        if max_batch_rows < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_rows must be >= 1 and max_wait_ms >= 0")
        self.model = model
        self.max_batch_rows = int(max_batch_rows)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.batches = 0
        self.rows = 0
        self.searching = 0  # rows of the search running now (0 between searches)
        self._arriving = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._collector: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = executor
        self._owns_executor = executor is None
        self._warm_up = warm_up

    async def start(self) -> None:
        """Warm the model up on the search thread, then start the collector.

        The warm-up runs one row (:meth:`KNNModel.warm_up_query`, cheap to answer)
        through the thread that will do every search, so that its per-thread state (on
        a GPU, CuPy's cuBLAS handle and workspace) exists before the first request.
        """
        self._queue = asyncio.Queue()
        if self._owns_executor:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="gpuknn-search")
        try:
            if self._warm_up:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.model.answer, self.model.warm_up_query())
        except BaseException:
            if self._owns_executor:
                self._executor.shutdown(wait=False)
            raise
        self._collector = asyncio.create_task(self._collect(), name="gpuknn-batcher")

    async def stop(self) -> None:
        """Answer everything queued, then stop the collector and the search thread."""
        if self._collector is None:
            return
        while not self._queue.empty() or self._arriving:
            await asyncio.sleep(0.001)
        self._collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector
        if self._owns_executor:
            self._executor.shutdown(wait=True)
        self._collector = None

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request whose body is being read, so that a starting batch waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def answer(self, rows: np.ndarray) -> Answer:
        """Search ``rows`` (n, feature_dim) float32 in the next batch; the answer for them."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(rows, future))
        return await future

    async def _collect(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._gather_more(batch)
            await self._search(batch)

    async def _gather_more(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        total = len(batch[0].rows)
        while total < self.max_batch_rows:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if not self._arriving or remaining <= 0:
                    return
                try:
                    item = await asyncio.wait_for(self._queue.get(), min(remaining, 0.0005))
                except TimeoutError:
                    continue
            else:
                item = self._queue.get_nowait()
            batch.append(item)
            total += len(item.rows)

    async def _search(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip cancelled clients
        if not live:
            return
        rows = live[0].rows if len(live) == 1 else np.concatenate([p.rows for p in live])
        loop = asyncio.get_running_loop()
        self.searching = len(rows)
        try:
            answer = await loop.run_in_executor(self._executor, self.model.answer, rows)
        except Exception as err:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        finally:
            self.searching = 0
        self.batches += 1
        self.rows += len(rows)
        start = 0
        for item in live:
            stop = start + len(item.rows)
            if not item.future.done():
                item.future.set_result(answer.rows(slice(start, stop)))
            start = stop
