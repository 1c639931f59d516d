"""One model replica per GPU: the worker processes of ``gpuknn serve``, and the
predictors of ``gpuknn transform``.

When the model fits one GPU with room for its search, ``gpuknn serve`` on several GPUs runs
one worker process per GPU (the workers share the socket). The supervisor decides it
from the model's metadata and each GPU's total memory, without making a CUDA context of
its own, and hands the workers the list of GPUs and a directory of slot files. Each
worker locks the first free slot file (``flock``: released by the kernel when the process
ends, so a restarted worker takes its predecessor's slot) and, before anything touches
CUDA, sets ``$CUDA_VISIBLE_DEVICES`` to that slot's GPU: it then sees that GPU alone, as
device 0.

``gpuknn transform`` loads one replica per GPU in its own process instead
(:func:`load_replicas`); each answers its files on its own thread, on its GPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gpuknn import _backend, devices
from gpuknn.model import files as model_files
from gpuknn.model.answer import Answer
from gpuknn.model.knn_model import KNNModel
from gpuknn.search import placement

log = logging.getLogger(__name__)

_held: list[IO[bytes]] = []  # this process's slot lock, held for its lifetime


def claim_slot(directory: str | Path, slots: int) -> int:
    """Lock the first free slot of ``slots`` in ``directory``, for this process's life.

    Raises
    ------
    RuntimeError
        When every slot is held.
    """
    for slot in range(slots):
        handle = open(Path(directory) / f"slot-{slot}.lock", "ab")  # held while the process lives
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return slot
    raise RuntimeError(f"all {slots} worker slots in {directory} are taken")


def pin_to_gpu(directory: str | Path, gpus: list[str]) -> str:
    """Take a slot and make this process see only its GPU (before CUDA starts).

    Parameters
    ----------
    directory : path
        The slot files' directory, shared by the workers.
    gpus : list of str
        ``$CUDA_VISIBLE_DEVICES`` entries, one per worker slot.

    Returns
    -------
    str
        The GPU taken.
    """
    slot = claim_slot(directory, len(gpus))
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot]
    log.info("worker %d serves on GPU %s (a replica of the model on each GPU)", os.getpid(),
             gpus[slot])
    return gpus[slot]


@dataclass(frozen=True)
class Replica:
    """A model and the GPU it answers on (None: the CPU, or wherever it was loaded)."""

    model: KNNModel
    gpu: int | None = None

    def answer(self, X: Any) -> Answer:
        """:meth:`KNNModel.answer` with this replica's GPU current."""
        with _backend.on_device(self.gpu):
            return self.model.answer(X)


def load_replicas(path: str | Path, device: str = "auto", *, shards: int | None = None,
                  gpus: str | tuple[int, ...] | None = None) -> list[Replica]:
    """The model once per chosen GPU where it fits each whole; else once (split over the
    GPUs if it must be, as :meth:`KNNModel.load` does).

    Parameters
    ----------
    path : path
        A model directory or archive.
    device : {"auto", "cpu", "gpu"}
    shards : int, optional
        Asked-for shards: one model, split.
    gpus : str or tuple of int, optional
        The ``devices`` setting (:mod:`gpuknn.devices`).
    """
    device = _backend.resolve_device(device)
    ordinals = devices.resolve(gpus, device)
    if shards is None and len(ordinals) > 1:
        need = placement.Need.of_metadata(model_files.verify(path))
        if placement.place(need, ordinals).mode == "replicas":
            devices.log_choice(ordinals)
            return [Replica(KNNModel.load(path, device, shards=1, devices=(ordinal,)), ordinal)
                    for ordinal in ordinals]
    return [Replica(KNNModel.load(path, device, shards=shards, devices=gpus))]
