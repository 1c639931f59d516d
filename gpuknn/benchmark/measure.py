"""What the harness measures: build time, throughput, latency, recall, accuracy and
memory (the peak, and with ``--memory`` what the built engine holds), for every engine of
a run.

Throughput is the number a reader compares, so it is timed with care:

- every engine is built first, then timed in **rounds**: each round times every engine
  once, in a fresh random order, after a short pause that lets the previous engine's
  thread pools go idle;
- one timed **sample** repeats the whole query set enough times to last at least
  :data:`SAMPLE_SECONDS` (one pass of a small set lasts milliseconds: too short to time);
- rounds go on until every engine has been timed for at least ``min_time_s`` in all,
  and at least :data:`MIN_ROUNDS` times;
- the result is the **median** over samples with its interquartile range, and a
  peer's ratio to gpuknn is the median of the per-round ratios (both measured within
  seconds of each other, so a machine that slows down mid-run cancels out).

:func:`interleaved` times any operations the same way, in rounds of a fresh random
order (the load time, shard and multi-model harnesses use it).
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.engines import Engine

BATCH_SIZES = (1, 64, 4096)
THROUGHPUT_BATCH = 4096
SAMPLE_SECONDS = 0.05
MIN_ROUNDS = 5
MAX_ROUNDS = 200
SETTLE_SECONDS = 0.02
# A spread (interquartile range over the median) above this is flagged in the table.
WIDE_SPREAD = 0.10
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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
    from gpuknn.search.exact import ExactSearch  # noqa: PLC0415

    return ExactSearch(X, "L2").search(Q, k)[1]


# How often PeakMemory samples the resident memory.
SAMPLE_PERIOD_S = 0.005


class PeakMemory:
    """Resident memory of this process over a ``with`` block: where it started, its peak
    (sampled every 5 ms from /proc, so faiss's and hnswlib's C++ allocations count too)
    and where it ended, which is what the block still holds.

    Parameters
    ----------
    collect : bool
        Collect garbage before reading the memory at exit, so that :attr:`held_bytes`
        counts what is still referenced, not garbage waiting for the collector.

    Attributes
    ----------
    start, peak, end : int
        Resident bytes on entry, at the highest sample (the exit included) and on exit.
    samples : int
        Samples taken so far.
    """

    def __init__(self, collect: bool = False):
        self.collect = collect
        self.start = self.peak = self.end = 0
        self.samples = 0
        self._sampled = threading.Condition()

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.end = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_PERIOD_S):
            self.peak = max(self.peak, resident_bytes())
            with self._sampled:
                self.samples += 1
                self._sampled.notify_all()

    def wait_for_samples(self, count: int = 2, timeout_s: float = 60.0) -> None:
        """Block until the sampler has taken ``count`` more samples: with the default 2,
        at least one of them began after this call, and saw what is resident now.

        Raises
        ------
        TimeoutError
            When the sampler has not done so within ``timeout_s`` (a hang guard).
        """
        with self._sampled:
            target = self.samples + count
            if not self._sampled.wait_for(lambda: self.samples >= target, timeout_s):
                raise TimeoutError(f"the memory sampler took no {count} samples in "
                                   f"{timeout_s} s")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())
        if self.collect:
            gc.collect()
        self.end = resident_bytes()
        # The collector itself may touch a fresh page: what is held was resident, so the
        # peak is never below the end.
        self.peak = max(self.peak, self.end)

    @property
    def added_bytes(self) -> int:
        """Peak over start: the most the block added at any one time."""
        return self.peak - self.start

    @property
    def held_bytes(self) -> int:
        """End over start: what the block added and still holds (may be negative)."""
        return self.end - self.start

    @property
    def added_mib(self) -> float:
        return self.added_bytes / 2**20


def resident_bytes() -> int:
    """This process's resident set size from /proc/self/statm (0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * _PAGE_BYTES


def memory_ratios(memory: PeakMemory, raw_bytes: int) -> dict[str, float]:
    """What a build held and its peak, in bytes and as ratios to the raw vectors' bytes.

    Parameters
    ----------
    memory : PeakMemory
        The measurement of the build alone (exited).
    raw_bytes : int
        ``X.nbytes`` of the base rows (float32: n_base * dim * 4).

    Returns
    -------
    dict
        ``raw_bytes``, ``held_bytes``, ``peak_bytes`` (peak over the start),
        ``held_ratio`` and ``peak_ratio`` (those over ``raw_bytes``).
    """
    raw = max(int(raw_bytes), 1)
    return {"raw_bytes": int(raw_bytes), "held_bytes": memory.held_bytes,
            "peak_bytes": memory.added_bytes, "held_ratio": memory.held_bytes / raw,
            "peak_ratio": memory.added_bytes / raw}


def search_all(engine: Engine, Q: np.ndarray, k: int) -> np.ndarray:
    return np.concatenate([engine.search(Q[s:s + THROUGHPUT_BATCH], k)
                           for s in range(0, len(Q), THROUGHPUT_BATCH)])


