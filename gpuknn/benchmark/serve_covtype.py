"""Client-measured latency and throughput of a real ``gpuknn serve``
(``bench/serve_covtype.py``).

The server is ``python -m gpuknn.cli serve --model DIR`` in a subprocess on a loopback
port (:class:`Server`); clients are threads of this process, each with its own keep-alive
``http.client`` connection (:class:`Client`), sending ``text/csv`` and accepting
``application/json``. Client and server share the machine's cores.

- :func:`sequential`: one client, one request after the other (warm-up first); every
  answer may be checked equal to ``KNNModel.predict``.
- :func:`concurrent`: many clients sending one-row requests for some seconds.
- :func:`in_process_peers`: gpuknn's ``KNNModel.predict`` and scikit-learn's brute force in
  this process, without HTTP, best of interleaved rounds
  (:func:`~gpuknn.benchmark.measure.interleaved`).
- :func:`run`: the whole benchmark on a covtype-shaped model; :func:`render` its Markdown.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import KNN, KNNModel
from gpuknn.benchmark.machine import machine
from gpuknn.benchmark.measure import interleaved, timer
from gpuknn.benchmark.server_memory import free_port
from gpuknn.datasets.synthetic import covtype_like

BATCH_ROWS = 581
CLIENTS = 32
START_TIMEOUT_S = 120.0
WARM_UP_REQUESTS = 5


class Server:
    """``gpuknn serve`` on a free loopback port, stopped with SIGTERM on exit.

    Parameters
    ----------
    model_dir : Path
        The saved model the server answers from.
    log : Path
        Where the server's output goes.
    workers : str
        ``--workers`` (``"auto"``: one worker per core).
    """

    def __init__(self, model_dir: Path, log: Path, workers: str = "auto"):
        self.port = free_port()
        self.log = log
        self.command = [sys.executable, "-m", "gpuknn.cli", "serve", "--model", str(model_dir),
                        "--host", "127.0.0.1", "--port", str(self.port),
                        "--workers", workers]

    def __enter__(self) -> Server:
        self.handle = open(self.log, "wb")
        self.process = subprocess.Popen(self.command, stdout=self.handle,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if Client(self.port).get("/ping") == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def info(self) -> dict[str, Any]:
        """The server's ``GET /model`` document (one worker's counters)."""
        client = Client(self.port)
        client.connection.request("GET", "/model")
        return json.loads(client.connection.getresponse().read())

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.handle.close()


class Client:
    """One keep-alive connection to a server on the loopback interface."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> int:
        """The status of ``GET path``."""
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        response.read()
        return response.status

    def predict(self, body: bytes) -> tuple[float, bytes]:
        """Seconds and answer of one ``text/csv`` ``POST /invocations`` (must answer 200)."""
        start = time.perf_counter()
        self.connection.request("POST", "/invocations", body=body,
                                headers={"Content-Type": "text/csv",
                                         "Accept": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        return elapsed, payload


def csv_body(rows: np.ndarray) -> bytes:
    """Rows as a ``text/csv`` request body (``%g`` values, no trailing newline)."""
    return "\n".join(",".join(f"{v:g}" for v in row) for row in rows).encode()


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """Count, mean, p50, p90 and p99 in milliseconds of latencies given in seconds."""
    ms = np.asarray(latencies, dtype=np.float64) * 1e3
    return {"count": len(ms), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99))}


def sequential(port: int, queries: np.ndarray, rows: int, count: int,
               check: KNNModel | None = None) -> dict[str, Any]:
    """``count`` requests of ``rows`` consecutive query rows, one after the other.

    Five untimed requests warm up first. With ``check`` (a ``KNNModel``), every answer's
    labels must equal ``check.predict`` of the same rows.
    """
    client = Client(port)
    rng = np.random.default_rng(rows)
    starts = rng.integers(0, len(queries) - rows, size=count + WARM_UP_REQUESTS)
    bodies = [csv_body(queries[s:s + rows]) for s in starts]
    for body in bodies[:WARM_UP_REQUESTS]:
        client.predict(body)
    latencies = []
    began = time.perf_counter()
    for start, body in zip(starts[WARM_UP_REQUESTS:], bodies[WARM_UP_REQUESTS:], strict=True):
        elapsed, payload = client.predict(body)
        latencies.append(elapsed)
        if check is not None:
            got = [p["predicted_label"] for p in json.loads(payload)["predictions"]]
            if got != check.predict(queries[start:start + rows]).tolist():
                raise AssertionError("server and Python API disagree")
    wall = time.perf_counter() - began
    return {"rows": rows, "requests": count, **latency_summary(latencies),
            "requests_per_s": count / wall}


