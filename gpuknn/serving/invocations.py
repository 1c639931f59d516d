"""One inference request, from its body to its response: what ``POST /invocations`` does,
and what a multi-model server's ``POST /models/<name>/invoke`` does with the same code, so
that both answer byte for byte alike.

Every client error is answered with its status (400, 406, 408, 413, 415) and a short JSON
body ``{"error": "..."}``; an internal fault with 500 and the traceback only in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gpuknn.errors import ClientError, PayloadTooLargeError, RequestTimeoutError
from gpuknn.model.knn_model import KNNModel
from gpuknn.serving import formats
from gpuknn.serving.batching import MicroBatcher
from gpuknn.serving.settings import ServeSettings

log = logging.getLogger("gpuknn.serve")

# Bodies larger than this are parsed and answers serialised on a worker thread, so the
# event loop keeps answering /ping and small requests meanwhile.
OFFLOAD_BYTES = 64 << 10


async def respond(request: Request, model: KNNModel, batcher: MicroBatcher,
                  settings: ServeSettings) -> Response:
    """The response to one inference request for ``model``, whatever happens.

    Parameters
    ----------
    request : starlette.requests.Request
        Its ``Content-Type`` and ``Accept`` headers choose the formats
        (:mod:`gpuknn.serving.formats`).
    model : KNNModel
    batcher : MicroBatcher
        Started, searching ``model``.
    settings : ServeSettings
        The payload limit and body timeout.
    """
    try:
        return await _answer(request, model, batcher, settings)
    except ClientError as err:
        return error_response(err.status_code, str(err))
    except ClientDisconnect:
        return Response(status_code=499)
    except Exception:
        log.exception("internal error on %s", request.url.path)
        return error_response(500, "internal error; the server log has the details")


async def _answer(request: Request, model: KNNModel, batcher: MicroBatcher,
                  settings: ServeSettings) -> Response:
    content_type = request.headers.get("content-type")
    formats.check_content_type(content_type)
    output = formats.parse_accept(request.headers.get("accept"))
    limit = int(settings.max_payload_mb * (1 << 20))
    with batcher.arriving():
        body = await read_body(request, settings)
        decode = (formats.decode_request, body, content_type, model.feature_dim,
                  formats.RequestLimits.for_model(model, limit))
        rows = await _maybe_offload(len(body), *decode)
    answer = await batcher.answer(rows)
    payload = await _maybe_offload(len(body), formats.encode_response, answer, output)
    return Response(payload, media_type=output.media_type)


async def _maybe_offload(size: int, function, *args: Any):
    if size > OFFLOAD_BYTES:
        return await run_in_threadpool(function, *args)
    return function(*args)


async def read_body(request: Request, settings: ServeSettings) -> bytes:
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


def error_response(status: int, message: str) -> Response:
    """``{"error": message}`` with ``status``; the connection closes after 408 and 413
    (the rest of such a body is not read)."""
    headers = {"Connection": "close"} if status in (408, 413) else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def execution_parameters(settings: ServeSettings) -> Response:
    """``GET /execution-parameters``: batch transform's hints, where ``SAGEMAKER_BATCH`` is
    ``true`` (404 elsewhere)."""
    if os.environ.get("SAGEMAKER_BATCH", "").lower() != "true":
        return error_response(404, "execution parameters are served for batch transform only "
                                   "(SAGEMAKER_BATCH=true)")
    payload_mb = max(1, int(settings.max_payload_mb))
    # SageMaker requires MaxConcurrentTransforms x MaxPayloadInMB <= 100.
    concurrency = max(1, min(8, os.cpu_count() or 1, 100 // payload_mb))
    return JSONResponse({"MaxConcurrentTransforms": concurrency,
                         "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": payload_mb})
