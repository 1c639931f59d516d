"""What gpuknn does around faiss's IVF search, with faiss taken out, and whether its answer
is faiss's own.

:func:`added_work` replaces a model's faiss index by a replay of its own results and
times what remains: gpuknn's code alone. :func:`same_results` checks that
``kneighbors`` returns faiss's answer in gpuknn's convention (ties at the k-th place to
the smaller id). Both serve :mod:`gpuknn.benchmark.ivf_overhead`.
"""

from __future__ import annotations

import copy
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

K = 10
# The replay's answers are this many times k wide (gpuknn asks k + 1, then 4 (k + 1) + 8
# for rows tied at the k-th place).
REPLAY_WIDTH = 8
# Extra neighbours asked of faiss to see the rows tied at the k-th place.
TIE_WINDOW = 64


class _Replay:
    """Stands in for a faiss IVF index: ``search`` returns copies of results computed
    once, so that timing gpuknn over it times gpuknn's own work and nothing of faiss's.
    They are :data:`REPLAY_WIDTH` times k neighbours wide, so that the wider asks of
    gpuknn's tie handling get faiss's answer for that width (sliced from the wide one:
    faiss's heaps keep the same best rows, and may differ only among rows tied at the
    last place)."""

    def __init__(self, index: Any, prepared: np.ndarray, k: int, nprobe: int):
        from gpuknn.search.faiss_index import require_faiss  # noqa: PLC0415

        self.nlist, self.ntotal, self.d = index.nlist, index.ntotal, index.d
        params = require_faiss().SearchParametersIVF(nprobe=nprobe)
        width = min(REPLAY_WIDTH * k, index.ntotal)
        self.distances, self.positions = index.search(prepared, width, params=params)

    def search(self, queries: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray,
                                                                               np.ndarray]:
        rows = len(queries)
        return self.distances[:rows, :k].copy(), self.positions[:rows, :k].copy()


def added_work(model: Any, queries: np.ndarray, *, k: int = K, repeat: int = 7
               ) -> dict[str, float]:
    """Microseconds gpuknn spends around faiss's search, with faiss taken out.

    ``model.kneighbors`` and ``model.index.search`` run on copies of the model whose faiss
    index is a :class:`_Replay` of its own results; the replay's own time (the copies) is
    subtracted. Deterministic work, so the minimum over ``repeat`` timings is reported.

    Returns
    -------
    dict
        ``kneighbors_batch_us``, ``ivfsearch_batch_us`` (one call on all ``queries``),
        ``kneighbors_row_us``, ``ivfsearch_row_us`` (one call on one row).
    """
    prepared = model.preparation.apply(queries, xp=np)
    replay = _Replay(model.index.index, prepared, k, model.index.nprobe)
    search = copy.copy(model.index)
    search.index = replay
    replayed = copy.copy(model)
    replayed.index = search
    row, prepared_row = queries[:1], prepared[:1]

    def best(call: Callable[[], Any], number: int) -> float:
        return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6

    batch_base = best(lambda: replay.search(prepared, k), 20)
    row_base = best(lambda: replay.search(prepared_row, k), 2000)
    return {
        "kneighbors_batch_us": best(lambda: replayed.kneighbors(queries, k), 20) - batch_base,
        "ivfsearch_batch_us": best(lambda: search.search(prepared, k), 20) - batch_base,
        "kneighbors_row_us": best(lambda: replayed.kneighbors(row, k), 2000) - row_base,
        "ivfsearch_row_us": best(lambda: search.search(prepared_row, k), 2000) - row_base,
    }


def same_results(model: Any, queries: np.ndarray, k: int = K) -> dict[str, Any]:
    """Whether ``model.kneighbors`` returns faiss's own answer, in gpuknn's convention.

    Compared on the rows where faiss's ``nprobe`` lists hold ``k`` vectors (gpuknn searches
    the others again over every list, on purpose): ids are ``model.ids`` of faiss's
    positions, distances faiss's own (square-rooted for L2), bit for bit. gpuknn breaks
    ties at the k-th place by the smaller id, where faiss keeps any of the tied rows: faiss
    is asked for ``k + TIE_WINDOW`` and its answer sorted by (distance, id); rows whose
    ties run past that window are left out (``tied_rows`` counts them).
    """
    search = model.index
    prepared = model.preparation.apply(queries, xp=np)
    from gpuknn.search.faiss_index import require_faiss  # noqa: PLC0415

    params = require_faiss().SearchParametersIVF(nprobe=search.nprobe)
    wide = min(k + TIE_WINDOW, search.ntotal)
    raw_d, raw_p = search.index.search(prepared, wide, params=params)
    ranking = raw_d if search.metric == "L2" else -raw_d
    order = np.lexsort((raw_p, ranking), axis=1)[:, :k]
    kth = np.take_along_axis(ranking, order[:, -1:], axis=1)[:, 0]
    raw_d = np.take_along_axis(raw_d, order, axis=1)
    raw_p = np.take_along_axis(raw_p, order, axis=1)
    distances, ids = model.kneighbors(queries, k)
    full = ~(raw_p == -1).any(axis=1)
    beyond = (ranking[:, -1] == kth) & full if wide > k else np.zeros(len(full), bool)
    checked = full & ~beyond
    if search.metric == "L2":
        raw_d = np.sqrt(np.maximum(raw_d, 0))
    return {"short_rows": int((~full).sum()), "tied_rows": int(beyond.sum()),
            "identical": bool(np.array_equal(ids[checked], model.ids[raw_p[checked]])
                              and np.array_equal(distances[checked], raw_d[checked]))}
