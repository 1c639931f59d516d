"""The ASGI application: SageMaker's inference routes on Starlette.

``GET /ping``
    200 with an empty body once the model is loaded and warmed up, 503 before.
``POST /invocations``
    Query rows in, predictions out (:mod:`gpuknn.serving.formats`), searched in
    micro-batches (:mod:`gpuknn.serving.batching`).
``GET /execution-parameters``
    Batch-transform hints, when ``SAGEMAKER_BATCH`` is ``true``.
``GET /model``
    A gpuknn extension: the model's settings and its sorted classes (the order of
    ``probabilities``).

Every client error is answered with its status (400, 406, 408, 413, 415) and a short
JSON body ``{"error": "..."}``; an internal fault with 500 and the traceback only in
the log. The model loads in a background thread, so the socket accepts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gpuknn import _backend, _version
from gpuknn.errors import ClientError, PayloadTooLargeError, RequestTimeoutError
from gpuknn.model.knn_model import KNNModel
from gpuknn.serving import formats
from gpuknn.serving.batching import MicroBatcher

log = logging.getLogger("gpuknn.serve")

DEFAULT_MAX_PAYLOAD_MB = 6
# A body must arrive within SageMaker's 60 s invocation timeout (HTTP 408 after).
BODY_TIMEOUT_SECONDS = 60.0
# Bodies larger than this are parsed and answers serialised on a worker thread, so the
# event loop keeps answering /ping and small requests meanwhile.
OFFLOAD_BYTES = 64 << 10


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs.

    Attributes
    ----------
    model_path : str
        A model directory or ``model.tar.gz``.
    device : {"auto", "cpu", "gpu"}
    max_batch_rows : int
        Rows per coalesced search batch.
    max_wait_ms : float
        Longest wait for requests still being read before a batch starts.
    max_payload_mb : float
        Larger request bodies get 413, and so do gzip bodies inflating past it.
    body_timeout_s : float
        A body not received within this many seconds gets 408 (SageMaker's invocation
        timeout is 60 s).
    load_in_background : bool
        Accept connections at once and answer /ping with 503 until the model is loaded
        (one worker); False loads before accepting, so that several workers sharing a
        socket never hand a request to one that is still loading.
    """

    model_path: str
    device: str = "auto"
    max_batch_rows: int = 4096
    max_wait_ms: float = 2.0
    max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB
    body_timeout_s: float = BODY_TIMEOUT_SECONDS
    load_in_background: bool = True


def default_max_payload_mb() -> float:
    """``SAGEMAKER_MAX_PAYLOAD_IN_MB`` if set (batch transform), else SageMaker's 6 MB."""
    value = os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB", "").strip()
    try:
        return float(value) if value and float(value) > 0 else DEFAULT_MAX_PAYLOAD_MB
    except ValueError:
        return DEFAULT_MAX_PAYLOAD_MB


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
    return KNNModel.load(settings.model_path, device=settings.device)


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
            return _error(503, "the model is still loading; retry when /ping answers 200")
        try:
            return await _invoke(state, request)
        except ClientError as err:
            return _error(err.status_code, str(err))
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception:
            log.exception("internal error on /invocations")
            return _error(500, "internal error; the server log has the details")

    return invocations


async def _invoke(state: _State, request: Request) -> Response:
    content_type = request.headers.get("content-type")
    formats.check_content_type(content_type)
    output = formats.parse_accept(request.headers.get("accept"))
    batcher = state.batcher
    with batcher.arriving():
        body = await _read_body(request, state.settings)
        decode = (formats.decode_request, body, content_type, state.model.feature_dim,
                  _request_limits(state))
        rows = await _maybe_offload(len(body), *decode)
    answer = await batcher.answer(rows)
    payload = await _maybe_offload(len(body), formats.encode_response, answer, output)
    return Response(payload, media_type=output.media_type)


def _request_limits(state: _State) -> formats.RequestLimits:
    return formats.RequestLimits.for_model(state.model,
                                           int(state.settings.max_payload_mb * (1 << 20)))


async def _maybe_offload(size: int, function, *args):
    if size > OFFLOAD_BYTES:
        return await run_in_threadpool(function, *args)
    return function(*args)


async def _read_body(request: Request, settings: ServeSettings) -> bytes:
    """The body, refused past the payload limit (413) or after the body timeout (408)."""
    max_payload_mb = settings.max_payload_mb
    limit = int(max_payload_mb * (1 << 20))
    declared = request.headers.get("content-length", "")
    too_large = f"the request body is over the {max_payload_mb:g} MB payload limit"
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{too_large} ({int(declared)} bytes)")
    chunks: list[bytes] = []

    async def receive() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(too_large)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), settings.body_timeout_s)
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within "
                                  f"{settings.body_timeout_s:g} s") from None
    return b"".join(chunks)


def _execution_parameters(state: _State):
    async def execution_parameters(request: Request) -> Response:
        if os.environ.get("SAGEMAKER_BATCH", "").lower() != "true":
            return _error(404, "execution parameters are served for batch transform only "
                               "(SAGEMAKER_BATCH=true)")
        payload_mb = max(1, int(state.settings.max_payload_mb))
        # SageMaker requires MaxConcurrentTransforms x MaxPayloadInMB <= 100.
        concurrency = max(1, min(8, os.cpu_count() or 1, 100 // payload_mb))
        return JSONResponse({"MaxConcurrentTransforms": concurrency,
                             "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": payload_mb})

    return execution_parameters


def _model_info(state: _State):
    async def model_info(request: Request) -> Response:
        model = state.model
        if model is None:
            return _error(503, "the model is still loading")
        hp = model.hyperparameters
        classes = None if model.classes_ is None else model.classes_.tolist()
        return JSONResponse({
            "gpuknn_version": _version.__version__, "k": hp.k,
            "predictor_type": hp.predictor_type, "feature_dim": model.feature_dim,
            "n_indexed": model.n_indexed, "index_type": hp.index_type,
            "index_metric": hp.index_metric, "device": model.device,
            "classes": classes if hp.predictor_type == "classifier" else None,
            "batches": state.batcher.batches, "rows_searched": state.batcher.rows})

    return model_info


def _error(status: int, message: str) -> Response:
    headers = {"Connection": "close"} if status in (408, 413) else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)
