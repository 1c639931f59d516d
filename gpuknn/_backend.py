"""Array-module handling: the only module that imports CuPy, and only lazily.

Everything else in gpuknn receives an ``xp`` handle (``numpy`` or ``cupy``) and
calls array functions through it, so the CPU and GPU paths share one code path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn.errors import DeviceError, first_line

DEVICES = ("auto", "cpu", "gpu")


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[ModuleType | None, str]:
    """(cupy, "") when CuPy imports and sees a CUDA device, else (None, the reason)."""
    try:
        import cupy  # noqa: PLC0415 - CuPy is optional and imported only here
    except Exception as err:
        return None, f"CuPy is not installed or does not import ({type(err).__name__})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        return None, f"CuPy finds no usable CUDA driver or device ({first_line(err)})"
    if count < 1:
        return None, "CuPy sees no CUDA device"
    return cupy, ""


def _cupy() -> ModuleType | None:
    """The cupy module when it imports and sees a CUDA device, else None."""
    return _probe()[0]


def gpu_unavailable_reason() -> str:
    """Why no GPU is usable ("" when one is): no CuPy, no driver, or no device."""
    return _probe()[1]


def usable_cores() -> int:
    """CPU cores this process may use: its affinity where the OS reports one, capped by
    ``$OMP_NUM_THREADS`` when that is set (Ray sets it to a task's or actor's CPUs, so that
    a 1-CPU Ray worker parses and searches on one thread, not on every core of its node).
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    budget = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(cores, int(budget)) if budget.isdigit() and int(budget) > 0 else cores


def has_gpu() -> bool:
    """Whether CuPy is installed and a CUDA device is visible (cached)."""
    return _cupy() is not None


def resolve_device(device: str) -> str:
    """Turn ``"auto" | "cpu" | "gpu"`` into ``"cpu"`` or ``"gpu"``.

    Raises
    ------
    DeviceError
        For an unknown name, or ``"gpu"`` when no GPU is usable.
    """
    if device not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "auto":
        if has_gpu():
            return "gpu"
        _say_once(f"no GPU found ({gpu_unavailable_reason()}): running on the CPU")
        return "cpu"
    if device == "gpu" and not has_gpu():
        raise DeviceError(
            f"device='gpu' was requested but no GPU is usable ({gpu_unavailable_reason()}): "
            "install the 'gpu' extra (cupy-cuda12x) and check that a CUDA device is visible, "
            "or use device='cpu'")
    return device


@functools.lru_cache(maxsize=8)
def _say_once(message: str) -> None:
    logging.getLogger("gpuknn").info(message)


def array_module(device: str) -> ModuleType:
    """The array module for a resolved device name (``"cpu"`` or ``"gpu"``)."""
    if device == "gpu":
        cupy = _cupy()
        if cupy is None:
            raise DeviceError("no GPU is usable on this machine")
        return cupy
    return np


def get_xp(array: Any) -> ModuleType:
    """The array module that owns ``array``: cupy for a cupy array, else numpy."""
    module = type(array).__module__
    if module.startswith("cupy"):
        cupy = _cupy()
        if cupy is not None:
            return cupy
    return np


