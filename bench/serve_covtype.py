"""Client-measured latency and throughput of ``gpuknn serve`` on a covtype-shaped model.

Run from the project root with the project's virtual environment::

    python bench/serve_covtype.py            # full: about 2 minutes on a 2-core box
    python bench/serve_covtype.py --quick    # smoke test: 20,000-row model, short runs

The model is SageMaker's covtype endpoint model: 200,000 x 54 rows of
:func:`gpuknn.datasets.synthetic.covtype_like` (the same generator as the training benchmark),
``k=10``, ``faiss.Flat``, L2, classifier, saved as a directory. The server is
``python -m gpuknn.cli serve --model DIR`` in a subprocess on a loopback port, with its
defaults (``--workers auto``: one worker per core here; micro-batching on). Clients are
threads of this process, each with its own keep-alive ``http.client`` connection,
sending ``text/csv`` and accepting ``application/json`` (what the AWS covtype notebook
did). Client and server share the machine's cores.

What is measured
----------------
* ``single``: ``--single`` (2,000) sequential one-row requests: mean, p50, p90, p99.
  SageMaker's figure: ml.c5.xlarge (4 vCPU) mean 15.1 ms, p90 17.2, p99 21.2 ms.
* ``batch``: ``--batches`` (30) sequential requests of 581 rows (the notebook sent
  58,102 test rows in 100 batches): mean, p50, p99. SageMaker: mean 162.5 ms.
* ``concurrent``: 32 clients sending one-row requests for ``--seconds`` (10) s:
  requests/s, p50, p99; and its ratio to the sequential requests/s of ``single``
  (the gain from micro-batching and the workers). Then the same against a second
  server started with ``--workers 1`` (micro-batching alone).
* Peers in the same run, in this process without HTTP: scikit-learn
  ``KNeighborsClassifier(algorithm="brute")`` and gpuknn's own ``KNNModel.predict``,
  one row and 581 rows (best of repeated calls), so the server's overhead over the
  engine, and the engine against scikit-learn, are visible.

Every answer of the ``batch`` requests is checked equal to ``KNNModel.predict``.
Results go to ``bench/results/serve_covtype[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine  # bench/_machine.py, beside this script

from gpuknn import KNN, KNNModel
from gpuknn.datasets.synthetic import covtype_like

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SAGEMAKER_C5 = {"single_mean_ms": 15.1, "single_p90_ms": 17.2, "single_p99_ms": 21.2,
                "batch_581_mean_ms": 162.5}
TARGETS = {"single_p50_ms": 5.0, "single_p99_ms": 15.0, "batch_581_mean_ms": 100.0,
           "concurrency_gain": 4.0}
BATCH_ROWS = 581
CLIENTS = 32


def main(argv: list[str] | None = None) -> int:
    args = _with_defaults(_parser().parse_args(argv))
    n_model = 20_000 if args.quick else 200_000
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
                  "settings": vars(args), "sagemaker_c5_xlarge": SAGEMAKER_C5,
                  "targets": TARGETS}
        report["in_process"] = in_process_peers(model, base, labels, queries)
        with Server(model_dir, Path(scratch) / "serve.log") as server:
            report["single"] = sequential(server.port, queries, 1, args.single)
            report["batch"] = sequential(server.port, queries, BATCH_ROWS, args.batches,
                                         check=model)
            report["concurrent"] = concurrent(server.port, queries, CLIENTS, args.seconds)
            report["server_batches"] = server.info()
        with Server(model_dir, Path(scratch) / "serve1.log", workers="1") as server:
            report["concurrent_1_worker"] = concurrent(server.port, queries, CLIENTS,
                                                       args.seconds)
    for key in ("concurrent", "concurrent_1_worker"):
        report[f"{key}_gain"] = (report[key]["requests_per_s"]
                                 / report["single"]["requests_per_s"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "serve_covtype-quick" if args.quick else "serve_covtype"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(report))
    print(render(report))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--single", type=int, default=None, help="one-row requests (2000)")
    parser.add_argument("--batches", type=int, default=None, help="581-row requests (30)")
    parser.add_argument("--seconds", type=float, default=None, help="concurrent phase (10)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    return parser


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    args.single = args.single or (200 if args.quick else 2000)
    args.batches = args.batches or (5 if args.quick else 30)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    return args


class Server:
    """``gpuknn serve`` on a free loopback port, stopped with SIGTERM on exit."""

    def __init__(self, model_dir: Path, log: Path, workers: str = "auto"):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = log
        self.command = [sys.executable, "-m", "gpuknn.cli", "serve", "--model", str(model_dir),
                        "--host", "127.0.0.1", "--port", str(self.port),
                        "--workers", workers]

    def __enter__(self) -> Server:
        self.handle = open(self.log, "wb")
        self.process = subprocess.Popen(self.command, stdout=self.handle,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if Client(self.port).get("/ping") == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def info(self) -> dict[str, Any]:
        client = Client(self.port)
        client.connection.request("GET", "/model")
        return json.loads(client.connection.getresponse().read())

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.handle.close()


class Client:
    """One keep-alive connection."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> int:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        response.read()
        return response.status

    def predict(self, body: bytes) -> tuple[float, bytes]:
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
    return "\n".join(",".join(f"{v:g}" for v in row) for row in rows).encode()


