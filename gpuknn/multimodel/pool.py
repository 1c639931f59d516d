"""The models one worker process of a multi-model server holds and answers with.

The :class:`~gpuknn.multimodel.registry.Registry` says which models are loaded; a
:class:`ModelPool` keeps this worker's copy of each (its
:class:`~gpuknn.model.knn_model.KNNModel`, mapped from the model's files, and its
micro-batcher), all searching on one shared search thread.

- A load (:meth:`ModelPool.load`) claims the name in the registry, loads the model here
  (with the arrays its answers need; on a GPU also one warm-up search), measures what it
  holds (:func:`~gpuknn.model.footprint.footprint`) and commits that charge; any failure
  frees the name again.
- Every other worker loads a model it does not hold yet on its first request for it, and
  ahead of requests in its sync loop (every :data:`SYNC_SECONDS`), so that a model loaded
  through any worker answers through every worker. Its files are mapped, so the extra
  copies share their pages.
- Every request looks its name up in the registry first, so after an unload no worker
  answers with the model, and a name loaded again is answered by the new model, never
  the old one. A worker drops its copy of a model that is gone from the registry on its
  next request for it or its next sync.
- A model is closed only once no request uses it: each request holds it from the
  moment it is looked up to its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.concurrency import run_in_threadpool

from gpuknn import _backend
from gpuknn.errors import InsufficientMemoryError, ModelNotLoadedError, ModelTooLargeError
from gpuknn.model import footprint as model_footprint
from gpuknn.model.footprint import Footprint
from gpuknn.model.knn_model import KNNModel
from gpuknn.multimodel import names
from gpuknn.multimodel.budget import charge
from gpuknn.multimodel.registry import Entry, Registry
from gpuknn.serving.batching import MicroBatcher
from gpuknn.serving.settings import ServeSettings

log = logging.getLogger("gpuknn.serve")

SYNC_SECONDS = 0.5
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC)


class HostedModel:
    """One model as this worker holds it: the model, its batcher and what it holds.

    Requests hold it between :meth:`enter` and :meth:`leave`; :meth:`close` waits for
    the last of them.
    """

    def __init__(self, entry: Entry, model: KNNModel, batcher: MicroBatcher,
                 footprint: Footprint):
        self.entry = entry
        self.model: KNNModel | None = model
        self.batcher: MicroBatcher | None = batcher
        self.footprint = footprint
        self.retired = False
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def generation(self) -> int:
        """The registry's generation of the load this copy belongs to."""
        return self.entry.generation

    def enter(self) -> bool:
        """Hold the model for a request; False once it is retired (look it up again)."""
        if self.retired:
            return False
        self._users += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        """A request is done with the model."""
        self._users -= 1
        if self._users == 0:
            self._idle.set()

    async def close(self) -> None:
        """Once retired and no request holds it: stop the batcher, drop the model."""
        self.retired = True
        await self._idle.wait()
        if self.batcher is not None:
            await self.batcher.stop()
        self.model = self.batcher = None


