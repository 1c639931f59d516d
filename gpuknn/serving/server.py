"""Run the inference application on uvicorn: ``gpuknn serve``.

One worker process (the default) serves every request through one micro-batcher,
which is what a brute-force search wants: its batches grow with the load. Several
workers (``--workers``) each load the model and batch on their own; an IVF model in a
directory is memory-mapped by faiss, so its inverted lists are shared by the workers
through the page cache.

SIGTERM (SageMaker's stop) makes uvicorn stop accepting connections, finish the
requests in flight (up to :data:`GRACEFUL_SECONDS`, inside SageMaker's 30 s before
SIGKILL), answer what the batcher holds, and exit 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from pathlib import Path

import uvicorn

from gpuknn.environment import resolve_root
from gpuknn.serving.app import ServeSettings, create_app

log = logging.getLogger("gpuknn.serve")

DEFAULT_PORT = 8080
GRACEFUL_SECONDS = 25
_SETTINGS_VARIABLE = "GPUKNN_SERVE_SETTINGS"


def model_location(ml_root: str | None, model: str | None) -> str:
    """``model`` if given, else ``<ml root>/model`` (SageMaker extracts the model there)."""
    return str(Path(model) if model else resolve_root(ml_root) / "model")


def default_port() -> int:
    """``SAGEMAKER_BIND_TO_PORT`` (inference pipelines) if set, else 8080."""
    value = os.environ.get("SAGEMAKER_BIND_TO_PORT", "").strip()
    return int(value) if value.isdigit() else DEFAULT_PORT


def serve(settings: ServeSettings, *, host: str = "0.0.0.0", port: int | None = None,
          workers: int = 1, access_log: bool = False) -> int:
    """Serve until SIGTERM or SIGINT; the process exit code.

    Returns
    -------
    int
        0 after a clean shutdown, 1 if the model could not be loaded or the port bound.
    """
    port = default_port() if port is None else port
    # uvicorn re-raises SIGTERM after its graceful shutdown, to whatever handler was there
    # before; with this one, a stop by SIGTERM ends the process with 0, as SageMaker expects.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    options = {"host": host, "port": port, "access_log": access_log, "log_level": "info",
               "timeout_graceful_shutdown": GRACEFUL_SECONDS, "lifespan": "on"}
    if workers > 1:
        settings = dataclasses.replace(settings, load_in_background=False)
        os.environ[_SETTINGS_VARIABLE] = json.dumps(dataclasses.asdict(settings))
        uvicorn.run("gpuknn.serving.server:app_from_environment", factory=True,
                    workers=workers, **options)
        return 0
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def stop(reason: str) -> None:
        failure.append(reason)
        server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(create_app(settings, stop), **options))
    server.run()
    if failure or not server.started:
        log.error("gpuknn serve stopped: %s", failure[0] if failure else "could not start")
        return 1
    return 0


def app_from_environment():
    """The application of one worker process, from the settings its parent stored."""
    settings = ServeSettings(**json.loads(os.environ[_SETTINGS_VARIABLE]))
    return create_app(settings)
