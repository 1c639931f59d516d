"""What the harness measures for one engine: build time, throughput, latency, recall,
accuracy and peak memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.engines import Engine

BATCH_SIZES = (1, 64, 4096)
THROUGHPUT_BATCH = 4096


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact k neighbours that were found (order ignored)."""
    k = exact.shape[1]
    hits = sum(len(np.intersect1d(f, e)) for f, e in zip(found, exact, strict=True))
    return hits / (k * len(exact))


def vote_accuracy(ids: np.ndarray, y_base: np.ndarray, y_queries: np.ndarray) -> float:
    """Accuracy of the majority vote of the neighbours' labels (ties to the smallest label)."""
    classes, coded = np.unique(y_base, return_inverse=True)
    votes = coded[ids]
    counts = np.zeros((len(ids), len(classes)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(ids)), ids.shape[1]), votes.ravel()), 1)
    return float(np.mean(classes[counts.argmax(axis=1)] == y_queries))


def exact_neighbours(X: np.ndarray, Q: np.ndarray, k: int) -> np.ndarray:
    """Ground truth: gpuknn's exact search (brute force or cluster-pruned, both exact)."""
    from gpuknn.exact import ExactSearch  # noqa: PLC0415

    return ExactSearch(X, "L2").search(Q, k)[1]


class PeakMemory:
    """Peak resident memory of this process while a ``with`` block runs, sampled every
    5 ms from /proc (so faiss's and hnswlib's C++ allocations count too)."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _rss() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * 4096


def search_all(engine: Engine, Q: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate([engine.search(Q[s:s + THROUGHPUT_BATCH], k)
                           for s in range(0, len(Q), THROUGHPUT_BATCH)])


def latency(engine: Engine, Q: np.ndarray, k: int, batch: int, *, budget_s: float,
            rng: np.random.Generator) -> dict[str, float]:
    """p50 and p99 of one call with ``batch`` random queries, within a time budget."""
    batch = min(batch, len(Q))
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start = int(rng.integers(0, len(Q) - batch + 1))
        began = time.perf_counter()
        engine.search(Q[start:start + batch], k)
        times.append(time.perf_counter() - began)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "calls": len(times)}


def measure(engine: Engine, data: Any, k: int, exact: np.ndarray, *,
            budget_s: float) -> dict[str, Any]:
    """Build, search every query, time the batch sizes; everything about one engine."""
    with PeakMemory() as memory:
        began = time.perf_counter()
        engine.build(data.X)
        build_s = time.perf_counter() - began
        if hasattr(engine, "tune"):  # hnswlib: ef to the recall the others reach
            engine.tune(data.Q[:1000], k, exact[:1000], engine.settings.get("target", 0.95),
                        recall_at_k)
        engine.search(data.Q[:min(len(data.Q), 64)], k)  # warm-up
        began = time.perf_counter()
        found = search_all(engine, data.Q, k)
        search_s = time.perf_counter() - began
    rng = np.random.default_rng(0)
    result = {"engine": engine.engine, "index": engine.index, "device": engine.device,
              "settings": dict(engine.settings), "k": k, "build_s": build_s,
              "queries_per_s": len(data.Q) / search_s, "search_s": search_s,
              "recall": recall_at_k(found, exact), "peak_host_mib_added": memory.added_mib,
              "latency": {str(b): latency(engine, data.Q, k, b, budget_s=budget_s, rng=rng)
                          for b in BATCH_SIZES}}
    if data.labelled:
        result["accuracy"] = vote_accuracy(found, data.y, data.y_queries)
    return result
