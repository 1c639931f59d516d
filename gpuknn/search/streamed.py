"""Exact search over a base larger than the GPU: the base streamed through it.

The base stays in host memory, cut into segments that fit the GPU. A search copies each
segment to the device and searches it there (an :class:`~gpuknn.search.exact.ExactSearch`
over the segment, with its centre, norms and rounding bound computed once, on the host,
when the search is made), and merges every segment's best by (score, row), as a sharded
search merges its shards: the answer is the one a GPU holding the whole base gives.

Copies overlap the search (double buffering): while segment ``i`` is searched, a helper
thread copies segment ``i + 1`` into one of two pinned host buffers and starts its
transfer to one of two device buffers on a stream of its own; the search of ``i + 1``
waits on that transfer's event. Every search moves the whole base over the bus, so it
pays when the queries are many: each batch costs at least the base's bytes over the
host-to-device bandwidth, which the log line says when the search is made.

On the CPU (``xp`` numpy) the segments are views and nothing is copied, so the same code
runs in CI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn.metrics import MISSING_INDEX, from_scores
from gpuknn.search.base import RowsOfVectors, SearchBase
from gpuknn.search.exact import ExactSearch
from gpuknn.search.topk import merge_with_missing

log = logging.getLogger(__name__)

# The host-to-device bandwidth the log line prices a search at (PCIe 3 x16, as on p3).
ASSUMED_BUS_BYTES_PER_S = 12e9


class StreamedSearch(RowsOfVectors):
    """Exact search of host-resident vectors, a segment at a time on ``xp``'s device.

    Parameters
    ----------
    vectors : ndarray of shape (n, d), float32
        The base on the host (a model file's map is fine), in row order.
    metric : {"L2", "INNER_PRODUCT", "COSINE"}
    xp : module
        ``cupy`` (or ``numpy``: the same search, without copies).
    segment_rows : int
        Rows per segment: two segments, their norms and one search's working memory
        must fit the device (:func:`gpuknn.search.placement.segment_rows`).
    device : int, optional
        The GPU (default: the current one).
    """

    def __init__(self, vectors: np.ndarray, metric: str, *, xp: ModuleType,
                 segment_rows: int, device: int | None = None):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.metric, self.xp, self.gpu = metric, xp, device
        n_rows = self.vectors.shape[0]
        step = max(1, int(segment_rows))
        self.segments = [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]
        # each segment's centre, norms and bound, once, on the host
        self._stored = [SearchBase(self.vectors[start:stop], metric).to_arrays()
                        for start, stop in self.segments]
        self._copier = ThreadPoolExecutor(1, thread_name_prefix="gpuknn-stream")
        base_bytes = self.vectors.nbytes
        log.info("exact search streams its %.2f GiB base from host memory through %s in %d "
                 "segments of up to %d rows: each search copies the whole base, at least "
                 "%.2f s at %.0f GB/s", base_bytes / 2**30,
                 "the CPU" if xp is np else f"GPU {device if device is not None else 0}",
                 len(self.segments), step, base_bytes / ASSUMED_BUS_BYTES_PER_S,
                 ASSUMED_BUS_BYTES_PER_S / 1e9)

    @property
    def device(self) -> str:
        """``"gpu"`` when segments are searched on a GPU."""
        return "cpu" if self.xp is np else "gpu"

    def example_vector(self) -> np.ndarray:
        """The first row, (dim,) float32."""
        return self.vectors[0].copy()

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows, as :meth:`ExactSearch.search` answers (host arrays)."""
        scores, rows = self.ranked(queries, k)
        return from_scores(scores, self.metric), rows

    def ranked(self, queries: Any, k: int, *, nprobe: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Every segment's best by (score, row), merged: (n, k) host scores and rows
        (``nprobe`` is unused)."""
        xp = self.xp
        queries = _backend.to_device(queries, xp, dtype=xp.float32)
        best = None
        for number, start, stop, segment in self._on_device():
            search = ExactSearch(segment, self.metric, xp=xp, partition="never",
                                 stored=self._stored[number])
            found, at = search.ranked(queries, min(k, stop - start))
            part = _padded(_backend.to_host(found), _backend.to_host(at) + start, k)
            best = part if best is None else merge_with_missing(
                np.concatenate([best[0], part[0]], axis=1),
                np.concatenate([best[1], part[1]], axis=1), k)
        return best

    def _on_device(self) -> Iterator[tuple[int, int, int, Any]]:
        """(number, start, stop, the segment's rows on the device), each copied while the
        one before is searched."""
        if self.xp is np:
            for number, (start, stop) in enumerate(self.segments):
                yield number, start, stop, self.vectors[start:stop]
            return
        buffers = _DoubleBuffer(self.xp, max(b - a for a, b in self.segments), self.dim,
                                self.gpu)
        pending = self._copier.submit(buffers.fill, 0, self.vectors[slice(*self.segments[0])])
        for number, (start, stop) in enumerate(self.segments):
            ready = pending.result()
            if number + 1 < len(self.segments):
                after = self.segments[number + 1]
                pending = self._copier.submit(buffers.fill, number + 1,
                                              self.vectors[after[0]:after[1]])
            yield number, start, stop, buffers.take(number, ready, stop - start)

    def close(self) -> None:
        """Stop the copying thread."""
        self._copier.shutdown(wait=True)


class _DoubleBuffer:
    """Two pinned host buffers and two device buffers of one segment each, and the stream
    that copies between them (CuPy through the ``xp`` handle)."""

    def __init__(self, xp: ModuleType, rows: int, dim: int, device: int | None):
        self.xp, self.device = xp, device
        with _backend.on_device(device):
            self.stream = xp.cuda.Stream(non_blocking=True)
            self.device_rows = [xp.empty((rows, dim), dtype=xp.float32) for _ in range(2)]
        nbytes = rows * dim * 4
        self._pinned = [xp.cuda.alloc_pinned_memory(nbytes) for _ in range(2)]
        self.host_rows = [np.frombuffer(memory, np.float32, rows * dim).reshape(rows, dim)
                          for memory in self._pinned]

    def fill(self, number: int, rows: np.ndarray) -> Any:
        """Copy ``rows`` into slot ``number % 2`` (host, then an asynchronous transfer);
        the transfer's event."""
        slot, count = number % 2, len(rows)
        np.copyto(self.host_rows[slot][:count], rows)
        with _backend.on_device(self.device):
            self.device_rows[slot][:count].set(self.host_rows[slot][:count],
                                               stream=self.stream)
            return self.stream.record()

    def take(self, number: int, ready: Any, count: int) -> Any:
        """Slot ``number % 2``'s first ``count`` rows, once its transfer is done."""
        with _backend.on_device(self.device):
            self.xp.cuda.get_current_stream().wait_event(ready)
        return self.device_rows[number % 2][:count]


def _padded(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) arrays: ``scores`` and ``rows`` followed by missing neighbours."""
    if scores.shape[1] == k:
        return scores, rows
    width = k - scores.shape[1]
    return (np.hstack([scores, np.full((len(scores), width), np.inf, np.float32)]),
            np.hstack([rows, np.full((len(rows), width), MISSING_INDEX, np.int64)]))