def to_host(array: Any) -> np.ndarray:
    """Copy ``array`` to host memory as a numpy array (no copy for numpy input)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):
        return array.get()
    return np.asarray(array)


def to_device(array: Any, xp: ModuleType, dtype: Any = None) -> Any:
    """Move ``array`` into the memory of ``xp`` (numpy or cupy), optionally casting."""
    if xp is np:
        return np.asarray(to_host(array), dtype=dtype)
    return xp.asarray(array, dtype=dtype)


def device_name(xp: ModuleType) -> str:
    """A short human-readable description of where ``xp`` computes."""
    if xp is np:
        return "cpu"
    props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
    name = props["name"]
    return f"gpu ({name.decode() if isinstance(name, bytes) else name})"


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_free_memory() -> int | None:
    """Free bytes on the current GPU as the driver reports them, None without a GPU."""
    cupy = _cupy()
    if cupy is None:
        return None
    return int(cupy.cuda.runtime.memGetInfo()[0])


def gpu_count() -> int:
    """CUDA devices this process sees (``$CUDA_VISIBLE_DEVICES`` applies), 0 without a
    usable GPU."""
    cupy = _cupy()
    return 0 if cupy is None else int(cupy.cuda.runtime.getDeviceCount())


def gpu_properties(ordinal: int) -> tuple[str, int]:
    """(name, total bytes) of visible GPU ``ordinal``, read without making a CUDA context
    (a server's supervisor asks, and must not hold memory on every GPU).

    Raises
    ------
    DeviceError
        Without a usable GPU.
    """
    cupy = _cupy()
    if cupy is None:
        raise DeviceError(f"no GPU is usable ({gpu_unavailable_reason()})")
    properties = cupy.cuda.runtime.getDeviceProperties(ordinal)
    name = properties["name"]
    return (name.decode() if isinstance(name, bytes) else str(name),
            int(properties["totalGlobalMem"]))


def gpu_free_memory(ordinal: int) -> int:
    """Free bytes of visible GPU ``ordinal`` as the driver reports them (this makes a CUDA
    context there, if the process has none)."""
    cupy = _cupy()
    if cupy is None:
        raise DeviceError(f"no GPU is usable ({gpu_unavailable_reason()})")
    with cupy.cuda.Device(ordinal):
        return int(cupy.cuda.runtime.memGetInfo()[0])


def current_gpu() -> int | None:
    """The GPU CuPy allocates on in this thread (None without a usable GPU)."""
    cupy = _cupy()
    return None if cupy is None else int(cupy.cuda.Device().id)


def on_device(ordinal: int | None) -> Any:
    """A context manager making GPU ``ordinal`` current (CuPy allocates and launches
    there); ``None`` (the CPU, or the current GPU) changes nothing."""
    cupy = _cupy()
    if ordinal is None or cupy is None:
        return contextlib.nullcontext()
    return cupy.cuda.Device(ordinal)


def release_device_memory() -> None:
    """Hand the GPU memory that CuPy's pools keep for reuse back to the driver (a no-op
    without a GPU). A multi-model server calls it after unloading a model, so that the
    device memory the model held really returns."""
    cupy = _cupy()
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library (for ``malloc_trim`` and ``madvise``), or None where it is not found."""
    import ctypes  # noqa: PLC0415 - only when memory is handed back
    import ctypes.util  # noqa: PLC0415

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``).

    A build's temporaries (blocks of rows, score tiles, k-means buffers) are freed into
    the heap, where glibc keeps them resident for reuse: up to a few tens of MB that a
    fitted model would otherwise appear to hold. Training calls this once it is done.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


MADV_DONTNEED = 4  # Linux's value on every architecture gpuknn runs on


def discard_rows(array: Any, stop: int, *, done: int = 0) -> int:
    """Hand back to the system the memory of rows ``[0, stop)`` of an array that nothing
    will read again; those rows read as zeros afterwards.

    Only whole pages inside those rows are handed back (``madvise(MADV_DONTNEED)``), so no
    byte outside them changes. Training uses it to give up its sample while faiss copies
    it, a chunk at a time.

    Parameters
    ----------
    array : ndarray of shape (n_rows, ...)
        C-contiguous and writable, and numpy's own memory (or a view of it): anything else
        (a read-only array such as a shared object store's, a memory-mapped file, another
        library's buffer) is left alone.
    stop : int
        Rows ``[0, stop)`` are discarded.
    done : int
        Rows ``[0, done)`` were discarded by an earlier call: their pages are not visited
        again (a page they share with row ``done`` is, being given up too).

    Returns
    -------
    int
        Bytes handed back: 0 off Linux, or for an array this does not apply to.
    """
    madvise = getattr(_libc(), "madvise", None) if sys.platform.startswith("linux") else None
    if madvise is None or not _private_rows(array):
        return 0
    import ctypes  # noqa: PLC0415 - loaded by _libc already
    import mmap  # noqa: PLC0415

    # A row's bytes from its shape: with a single row, numpy allows any strides[0].
    row_bytes = array.itemsize * int(np.prod(array.shape[1:]))
    begin = array.ctypes.data
    end = begin + min(max(stop, 0), len(array)) * row_bytes
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the rows only
    resume = (begin + min(max(done, 0), stop) * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
    first = max(first, resume)
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return 0
    status = madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first),
                     ctypes.c_int(MADV_DONTNEED))
    return last - first if status == 0 else 0


def _private_rows(array: Any) -> bool:
    """A C-contiguous, writable numpy array of rows whose memory numpy itself allocated
    (the array, or the array it is a view of, owns its data)."""
    if not isinstance(array, np.ndarray) or array.ndim == 0 or \
            not array.flags.c_contiguous or not array.flags.writeable:
        return False
    owner = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    return owner.base is None and owner.flags.owndata and not isinstance(owner, np.memmap)
