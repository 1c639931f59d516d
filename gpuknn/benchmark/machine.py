"""The machine a benchmark ran on, recorded beside every result: one record for every
benchmark (``gpuknn bench``, the ``bench/`` scripts and their harnesses).

:func:`machine` is the host (date, platform, Python, CPU model and SIMD flags, memory,
the thread variables that are set); :func:`environment` is what a result depends on
(CPU, usable cores, BLAS and its core type from threadpoolctl, the GPU, versions);
:func:`source_state` is which gpuknn was measured (its path, and whether its files are
those of the repository's ``HEAD``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import socket
import subprocess
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


def source_state(repo: Path | None = None) -> dict[str, Any]:
    """Which gpuknn was measured: its path and how its files compare with a repo's HEAD.

    Git blob ids of the imported package's ``.py`` files against ``git ls-tree HEAD
    gpuknn`` of ``repo`` (run from a ``git archive HEAD`` copy on ``PYTHONPATH`` to
    measure the committed code while the checkout is edited).

    Parameters
    ----------
    repo : Path, optional
        The git checkout to compare with: a bench script passes its own (default: the
        folder above the imported package).

    Returns
    -------
    dict
        ``gpuknn_path``; then ``repo``, ``head``, ``matches_head`` and
        ``files_differing_from_head``, or ``git`` saying why git could not be asked.
    """
    package = Path(__file__).parent.parent  # the imported package, as gpuknn.__file__ says
    repo = package.parent if repo is None else repo
    state: dict[str, Any] = {"gpuknn_path": str(package)}
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        tree = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "HEAD", "gpuknn"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        state["git"] = f"unavailable ({err})"
        return state
    committed = {}
    for line in tree.splitlines():
        meta, _, path = line.partition("\t")
        if path.endswith(".py"):
            committed[path.removeprefix("gpuknn/")] = meta.split()[2]
    found = {}
    for file in sorted(package.rglob("*.py")):
        content = file.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        found[file.relative_to(package).as_posix()] = blob
    differing = sorted(name for name in set(committed) | set(found)
                       if committed.get(name) != found.get(name))
    state.update({"repo": str(repo), "head": head, "matches_head": not differing,
                  "files_differing_from_head": differing})
    return state


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
