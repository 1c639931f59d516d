"""What the data-layer read benchmark (:mod:`gpuknn.benchmark.io_compare`) checks beside its
timings: gpuknn's writer against the SDK's bytes, every reader's arrays against the
written ones, and a cProfile summary of one gpuknn ``read``.

The checks take the workload and the SDK's functions as arguments, so they run (and are
tested) without the SDK; a check that cannot run says why instead of a result.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpuknn.datasets.synthetic import GAUSSIAN_SEED
from gpuknn.io import iter_batches, read, write_recordio


def check_writer(write_dense: Callable[..., Any] | None,
                 missing: str | None = None) -> dict[str, Any]:
    """gpuknn's ``write_recordio`` against the SDK's ``write_numpy_to_dense_tensor``, bytewise.

    Parameters
    ----------
    write_dense : callable or None
        The SDK's ``write_numpy_to_dense_tensor(file, X, y)``; None when it is missing.
    missing : str, optional
        Why the SDK is missing, reported as ``{"skipped": missing}``.

    Returns
    -------
    dict
        ``byte_identical`` (all cases) and ``cases`` (50 x 7 float32 and float64, with and
        without labels), or ``skipped``.
    """
    if write_dense is None:
        return {"skipped": missing or "no SDK writer"}
    rng = np.random.default_rng([GAUSSIAN_SEED, 99])
    cases = {}
    for dtype in (np.float32, np.float64):
        X = rng.standard_normal((50, 7)).astype(dtype)
        for labelled in (True, False):
            y = rng.integers(0, 5, 50).astype(dtype) if labelled else None
            ours, theirs = io.BytesIO(), io.BytesIO()
            write_recordio(ours, X, labels=y)
            write_dense(theirs, X, y)
            name = f"50x7 {np.dtype(dtype).name}, {'with' if labelled else 'no'} labels"
            cases[name] = ours.getvalue() == theirs.getvalue()
    return {"byte_identical": all(cases.values()), "cases": cases}


def same_arrays(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Equal shape, dtype and values (two Nones are the same; one None is not)."""
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def check_recordio(w: Any, batch_size: int,
                   sdk_read: Callable[[Path, str, str | None], tuple] | None,
                   missing: str | None = None) -> None:
    """gpuknn's ``read``, ``iter_batches`` and prefix ``read`` (and the SDK) against the data.

    Parameters
    ----------
    w : gpuknn.benchmark.io_compare.Workload
        A RecordIO workload; the results go into ``w.checks``.
    batch_size : int
        Of ``iter_batches``.
    sdk_read : callable or None
        ``sdk_read(path, tensor, label_tensor) -> (X, y)``; None skips the SDK's check.
    missing : str, optional
        Why the SDK is missing (the skipped check says so).
    """
    X_exp, y_exp = w.expected
    X, y = read(w.path)
    batches = list(iter_batches(w.path, batch_size=batch_size))
    Xb = np.concatenate([b for b, _ in batches])
    yb = None if batches[0][1] is None else np.concatenate([b for _, b in batches])
    Xp, yp = read(w.prefix_path)
    m = w.prefix_records
    w.checks.update({
        "gpuknn_read_equals_written": same_arrays(X, X_exp) and same_arrays(y, y_exp),
        "gpuknn_iter_batches_equals_read": same_arrays(Xb, X) and same_arrays(yb, y),
        "iter_batches_sizes": sorted({b.shape[0] for b, _ in batches}),
        "gpuknn_read_prefix_equals_written": same_arrays(Xp, X_exp[:m])
        and same_arrays(yp, None if y_exp is None else y_exp[:m]),
    })
    if sdk_read is None:
        w.checks["sdk_equals_gpuknn"] = f"skipped: {missing}"
    else:
        Xs, ys = sdk_read(w.prefix_path, w.sdk_tensor, w.sdk_label_tensor)
        w.checks["sdk_equals_gpuknn"] = same_arrays(Xs, Xp) and same_arrays(ys, yp)


def check_csv(w: Any) -> None:
    """gpuknn's CSV ``read`` and pandas against ``np.loadtxt`` and the written data.

    Parameters
    ----------
    w : gpuknn.benchmark.io_compare.Workload
        A CSV workload; the results go into ``w.checks``.
    """
    X_exp, y_exp = w.expected
    X, y = read(w.path, "text/csv")
    table = np.loadtxt(w.path, delimiter=",", dtype=np.float32)
    frame = pd.read_csv(w.path, header=None, dtype=np.float32).to_numpy()
    w.checks.update({
        "gpuknn_equals_loadtxt": same_arrays(X, np.ascontiguousarray(table[:, 1:]))
        and same_arrays(y, np.ascontiguousarray(table[:, 0])),
        "pandas_equals_loadtxt": same_arrays(frame, table),
        # %.7g keeps 7 significant digits: float32 values need not survive it exactly
        "gpuknn_max_abs_diff_vs_written": float(np.abs(X - X_exp).max()),
        "gpuknn_labels_equal_written": same_arrays(y, y_exp),
    })


def profile_read(w: Any, top: int = 10) -> list[dict[str, Any]]:
    """cProfile of one gpuknn ``read`` of the whole file: the top functions by own time.

    Returns
    -------
    list of dict
        ``{"total_s": ...}`` first, then up to ``top`` entries (``function``, ``calls``,
        ``own_s``, ``cumulative_s``, ``own_share``), the largest own time first.
    """
    content_type = "text/csv" if w.kind == "csv" else "application/x-recordio-protobuf"
    profiler = cProfile.Profile()
    profiler.enable()
    result = read(w.path, content_type)
    profiler.disable()
    del result
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    entries = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        where = function if filename == "~" else f"{short_path(filename)}:{line}({function})"
        entries.append({"function": where, "calls": calls, "own_s": own,
                        "cumulative_s": cumulative, "own_share": own / total if total else 0})
    entries.sort(key=lambda e: -e["own_s"])
    return [{"total_s": total}, *entries[:top]]


def short_path(filename: str) -> str:
    """A source path from its package down (``gpuknn/io/recordio.py``), else its name."""
    parts = Path(filename).parts
    for anchor in ("gpuknn", "pandas", "numpy"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) - 1:])
    return Path(filename).name
