"""faiss-gpu for the IVF indexes: training, filling and searching them on a GPU.

Where the installed faiss has GPU support (the ``faiss-gpu`` wheel, CUDA 12) and a
GPU is visible, :class:`gpuknn.search.faiss_index.IVFSearch` keeps a GPU copy of its index
made here. The CPU index stays the one saved to and read from model files: faiss
cannot write a GPU index, and precision options are not stored in the file, so
they are set again by :func:`cloner_options` on every load.

faiss's GPU indexes and their ``StandardGpuResources`` are not thread-safe, not
even for concurrent searches. gpuknn keeps one ``StandardGpuResources`` per process
and GPU, and every call that uses it (cloning, training, adding, searching) holds
one lock. A per-thread resources object would need a copy of every index per
thread in GPU memory; one lock costs little, since the server searches on a single
thread and a GPU runs one large batch at a time anyway.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# faiss's GPU k-selection handles k and nprobe up to this; larger ones search on the CPU.
GPU_MAX_K = 2048
# Sub-quantizer counts whose float32 lookup tables (m x 256 x 4 bytes) overflow the
# 48 KiB of shared memory faiss's GPU IVFPQ scan may use: these need float16 tables.
FLOAT16_LOOKUP_PQ_M = frozenset({56, 64, 96})

_lock = threading.Lock()
_resources: dict[int, Any] = {}


def faiss_has_gpu(faiss: ModuleType) -> bool:
    """Whether ``faiss`` was built with GPU support and sees at least one GPU."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except RuntimeError:  # a CUDA driver problem: no usable GPU
        return False


def float16_lookup_tables(index_type: str, pq_m: int | None) -> bool:
    """Whether an index needs float16 PQ lookup tables on a GPU.

    Parameters
    ----------
    index_type : {"faiss.IVFFlat", "faiss.IVFPQ"}
    pq_m : int or None
        The IVFPQ sub-quantizer count.
    """
    return index_type == "faiss.IVFPQ" and pq_m in FLOAT16_LOOKUP_PQ_M


def cloner_options(faiss: ModuleType, index_type: str, pq_m: int | None) -> Any:
    """``GpuClonerOptions`` for one of gpuknn's IVF indexes.

    ``useFloat16`` means float16 lookup tables for IVFPQ, and float16 stored vectors
    for IVFFlat: only the first is wanted, and only where shared memory requires it.
    faiss's own IVF kernels are chosen over cuVS where the build offers both, so that
    GPU results follow the CPU index's code layout and search order.
    """
    options = faiss.GpuClonerOptions()
    options.useFloat16 = float16_lookup_tables(index_type, pq_m)
    if hasattr(options, "use_cuvs"):
        options.use_cuvs = False
    return options


def _shared_resources(faiss: ModuleType, device: int) -> Any:
    """The process's ``StandardGpuResources`` for ``device`` (caller holds the lock)."""
    if device not in _resources:
        _resources[device] = faiss.StandardGpuResources()
    return _resources[device]


class GpuIVF:
    """A GPU copy of a CPU IVF index, used only under the module's lock.

    Parameters
    ----------
    gpu_index : faiss.GpuIndexIVF
    nprobe : int
        Lists probed per query, at most :data:`GPU_MAX_K`.
    """

    def __init__(self, gpu_index: Any, nprobe: int):
        self.gpu_index = gpu_index
        self.nprobe = int(nprobe)
        with _lock:
            gpu_index.nprobe = self.nprobe

    @classmethod
    def from_cpu(cls, faiss: ModuleType, cpu_index: Any, *, index_type: str,
                 pq_m: int | None, nprobe: int, device: int = 0) -> GpuIVF:
        """Copy a CPU IVF index (trained or not) to GPU ``device``."""
        options = cloner_options(faiss, index_type, pq_m)
        with _lock:
            resources = _shared_resources(faiss, device)
            gpu_index = faiss.index_cpu_to_gpu(resources, device, cpu_index, options)
        return cls(gpu_index, nprobe)

    def train_and_add(self, vectors: np.ndarray, seed: int) -> None:
        """Train the (untrained) GPU index on ``vectors`` and add them.

        Parameters
        ----------
        vectors : ndarray of shape (n_base, dim), float32
        seed : int
            Seed of the coarse k-means (the PQ codebooks keep the CPU index's seed,
            copied with its ``pq``).
        """
        with _lock:
            cp = getattr(self.gpu_index, "cp", None)
            if cp is not None:
                cp.seed = seed
            self.gpu_index.train(vectors)
            self.gpu_index.add(vectors)

    def to_cpu(self, faiss: ModuleType) -> Any:
        """A CPU copy of the index, for saving."""
        with _lock:
            return faiss.index_gpu_to_cpu(self.gpu_index)

    def can_search(self, k: int) -> bool:
        """Whether faiss's GPU search handles ``k`` (nprobe is within the limit by
        construction: :class:`gpuknn.search.faiss_index.IVFSearch` makes no copy otherwise)."""
        return k <= GPU_MAX_K

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's raw (distances, labels) for host ``queries`` of shape (n, dim), float32."""
        with _lock:
            return self.gpu_index.search(queries, k)