class ModelPool:
    """This worker's loaded models.

    Parameters
    ----------
    settings : ServeSettings
        Batching, payload limits, the device and the worker count.
    registry : Registry
        Shared with the server's other workers.
    """

    def __init__(self, settings: ServeSettings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self.device = _backend.resolve_device(settings.device)
        self._hosted: dict[str, HostedModel] = {}
        self._opening: dict[tuple[str, int], asyncio.Task] = {}
        self._failed: set[tuple[str, int]] = set()
        self._closing: set[asyncio.Task] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._sync: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the search thread and the sync loop."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gpuknn-search")
        self._sync = asyncio.create_task(self._sync_forever(), name="gpuknn-model-sync")

    async def stop(self) -> None:
        """Close every model (after the requests holding them), then the search thread."""
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        for name in list(self._hosted):
            self._retire(name)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # -- the contract ------------------------------------------------------------------
    async def load(self, name: str, url: str) -> Entry:
        """Load the model at ``url`` as ``name`` (``POST /models``); its registry entry.

        Raises
        ------
        ClientError
            400 for a bad name or url, or a model that does not load (naming the file
            and the fault); 404 for a url where nothing exists; 409 for a name already
            loaded.
        InsufficientMemoryError
            507 for a model that does not fit the budget (or the machine).
        """
        names.check_name(name)
        names.check_url(url)
        started = time.perf_counter()
        location = await run_in_threadpool(names.locate, url)
        estimate = await run_in_threadpool(_estimate, location, self.device)
        workers = self.settings.workers
        entry = self.registry.reserve(name, url, str(location), charge(estimate, workers),
                                      estimate)
        hosted = None
        try:
            hosted = await self._open(entry)
            entry = self.registry.commit(entry, charge(hosted.footprint, workers),
                                         hosted.footprint)
        except BaseException:
            self.registry.abandon(entry)
            if hosted is not None:
                await hosted.close()
                await self._release_memory()
            raise
        hosted.entry = entry
        self._install(hosted)
        self._log("loaded", entry, started)
        return entry

    async def unload(self, name: str) -> Entry:
        """Unload ``name`` (``DELETE /models/<name>``) once no request here uses it.

        Raises
        ------
        ModelNotLoadedError
            404 when the name is not loaded.
        """
        started = time.perf_counter()
        entry = self.registry.remove(name)
        hosted = self._hosted.get(name)
        if hosted is not None and hosted.generation == entry.generation:
            await self._retire(name)
        self._log("unloaded", entry, started)
        return entry

    @contextlib.asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[HostedModel]:
        """Hold the model called ``name`` for one request, loading this worker's copy
        first if it has none.

        Raises
        ------
        ModelNotLoadedError
            404 when no model of that name is loaded.
        InsufficientMemoryError
            507 when this worker cannot load its copy.
        """
        hosted = await self._hold(name)
        try:
            yield hosted
        finally:
            hosted.leave()

    async def _hold(self, name: str) -> HostedModel:
        for _ in range(3):  # each retry follows an unload or reload racing this request
            entry = self.registry.get(name)
            if entry is None:
                break
            hosted = self._hosted.get(name)
            if hosted is None or hosted.generation != entry.generation:
                hosted = await self._local(entry)
            if hosted is not None and hosted.enter():
                return hosted
        raise ModelNotLoadedError(f"model {names.shown(name)} is not loaded; load it with "
                                  'POST /models {"model_name": ..., "url": ...}')

    # -- this worker's copies ----------------------------------------------------------
    async def _local(self, entry: Entry) -> HostedModel | None:
        """This worker's copy of ``entry``, loaded once however many ask at once; None if
        the entry was unloaded meanwhile."""
        key = (entry.name, entry.generation)
        task = self._opening.get(key)
        if task is None:
            task = asyncio.create_task(self._open_and_install(entry))
            self._opening[key] = task
            task.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(task)  # a request that goes away leaves the load be

    async def _open_and_install(self, entry: Entry) -> HostedModel | None:
        try:
            hosted = await self._open(entry)
        except Exception:
            self._failed.add((entry.name, entry.generation))
            raise
        current = self.registry.get(entry.name)
        if current is None or current.generation != entry.generation:
            await hosted.close()
            return None
        self._install(hosted)
        return hosted

    async def _open(self, entry: Entry) -> HostedModel:
        """Load the model of ``entry`` here, start its batcher, measure what it holds."""
        try:
            model = await run_in_threadpool(_load, entry.location, self.device)
            batcher = MicroBatcher(model, max_batch_rows=self.settings.max_batch_rows,
                                   max_wait_ms=self.settings.max_wait_ms,
                                   executor=self._executor, warm_up=self.device == "gpu")
            await batcher.start()
        except (MemoryError, ModelTooLargeError) as err:
            raise InsufficientMemoryError(f"model {names.shown(entry.name)} does not fit: "
                                          f"{err}") from None
        except OSError as err:
            if err.errno not in _OUT_OF_RESOURCES:
                raise
            raise InsufficientMemoryError(f"model {names.shown(entry.name)} could not be loaded: "
                                          f"{err.strerror}") from None
        return HostedModel(entry, model, batcher, model_footprint.footprint(model))

    def _install(self, hosted: HostedModel) -> None:
        old = self._hosted.get(hosted.entry.name)
        if old is not None and old is not hosted:
            self._retire(hosted.entry.name)
        self._hosted[hosted.entry.name] = hosted

    def _retire(self, name: str) -> asyncio.Task:
        """Stop answering with this worker's copy of ``name``; the task closing it."""
        hosted = self._hosted.pop(name)
        hosted.retired = True

        async def close() -> None:
            await hosted.close()
            await self._release_memory()

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    async def _release_memory(self) -> None:
        def release() -> None:
            _backend.release_free_memory()
            if self.device == "gpu":
                _backend.release_device_memory()

        await run_in_threadpool(release)

    # -- following the registry --------------------------------------------------------
    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                await self.sync()
            except Exception:
                log.exception("could not follow the model registry")

    async def sync(self) -> None:
        """Drop the copies of models that are gone from the registry, and load the ready
        models this worker holds no copy of (one at a time; a model that failed to load
        here is tried again only when a request asks for it)."""
        ready = self.registry.ready()
        for name, hosted in list(self._hosted.items()):
            if ready.get(name) != hosted.generation:
                self._retire(name)
        for name, generation in ready.items():
            key = (name, generation)
            held = self._hosted.get(name)
            if (held is not None and held.generation == generation) or key in self._failed:
                continue
            entry = self.registry.get(name)
            if entry is None or entry.generation != generation:
                continue
            try:
                await self._local(entry)
            except Exception as err:
                log.warning("could not load model %r here ahead of requests: %s", name, err)

    # -- reporting ---------------------------------------------------------------------
    def _log(self, what: str, entry: Entry, started: float) -> None:
        used = self.registry.used()
        gpu = self.device == "gpu"
        taken = used.device_bytes if gpu else used.host_bytes
        budget = self.registry.budget_bytes
        log.info("%s model %s (%s): %s in %.3f s; %s of the %s budget left (%d bytes taken)",
                 what, names.shown(entry.name), entry.url,
                 model_footprint.describe(entry.footprint), time.perf_counter() - started,
                 _mib(max(0, budget - taken)), _mib(budget), taken)


def _load(location: str, device: str) -> KNNModel:
    """The model at ``location``, with the arrays its answers need made now.

    On a GPU the batcher also searches one row (a warm-up that sizes the search's device
    memory, so a model that cannot search fails its load with 507, not its first request).
    On the CPU a search would only read the model's pages, which the first request reads
    anyway: a model of 1M x 128 would pay a full scan twice.
    """
    model = KNNModel.load(location, device=device)
    model.prepare()
    return model


def _estimate(location, device: str) -> Footprint:
    try:
        return model_footprint.estimate(location, device)
    except ModelTooLargeError as err:
        raise InsufficientMemoryError(str(err)) from None


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
