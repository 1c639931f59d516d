"""A multi-model server measured against its peers (``bench/multimodel.py``).

Every server is a real ``gpuknn serve`` process on a loopback port; every request a real
HTTP request on a fresh connection. Three measurements, each a ratio to a peer measured in
the same run:

- :func:`load_ratio`: ``POST /models`` of a model into a running multi-model server (one
  worker: it loads, warms the model up with one search and measures it) against
  ``KNNModel.load`` of the same directory in this process, in interleaved rounds;
- :func:`invoke_ratio`: ``POST /models/<name>/invoke`` against ``/invocations`` of a
  single-model server of the same model, both running, requests alternating between them
  in a random order, for each request size;
- :func:`many_models`: many small models loaded into one server: the time to load them
  all, the server's resident memory (PSS of every process, less the empty server's) over
  the sum of their files, what the server's budget accounting says it holds, and the
  latency of invoking a random one against a single-model server of one of them.

:func:`run` builds the models (:func:`fit_and_save`, :func:`small_models`) and takes the
three; :mod:`gpuknn.benchmark.multimodel_report` renders its report as Markdown.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.machine import machine
from gpuknn.benchmark.measure import interleaved, summary
from gpuknn.benchmark.memory_data import make_dataset
from gpuknn.benchmark.procmem import process_memory, process_tree, stop_server
from gpuknn.benchmark.server_memory import free_port, http_request, wait_ready

GOALS = {"load": 1.5, "invoke_p50": 1.1, "resident": 1.2}
START_TIMEOUT_S = 900.0
STABLE_SHARE = 0.005  # PSS counts as settled once two reads a second apart differ less
_TAKEN = re.compile(r"budget left \((\d+) bytes taken\)")
SMALL_DIM = 16
HELD_OUT = 4000  # covtype-like rows kept out of the model, the invoke's queries


# -- servers -------------------------------------------------------------------------------------
class Server:
    """``gpuknn serve ARGS --workers N --device cpu`` on a free loopback port."""

    def __init__(self, args: list[str], log: Path, workers: int = 1):
        self.port, self.log, self.workers = free_port(), log, workers
        command = [sys.executable, "-m", "gpuknn.cli", "serve", *args, "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(workers), "--device", "cpu"]
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        wait_ready(self.process, self.port, workers, log, START_TIMEOUT_S)

    def pss_bytes(self) -> int:
        """Proportional set size of the server and every process under it."""
        return sum(process_memory(pid)["pss_bytes"] for pid in process_tree(self.process.pid))

    def settled_pss(self, timeout_s: float = 120.0) -> int:
        """The PSS once it stops moving (workers that load ahead of requests are done)."""
        last, deadline = self.pss_bytes(), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.pss_bytes()
            if abs(now - last) <= STABLE_SHARE * last:
                return now
            last = now
        return last

    def accounted_bytes(self) -> int:
        """What the budget accounting charges the loaded models, from the last load's log
        line (``... budget left (N bytes taken)``)."""
        return int(_TAKEN.findall(self.log.read_text(errors="replace"))[-1])

    def stop(self) -> None:
        stop_server(self.process)


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, *, expect: int = 200) -> bytes:
    """The body of one request, which must answer ``expect``."""
    status, payload = http_request(port, method, path, body, headers=headers)
    if status != expect:
        raise RuntimeError(f"{method} {path} answered {status}: {payload[:300]!r}")
    return payload


def load(port: int, name: str, url: Path) -> float:
    """Seconds of one ``POST /models`` (which must answer 200)."""
    body = json.dumps({"model_name": name, "url": str(url)}).encode()
    began = time.perf_counter()
    call(port, "POST", "/models", body, {"Content-Type": "application/json"})
    return time.perf_counter() - began


def csv_body(rows: np.ndarray) -> bytes:
    return "\n".join(",".join(f"{value:g}" for value in row) for row in rows).encode()


def timed_post(port: int, path: str, body: bytes) -> float:
    """Seconds of one text/csv request (which must answer 200)."""
    began = time.perf_counter()
    call(port, "POST", path, body, {"Content-Type": "text/csv", "Accept": "application/json"})
    return time.perf_counter() - began


# -- the models ---------------------------------------------------------------------------------
def fit_and_save(X: np.ndarray, y: np.ndarray, path: Path, k: int = 10) -> Path:
    """A CPU classifier over every row of ``X``, saved as a directory at ``path``."""
    from gpuknn import KNN  # noqa: PLC0415 - the measured engine, only where models are made

    model = KNN(k=k, predictor_type="classifier", sample_size=len(X), device="cpu")
    return model.fit(X, y).model.save(path)


def small_models(count: int, rows: int, root: Path) -> list[Path]:
    """``count`` models of ``rows`` x 16: five Gaussian classes each, seeded per model."""
    paths = []
    for i in range(count):
        rng = np.random.default_rng([2026, i])
        y = rng.integers(0, 5, rows)
        X = (rng.normal(scale=3.0, size=(5, SMALL_DIM))[y]
             + rng.normal(size=(rows, SMALL_DIM)))
        paths.append(fit_and_save(X.astype(np.float32), y.astype(np.float32),
                                  root / f"small-{i:04d}", k=5))
    return paths


def run(sizes: dict[str, int], *, rounds: int = 7) -> dict[str, Any]:
    """The three measurements on models built here, in a temporary folder.

    Parameters
    ----------
    sizes : dict
        ``big``: rows of the sift-like 128-d model that is loaded; ``covtype``: rows of
        the covtype-like model that is invoked; ``small`` models of ``small_rows`` x 16.
    rounds : int
        Interleaved rounds of the load and invoke ratios.

    Returns
    -------
    dict
        ``machine``, ``sizes``, ``load``, ``invoke``, ``many`` (1 and 2 workers) and the
        ``seconds`` it all took.
    """
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpuknn-multimodel-") as folder:
        work = Path(folder)
        X, y = make_dataset("sift-like", sizes["big"])
        big = fit_and_save(X, y, work / "big")
        del X, y
        print(f"built the {sizes['big']:,} x 128 model", flush=True)
        load = load_ratio(big, work, rounds=rounds)
        print(f"load: {load['ratio']['median']:.2f}x KNNModel.load", flush=True)
        X, y = make_dataset("covtype-like", sizes["covtype"] + HELD_OUT)
        covtype = fit_and_save(X[:-HELD_OUT], y[:-HELD_OUT], work / "covtype")
        invoke = invoke_ratio(covtype, X[-HELD_OUT:], work, rounds=rounds)
        print(f"invoke p50: {invoke['1']['ratio']['median']:.3f}x (1 row), "
              f"{invoke['581']['ratio']['median']:.3f}x (581 rows)", flush=True)
        smalls = small_models(sizes["small"], sizes["small_rows"], work)
        many = [many_models(smalls, SMALL_DIM, work, workers=workers) for workers in (1, 2)]
        print(f"{sizes['small']} models: resident {many[0]['resident_ratio']:.2f}x (1 worker), "
              f"{many[1]['resident_ratio']:.2f}x (2 workers) of their files", flush=True)
    return {"machine": machine(), "sizes": sizes, "load": load, "invoke": invoke,
            "many": many, "seconds": time.perf_counter() - began}


# -- 1. load -------------------------------------------------------------------------------------
def load_ratio(model_dir: Path, log_dir: Path, *, rounds: int = 7,
               seed: int = 0) -> dict[str, Any]:
    """``POST /models`` into a running one-worker server against ``KNNModel.load``.

    Each is done once untimed (imports, the page cache), then ``rounds`` rounds time each
    once in a fresh random order; the server unloads the model after each timed load.
    The cold start is timed too: the load and a first 1-row request (``/invoke``) against
    ``KNNModel.load`` and a first ``KNNModel.answer`` of the same row.
    """
    from gpuknn.model.knn_model import KNNModel  # noqa: PLC0415 - a measurement's own import

    server = Server(["--multi-model"], log_dir / "serve-load.log")
    row: list[np.ndarray] = []
    try:
        def served() -> tuple[float, float]:
            began = time.perf_counter()
            seconds = load(server.port, "big", model_dir)
            timed_post(server.port, "/models/big/invoke", csv_body(row[0]))
            cold = time.perf_counter() - began
            call(server.port, "DELETE", "/models/big")
            return seconds, cold

        def loaded() -> tuple[float, float]:
            began = time.perf_counter()
            model = KNNModel.load(model_dir, device="cpu")
            done = time.perf_counter()
            if not row:
                row.append(model.warm_up_query())
            model.answer(row[0])  # what the server's request does: search, vote
            return done - began, time.perf_counter() - began

        loaded(), served()
        samples = interleaved({"server": served, "load": loaded}, rounds, seed)
    finally:
        server.stop()
    server_s, server_cold = ([pair[i] for pair in samples["server"]] for i in (0, 1))
    load_s, load_cold = ([pair[i] for pair in samples["load"]] for i in (0, 1))
    return {"model_bytes": _files_bytes(model_dir), "rounds": rounds,
            "server_s": summary(server_s), "load_s": summary(load_s),
            "server_cold_s": summary(server_cold), "load_cold_s": summary(load_cold),
            "ratio": summary([a / b for a, b in zip(server_s, load_s, strict=True)]),
            "cold_ratio": summary([a / b for a, b in zip(server_cold, load_cold, strict=True)])}


# -- 2. invoke -----------------------------------------------------------------------------------
def invoke_ratio(model_dir: Path, queries: np.ndarray, log_dir: Path, *,
                 sizes: tuple[int, ...] = (1, 581), requests: int = 60, rounds: int = 5,
                 seed: int = 0) -> dict[str, Any]:
    """``/models/<name>/invoke`` against a single-model server's ``/invocations``.

    Both servers run side by side (one worker each); each round sends ``requests``
    requests of each size to each server, alternating between them in a random order.
    The ratio is the multi-model p50 over the single-model p50, per round.
    """
    multi = Server(["--multi-model"], log_dir / "serve-invoke-multi.log")
    single = Server(["--model", str(model_dir)], log_dir / "serve-invoke-single.log")
    result: dict[str, Any] = {"requests": requests, "rounds": rounds}
    try:
        load(multi.port, "model", model_dir)
        paths = {"multi": (multi.port, "/models/model/invoke"),
                 "single": (single.port, "/invocations")}
        for size in sizes:
            bodies = [csv_body(queries[i:i + size]) for i in
                      range(0, len(queries) - size + 1, max(1, size))][:requests]
            rounds_p50: dict[str, list[float]] = {"multi": [], "single": []}
            for round_number in range(rounds + 1):  # the first round warms up, untimed
                times = _alternating(
                    {engine: (lambda i, engine=engine, bodies=bodies: timed_post(
                        *paths[engine], bodies[i % len(bodies)])) for engine in paths},
                    requests, [seed, size, round_number])
                for engine, values in times.items():
                    rounds_p50[engine].append(float(np.median(values)))
            result[str(size)] = {
                "multi_p50_s": summary(rounds_p50["multi"][1:]),
                "single_p50_s": summary(rounds_p50["single"][1:]),
                "ratio": summary([a / b for a, b in zip(rounds_p50["multi"][1:],
                                                        rounds_p50["single"][1:], strict=True)])}
    finally:
        multi.stop()
        single.stop()
    return result


# -- 3. many models ------------------------------------------------------------------------------
def many_models(directories: list[Path], dim: int, log_dir: Path, *, workers: int,
                invokes: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every model of ``directories`` loaded into one server of ``workers`` processes.

    Returns the time to load them all (one client, one after the other), the resident
    memory they add (PSS of the server's processes once settled, less the empty server's)
    and what the accounting charges, each over the sum of the models' files, and the p50
    of invoking a random model with one row against a single-model server of the first
    model (interleaved).
    """
    rng = np.random.default_rng(seed)
    files = sum(_files_bytes(directory) for directory in directories)
    server = Server(["--multi-model"], log_dir / f"serve-many-{workers}.log", workers)
    single = Server(["--model", str(directories[0])], log_dir / "serve-many-single.log")
    try:
        empty = server.settled_pss()
        began = time.perf_counter()
        per_model = [load(server.port, f"m{i}", path) for i, path in enumerate(directories)]
        load_all_s = time.perf_counter() - began
        row = csv_body(rng.random((1, dim), dtype=np.float32))
        for i in range(len(directories)):  # every model answers (and every page is read)
            timed_post(server.port, f"/models/m{i}/invoke", row)
        loaded = server.settled_pss()
        picks = rng.integers(0, len(directories), invokes)
        times = _alternating({"multi": lambda i: timed_post(server.port,
                                                            f"/models/m{picks[i]}/invoke", row),
                              "single": lambda i: timed_post(single.port, "/invocations", row)},
                             invokes, seed)
        accounted = server.accounted_bytes()
    finally:
        server.stop()
        single.stop()
    added = loaded - empty
    return {"models": len(directories), "workers": workers, "files_bytes": files,
            "load_all_s": load_all_s, "load_each_s": summary(per_model),
            "empty_pss_bytes": empty, "loaded_pss_bytes": loaded, "added_pss_bytes": added,
            "resident_ratio": added / files, "accounted_bytes": accounted,
            "accounted_ratio": accounted / files, "accounted_over_resident": accounted / added,
            "invoke_random_s": summary(times["multi"]), "invoke_single_s": summary(times["single"]),
            "invoke_ratio": float(np.median(times["multi"]) / np.median(times["single"]))}


def _alternating(calls: dict[str, Callable[[int], float]], count: int,
                 seed: int | list[int]) -> dict[str, list[float]]:
    """``count`` samples of each call (the ``i``-th call of each is given ``i``), in
    rounds of one call each in a fresh random order (:func:`measure.interleaved`)."""
    counters = {name: itertools.count() for name in calls}
    return interleaved({name: (lambda name=name: calls[name](next(counters[name])))
                        for name in calls}, count, seed)


def _files_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in Path(directory).iterdir() if path.is_file())
