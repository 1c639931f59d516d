"""The ASGI application: SageMaker's inference routes on Starlette, for one model.

``GET /ping``
    200 with an empty body once the model is loaded and warmed up, 503 before.
``POST /invocations``
    Query rows in, predictions out (:mod:`gpuknn.serving.invocations`), searched in
    micro-batches (:mod:`gpuknn.serving.batching`).
``GET /execution-parameters``
    Batch-transform hints, when ``SAGEMAKER_BATCH`` is ``true``.
``GET /model``
    A gpuknn extension: the model's settings and its sorted classes (the order of
    ``probabilities``).

The model loads in a background thread, so the socket accepts at once. A multi-model
server (:mod:`gpuknn.multimodel.app`) serves the same invocations for many models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gpuknn import _backend, _version
from gpuknn.errors import ClientError
from gpuknn.model.knn_model import KNNModel
from gpuknn.serving.batching import MicroBatcher
from gpuknn.serving.invocations import error_response, execution_parameters, respond
from gpuknn.serving.settings import ServeSettings

log = logging.getLogger("gpuknn.serve")


class _State:
    """The loaded model and its batcher; None until loading has finished."""

    def __init__(self, settings: ServeSettings, on_load_failure: Callable[[str], None] | None):
        self.settings = settings
        self.on_load_failure = on_load_failure
        self.batcher: MicroBatcher | None = None
        self.model: KNNModel | None = None

    async def load(self) -> None:
        try:
            model = await run_in_threadpool(_load, self.settings)
            batcher = MicroBatcher(model, max_batch_rows=self.settings.max_batch_rows,
                                   max_wait_ms=self.settings.max_wait_ms)
            await batcher.start()  # warms the model up: a failure there is a load failure
        except Exception as err:
            if isinstance(err, ClientError):  # a missing or broken model: its reason suffices
                log.error("could not load the model: %s", err)
            else:
                log.exception("could not load the model")
            if self.on_load_failure is not None:
                self.on_load_failure(f"could not load the model: {err}")
            return
        self.model, self.batcher = model, batcher
        _backend.release_free_memory()  # the load's and warm-up's temporaries
        log.info("ready: %r", model)


def _load(settings: ServeSettings) -> KNNModel:
    return KNNModel.load(settings.model_path, device=settings.device, shards=settings.shards,
                         devices=settings.devices)


def create_app(settings: ServeSettings,
               on_load_failure: Callable[[str], None] | None = None) -> Starlette:
    """The Starlette application serving the model of ``settings``.

    Parameters
    ----------
    settings : ServeSettings
    on_load_failure : callable, optional
        Called with a reason if the model cannot be loaded (the CLI stops the server).
    """
    state = _State(settings, on_load_failure)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        loading = asyncio.create_task(state.load())
        if not settings.load_in_background:
            await loading
        yield
        loading.cancel()
        if state.batcher is not None:
            await state.batcher.stop()

    routes = [Route("/ping", _ping(state), methods=["GET"]),
              Route("/invocations", _invocations(state), methods=["POST"]),
              Route("/execution-parameters", _execution_parameters(state), methods=["GET"]),
              Route("/model", _model_info(state), methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


def _ping(state: _State):
    async def ping(request: Request) -> Response:
        return Response(status_code=200 if state.batcher is not None else 503)

    return ping


def _invocations(state: _State):
    async def invocations(request: Request) -> Response:
        if state.batcher is None:
            return error_response(503, "the model is still loading; retry when /ping answers "
                                       "200")
        return await respond(request, state.model, state.batcher, state.settings)

    return invocations


def _execution_parameters(state: _State):
    async def execution_parameters_route(request: Request) -> Response:
        return execution_parameters(state.settings)

    return execution_parameters_route


def _model_info(state: _State):
    async def model_info(request: Request) -> Response:
        model = state.model
        if model is None:
            return error_response(503, "the model is still loading")
        hp = model.hyperparameters
        classes = None if model.classes_ is None else model.classes_.tolist()
        return JSONResponse({
            "gpuknn_version": _version.__version__, "k": hp.k,
            "predictor_type": hp.predictor_type, "feature_dim": model.feature_dim,
            "n_indexed": model.n_indexed, "index_type": hp.index_type,
            "index_metric": hp.index_metric, "device": model.device, "shards": model.n_shards,
            "classes": classes if hp.predictor_type == "classifier" else None,
            "batches": state.batcher.batches, "rows_searched": state.batcher.rows,
            "rows_in_search": state.batcher.searching})

    return model_info
