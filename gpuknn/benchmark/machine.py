"""The machine a benchmark ran on, recorded beside every result: one record for every
benchmark (``gpuknn bench``, the ``bench/`` scripts and their harnesses).

:func:`machine` is the host (date, platform, Python, CPU model and SIMD flags, memory,
the thread variables that are set); :func:`environment` is what a result depends on
(CPU, usable cores, BLAS and its core type from threadpoolctl, the GPU, versions).
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import sys
from pathlib import Path
from typing import Any

from gpuknn import _backend
from gpuknn._backend import usable_cores
from gpuknn._version import __version__

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE")


def cpu_description() -> dict[str, Any]:
    """CPU model, core counts and the SIMD flags that matter to BLAS kernels."""
    model, flags, cores = None, set(), set()
    physical_id = None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"model": model or platform.processor() or platform.machine(),
            "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "physical_cores": len(cores) or None,
            "simd_flags": [f for f in SIMD_FLAGS if f in flags]}


def memory_gib() -> float | None:
    """Total memory in GiB (Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """Date, host, platform, Python, CPU, memory and the thread variables that are set."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "cpu": cpu_description(),
        "memory_gib": memory_gib(),
        "thread_env": {name: os.environ[name] for name in THREAD_VARIABLES
                       if name in os.environ},
    }


def environment() -> dict[str, Any]:
    """CPU, cores, BLAS (threadpoolctl: library, version, core type), GPU, versions."""
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo()
                if line.startswith("model name")), platform.processor())
    versions = {"gpuknn": __version__, "python": sys.version.split()[0]}
    for name in ("numpy", "faiss", "sklearn", "hnswlib", "cupy"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    gpu = None
    if _backend.has_gpu():
        cp = _backend.array_module("gpu")
        gpu = {"name": _backend.device_name(cp),
               "driver": cp.cuda.runtime.driverGetVersion()}
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "cpu": cpu, "cores": usable_cores(), "platform": platform.platform(), "gpu": gpu,
            "blas": [{key: pool.get(key) for key in ("internal_api", "version",
                                                     "architecture", "num_threads")}
                     for pool in threadpool_info()],
            "versions": versions}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