def build(engine: Engine, data: Any, k: int, exact: np.ndarray, *,
          memory: bool = False) -> dict[str, Any]:
    """Build one engine and search every query once: build time, recall, accuracy and the
    memory it added (the throughput comes later, from :func:`interleaved_throughput`).

    Parameters
    ----------
    memory : bool
        Also report the build's own memory under ``"memory"`` (:func:`memory_ratios`):
        what the built engine holds once the build is over (garbage collected) and the
        peak during the build, over ``data.X.nbytes``.
    """
    building = PeakMemory(collect=memory)
    with PeakMemory() as whole:
        with building:
            began = time.perf_counter()
            engine.build(data.X)
            build_s = time.perf_counter() - began
        if hasattr(engine, "tune"):  # hnswlib: ef to the recall the others reach
            engine.tune(data.Q[:1000], k, exact[:1000], engine.settings.get("target", 0.95),
                        recall_at_k)
        found = search_all(engine, data.Q, k)
    result = {"engine": engine.engine, "index": engine.index, "device": engine.device,
              "settings": dict(engine.settings), "k": k, "build_s": build_s,
              "recall": recall_at_k(found, exact), "peak_host_mib_added": whole.added_mib}
    if memory:
        result["memory"] = memory_ratios(building, data.X.nbytes)
    if data.labelled:
        result["accuracy"] = vote_accuracy(found, data.y, data.y_queries)
    return result


def interleaved_throughput(engines: Sequence[Engine], Q: np.ndarray, k: int, *,
                           min_time_s: float, seed: int = 0,
                           progress: Any = None) -> list[list[float]]:
    """Queries per second of every engine, one sample per round, rounds interleaved.

    Returns
    -------
    list of list of float
        For each engine, in order, its queries/s in every round (round ``r`` of every
        engine was timed within the same few seconds).
    """
    passes = [_passes_per_sample(engine, Q, k) for engine in engines]
    samples: list[list[float]] = [[] for _ in engines]
    spent = [0.0] * len(engines)
    order = np.random.default_rng(seed)
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or min(spent) < min_time_s):
        for i in order.permutation(len(engines)):
            seconds = _timed(engines[i], Q, k, passes[i])
            samples[i].append(passes[i] * len(Q) / seconds)
            spent[i] += seconds
        rounds += 1
        if progress is not None:
            progress(rounds, min(spent) / min_time_s)
    return samples


def _passes_per_sample(engine: Engine, Q: np.ndarray, k: int) -> int:
    """Passes over the query set that make a sample last SAMPLE_SECONDS (a warm pass first)."""
    search_all(engine, Q, k)
    began = time.perf_counter()
    search_all(engine, Q, k)
    return max(1, math.ceil(SAMPLE_SECONDS / max(time.perf_counter() - began, 1e-9)))


def _timed(engine: Engine, Q: np.ndarray, k: int, passes: int) -> float:
    """Seconds for ``passes`` searches of the whole set, after the machine settles."""
    gc.collect()
    time.sleep(SETTLE_SECONDS)  # the previous engine's thread pools go back to sleep
    began = time.perf_counter()
    for _ in range(passes):
        search_all(engine, Q, k)
    return time.perf_counter() - began


def interleaved(operations: dict[str, Callable[[], Any]], rounds: int,
                seed: int | Sequence[int], *, settle_s: float = 0.0) -> dict[str, list[Any]]:
    """Each operation's results over ``rounds`` rounds, in a fresh random order each round.

    Parameters
    ----------
    operations : dict of str to callable
        What to call, by name; each call's return value (a time, say) is its sample.
    rounds : int
        How many times every operation is called.
    seed : int or sequence of int
        Seed of the orders (anything ``numpy.random.default_rng`` takes).
    settle_s : float
        Seconds to sleep before every call, after ``gc.collect()``: BLAS and OpenMP
        worker threads spin for a while after a call and would otherwise steal a core
        from the next one. 0 (the default) sleeps not at all.

    Returns
    -------
    dict of str to list
        Each operation's return values, one per round, in round order.
    """
    names = list(operations)
    order = np.random.default_rng(seed)
    samples: dict[str, list[Any]] = {name: [] for name in names}
    for _ in range(rounds):
        for i in order.permutation(len(names)):
            gc.collect()
            if settle_s > 0:
                time.sleep(settle_s)
            samples[names[i]].append(operations[names[i]]())
    return samples


def timer(call: Callable[[], Any]) -> Callable[[], float]:
    """``call`` as an operation for :func:`interleaved`: it returns its wall seconds."""
    def timed() -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started
    return timed


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and relative spread ((q3 - q1) / median) of some samples."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3),
            "spread": float((q3 - q1) / median) if median else 0.0, "samples": len(values)}


def paired_ratio(mine: Sequence[float], theirs: Sequence[float]) -> dict[str, float]:
    """gpuknn's throughput over a peer's, round by round: the median and its spread."""
    return summary([a / b for a, b in zip(mine, theirs, strict=True)])


def batch_sizes(n_queries: int) -> list[int]:
    """The latency batch sizes that can run on ``n_queries`` rows (the largest capped)."""
    return sorted({min(size, n_queries) for size in BATCH_SIZES})


def latency(engine: Engine, Q: np.ndarray, k: int, batch: int, *, budget_s: float,
            rng: np.random.Generator) -> dict[str, float]:
    """p50 and p99 of one call with ``batch`` consecutive queries, within a time budget."""
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


def latencies(engine: Engine, Q: np.ndarray, k: int, *, budget_s: float) -> dict[str, dict]:
    """:func:`latency` for every batch size that fits the query set, keyed by that size."""
    rng = np.random.default_rng(0)
    return {str(size): latency(engine, Q, k, size, budget_s=budget_s, rng=rng)
            for size in batch_sizes(len(Q))}
