"""How ``gpuknn serve`` runs: :class:`ServeSettings`, shared by the single-model and the
multi-model applications, and handed to every worker process as JSON."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_MAX_PAYLOAD_MB = 6
# A body must arrive within SageMaker's 60 s invocation timeout (HTTP 408 after).
BODY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs.

    Attributes
    ----------
    model_path : str
        A model directory or ``model.tar.gz`` ("" in multi-model mode, where models
        arrive through ``POST /models``).
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
    multi_model : bool
        Serve SageMaker's multi-model contract (:mod:`gpuknn.multimodel`) instead of one
        model.
    registry : str
        Multi-model mode: the file of the registry that the worker processes share
        (made by ``gpuknn serve`` at start).
    budget_bytes : int
        Multi-model mode: memory the loaded models may take, on the device that holds
        their search structures (the GPU's memory on a GPU, else the host's).
    host_budget_bytes : int
        Multi-model mode: host memory the loaded models may take (the same as
        ``budget_bytes`` on the CPU).
    workers : int
        Worker processes of the server (each holds its own copy of a model's private
        memory, which the budget counts once per worker).
    shards : int or None
        Split the model's index into this many shards (:meth:`KNNModel.sharded`); None
        splits only a model too large for one GPU.
    devices : str or None
        The GPUs to use (:mod:`gpuknn.devices`), None for every visible one.
    replica_gpus : tuple of str
        One model replica per worker: each worker slot's ``$CUDA_VISIBLE_DEVICES``
        (:mod:`gpuknn.serving.replicas`); empty otherwise.
    replica_dir : str
        The workers' slot files, with ``replica_gpus``.
    """

    model_path: str
    device: str = "auto"
    max_batch_rows: int = 4096
    max_wait_ms: float = 2.0
    max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB
    body_timeout_s: float = BODY_TIMEOUT_SECONDS
    load_in_background: bool = True
    multi_model: bool = False
    registry: str = ""
    budget_bytes: int = 0
    host_budget_bytes: int = 0
    workers: int = 1
    shards: int | None = None
    devices: str | None = None
    replica_gpus: tuple[str, ...] = ()
    replica_dir: str = ""


def default_max_payload_mb() -> float:
    """``SAGEMAKER_MAX_PAYLOAD_IN_MB`` if set (batch transform), else SageMaker's 6 MB."""
    value = os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB", "").strip()
    try:
        return float(value) if value and float(value) > 0 else DEFAULT_MAX_PAYLOAD_MB
    except ValueError:
        return DEFAULT_MAX_PAYLOAD_MB
