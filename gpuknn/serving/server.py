"""Run the inference application on uvicorn: ``gpuknn serve``.

Each worker process serves its requests through one micro-batcher, so its search
batches grow with the load. ``--workers auto`` (the CLI's default) starts one worker per
usable core on the CPU, since a cluster-pruned search keeps one core busy per process,
as many as memory allows; on GPUs, one per GPU where the model fits each whole (each
worker pinned to its GPU, :mod:`gpuknn.serving.replicas`), else one, which splits the
model over the GPUs (:mod:`gpuknn.search.shards`). Every worker loads the model itself; an IVF
model in a directory is memory-mapped by faiss, so its inverted lists are shared by the
workers through the page cache.

SIGTERM (SageMaker's stop) makes uvicorn stop accepting connections, finish the
requests in flight (up to :data:`GRACEFUL_SECONDS`, inside SageMaker's 30 s before
SIGKILL), answer what the batcher holds, and exit 0.

A model that cannot serve ends the server with exit 1 and a one-line reason, whatever
the worker count: with several workers the parent checks the whole model first
(:func:`gpuknn.model.files.verify`), and a worker that still fails to load (a device out
of memory, say) writes its reason to a file the parent named and stops the parent,
which then exits 1 with that reason.

In multi-model mode (``--multi-model``, or ``SAGEMAKER_MULTI_MODEL=true`` as SageMaker
sets it for a multi-model endpoint) the server starts with no model and serves
:mod:`gpuknn.multimodel.app`. The process that starts the server makes the registry its
workers share (:mod:`gpuknn.multimodel.registry`) in a private temporary directory,
removed at exit, and fixes the memory budget (:mod:`gpuknn.multimodel.budget`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from gpuknn import _backend, devices, logs
from gpuknn.environment import resolve_root
from gpuknn.errors import ClientError
from gpuknn.model import files as model_files
from gpuknn.search import placement
from gpuknn.serving import replicas
from gpuknn.serving.settings import ServeSettings

log = logging.getLogger("gpuknn.serve")

DEFAULT_PORT = 8080
GRACEFUL_SECONDS = 25
_SETTINGS_VARIABLE = "GPUKNN_SERVE_SETTINGS"
MULTI_MODEL_VARIABLE = "SAGEMAKER_MULTI_MODEL"


def multi_model_requested(flag: bool = False) -> bool:
    """``flag`` (``--multi-model``), or ``$SAGEMAKER_MULTI_MODEL`` set to true (any case;
    SageMaker sets ``true`` for a multi-model endpoint, some images ``True``) or 1."""
    return flag or os.environ.get(MULTI_MODEL_VARIABLE, "").strip().lower() in ("true", "1")


def model_location(ml_root: str | None, model: str | None) -> str:
    """``model`` if given, else ``<ml root>/model`` (SageMaker extracts the model there)."""
    return str(Path(model) if model else resolve_root(ml_root) / "model")


def default_port() -> int:
    """``SAGEMAKER_BIND_TO_PORT`` (inference pipelines) if set, else 8080."""
    value = os.environ.get("SAGEMAKER_BIND_TO_PORT", "").strip()
    return int(value) if value.isdigit() else DEFAULT_PORT


def auto_workers(settings: ServeSettings) -> int:
    """Worker processes for ``--workers auto``: one per usable core on the CPU (a pruned
    search runs on one core per process), as many as half the available memory holds at
    about three times the model's size each (in multi-model mode, one per core); one on
    a GPU (one CUDA context)."""
    if _backend.resolve_device(settings.device) == "gpu":
        return 1
    cores = _backend.usable_cores()
    if settings.multi_model:
        return cores
    per_worker = 3 * _size_on_disk(Path(settings.model_path))
    available = _backend.available_memory()
    fits = cores if available is None or per_worker == 0 else int(available // 2 // per_worker)
    return max(1, min(cores, fits))


def replica_gpus(settings: ServeSettings) -> list[str]:
    """The GPUs (``$CUDA_VISIBLE_DEVICES`` entries) to run one model replica on each, where
    the model fits each chosen GPU whole; empty on the CPU, with one GPU, in multi-model
    mode, with ``--shards``, or when the model must be split. Decided from the model's
    metadata and the GPUs' total memory, without a CUDA context in this process."""
    if (settings.multi_model or settings.shards is not None
            or _backend.resolve_device(settings.device) != "gpu"):
        return []
    ordinals = devices.resolve(settings.devices, "gpu")
    if len(ordinals) < 2:
        return []
    devices.log_choice(ordinals, free=False)
    need = placement.Need.of_metadata(model_files.verify(settings.model_path))
    totals = [_backend.gpu_properties(ordinal)[1] for ordinal in ordinals]
    if placement.place(need, ordinals, free=totals).mode != "replicas":
        return []  # one process splits the model over the GPUs
    return devices.physical_ids(ordinals)


