"""Memory of gpuknn's exact search (``faiss.Flat``) next to faiss, each measured in a fresh
process so that every baseline is clean.

- :func:`fit_memory`: a fresh Python process makes the data set and keeps it alive (the
  user's ``X``, as in a notebook), builds the engine once on a small slice (its libraries
  and thread pools load then, uncounted), then fits it on all the rows. Reported over the
  raw vectors' bytes (``X.nbytes``, float32): **held**, the resident memory (``VmRSS``)
  the fitted model adds and keeps; **peak**, the highest resident memory during the fit
  over the same baseline (``VmHWM`` after resetting it through ``/proc/self/clear_refs``,
  cross-checked by sampling ``VmRSS`` every 5 ms). Also what stays held after
  ``malloc_trim(0)`` (the rest was glibc's free lists) and, for gpuknn, the model's
  largest arrays.
- :func:`load_time`: ``KNNModel.load`` of a model saved as a directory against reading
  the bytes of its files from the page cache, in interleaved rounds in one fresh process.
- :func:`server_memory`: the proportional set size (PSS) summed over the whole process
  tree of a real ``gpuknn serve``, for 1 and 2 workers, once every worker has loaded the
  model and a request was answered.
- :func:`gpu_accounting`: no GPU needed: the largest n x d float32 base whose device memory
  fits a card, by :func:`gpuknn.search.exact.device_bytes` where it exists, beside the old layout
  (the base held twice).

:func:`measure_dataset` runs them for one data set, :func:`measure_all` for several, and
:func:`report_markdown` writes the table of the goals (:data:`GOALS`). ``python
bench/memory.py`` is the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import http.client
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20240607
DATASETS = ("sift-like", "covtype-like")
FULL_ROWS = {"sift-like": 1_000_000, "covtype-like": 500_000}
QUICK_ROWS = {"sift-like": 100_000, "covtype-like": 100_000}
SIFT_CLASSES = 10
K = 10
# Rows of the warm-up build that loads an engine's libraries before the baseline: above
# gpuknn.search.partition.MIN_ROWS, so that k-means and its thread pools are warm too.
WARM_ROWS = 60_000
LOAD_ROUNDS = 5
# A "16 GB" card, in bytes (nominal; CUDA reports a little less or more per model).
CARD_BYTES = 16 * 10**9
SERVE_WORKERS = (1, 2)
# The server goal is the for a 1M x 128 model; on a small base each worker's own
# interpreter and libraries (about 60 MiB) weigh more, so the other set only informs.
PSS_GOAL_DATASET = "sift-like"
# Targets of the issue, each a ratio that must not be exceeded.
GOALS = {"held": 1.15, "peak": 2.0, "load": 1.5, "pss": 1.2}
# gpuknn's largest n by device_bytes within this share of the base-once accounting's.
BASE_ONCE_SHARE = 0.95
CHILD_TIMEOUT_S = 3600.0
SERVER_START_TIMEOUT_S = 900.0
SERVER_STOP_TIMEOUT_S = 30.0
_CHILD = "import sys; from gpuknn.benchmark.memory import _child; _child(*sys.argv[1:])"

Log = Callable[[str], None]


# -- the data ----------------------------------------------------------------------------------
def make_dataset(name: str, n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Rows and class labels of a data set of :data:`DATASETS`.

    Parameters
    ----------
    name : {"sift-like", "covtype-like"}
        ``sift-like``: :func:`gpuknn.datasets.synthetic.sift_like` rows with
        :data:`SIFT_CLASSES` random classes; ``covtype-like``:
        :func:`gpuknn.datasets.synthetic.covtype_like` rows and their 7 classes.
    n : int
        Rows.

    Returns
    -------
    X : ndarray of shape (n, 128) or (n, 54), float32, C-contiguous
    y : ndarray of shape (n,), float32
    """
    from gpuknn.datasets.synthetic import covtype_like, sift_like  # noqa: PLC0415

    if name == "sift-like":
        labels = np.random.default_rng([seed, 1]).integers(0, SIFT_CLASSES, n)
        return sift_like(n, seed=seed), labels.astype(np.float32)
    if name == "covtype-like":
        X, y = covtype_like(n, seed=seed)
        return np.ascontiguousarray(X, dtype=np.float32), y.astype(np.float32)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


# -- reading memory from /proc -----------------------------------------------------------------
def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/<pid>/status`` in bytes (``VmRSS``, ``VmHWM``, ...)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
            values[key] = int(parts[0]) * 1024
    return values


def reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def malloc_trim() -> bool:
    """Give glibc's free memory back to the system (``malloc_trim(0)``); False without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def smaps_rollup(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss``, ``Pss_Anon``, ``Pss_File``... of a process in bytes, from
    ``/proc/<pid>/smaps_rollup`` (summed from ``smaps`` on kernels without it)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except FileNotFoundError:
        text = Path(f"/proc/{pid}/smaps").read_text()
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[key] = values.get(key, 0) + int(parts[0]) * 1024
    return values


# -- running a measurement in a fresh process --------------------------------------------------
def in_fresh_process(task: str, job: dict[str, Any], *,
                     timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``task`` (``"fit"`` or ``"load"``) in a new Python process; its result.

    The child is ``python -c`` with this interpreter; it imports only what the task needs
    and writes its result as JSON to a file this process reads.

    Raises
    ------
    RuntimeError
        When the child fails or writes no result; the message ends with its stderr.
    """
    with tempfile.TemporaryDirectory(prefix="gpuknn-memory-") as folder:
        out = Path(folder) / "result.json"
        done = subprocess.run([sys.executable, "-c", _CHILD, task, json.dumps(job), str(out)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"the {task} measurement failed (exit {done.returncode}):\n"
                               f"{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def _child(task: str, job: str, out: str) -> None:
    """The child's entry point: run the task, write its result to ``out``."""
    tasks = {"fit": _fit_in_child, "load": _load_in_child}
    Path(out).write_text(json.dumps(tasks[task](**json.loads(job))))


# -- fit memory --------------------------------------------------------------------------------
def fit_memory(dataset: str, n: int, *, engine: str = "gpuknn", index: str = "faiss.Flat",
               settings: dict[str, Any] | None = None, save_to: str | Path | None = None,
               seed: int = SEED, timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Resident memory a fitted engine holds, and the peak of its fit, in a fresh process.

    Parameters
    ----------
    dataset : {"sift-like", "covtype-like"}
        Made in the child by :func:`make_dataset` (float32) and kept alive.
    n : int
        Rows; gpuknn samples all of them (``sample_size=n``, ``k=10``, CPU, classifier).
    engine : {"gpuknn", "faiss"}
        gpuknn's ``KNN(...).fit(X, y)``, or raw faiss (``IndexFlatL2(d).add(X)`` for
        ``faiss.Flat``; IVF with ``settings``).
    index : {"faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ"}
    settings : dict, optional
        faiss IVF only: ``nlists``, ``nprobe``, ``pq_m``, as gpuknn chose them (the
        ``settings`` of a gpuknn result).
    save_to : path, optional
        gpuknn only: save the fitted model to this directory afterwards (not measured).

    Returns
    -------
    dict
        ``raw_bytes`` (``X.nbytes``), ``held_bytes``, ``held_trimmed_bytes`` (after
        ``malloc_trim``), ``peak_bytes`` (the largest of ``peak_hwm_bytes``, ``held_bytes`` and
        ``peak_sampled_bytes``), each also as ``*_ratio`` over ``raw_bytes``;
        ``baseline_rss_bytes``, ``build_s``, ``settings`` and, for gpuknn, ``arrays``
        (the model's largest arrays, :func:`model_arrays`).
    """
    job = {"dataset": dataset, "n": int(n), "engine": engine, "index": index,
           "settings": settings or {}, "save_to": None if save_to is None else str(save_to),
           "seed": int(seed)}
    return in_fresh_process("fit", job, timeout_s=timeout_s)


def _fit_in_child(*, dataset: str, n: int, engine: str, index: str,
                  settings: dict[str, Any], save_to: str | None, seed: int) -> dict[str, Any]:
    from gpuknn.benchmark.measure import PeakMemory  # noqa: PLC0415 - in the child only

    X, y = make_dataset(dataset, n, seed)
    _warm_up(engine, index, X[:WARM_ROWS], y[:WARM_ROWS], settings)
    before = proc_status()["VmRSS"]
    hwm_reset = reset_peak()
    with PeakMemory(collect=True) as sampled:
        began = time.perf_counter()
        built = _build(engine, index, X, y, settings)
        build_s = time.perf_counter() - began
    after = proc_status()
    malloc_trim()
    trimmed = proc_status()["VmRSS"]
    result = _fit_result(X, before, after, trimmed=trimmed, sampled=sampled,
                         hwm_reset=hwm_reset)
    result.update(dataset=dataset, n=int(n), dim=int(X.shape[1]), engine=engine, index=index,
                  build_s=build_s, settings=_settings(engine, built, settings))
    if engine == "gpuknn":
        result["arrays"] = model_arrays(built.model)
        if save_to is not None:
            built.model.save(save_to)
    return result


def _fit_result(X: np.ndarray, before: int, after: dict[str, int], *, trimmed: int,
                sampled: Any, hwm_reset: bool) -> dict[str, Any]:
    """The byte counts of a fit and their ratios to ``X.nbytes``."""
    held = after["VmRSS"] - before
    peak_hwm = after["VmHWM"] - before if hwm_reset else None
    peak_sampled = sampled.peak - before
    # What the fit still holds at the end was resident during it: the peak is never below
    # it, even where a 5 ms sampler missed the last page the garbage collector touched.
    counts = {"raw_bytes": int(X.nbytes), "baseline_rss_bytes": before,
              "held_bytes": held, "held_trimmed_bytes": trimmed - before,
              "peak_hwm_bytes": peak_hwm, "peak_sampled_bytes": peak_sampled,
              "peak_bytes": max(peak_sampled, peak_hwm or 0, held)}
    ratios = {key.replace("_bytes", "_ratio"): value / X.nbytes
              for key, value in counts.items()
              if value is not None and key not in ("raw_bytes", "baseline_rss_bytes")}
    return {**counts, **ratios}


def _warm_up(engine: str, index: str, X: np.ndarray, y: np.ndarray,
             settings: dict[str, Any]) -> None:
    """Build and search the same index once on a few rows: libraries, code pages and thread
    pools are resident before the baseline is read."""
    built = _build(engine, index, X, y, settings)
    queries = X[:16]
    if engine == "gpuknn":
        built.model.kneighbors(queries, K)
    else:
        built.search(queries, K)
    del built
    gc.collect()
    malloc_trim()


def _build(engine: str, index: str, X: np.ndarray, y: np.ndarray,
           settings: dict[str, Any]) -> Any:
    """A fitted ``gpuknn.KNN``, or a built :class:`gpuknn.benchmark.engines.Faiss`."""
    if engine == "gpuknn":
        from gpuknn import KNN  # noqa: PLC0415 - in the child only

        return KNN(k=K, predictor_type="classifier", sample_size=len(X), index_type=index,
                   device="cpu").fit(X, y)
    if engine == "faiss":
        from gpuknn.benchmark.engines import Faiss  # noqa: PLC0415 - in the child only

        peer = Faiss(index, settings)
        peer.build(X)
        return peer
    raise ValueError(f"unknown engine {engine!r}: gpuknn or faiss")


def _settings(engine: str, built: Any, given: dict[str, Any]) -> dict[str, Any]:
    """What an IVF index was built with (as ``gpuknn bench`` reports it), for the peer."""
    if engine != "gpuknn":
        return dict(given)
    model = built.model
    settings = {"nprobe": model.hyperparameters.faiss_index_nprobe,
                "pq_m": model.preparation.pq_m}
    nlist = getattr(getattr(model.index, "index", None), "nlist", None)
    if nlist is not None:
        settings["nlists"] = int(nlist)
    return settings


def model_arrays(model: Any, *, limit: int = 12, depth: int = 5) -> list[dict[str, Any]]:
    """The largest numpy arrays a model reaches through its attributes, each buffer once.

    Parameters
    ----------
    model : object
        Walked through ``vars()`` of gpuknn objects, dicts, lists and tuples.
    limit : int
        Arrays kept, largest first.
    depth : int
        Attribute levels followed.

    Returns
    -------
    list of dict
        ``path`` (``model.index.vectors``...), ``shape``, ``dtype``, ``nbytes`` of the
        buffer that owns the memory, and ``backing``: ``"own"`` (numpy's allocation),
        ``"mmap"`` (a memory-mapped file) or the type of the object lending the buffer.
    """
    found: dict[int, dict[str, Any]] = {}
    for path, array in _arrays(model, "model", depth, set()):
        owner = array
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        entry = {"path": path, "shape": list(array.shape), "dtype": str(array.dtype),
                 "nbytes": int(owner.nbytes), "backing": _backing(owner)}
        found.setdefault(id(owner), entry)
    return sorted(found.values(), key=lambda entry: -entry["nbytes"])[:limit]


def _backing(owner: np.ndarray) -> str:
    if isinstance(owner, np.memmap) or isinstance(owner.base, mmap.mmap):
        return "mmap"
    return "own" if owner.base is None else type(owner.base).__name__


def _arrays(value: Any, path: str, depth: int, seen: set[int]) -> Iterator[tuple[str, Any]]:
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        yield path, value
        return
    if depth == 0:
        return
    if isinstance(value, dict):
        items = [(f"{path}[{key!r}]", item) for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    elif type(value).__module__.startswith("gpuknn") and hasattr(value, "__dict__"):
        items = [(f"{path}.{name}", item) for name, item in vars(value).items()]
    else:
        return
    for child_path, child in items:
        yield from _arrays(child, child_path, depth - 1, seen)


# -- load time ---------------------------------------------------------------------------------
def load_time(model_dir: str | Path, *, rounds: int = LOAD_ROUNDS, seed: int = 0,
              timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """``KNNModel.load(model_dir, device="cpu")`` against reading the bytes of every file of
    the directory (``Path.read_bytes``) from the warm page cache, in a fresh process.

    Both are done once untimed (warm-up: imports, page cache), then ``rounds`` rounds time
    each once, in a seeded random order, after ``gc.collect()``. Each timed load is followed
    by one 1-row query, timed apart (``first_query_s``): a load that maps its files lazily
    pays for reading them there.

    Returns
    -------
    dict
        ``model_bytes`` (all files), ``load_s``, ``read_s``, ``first_query_s``: the samples
        summarised (:func:`gpuknn.benchmark.measure.summary`: median, q1, q3, spread);
        ``ratio``: load over read per round, summarised; ``ratio_with_query``: load plus
        first query over read.
    """
    job = {"model_dir": str(model_dir), "rounds": int(rounds), "seed": int(seed)}
    return in_fresh_process("load", job, timeout_s=timeout_s)


def _load_in_child(*, model_dir: str, rounds: int, seed: int) -> dict[str, Any]:
    from gpuknn.benchmark.measure import summary  # noqa: PLC0415 - in the child only
    from gpuknn.model.knn_model import KNNModel  # noqa: PLC0415 - in the child only

    files = sorted(path for path in Path(model_dir).rglob("*") if path.is_file())
    query = None

    def read() -> float:
        began = time.perf_counter()
        for path in files:
            path.read_bytes()
        return time.perf_counter() - began

    def load() -> tuple[float, float]:
        nonlocal query
        began = time.perf_counter()
        model = KNNModel.load(model_dir, device="cpu")
        loaded = time.perf_counter()
        if query is None:
            query = np.zeros((1, model.feature_dim), dtype=np.float32)
        model.kneighbors(query, 1)
        return loaded - began, time.perf_counter() - loaded

    read(), load()
    samples = interleaved({"read": read, "load": load}, rounds, seed)
    load_s = [pair[0] for pair in samples["load"]]
    query_s = [pair[1] for pair in samples["load"]]
    return {"model_dir": model_dir, "files": [path.name for path in files],
            "model_bytes": sum(path.stat().st_size for path in files), "rounds": rounds,
            "load_s": summary(load_s), "read_s": summary(samples["read"]),
            "first_query_s": summary(query_s),
            "ratio": summary([a / b for a, b in zip(load_s, samples["read"], strict=True)]),
            "ratio_with_query": summary([(a + q) / b for a, q, b in
                                         zip(load_s, query_s, samples["read"], strict=True)])}


def interleaved(operations: dict[str, Callable[[], Any]], rounds: int,
                 seed: int) -> dict[str, list[Any]]:
    """Each operation's results over ``rounds`` rounds, in a fresh random order each round."""
    names = list(operations)
    order = np.random.default_rng(seed)
    samples: dict[str, list[Any]] = {name: [] for name in names}
    for _ in range(rounds):
        for i in order.permutation(len(names)):
            gc.collect()
            samples[names[i]].append(operations[names[i]]())
    return samples


# -- server memory -----------------------------------------------------------------------------
def server_memory(model_dir: str | Path, dim: int, *,
                  workers: Sequence[int] = SERVE_WORKERS, log_dir: str | Path | None = None,
                  start_timeout_s: float = SERVER_START_TIMEOUT_S) -> dict[str, Any]:
    """PSS and RSS of a real ``gpuknn serve`` over a model, for each worker count.

    Each server is ``python -m gpuknn.cli serve --model DIR --workers N --device cpu`` on
    a free loopback port. Once /ping answers 200 and every worker has logged that its
    application started (each loads the model first), it answers ``2 * N`` text/csv
    requests of 4 rows; then PSS and RSS are read from ``/proc/<pid>/smaps_rollup`` of the
    server and every descendant, and the server is stopped (SIGTERM, then SIGKILL), also
    on failure.

    Parameters
    ----------
    model_dir : path
        A saved model (directory or archive).
    dim : int
        Its feature dimension (the width of the request rows).
    workers : sequence of int
        Worker counts, one server each, one after the other.
    log_dir : path, optional
        Where each server's output goes (``serve-<N>.log``); a temporary folder if None.

    Returns
    -------
    dict
        ``runs``: per worker count (as a string), ``pss_bytes``, ``rss_bytes`` and the
        ``processes`` (pid, command, pss and rss bytes); ``pss_ratio`` and ``rss_ratio``:
        the largest worker count's sum over the smallest's.
    """
    with contextlib.ExitStack() as stack:
        folder = Path(log_dir) if log_dir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="gpuknn-serve-")))
        folder.mkdir(parents=True, exist_ok=True)
        runs = {str(count): _serve_and_measure(Path(model_dir), dim, count,
                                               folder / f"serve-{count}.log", start_timeout_s)
                for count in workers}
    result: dict[str, Any] = {"model_dir": str(model_dir), "runs": runs}
    if len(runs) > 1:
        low, high = runs[str(min(workers))], runs[str(max(workers))]
        result.update(pss_ratio=high["pss_bytes"] / low["pss_bytes"],
                      rss_ratio=high["rss_bytes"] / low["rss_bytes"])
    return result


def _serve_and_measure(model_dir: Path, dim: int, workers: int, log: Path,
                       timeout_s: float) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "gpuknn.cli", "serve", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--device", "cpu"]
    with open(log, "wb") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_ready(server, port, workers, log, timeout_s)
        touch(port, dim, requests=2 * workers)
        time.sleep(0.5)
        processes = [process_memory(pid) for pid in process_tree(server.pid)]
    finally:
        stop_server(server)
    return {"workers": workers, "processes": processes,
            "pss_bytes": sum(p["pss_bytes"] for p in processes),
            "rss_bytes": sum(p["rss_bytes"] for p in processes), "log": str(log)}


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(server: subprocess.Popen, port: int, workers: int, log: Path,
                timeout_s: float) -> None:
    """Until /ping answers 200 and every worker logged "Application startup complete"
    (with several workers, each loads the model before it starts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gpuknn serve exited with {server.returncode}:\n"
                               f"{_tail(log)}")
        started = _tail(log, 1 << 20).count("Application startup complete")
        if started >= workers and _ping(port) == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"gpuknn serve not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def _ping(port: int) -> int | None:
    try:
        return http_request(port, "GET", "/ping", timeout=2)[0]
    except OSError:
        return None


def http_request(port: int, method: str, path: str, body: bytes | None = None, *,
             headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def touch(port: int, dim: int, *, requests: int) -> None:
    """Send text/csv requests of 4 rows, each on a new connection; each must answer 200."""
    rows = np.random.default_rng(0).random((4, dim)).astype(np.float32)
    body = "\n".join(",".join(f"{value:.4f}" for value in row) for row in rows).encode()
    for _ in range(requests):
        status, answer = http_request(port, "POST", "/invocations", body,
                                  headers={"Content-Type": "text/csv",
                                           "Accept": "application/json"})
        if status != 200:
            raise RuntimeError(f"/invocations answered {status}: {answer[:300]!r}")


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now (from the parent ids in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent id, start time in clock ticks) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def process_memory(pid: int) -> dict[str, Any]:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        memory = smaps_rollup(pid)
    except OSError:  # it ended meanwhile
        return {"pid": pid, "command": "", "pss_bytes": 0, "rss_bytes": 0}
    return {"pid": pid, "command": command.strip()[:200], "pss_bytes": memory.get("Pss", 0),
            "rss_bytes": memory.get("Rss", 0), "pss_anon_bytes": memory.get("Pss_Anon", 0),
            "pss_file_bytes": memory.get("Pss_File", 0)}


def stop_server(server: subprocess.Popen, timeout_s: float = SERVER_STOP_TIMEOUT_S) -> None:
    """SIGTERM to the server, then SIGKILL to it and to any descendant still running (each
    recognised by its start time, so a reused process id is never signalled)."""
    tree = {pid: _stat(pid) for pid in process_tree(server.pid)} if server.poll() is None else {}
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 5
    for pid, stat in tree.items():
        while stat is not None and _same_process(pid, stat) and time.monotonic() < deadline:
            time.sleep(0.05)  # a worker finishing its shutdown
        if stat is not None and _same_process(pid, stat):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _same_process(pid: int, stat: tuple[int, int]) -> bool:
    now = _stat(pid)
    return now is not None and now[1] == stat[1]


def _tail(path: Path, size: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode(errors="replace")


# -- GPU accounting ----------------------------------------------------------------------------
def gpu_accounting(dim: int = 128, card_bytes: int = CARD_BYTES) -> dict[str, Any]:
    """The largest n x ``dim`` float32 Flat base a card holds, by device accounting alone.

    gpuknn's count is :func:`gpuknn.search.exact.device_bytes` (n, dim) where it exists, else
    :func:`base_once_bytes` (and ``source`` says so). Beside it, the largest n of the
    base-once accounting and of the old layout (:func:`old_layout_bytes`).

    Returns
    -------
    dict
        ``dim``, ``card_bytes``, ``source``, ``largest_n`` (gpuknn's count),
        ``base_once_largest_n``, ``old_layout_largest_n``, ``gain_over_old`` and the
        constants used (``tile_bytes``, ``query_chunk``, ``block_rows``).
    """
    counted, source = _device_bytes()
    largest = largest_fitting(lambda n: counted(n, dim), card_bytes)
    tile, chunk = _gpu_constants()
    old = largest_fitting(lambda n: old_layout_bytes(n, dim), card_bytes)
    return {"dim": dim, "card_bytes": card_bytes, "source": source, "largest_n": largest,
            "device_bytes_at_largest": counted(largest, dim) if largest else 0,
            "base_once_largest_n": largest_fitting(lambda n: base_once_bytes(n, dim),
                                                   card_bytes),
            "old_layout_largest_n": old, "gain_over_old": largest / old if old else None,
            "tile_bytes": tile, "query_chunk": chunk, "block_rows": _block_rows(tile, chunk)}


def base_once_bytes(n: int, dim: int) -> int:
    """Device bytes of an n x dim float32 exact search holding the base once: the base, its
    norms (float32), one score tile (:data:`gpuknn.search.exact.GPU_TILE_BYTES`), a scratch block
    of the base rows one tile covers, and one query chunk
    (:data:`gpuknn.search.exact.GPU_QUERY_CHUNK` rows)."""
    tile, chunk = _gpu_constants()
    return (n * dim * 4 + n * 4 + tile + _block_rows(tile, chunk) * dim * 4
            + chunk * dim * 4)


def old_layout_bytes(n: int, dim: int) -> int:
    """Device bytes of the old layout: the base twice (vectors and their scaled copy), the
    norms and one score tile."""
    tile, _ = _gpu_constants()
    return 2 * n * dim * 4 + n * 4 + tile


def largest_fitting(bytes_of: Callable[[int], int], budget: int) -> int:
    """The largest n with ``bytes_of(n) <= budget`` (``bytes_of`` non-decreasing); 0 if
    none."""
    if bytes_of(1) > budget:
        return 0
    low, high = 1, 2
    while bytes_of(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if bytes_of(middle) <= budget else (low, middle)
    return low


def _device_bytes() -> tuple[Callable[[int, int], int], str]:
    from gpuknn.search import exact  # noqa: PLC0415 - only when asked

    counted = getattr(exact, "device_bytes", None)
    if counted is not None:
        try:
            int(counted(1000, 128))
        except (TypeError, ValueError):
            counted = None
    if counted is None:
        return base_once_bytes, ("this harness's base-once formula: "
                                 "gpuknn.search.exact.device_bytes is missing")
    return (lambda n, dim: int(counted(n, dim))), "gpuknn.search.exact.device_bytes"


def _gpu_constants() -> tuple[int, int]:
    from gpuknn.search import exact  # noqa: PLC0415 - only when asked

    return int(getattr(exact, "GPU_TILE_BYTES", 1 << 30)), int(getattr(exact, "GPU_QUERY_CHUNK",
                                                                       8192))


def _block_rows(tile: int, chunk: int) -> int:
    """Base rows one score tile covers for a whole query chunk (float32 scores)."""
    return max(1, tile // (4 * chunk))


# -- everything for a data set -----------------------------------------------------------------
def measure_dataset(dataset: str, n: int, *, workdir: str | Path, ivf: bool = False,
                    serve: bool = True, rounds: int = LOAD_ROUNDS,
                    log: Log | None = None) -> dict[str, Any]:
    """Every measurement of one data set: fit memory of gpuknn and faiss Flat (and IVF with
    ``ivf``), the load time of the saved gpuknn model and, with ``serve``, the server's PSS.

    Parameters
    ----------
    dataset : {"sift-like", "covtype-like"}
    n : int
        Rows of the data set (all indexed).
    workdir : path
        The saved model (``<dataset>-flat``) and the servers' logs go here.
    ivf : bool
        Also gpuknn IVFFlat and IVFPQ, and faiss with the same settings.
    serve : bool
        Also start ``gpuknn serve`` with 1 and 2 workers.
    rounds : int
        Rounds of the load timing.
    log : callable, optional
        Receives one line per step.

    Returns
    -------
    dict
        ``name``, ``n``, ``dim``, ``raw_bytes``, ``fits`` (one :func:`fit_memory` result
        per engine), ``load`` (:func:`load_time`) and ``serve`` (:func:`server_memory`, or
        None).
    """
    say = log or (lambda line: None)
    model_dir = Path(workdir) / f"{dataset}-flat"
    fits = [_step(say, f"{dataset}: gpuknn faiss.Flat fit", fit_memory, dataset, n,
                  save_to=model_dir),
            _step(say, f"{dataset}: faiss faiss.Flat build", fit_memory, dataset, n,
                  engine="faiss")]
    for index in ("faiss.IVFFlat", "faiss.IVFPQ") if ivf else ():
        mine = _step(say, f"{dataset}: gpuknn {index} fit", fit_memory, dataset, n, index=index)
        fits += [mine, _step(say, f"{dataset}: faiss {index} build", fit_memory, dataset, n,
                             engine="faiss", index=index, settings=mine["settings"])]
    dim = fits[0]["dim"]
    loaded = _step(say, f"{dataset}: load vs read, {rounds} rounds", load_time, model_dir,
                   rounds=rounds)
    served = _step(say, f"{dataset}: gpuknn serve, workers {SERVE_WORKERS}", server_memory,
                   model_dir, dim, log_dir=Path(workdir) / "logs" / dataset) if serve else None
    return {"name": dataset, "n": int(n), "dim": dim, "raw_bytes": fits[0]["raw_bytes"],
            "fits": fits, "load": loaded, "serve": served}


def _step(say: Log, what: str, function: Callable[..., dict[str, Any]], *args: Any,
          **kwargs: Any) -> dict[str, Any]:
    began = time.perf_counter()
    say(f"{what} ...")
    result = function(*args, **kwargs)
    say(f"{what}: {time.perf_counter() - began:.1f} s")
    return result


def measure_all(rows: dict[str, int], *, workdir: str | Path, ivf: bool = False,
                serve: bool = True, rounds: int = LOAD_ROUNDS, card_bytes: int = CARD_BYTES,
                log: Log | None = None) -> dict[str, Any]:
    """:func:`measure_dataset` for every data set of ``rows`` (name to row count), and the
    GPU accounting for the first one's dimension (128 for sift-like).

    Returns
    -------
    dict
        ``datasets`` (list of :func:`measure_dataset` results), ``gpu``
        (:func:`gpu_accounting`), ``environment`` and ``goals`` (:func:`goal_rows`).
    """
    from gpuknn.benchmark.report import environment  # noqa: PLC0415 - threadpoolctl

    datasets = [measure_dataset(name, n, workdir=workdir, ivf=ivf, serve=serve,
                                rounds=rounds, log=log) for name, n in rows.items()]
    results = {"datasets": datasets, "gpu": gpu_accounting(128, card_bytes),
               "environment": environment()}
    results["goals"] = goal_rows(results)
    return results


# -- the report --------------------------------------------------------------------------------
def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal and data set: ``goal``, ``dataset``, ``target``, ``measured`` (the
    ratio), ``peer`` (faiss's ratio where there is one) and ``met`` (None: not measured)."""
    rows = []
    for data in results["datasets"]:
        mine = _fit_of(data, "gpuknn", "faiss.Flat")
        theirs = _fit_of(data, "faiss", "faiss.Flat")
        for goal, key in (("held", "held_ratio"), ("peak", "peak_ratio")):
            rows.append(_goal(goal, data["name"], mine and mine[key],
                              theirs and theirs[key]))
        load = data.get("load")
        rows.append(_goal("load", data["name"], load and load["ratio"]["median"]))
        serve = data.get("serve")
        row = _goal("pss", data["name"], serve and serve.get("pss_ratio"))
        if data["name"] != PSS_GOAL_DATASET and row["met"] is not None:
            row["met"] = "info"  # the issue sets this goal for the 1M x 128 model only
        rows.append(row)
    gpu = results.get("gpu")
    if gpu:
        measured = gpu["source"] == "gpuknn.search.exact.device_bytes"
        rows.append({"goal": "gpu", "dataset": f"n x {gpu['dim']}",
                     "target": f"base once: >= {BASE_ONCE_SHARE:.0%} of "
                               f"{gpu['base_once_largest_n']:,} rows",
                     "measured": gpu["largest_n"], "peer": gpu["old_layout_largest_n"],
                     "met": (gpu["largest_n"] >= BASE_ONCE_SHARE * gpu["base_once_largest_n"])
                     if measured else None})
    return rows


def _fit_of(data: dict[str, Any], engine: str, index: str) -> dict[str, Any] | None:
    return next((fit for fit in data["fits"]
                 if fit["engine"] == engine and fit["index"] == index), None)


def _goal(goal: str, dataset: str, measured: float | None,
          peer: float | None = None) -> dict[str, Any]:
    target = GOALS[goal]
    return {"goal": goal, "dataset": dataset, "target": f"<= {target}x", "measured": measured,
            "peer": peer, "met": None if measured is None else bool(measured <= target)}


_GOAL_NAMES = {"held": "1. resident memory a fitted Flat model adds ÷ raw",
               "peak": "1. peak during fit ÷ raw",
               "gpu": "2. largest n x d base on a 16 GB card (peer: old layout)",
               "load": "3. KNNModel.load ÷ reading its files (page cache)",
               "pss": "4. PSS, 2-worker server ÷ 1-worker"}


def report_markdown(results: dict[str, Any]) -> str:
    """The goals table, then the fit memory of every engine, the load times, the servers'
    memory, the GPU accounting and the gpuknn model's largest arrays (Markdown)."""
    goals = results.get("goals") or goal_rows(results)
    parts = [_head(results), _goals_table(goals)]
    for data in results["datasets"]:
        parts.append(_dataset_section(data))
    if results.get("gpu"):
        parts.append(_gpu_section(results["gpu"]))
    parts.append(_METHOD)
    return "\n\n".join(parts) + "\n"


def _head(results: dict[str, Any]) -> str:
    env = results.get("environment") or {}
    sets = ", ".join(f"{d['name']} {d['n']:,} x {d['dim']}" for d in results["datasets"])
    quick = " (--quick: small sets, not the goals' sizes)" if results.get("quick") else ""
    return (f"# Memory of gpuknn's exact search{quick}\n\n{env.get('date_utc', '')}; "
            f"{env.get('cpu', '')}, {env.get('cores', '?')} cores; {sets}.")


def _goals_table(goals: list[dict[str, Any]]) -> str:
    lines = ["| goal | data set | target | gpuknn | faiss / old layout | met |",
             "|---|---|---:|---:|---:|---|"]
    for row in goals:
        met = {True: "met", False: "**not met**", None: "not measured",
               "info": f"(goal set for {PSS_GOAL_DATASET} only)"}[row["met"]]
        lines.append(f"| {_GOAL_NAMES[row['goal']]} | {row['dataset']} | {row['target']} | "
                     f"{_value(row['measured'])} | {_value(row['peer'])} | {met} |")
    return "\n".join(lines)


def _value(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:.2f}x"


def _dataset_section(data: dict[str, Any]) -> str:
    raw = data["raw_bytes"]
    lines = [f"## {data['name']}: {data['n']:,} x {data['dim']} float32, raw "
             f"{raw / 2**20:,.0f} MiB\n",
             "| engine | index | held ÷ raw | held after malloc_trim ÷ raw | peak ÷ raw "
             "(VmHWM) | peak ÷ raw (5 ms samples) | build s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for fit in data["fits"]:
        hwm = fit.get("peak_hwm_ratio")
        lines.append(f"| {fit['engine']} | {fit['index']} | {fit['held_ratio']:.2f}x | "
                     f"{fit['held_trimmed_ratio']:.2f}x | "
                     f"{'' if hwm is None else f'{hwm:.2f}x'} | "
                     f"{fit['peak_sampled_ratio']:.2f}x | {fit['build_s']:.2f} |")
    sections = ["\n".join(lines)]
    if data.get("load"):
        sections.append(_load_section(data["load"]))
    if data.get("serve"):
        sections.append(_serve_section(data["serve"], raw))
    arrays = _fit_of(data, "gpuknn", "faiss.Flat")
    if arrays and arrays.get("arrays"):
        sections.append(_arrays_section(arrays["arrays"], raw))
    return "\n\n".join(sections)


def _load_section(load: dict[str, Any]) -> str:
    def cell(stats: dict[str, float]) -> str:
        return f"{stats['median']:.3f} ({stats['q1']:.3f}-{stats['q3']:.3f})"

    return "\n".join([
        f"Load of the saved Flat model ({load['model_bytes'] / 2**20:,.0f} MiB in "
        f"{len(load['files'])} files), {load['rounds']} interleaved rounds, median (IQR):",
        "",
        "| KNNModel.load s | read files s | load ÷ read | first 1-row query s | "
        "(load + query) ÷ read |",
        "|---:|---:|---:|---:|---:|",
        f"| {cell(load['load_s'])} | {cell(load['read_s'])} | "
        f"{load['ratio']['median']:.2f}x ({load['ratio']['q1']:.2f}-"
        f"{load['ratio']['q3']:.2f}) | {cell(load['first_query_s'])} | "
        f"{load['ratio_with_query']['median']:.2f}x |"])


def _serve_section(serve: dict[str, Any], raw: int) -> str:
    lines = ["`gpuknn serve` over that model, after every worker loaded it and answered:", "",
             "| workers | processes | PSS MiB | PSS ÷ raw | RSS MiB | PSS MiB per process |",
             "|---:|---:|---:|---:|---:|---|"]
    for count, run in serve["runs"].items():
        each = " + ".join(f"{p['pss_bytes'] / 2**20:,.0f}" for p in run["processes"])
        lines.append(f"| {count} | {len(run['processes'])} | {run['pss_bytes'] / 2**20:,.0f} | "
                     f"{run['pss_bytes'] / raw:.2f}x | {run['rss_bytes'] / 2**20:,.0f} | "
                     f"{each} |")
    if "pss_ratio" in serve:
        lines.append(f"\nPSS ratio {serve['pss_ratio']:.2f}x, RSS ratio "
                     f"{serve['rss_ratio']:.2f}x (most workers over fewest).")
    return "\n".join(lines)


def _arrays_section(arrays: list[dict[str, Any]], raw: int) -> str:
    lines = ["Largest arrays of the fitted gpuknn Flat model (each buffer once):", "",
             "| attribute | shape | dtype | MiB | ÷ raw | memory |",
             "|---|---|---|---:|---:|---|"]
    for entry in arrays:
        lines.append(f"| `{entry['path']}` | {' x '.join(map(str, entry['shape']))} | "
                     f"{entry['dtype']} | {entry['nbytes'] / 2**20:,.1f} | "
                     f"{entry['nbytes'] / raw:.2f} | {entry['backing']} |")
    return "\n".join(lines)


def _gpu_section(gpu: dict[str, Any]) -> str:
    gain = gpu["gain_over_old"]
    return "\n".join([
        f"## GPU: the largest n x {gpu['dim']} float32 Flat base on a "
        f"{gpu['card_bytes'] / 1e9:.0f} GB card ({gpu['card_bytes']:,} bytes), by accounting",
        "",
        "| accounting | largest n | device GB at that n |",
        "|---|---:|---:|",
        f"| gpuknn ({gpu['source']}) | {gpu['largest_n']:,} | "
        f"{gpu['device_bytes_at_largest'] / 1e9:.2f} |",
        f"| base once + norms + tile + scratch block + query chunk | "
        f"{gpu['base_once_largest_n']:,} | |",
        f"| old layout (base twice + norms + tile) | {gpu['old_layout_largest_n']:,} | |",
        "",
        f"Score tile {gpu['tile_bytes'] / 2**20:,.0f} MiB, query chunk {gpu['query_chunk']:,} "
        f"rows, scratch block {gpu['block_rows']:,} base rows; no CUDA context or library "
        f"workspace counted. gpuknn ÷ old layout: "
        f"{'' if gain is None else f'{gain:.2f}x'} the rows."])


_METHOD = """\
How it was measured: every fit ran in a fresh Python process that made the data set,
kept it alive, built the same index on its first 20,000 rows (libraries and thread
pools loaded, then freed and trimmed), read VmRSS, reset VmHWM through
/proc/self/clear_refs and fitted on all rows. *held* is VmRSS after the fit (garbage
collected, the model alive) minus VmRSS before; *peak* is VmHWM after the fit minus VmRSS
before, cross-checked by sampling VmRSS every 5 ms; "after malloc_trim" is held once glibc
returned its free memory. Raw is X.nbytes (float32). The load timing reads every file of
the model directory with Path.read_bytes (the page cache warm) and calls
KNNModel.load(dir, device="cpu"), each once untimed, then in interleaved rounds. Server
memory sums PSS (and RSS) over `gpuknn serve` and all its descendants from
/proc/<pid>/smaps_rollup, after every worker started and 2 requests per worker were
answered; per process, the server's own process comes first (with several workers,
uvicorn's supervisor), then its descendants (the workers and, with several,
multiprocessing's resource tracker)."""
