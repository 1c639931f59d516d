"""What a loaded model costs in memory: :func:`footprint`, and :func:`estimate` before it
is loaded.

A loaded model's memory is of three kinds, and a multi-model server counts them apart:

- **mapped**: its files, mapped read-only (the flat vectors, ids, labels, norms, an IVF
  index's lists). They live in the page cache, once for every process that maps them.
- **private**: memory this process alone holds for the model: arrays built at load
  (an IVF quantizer's centroids and PQ tables, the vote's label classes, a reordered
  base of an older format), arrays read rather than mapped, and the model's Python
  objects (:data:`OBJECT_BYTES`).
- **device**: GPU memory (the exact search's base and norms, faiss-gpu's lists, the
  labels and ids the vote reads on the device).

:func:`footprint` walks the model's own objects (those defined in gpuknn) and counts each
array once by the memory it is a view of: a numpy array owning its data is private, one
whose memory is a file's map is mapped (each map counted once), a CuPy array is device
memory; faiss's objects say what they hold (``IVFSearch.faiss_bytes``).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.model.layout import MAX_METADATA_BYTES, METADATA, declared_sizes, read_metadata

# The Python objects of one loaded model that :func:`footprint` does not walk (the model,
# its search, hyperparameters and batcher objects, the maps' own bookkeeping): 18 to 24
# KiB a model and worker, measured over 1,000 small models in one server
# (bench/multimodel.py); counted with room to spare.
OBJECT_BYTES = 32 << 10


@dataclass(frozen=True)
class Footprint:
    """Bytes of memory a model holds, by kind.

    Attributes
    ----------
    mapped_bytes : int
        Its mapped files (shared by every process that maps them).
    private_bytes : int
        This process's own host memory for it.
    device_bytes : int
        GPU memory.
    """

    mapped_bytes: int = 0
    private_bytes: int = 0
    device_bytes: int = 0

    @property
    def host_bytes(self) -> int:
        """Host memory of one process holding the model: mapped and private."""
        return self.mapped_bytes + self.private_bytes


def footprint(model: Any) -> Footprint:
    """The memory that ``model`` (a :class:`~gpuknn.model.knn_model.KNNModel`) holds now.

    Parameters
    ----------
    model : KNNModel
        Loaded (and best warmed up: the vote's arrays are made by the first search).

    Returns
    -------
    Footprint
        Private bytes include :data:`OBJECT_BYTES`.
    """
    walk = _Walk()
    walk.visit(model)
    return Footprint(sum(walk.maps.values()), sum(walk.owners.values()) + walk.extra_host
                     + OBJECT_BYTES, sum(walk.device.values()) + walk.extra_device)


def estimate(location: str | Path, device: str = "cpu") -> Footprint:
    """What a model will hold once loaded, from its files alone, before reading them.

    A directory's metadata declares its files' sizes, which is what loading maps; an
    archive's own size stands in for its members'. On a GPU the files' bytes are also the
    device estimate. The private bytes (at least :data:`OBJECT_BYTES`) are only known once
    the model is loaded (:func:`footprint`).

    Raises
    ------
    ModelFileError
        For a directory whose metadata is missing or broken.
    ModelTooLargeError
        When its files are larger than the memory available.
    """
    location = Path(location)
    if location.is_file():
        files = location.stat().st_size
    else:
        metadata = location / METADATA
        with open(metadata, "rb") as handle:
            meta = read_metadata({METADATA: handle.read(MAX_METADATA_BYTES + 1)}, location)
        files = sum(declared_sizes(meta, location).values())
    return Footprint(files, OBJECT_BYTES, files if device == "gpu" else 0)


class _Walk:
    """One pass over a model's objects, counting each piece of memory once."""

    def __init__(self):
        self.seen: set[int] = set()
        self.maps: dict[int, int] = {}
        self.owners: dict[int, int] = {}
        self.device: dict[int, int] = {}
        self.extra_host = 0
        self.extra_device = 0

    def visit(self, obj: Any) -> None:
        if obj is None or id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            self._array(obj)
        elif isinstance(obj, mmap.mmap):
            self.maps[id(obj)] = len(obj)
        elif isinstance(obj, memoryview):
            self.visit(obj.obj)
        elif isinstance(obj, bytes | bytearray):
            self.owners[id(obj)] = len(obj)
        elif type(obj).__module__.split(".")[0] == "cupy":
            self._device_array(obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                self.visit(value)
        elif isinstance(obj, list | tuple | set | frozenset):
            for value in obj:
                self.visit(value)
        elif type(obj).__module__.split(".")[0] == "gpuknn":
            self._object(obj)

    def _object(self, obj: Any) -> None:
        faiss_bytes = getattr(obj, "faiss_bytes", None)
        if callable(faiss_bytes):
            host, device = faiss_bytes()
            self.extra_host += host
            self.extra_device += device
        for value in getattr(obj, "__dict__", {}).values():
            self.visit(value)
        for name in getattr(type(obj), "__slots__", ()):
            self.visit(getattr(obj, name, None))

    def _array(self, array: np.ndarray) -> None:
        owner = array
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        base = owner.base
        if base is None or not isinstance(base, mmap.mmap | memoryview | bytes | bytearray):
            self.owners[id(owner)] = owner.nbytes  # numpy's own memory, or another library's
        else:
            self.visit(base)

    def _device_array(self, array: Any) -> None:
        memory = getattr(getattr(array, "data", None), "mem", None)
        if memory is None:
            self.device[id(array)] = int(getattr(array, "nbytes", 0))
        else:
            self.device[id(memory)] = int(memory.size)


def describe(footprint: Footprint) -> str:
    """``"12.0 MiB (mapped 11.5, private 0.5, device 0.0)"``, for log lines."""
    total = footprint.mapped_bytes + footprint.private_bytes + footprint.device_bytes
    parts = ", ".join(f"{name} {value / 2**20:.1f}" for name, value in (
        ("mapped", footprint.mapped_bytes), ("private", footprint.private_bytes),
        ("device", footprint.device_bytes)))
    return f"{total / 2**20:.1f} MiB ({parts})"