@contextlib.contextmanager
def _replicas(settings: ServeSettings, gpus: list[str],
              workers: int) -> Iterator[ServeSettings]:
    """``settings`` for ``workers`` processes that each pin one of ``gpus`` (round robin)
    through slot files in a temporary directory, removed afterwards."""
    directory = tempfile.mkdtemp(prefix="gpuknn-replicas-")
    try:
        log.info("serving %s with one worker per GPU: %d workers on GPU(s) %s",
                 settings.model_path, workers, ", ".join(gpus))
        yield dataclasses.replace(settings, devices=None, replica_dir=directory,
                                  replica_gpus=tuple(gpus[i % len(gpus)]
                                                     for i in range(workers)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.glob("*") if item.is_file())


def serve(settings: ServeSettings, *, host: str = "0.0.0.0", port: int | None = None,
          workers: int | str = 1, access_log: bool = False,
          max_models_mb: float | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the process exit code.

    Parameters
    ----------
    workers : int or "auto"
        Worker processes; ``"auto"`` is :func:`auto_workers`.
    max_models_mb : float, optional
        Multi-model mode: the models' memory budget on the search device (default:
        :func:`gpuknn.multimodel.budget.budgets`).

    Returns
    -------
    int
        0 after a clean shutdown, 1 if the model could not be loaded or the port bound.
    """
    gpus = replica_gpus(settings)
    if workers == "auto":
        workers = len(gpus) if gpus else auto_workers(settings)
    workers = int(workers)
    if gpus and workers > 1:
        with _replicas(settings, gpus, workers) as completed:
            return _run(completed, host, port, workers, access_log)
    if settings.multi_model:
        with _multi_model(settings, workers, max_models_mb) as completed:
            return _run(completed, host, port, workers, access_log)
    log.info("serving %s with %d worker process%s", settings.model_path, workers,
             "" if workers == 1 else "es")
    return _run(settings, host, port, workers, access_log)


def _run(settings: ServeSettings, host: str, port: int | None, workers: int,
         access_log: bool) -> int:
    port = default_port() if port is None else port
    # uvicorn re-raises SIGTERM after its graceful shutdown, to whatever handler was there
    # before; with this one, a stop by SIGTERM ends the process with 0, as SageMaker expects.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    options = {"host": host, "port": port, "access_log": access_log, "log_level": "info",
               "timeout_graceful_shutdown": GRACEFUL_SECONDS, "lifespan": "on"}
    if workers > 1:
        return _serve_workers(settings, workers, options)
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def stop(reason: str) -> None:
        failure.append(reason)
        server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(_application(settings, stop), **options))
    server.run()
    if failure or not server.started:
        log.error("gpuknn serve stopped: %s", failure[0] if failure else "could not start")
        return 1
    return 0


def _serve_workers(settings: ServeSettings, workers: int, options: dict[str, Any]) -> int:
    """Several worker processes on one socket (uvicorn's supervisor); the exit code."""
    if not settings.multi_model:
        try:  # each worker loads the model itself; a broken one should stop us here, once
            model_files.verify(settings.model_path)
        except ClientError as err:
            log.error("gpuknn serve stopped: could not load the model: %s", err)
            return 1
        _backend.release_free_memory()  # the supervisor holds no model: give its reads back
    settings = dataclasses.replace(settings, load_in_background=False)
    handle, failure_file = tempfile.mkstemp(prefix="gpuknn-serve-", suffix=".failure")
    os.close(handle)
    os.environ[_SETTINGS_VARIABLE] = json.dumps({
        "settings": dataclasses.asdict(settings), "failure_file": failure_file,
        "supervisor": os.getpid()})
    try:
        uvicorn.run("gpuknn.serving.server:app_from_environment", factory=True,
                    workers=workers, **options)
        reason = Path(failure_file).read_text().strip()
    finally:
        Path(failure_file).unlink(missing_ok=True)
    if reason:
        log.error("gpuknn serve stopped: %s", " ".join(reason.split()))
        return 1
    return 0


def app_from_environment():
    """The application of one worker process, from the settings its parent stored.

    A worker that cannot load the model writes the reason where the parent reads it
    and sends the parent SIGTERM, which stops every worker.
    """
    logs.configure()  # a worker process starts without the command's logging
    stored = json.loads(os.environ[_SETTINGS_VARIABLE])
    settings = ServeSettings(**stored["settings"])
    if settings.replica_gpus:  # before anything starts CUDA in this process
        replicas.pin_to_gpu(settings.replica_dir, list(settings.replica_gpus))

    def stop_the_server(reason: str) -> None:
        Path(stored["failure_file"]).write_text(reason)
        os.kill(stored["supervisor"], signal.SIGTERM)

    return _application(settings, stop_the_server)


def _application(settings: ServeSettings, on_load_failure):
    """The single-model application, or in multi-model mode the multi-model one."""
    if settings.multi_model:
        from gpuknn.multimodel.app import create_app as multi_model_app  # noqa: PLC0415

        return multi_model_app(settings)
    from gpuknn.serving.app import create_app  # noqa: PLC0415

    return create_app(settings, on_load_failure)


@contextlib.contextmanager
def _multi_model(settings: ServeSettings, workers: int,
                 max_models_mb: float | None) -> Iterator[ServeSettings]:
    """``settings`` completed for a multi-model server of ``workers`` processes: its
    registry (in a temporary directory removed afterwards), its budgets and its device."""
    from gpuknn.multimodel.budget import budgets  # noqa: PLC0415
    from gpuknn.multimodel.registry import Registry  # noqa: PLC0415

    device = _backend.resolve_device(settings.device)
    budget, host_budget = budgets(device, workers, settings.max_payload_mb, max_models_mb)
    _raise_open_file_limit()
    directory = tempfile.mkdtemp(prefix="gpuknn-models-")
    try:
        registry = Registry.create(Path(directory) / "registry.sqlite")
        log.info("multi-model mode on the %s with %d worker process%s: no model yet; models "
                 "may take %.1f MiB%s (POST /models loads one)", device.upper(), workers,
                 "" if workers == 1 else "es", budget / 2**20,
                 f" of GPU memory and {host_budget / 2**20:.1f} MiB of host memory"
                 if device == "gpu" else "")
        yield dataclasses.replace(settings, device=device, registry=str(registry),
                                  budget_bytes=budget, host_budget_bytes=host_budget,
                                  workers=workers)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _raise_open_file_limit() -> None:
    """Let this process open as many files as the system allows: each mapped model file
    holds a descriptor (before Python 3.13), and a server may hold thousands of models."""
    try:
        import resource  # noqa: PLC0415 - POSIX only

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError) as err:
        log.info("could not raise the open-file limit (%s)", err)