def sequential(port: int, queries: np.ndarray, rows: int, count: int,
               check: KNNModel | None = None) -> dict[str, Any]:
    client = Client(port)
    rng = np.random.default_rng(rows)
    starts = rng.integers(0, len(queries) - rows, size=count + 5)
    bodies = [csv_body(queries[s:s + rows]) for s in starts]
    for body in bodies[:5]:  # warm-up
        client.predict(body)
    latencies = []
    began = time.perf_counter()
    for start, body in zip(starts[5:], bodies[5:], strict=True):
        elapsed, payload = client.predict(body)
        latencies.append(elapsed)
        if check is not None:
            got = [p["predicted_label"] for p in json.loads(payload)["predictions"]]
            if got != check.predict(queries[start:start + rows]).tolist():
                raise AssertionError("server and Python API disagree")
    wall = time.perf_counter() - began
    return {"rows": rows, "requests": count, **summary(latencies),
            "requests_per_s": count / wall}


def concurrent(port: int, queries: np.ndarray, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    errors: list[str] = []

    def run(number: int) -> None:
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

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    flat = [value for values in latencies for value in values]
    return {"clients": clients, "seconds": wall, "errors": errors, **summary(flat),
            "requests_per_s": len(flat) / wall}


def summary(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {"count": len(ms), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99))}


def in_process_peers(model: KNNModel, base: np.ndarray, labels: np.ndarray,
                     queries: np.ndarray) -> dict[str, Any]:
    from sklearn.neighbors import KNeighborsClassifier

    sklearn = KNeighborsClassifier(n_neighbors=10, algorithm="brute").fit(base, labels)
    out = {}
    for rows in (1, BATCH_ROWS):
        batch = queries[:rows]
        out[f"gpuknn_{rows}_ms"] = best_ms(lambda b=batch: model.predict(b))
        out[f"sklearn_{rows}_ms"] = best_ms(lambda b=batch: sklearn.predict(b))
    return out


def best_ms(function, repeats: int = 7) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def render(report: dict[str, Any]) -> str:
    single, batch, conc = report["single"], report["batch"], report["concurrent"]
    conc1 = report["concurrent_1_worker"]
    peers, sm = report["in_process"], report["sagemaker_c5_xlarge"]
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
        f"| one row, p50 | {single['p50_ms']:.2f} ms | | < 5 ms |",
        f"| one row, p90 | {single['p90_ms']:.2f} ms | {sm['single_p90_ms']} ms | |",
        f"| one row, p99 | {single['p99_ms']:.2f} ms | {sm['single_p99_ms']} ms | < 15 ms |",
        f"| 581 rows (CSV), mean | {batch['mean_ms']:.1f} ms | {sm['batch_581_mean_ms']} ms "
        "| < 100 ms |",
        f"| 581 rows, p99 | {batch['p99_ms']:.1f} ms | | |",
        f"| 1 sequential client | {single['requests_per_s']:.0f} req/s | | |",
        f"| {conc['clients']} concurrent clients | {conc['requests_per_s']:.0f} req/s "
        f"(p50 {conc['p50_ms']:.1f} ms, p99 {conc['p99_ms']:.1f} ms) | | |",
        f"| concurrency gain | {report['concurrent_gain']:.1f}x | | >= 4x |",
        f"| {conc1['clients']} concurrent clients, `--workers 1` | "
        f"{conc1['requests_per_s']:.0f} req/s (p50 {conc1['p50_ms']:.1f} ms, "
        f"p99 {conc1['p99_ms']:.1f} ms) | | |",
        f"| concurrency gain, `--workers 1` | {report['concurrent_1_worker_gain']:.1f}x | | |",
        "", "In-process peers, same run (best of 7, no HTTP):", "",
        "| rows | gpuknn `KNNModel.predict` | scikit-learn brute | gpuknn ÷ scikit-learn |",
        "|---:|---:|---:|---:|",
    ]
    for rows in (1, BATCH_ROWS):
        ours, theirs = peers[f"gpuknn_{rows}_ms"], peers[f"sklearn_{rows}_ms"]
        lines.append(f"| {rows} | {ours:.2f} ms | {theirs:.2f} ms | {theirs / ours:.2f}x faster |")
    info = report["server_batches"]
    lines += ["", f"One worker of the default server (its `GET /model` counters) ran "
              f"{info['batches']:,} searches for {info['rows_searched']:,} rows. Errors in the "
              f"concurrent phases: {len(conc['errors']) + len(conc1['errors'])}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