def concurrent(port: int, queries: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads sending one-row requests for ``seconds``: requests/s, latencies."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    errors: list[str] = []

    def send(number: int) -> None:
        client = Client(port)
        rng = np.random.default_rng(number)
        bodies = [csv_body(queries[i:i + 1]) for i in rng.integers(0, len(queries), 200)]
        i = 0
        while not stop.is_set():
            try:
                latencies[number].append(client.predict(bodies[i % len(bodies)])[0])
            except (OSError, RuntimeError) as err:
                errors.append(repr(err))
                return
            i += 1

    threads = [threading.Thread(target=send, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    flat = [value for values in latencies for value in values]
    return {"clients": clients, "seconds": wall, "errors": errors, **latency_summary(flat),
            "requests_per_s": len(flat) / wall}


def in_process_peers(model: KNNModel, base: np.ndarray, labels: np.ndarray, queries: np.ndarray,
                     repeats: int = 7) -> dict[str, float]:
    """Best milliseconds of ``KNNModel.predict`` and scikit-learn's brute-force classifier.

    One row and :data:`BATCH_ROWS` rows; each call once untimed, then ``repeats``
    interleaved rounds (a fresh random order each round); keys ``gpuknn_<rows>_ms`` and
    ``sklearn_<rows>_ms``.
    """
    from sklearn.neighbors import KNeighborsClassifier  # noqa: PLC0415 - a peer's own import

    sklearn = KNeighborsClassifier(n_neighbors=10, algorithm="brute").fit(base, labels)
    out = {}
    for rows in (1, BATCH_ROWS):
        batch = queries[:rows]
        calls = {"gpuknn": lambda b=batch: model.predict(b),
                 "sklearn": lambda b=batch: sklearn.predict(b)}
        for call in calls.values():  # warm-up
            call()
        samples = interleaved({name: timer(call) for name, call in calls.items()},
                              repeats, seed=rows)
        for name in calls:
            out[f"{name}_{rows}_ms"] = min(samples[name]) * 1e3
    return out


def run(n_model: int, *, single: int, batches: int, seconds: float,
        settings: dict[str, Any], sagemaker: dict[str, float],
        targets: dict[str, float]) -> dict[str, Any]:
    """The whole benchmark on an ``n_model`` x 54 covtype-shaped Flat model, k=10.

    Parameters
    ----------
    n_model : int
        Rows of the model (10,000 more rows of the same generator are the queries).
    single, batches : int
        One-row and :data:`BATCH_ROWS`-row sequential requests.
    seconds : float
        Length of each concurrent phase.
    settings, sagemaker, targets : dict
        Recorded in the report as they are (the run's options, the peer's figures and
        the goals; :func:`render` reads the last two).

    Returns
    -------
    dict
        The report :func:`render` turns into Markdown.
    """
    X, y = covtype_like(n_model + 10_000)
    X, y = X.astype(np.float32), y.astype(np.float32)
    base, labels, queries = X[:n_model], y[:n_model], X[n_model:]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / "model"
        estimator = KNN(k=10, predictor_type="classifier", sample_size=n_model,
                        feature_dim=54, index_type="faiss.Flat")
        estimator.fit(base, labels).model.save(model_dir)
        model = KNNModel.load(model_dir)
        report = {"machine": machine(), "model": {"rows": n_model, "dim": 54, "k": 10,
                                                   "index_type": "faiss.Flat",
                                                   "pruned": model.index.partitioned},
                  "settings": settings, "sagemaker_c5_xlarge": sagemaker, "targets": targets}
        report["in_process"] = in_process_peers(model, base, labels, queries)
        with Server(model_dir, Path(scratch) / "serve.log") as server:
            report["single"] = sequential(server.port, queries, 1, single)
            report["batch"] = sequential(server.port, queries, BATCH_ROWS, batches, check=model)
            report["concurrent"] = concurrent(server.port, queries, CLIENTS, seconds)
            report["server_batches"] = server.info()
        with Server(model_dir, Path(scratch) / "serve1.log", workers="1") as server:
            report["concurrent_1_worker"] = concurrent(server.port, queries, CLIENTS, seconds)
    for key in ("concurrent", "concurrent_1_worker"):
        report[f"{key}_gain"] = (report[key]["requests_per_s"]
                                 / report["single"]["requests_per_s"])
    return report


def render(report: dict[str, Any]) -> str:
    """The report of :func:`run` as a Markdown page (a table against SageMaker, the peers)."""
    single, batch, conc = report["single"], report["batch"], report["concurrent"]
    conc1 = report["concurrent_1_worker"]
    sm, goal = report["sagemaker_c5_xlarge"], report["targets"]
    cpu = report["machine"]["cpu"]
    lines = [
        f"# gpuknn serve on a covtype-shaped model ({report['model']['rows']:,} x 54, "
        "Flat, k=10)", "",
        f"{report['machine']['date_utc']}, {cpu.get('model')}, "
        f"{cpu.get('usable_cpus', cpu.get('logical_cpus'))} usable cores; client and server "
        "on the same machine. `python bench/serve_covtype.py`.", "",
        "| measure | gpuknn serve | SageMaker ml.c5.xlarge | target (2 cores) |",
        "|---|---:|---:|---:|",
        f"| one row, mean | {single['mean_ms']:.2f} ms | {sm['single_mean_ms']} ms | |",
        f"| one row, p50 | {single['p50_ms']:.2f} ms | | < {goal['single_p50_ms']:g} ms |",
        f"| one row, p90 | {single['p90_ms']:.2f} ms | {sm['single_p90_ms']} ms | |",
        f"| one row, p99 | {single['p99_ms']:.2f} ms | {sm['single_p99_ms']} ms | "
        f"< {goal['single_p99_ms']:g} ms |",
        f"| {BATCH_ROWS} rows (CSV), mean | {batch['mean_ms']:.1f} ms | "
        f"{sm['batch_581_mean_ms']} ms | < {goal['batch_581_mean_ms']:g} ms |",
        f"| {BATCH_ROWS} rows, p99 | {batch['p99_ms']:.1f} ms | | |",
        f"| 1 sequential client | {single['requests_per_s']:.0f} req/s | | |",
        f"| {conc['clients']} concurrent clients | {conc['requests_per_s']:.0f} req/s "
        f"(p50 {conc['p50_ms']:.1f} ms, p99 {conc['p99_ms']:.1f} ms) | | |",
        f"| concurrency gain | {report['concurrent_gain']:.1f}x | | "
        f">= {goal['concurrency_gain']:g}x |",
        f"| {conc1['clients']} concurrent clients, `--workers 1` | "
        f"{conc1['requests_per_s']:.0f} req/s (p50 {conc1['p50_ms']:.1f} ms, "
        f"p99 {conc1['p99_ms']:.1f} ms) | | |",
        f"| concurrency gain, `--workers 1` | {report['concurrent_1_worker_gain']:.1f}x | | |",
        "", "In-process peers, same run (best of 7, no HTTP):", "",
        "| rows | gpuknn `KNNModel.predict` | scikit-learn brute | gpuknn ÷ scikit-learn |",
        "|---:|---:|---:|---:|",
        *_peer_rows(report["in_process"]),
    ]
    info = report["server_batches"]
    lines += ["", f"One worker of the default server (its `GET /model` counters) ran "
              f"{info['batches']:,} searches for {info['rows_searched']:,} rows. Errors in the "
              f"concurrent phases: {len(conc['errors']) + len(conc1['errors'])}.", ""]
    return "\n".join(lines)


def _peer_rows(peers: dict[str, float]) -> list[str]:
    rows = []
    for size in (1, BATCH_ROWS):
        ours, theirs = peers[f"gpuknn_{size}_ms"], peers[f"sklearn_{size}_ms"]
        rows.append(f"| {size} | {ours:.2f} ms | {theirs:.2f} ms | {theirs / ours:.2f}x faster |")
    return rows
