"""A multi-model server's memory budget, and what each model is charged against it.

What a model holds (:class:`~gpuknn.model.footprint.Footprint`) is charged as the server
really spends it: its mapped files once, however many worker processes map them (they
share the page cache), and its private and device memory once per worker (every worker
loads every model).

The budget is ``--max-models-mb`` (``$GPUKNN_MAX_MODELS_MB``), else what the machine can
give at start less what searching needs:

- on the CPU, the host's available memory (``MemAvailable``) less, per worker, one score
  tile and one scaled block per core, and room for the decoded rows and answers of a few
  requests at the payload limit;
- on a GPU, the device's free memory less, per worker, one score tile (1 GiB) and its
  scaled block; host memory is then budgeted apart, as on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gpuknn import _backend
from gpuknn.errors import ClientError
from gpuknn.model.footprint import Footprint
from gpuknn.search.tiling import DEFAULT_TILE_BYTES, GPU_TILE_BYTES, SCRATCH_BYTES
from gpuknn.serving.formats import ANSWER_BUDGET_FACTOR

BUDGET_VARIABLE = "GPUKNN_MAX_MODELS_MB"
# Requests at the payload limit whose rows and answers the CPU reserve leaves room for.
RESERVED_REQUESTS = 4


@dataclass(frozen=True)
class Charge:
    """Bytes one model is charged: on the host, and on the GPU."""

    host_bytes: int
    device_bytes: int = 0


def charge(footprint: Footprint, workers: int) -> Charge:
    """What a model of ``footprint`` costs a server of ``workers`` processes."""
    return Charge(footprint.mapped_bytes + workers * footprint.private_bytes,
                  workers * footprint.device_bytes)


def configured_mb(given: float | None) -> float | None:
    """The budget asked for: ``given`` (``--max-models-mb``), else
    ``$GPUKNN_MAX_MODELS_MB``, else None (the default).

    Raises
    ------
    ClientError
        When the variable is set but not a positive number.
    """
    if given is not None:
        return given
    value = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise ClientError(f"${BUDGET_VARIABLE} must be a positive number of MB; got {value!r}")
    return number


def host_budget(workers: int, max_payload_mb: float) -> int:
    """Host bytes the models may take by default: ``MemAvailable`` less the search
    reserve of every worker (no limit where the available memory is unknown)."""
    available = _backend.available_memory()
    if available is None:
        return 1 << 62
    per_worker = (_backend.usable_cores() * (DEFAULT_TILE_BYTES + SCRATCH_BYTES)
                  + RESERVED_REQUESTS * ANSWER_BUDGET_FACTOR * int(max_payload_mb * 2**20))
    return max(0, available - workers * per_worker)


def device_budget(workers: int) -> int:
    """Device bytes the models may take by default: the GPU's free memory less one score
    tile and scaled block per worker (0 without a GPU)."""
    free = _backend.device_free_memory() or 0
    return max(0, free - workers * (GPU_TILE_BYTES + GPU_TILE_BYTES // 16))


def budgets(device: str, workers: int, max_payload_mb: float,
            max_models_mb: float | None) -> tuple[int, int]:
    """(budget on the search device, host budget) in bytes, as ``gpuknn serve`` sets them.

    Parameters
    ----------
    device : {"cpu", "gpu"}
    workers : int
    max_payload_mb : float
    max_models_mb : float or None
        The budget asked for on the search device (:func:`configured_mb`); None for the
        default.
    """
    host = host_budget(workers, max_payload_mb)
    asked = None if max_models_mb is None else int(max_models_mb * 2**20)
    if device == "gpu":
        return (device_budget(workers) if asked is None else asked), host
    chosen = host if asked is None else asked
    return chosen, chosen
