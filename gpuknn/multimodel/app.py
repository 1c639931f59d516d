"""The ASGI application of a multi-model server: SageMaker's multi-model container contract.

``GET /ping``
    200 (empty body) as soon as the server can take loads.
``POST /models``
    ``{"model_name": NAME, "url": PATH}``: load the model at ``PATH`` (a model directory,
    a ``.tar.gz``, or a directory holding one) as ``NAME``. 200 once it answers; 409 if
    ``NAME`` is loaded; 404 if nothing exists at ``PATH``; 400 for a bad request, or a
    model that does not load (naming the file and the fault); 507 if it does not fit the
    memory budget (SageMaker then unloads models and retries).
``GET /models``
    ``{"models": [{"modelName": ..., "modelUrl": ...}, ...]}`` in name order, a page at a
    time: ``page_size`` (or ``limit``; default 100, at most 1,000) models after
    ``next_page_token``, and ``"nextPageToken"`` while more remain.
``GET /models/<name>``
    ``{"modelName": ..., "modelUrl": ...}``.
``DELETE /models/<name>``
    Unload, once the requests using the model are answered.
``POST /models/<name>/invoke``
    Exactly what ``/invocations`` of a single-model server of that model answers
    (:func:`gpuknn.serving.invocations.respond`).
``POST /invocations``
    The same, for the model named by the ``X-Amzn-SageMaker-Target-Model`` header
    (SageMaker SDK's local mode sends it).
``GET /execution-parameters``
    As a single-model server.

A name that is not loaded gets 404 on every route that takes one. Every error is
``{"error": "..."}`` with its status; an internal fault is 500 with the traceback only in
the log. No request touches the file system with a model name.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gpuknn import _backend
from gpuknn.errors import (
    ClientError,
    InsufficientMemoryError,
    ModelNotLoadedError,
    PayloadTooLargeError,
)
from gpuknn.multimodel.names import shown
from gpuknn.multimodel.pool import ModelPool
from gpuknn.multimodel.registry import Entry, Registry
from gpuknn.serving.invocations import error_response, execution_parameters, respond
from gpuknn.serving.settings import ServeSettings

log = logging.getLogger("gpuknn.serve")

TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
MAX_MANAGEMENT_BYTES = 64 << 10


def create_app(settings: ServeSettings) -> Starlette:
    """The Starlette application of one worker of a multi-model server.

    Parameters
    ----------
    settings : ServeSettings
        With ``multi_model``, the shared ``registry`` file and the budgets set (as
        ``gpuknn serve`` sets them).
    """
    registry = Registry(settings.registry, budget_bytes=settings.budget_bytes,
                        host_budget_bytes=settings.host_budget_bytes,
                        device=_backend.resolve_device(settings.device))
    pool = ModelPool(settings, registry)
    started: list[bool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await pool.start()
        started.append(True)
        yield
        await pool.stop()
        registry.close()

    async def ping(request: Request) -> Response:
        return Response(status_code=200 if started else 503)

    async def exec_parameters(request: Request) -> Response:
        return execution_parameters(settings)

    routes = [Route("/ping", ping, methods=["GET"]),
              Route("/models", _managed(_list_models(registry)), methods=["GET"]),
              Route("/models", _managed(_load(pool)), methods=["POST"]),
              Route("/models/{name}", _managed(_describe(registry)), methods=["GET"]),
              Route("/models/{name}", _managed(_unload(pool)), methods=["DELETE"]),
              Route("/models/{name}/invoke", _managed(_invoke(pool, _path_name)),
                    methods=["POST"]),
              Route("/invocations", _managed(_invoke(pool, _header_name)), methods=["POST"]),
              Route("/execution-parameters", exec_parameters, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


Handler = Callable[[Request], Awaitable[Response]]


def _managed(handler: Handler) -> Handler:
    """``handler``, with every error answered by its status and a one-line reason."""
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except (ClientError, InsufficientMemoryError) as err:
            if isinstance(err, InsufficientMemoryError):
                log.warning("%s %s: 507: %s", request.method, request.url.path, err)
            return error_response(err.status_code, str(err))
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            return error_response(500, "internal error; the server log has the details")

    return guarded


def _described(entry: Entry) -> dict[str, str]:
    return {"modelName": entry.name, "modelUrl": entry.url}


# -- loading and unloading ---------------------------------------------------------------
def _load(pool: ModelPool) -> Handler:
    async def load(request: Request) -> Response:
        fields = await _json_object(request)
        missing = [name for name in ("model_name", "url") if name not in fields]
        if missing:
            raise ClientError(f"the body is missing {', '.join(map(repr, missing))}: a load "
                              'request is {"model_name": NAME, "url": PATH}')
        entry = await pool.load(fields["model_name"], fields["url"])
        return JSONResponse(_described(entry))

    return load


async def _json_object(request: Request) -> dict:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MANAGEMENT_BYTES:
            raise PayloadTooLargeError(f"a load request's body must be under "
                                       f"{MAX_MANAGEMENT_BYTES // 1024} KiB")
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClientError(f"the body is not JSON ({err}); a load request is "
                          '{"model_name": NAME, "url": PATH}') from None
    if not isinstance(fields, dict):
        raise ClientError(f"the body must be a JSON object, not {type(fields).__name__}: "
                          '{"model_name": NAME, "url": PATH}')
    return fields


def _unload(pool: ModelPool) -> Handler:
    async def unload(request: Request) -> Response:
        entry = await pool.unload(request.path_params["name"])
        return JSONResponse(_described(entry))

    return unload


# -- listing -----------------------------------------------------------------------------
def _describe(registry: Registry) -> Handler:
    async def describe(request: Request) -> Response:
        name = request.path_params["name"]
        entry = registry.get(name)
        if entry is None:
            raise ModelNotLoadedError(f"model {shown(name)} is not loaded")
        return JSONResponse(_described(entry))

    return describe


def _list_models(registry: Registry) -> Handler:
    async def list_models(request: Request) -> Response:
        size = _page_size(request)
        after = _after(request.query_params.get("next_page_token"))
        entries = registry.page(after, size + 1)
        body: dict = {"models": [_described(entry) for entry in entries[:size]]}
        if len(entries) > size:
            body["nextPageToken"] = _token(entries[size - 1].name)
        return JSONResponse(body)

    return list_models


def _page_size(request: Request) -> int:
    params = request.query_params
    text = params.get("page_size", params.get("limit"))
    if text is None:
        return DEFAULT_PAGE_SIZE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE_SIZE:
        raise ClientError(f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}; "
                          f"got {text[:40]!r}")
    return int(text)


def _token(name: str) -> str:
    """The page token after ``name``: its UTF-8 bytes in URL-safe base64."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _after(token: str | None) -> str | None:
    if not token:
        return None
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_",
                                validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ClientError("next_page_token is not one this server gave (pass the "
                          "nextPageToken of the previous page)") from None


# -- invoking ----------------------------------------------------------------------------
def _path_name(request: Request) -> str:
    return request.path_params["name"]


def _header_name(request: Request) -> str:
    name = request.headers.get(TARGET_MODEL_HEADER)
    if not name:
        raise ClientError(f"a multi-model server's /invocations needs the header "
                          f"{TARGET_MODEL_HEADER} naming a loaded model (or POST "
                          "/models/<name>/invoke)")
    return name


def _invoke(pool: ModelPool, name_of: Callable[[Request], str]) -> Handler:
    async def invoke(request: Request) -> Response:
        async with pool.using(name_of(request)) as hosted:
            return await respond(request, hosted.model, hosted.batcher, pool.settings)

    return invoke
