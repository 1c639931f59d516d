"""Read throughput of gpuknn's data layer against the SageMaker SDK, numpy and pandas.

Run from the project root, ideally with a Python that has both gpuknn and the
SageMaker Python SDK v2 (so that both are measured in the same run)::

    python bench/io_compare.py              # full: about 1-2 minutes on a 2-core box
    python bench/io_compare.py --quick      # smoke test, well under 30 s

Without an importable ``sagemaker`` the script still runs: the SDK rows, the
gpuknn/SDK ratios and the writer check are reported as skipped.

Workloads (generated from fixed seeds into a temporary directory)
-----------------------------------------------------------------
RecordIO-protobuf files written by :func:`gpuknn.io.write_recordio`, which writes
the same bytes as the SDK's ``write_numpy_to_dense_tensor`` (checked here on
small float32 and float64 cases, with and without labels, when the SDK is present):

* ``dense-f32-100k-d128``: 100,000 x 128 Gaussian float32, float32 labels 0-9;
* ``dense-f64-100k-d128``: 100,000 x 128 Gaussian float64, no labels;
* ``covtype-f64-500k-d54``: 500,000 x 54 covtype-shaped rows (10 integer columns in
  the UCI covtype ranges, a one-hot of 4 and a one-hot of 40), float64 features and
  float64 labels 1-7, as the AWS covtype k-NN sample wrote them.

CSV (label first, ``np.savetxt(fmt="%.7g", delimiter=",")``):

* ``covtype-csv-500k-c55``: the covtype-shaped table above, 500,000 x 55 (short,
  mostly one-character fields);
* ``gauss-csv-100k-c129``: the float32 Gaussian set above with its label, 100,000 x 129
  (long, 8-14 character fields).

What is timed
-------------
RecordIO, per workload:

* gpuknn ``read(path)`` (the whole file to one float32 ndarray plus labels) and
  ``iter_batches(path, batch_size=5000)`` (streaming; the batches are dropped);
* the SDK: ``read_records(open(path, "rb"))``, then the natural numpy conversion
  ``np.array([r.features["values"].<tensor>.values for r in records], dtype=np.float32)``
  (and the same for ``label["values"]``), where ``<tensor>`` is ``float32_tensor`` or
  ``float64_tensor`` as written. The SDK reads about 20 MB/s, so it is timed on a
  copy of the file's first ``--sdk-records`` records (cut at a record boundary: the
  records have one fixed length, so the file is ``n x stride`` bytes). gpuknn
  ``read`` is timed on that prefix file too, for a same-bytes comparison, and so is
  ``read_records`` without the conversion (not a peer: it shows what the conversion
  costs);
* floors on the whole file: one ``bytearray(data)`` copy of the file's bytes already
  in memory (the memory-bandwidth floor), and ``open(path, "rb").read()`` (the file
  from the page cache).

CSV: gpuknn ``read(path, "text/csv")``, ``np.loadtxt(path, delimiter=",",
dtype=np.float32)`` and ``pandas.read_csv(path, header=None,
dtype=np.float32).to_numpy()``.

Every operation is called once untimed (warm-up, which also leaves every file in the
page cache), then ``--repeats`` rounds each call every operation of the workload
once, in a seeded random order, after ``gc.collect()`` and a ``--settle`` pause. The
headline is the best (smallest) wall time; the median is reported beside it. Ratios
are given as "of best times (median over rounds of the ratio within a round)". MB
are 10^6 bytes of the file as stored. The arrays of every engine are checked equal.

Outputs ``<out>/io_compare.json`` and ``<out>/io_compare.md`` (``io_compare-quick.*``
with ``--quick``) and, for each workload, a cProfile summary of one gpuknn ``read``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _machine import machine  # bench/_machine.py, beside this script
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

import gpuknn
from gpuknn.io import iter_batches, read, write_recordio

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
try:  # the peer; optional so that the script runs in the project's own venv too
    import sagemaker
    from sagemaker.amazon.common import read_records, write_numpy_to_dense_tensor
except ImportError as _err:
    sagemaker = read_records = write_numpy_to_dense_tensor = None
    SDK_MISSING = f"sagemaker is not importable ({_err})"
else:
    SDK_MISSING = None

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SEED = 20240601
ORDER_SEED = 11
BATCH_SIZE = 5000
TARGETS = {"vs_sdk": 30.0, "x_copy_floor": 5.0, "vs_loadtxt": 10.0}
TENSOR = {np.dtype(np.float32): "float32_tensor", np.dtype(np.float64): "float64_tensor"}
# covtype's 10 quantitative columns: (low, high) of each in the UCI file
COVTYPE_RANGES = [(1859, 3858), (0, 360), (0, 66), (0, 1397), (-173, 601), (0, 7117),
                  (0, 254), (0, 254), (0, 254), (0, 7173)]


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------
def gaussian(n: int, d: int, dtype: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``N(0, 1)`` rows of ``dtype`` and labels ``0..9`` of the same dtype."""
    rng = np.random.default_rng([SEED, seed])
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, 10, n).astype(dtype)


def covtype_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Covtype-shaped float64 rows (n, 54) and float64 labels 1-7.

    Ten integer columns uniform in the UCI ranges, a one-hot of 4 (wilderness area)
    and a one-hot of 40 (soil type), as in the UCI covtype file.
    """
    rng = np.random.default_rng([SEED, seed])
    X = np.zeros((n, 54))
    for column, (low, high) in enumerate(COVTYPE_RANGES):
        X[:, column] = rng.integers(low, high + 1, n)
    rows = np.arange(n)
    X[rows, 10 + rng.integers(0, 4, n)] = 1
    X[rows, 14 + rng.integers(0, 40, n)] = 1
    return X, rng.integers(1, 8, n).astype(np.float64)


@dataclass
class Workload:
    """One file and the operations timed on it."""

    name: str
    kind: str  # "recordio" or "csv"
    description: str
    path: Path
    n_records: int
    expected: tuple[np.ndarray, np.ndarray | None]  # float32 X and y as written
    sdk_tensor: str | None = None
    sdk_label_tensor: str | None = None
    prefix_path: Path | None = None
    prefix_records: int = 0
    write_seconds: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size


def make_recordio(name: str, description: str, X: np.ndarray, y: np.ndarray | None,
                  directory: Path, sdk_records: int) -> Workload:
    """Write ``X`` (and ``y``) as RecordIO and a prefix copy of its first records."""
    path = directory / f"{name}.pbr"
    started = time.perf_counter()
    write_recordio(path, X, labels=y)
    seconds = time.perf_counter() - started
    size, n = path.stat().st_size, X.shape[0]
    stride, rest = divmod(size, n)
    data = path.read_bytes()
    heads = np.frombuffer(data, dtype="<u4").reshape(n, stride // 4)[:, :2] if not rest else None
    if rest or stride % 4 or not ((heads[:, 0] == 0xCED7230A).all()
                                  and (heads[:, 1] == heads[0, 1]).all()):
        raise RuntimeError(f"{path}: records are not of one fixed length; cannot cut a prefix")
    prefix_records = min(sdk_records, n)
    prefix_path = directory / f"{name}-first{prefix_records}.pbr"
    prefix_path.write_bytes(data[: prefix_records * stride])
    return Workload(name, "recordio", description, path, n,
                    (X.astype(np.float32), None if y is None else y.astype(np.float32)),
                    sdk_tensor=TENSOR[X.dtype],
                    sdk_label_tensor=None if y is None else TENSOR[y.dtype],
                    prefix_path=prefix_path, prefix_records=prefix_records,
                    write_seconds=seconds,
                    checks={"record_stride_bytes": stride})


def make_csv(name: str, description: str, X: np.ndarray, y: np.ndarray,
             directory: Path) -> Workload:
    """Write ``[y, X]`` with ``np.savetxt(fmt="%.7g", delimiter=",")``."""
    path = directory / f"{name}.csv"
    started = time.perf_counter()
    np.savetxt(path, np.column_stack([y, X]), fmt="%.7g", delimiter=",")
    seconds = time.perf_counter() - started
    return Workload(name, "csv", description, path, X.shape[0],
                    (X.astype(np.float32), y.astype(np.float32)), write_seconds=seconds)


def make_workloads(directory: Path, quick: bool, sdk_records: int) -> list[Workload]:
    scale = 10 if quick else 1
    n_dense, n_cov = 100_000 // scale, 500_000 // scale
    X32, y32 = gaussian(n_dense, 128, np.float32, 1)
    X64, _ = gaussian(n_dense, 128, np.float64, 2)
    Xc, yc = covtype_like(n_cov, 3)
    k = lambda n: f"{n // 1000}k"  # noqa: E731
    return [
        make_recordio(f"dense-f32-{k(n_dense)}-d128",
                      f"{n_dense:,} x 128 Gaussian float32 features, float32 labels 0-9",
                      X32, y32, directory, sdk_records),
        make_recordio(f"dense-f64-{k(n_dense)}-d128",
                      f"{n_dense:,} x 128 Gaussian float64 features, no labels",
                      X64, None, directory, sdk_records),
        make_recordio(f"covtype-f64-{k(n_cov)}-d54",
                      f"{n_cov:,} x 54 covtype-shaped float64 features, float64 labels 1-7",
                      Xc, yc, directory, sdk_records),
        make_csv(f"covtype-csv-{k(n_cov)}-c55",
                 f"the covtype-shaped table, {n_cov:,} x 55 (label first), "
                 "np.savetxt(fmt=\"%.7g\")", Xc, yc, directory),
        make_csv(f"gauss-csv-{k(n_dense)}-c129",
                 f"the float32 Gaussian set with its label, {n_dense:,} x 129 (label first), "
                 "np.savetxt(fmt=\"%.7g\")", X32, y32, directory),
    ]


def check_writer() -> dict[str, Any]:
    """gpuknn's ``write_recordio`` against the SDK's ``write_numpy_to_dense_tensor``, bytewise."""
    if SDK_MISSING:
        return {"skipped": SDK_MISSING}
    rng = np.random.default_rng([SEED, 99])
    cases = {}
    for dtype in (np.float32, np.float64):
        X = rng.standard_normal((50, 7)).astype(dtype)
        for labelled in (True, False):
            y = rng.integers(0, 5, 50).astype(dtype) if labelled else None
            ours, theirs = io.BytesIO(), io.BytesIO()
            write_recordio(ours, X, labels=y)
            write_numpy_to_dense_tensor(theirs, X, y)
            name = f"50x7 {np.dtype(dtype).name}, {'with' if labelled else 'no'} labels"
            cases[name] = ours.getvalue() == theirs.getvalue()
    return {"byte_identical": all(cases.values()), "cases": cases}


# ----------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------
def sdk_read(path: Path, tensor: str, label_tensor: str | None):
    """The SDK's ``read_records`` plus the natural numpy conversion, as a user would write it."""
    with open(path, "rb") as handle:
        records = read_records(handle)
    X = np.array([getattr(r.features["values"], tensor).values for r in records],
                 dtype=np.float32)
    y = None if label_tensor is None else np.array(
        [getattr(r.label["values"], label_tensor).values[0] for r in records], dtype=np.float32)
    return X, y


def sdk_records_only(path: Path) -> list[Any]:
    """The SDK's framing and protobuf parsing alone: how much of its time the ndarray costs."""
    with open(path, "rb") as handle:
        return read_records(handle)


def stream_rows(path: Path) -> int:
    """Consume ``iter_batches`` the way a streaming consumer does; return the row count."""
    return sum(X.shape[0] for X, _ in iter_batches(path, batch_size=BATCH_SIZE))


def read_file(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@dataclass
class Operation:
    key: str
    label: str
    call: Callable[[], Any]
    nbytes: int
    n_records: int
    scope: str
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)


def recordio_operations(w: Workload, data: bytes) -> list[Operation]:
    prefix = w.prefix_path
    prefix_bytes, prefix_scope = prefix.stat().st_size, f"first {w.prefix_records:,} records"
    ops = [
        Operation("gpuknn.read", "gpuknn read(path)", lambda: read(w.path), w.nbytes,
                  w.n_records, "whole file"),
        Operation("gpuknn.iter_batches", f"gpuknn iter_batches(path, batch_size={BATCH_SIZE})",
                  lambda: stream_rows(w.path), w.nbytes, w.n_records, "whole file"),
        Operation("gpuknn.read_prefix", "gpuknn read(path), SDK's prefix", lambda: read(prefix),
                  prefix_bytes, w.prefix_records, prefix_scope),
        Operation("floor.copy", "floor: bytearray(bytes) copy", lambda: bytearray(data),
                  w.nbytes, w.n_records, "whole file, bytes in memory"),
        Operation("floor.read_bytes", "floor: open(path).read()", lambda: read_file(w.path),
                  w.nbytes, w.n_records, "whole file, page cache"),
    ]
    if not SDK_MISSING:
        ops[3:3] = [
            Operation("sdk.read_records", f"SDK read_records + np.array ({w.sdk_tensor})",
                      lambda: sdk_read(prefix, w.sdk_tensor, w.sdk_label_tensor),
                      prefix_bytes, w.prefix_records, prefix_scope),
            Operation("sdk.read_records_only", "SDK read_records alone (no ndarray; not a peer)",
                      lambda: sdk_records_only(prefix), prefix_bytes, w.prefix_records,
                      prefix_scope)]
    return ops


def csv_operations(w: Workload) -> list[Operation]:
    size, n = w.nbytes, w.n_records
    return [
        Operation("gpuknn.read", 'gpuknn read(path, "text/csv")',
                  lambda: read(w.path, "text/csv"), size, n, "whole file"),
        Operation("numpy.loadtxt", "numpy loadtxt(float32)",
                  lambda: np.loadtxt(w.path, delimiter=",", dtype=np.float32), size, n,
                  "whole file"),
        Operation("pandas.read_csv", "pandas read_csv(float32).to_numpy()",
                  lambda: pd.read_csv(w.path, header=None, dtype=np.float32).to_numpy(),
                  size, n, "whole file"),
        Operation("floor.read_bytes", "floor: open(path).read()", lambda: read_file(w.path),
                  size, n, "whole file, page cache"),
    ]


# ----------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------
def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def check_recordio(w: Workload) -> None:
    X_exp, y_exp = w.expected
    X, y = read(w.path)
    batches = list(iter_batches(w.path, batch_size=BATCH_SIZE))
    Xb = np.concatenate([b for b, _ in batches])
    yb = None if batches[0][1] is None else np.concatenate([b for _, b in batches])
    Xp, yp = read(w.prefix_path)
    m = w.prefix_records
    w.checks.update({
        "gpuknn_read_equals_written": _same(X, X_exp) and _same(y, y_exp),
        "gpuknn_iter_batches_equals_read": _same(Xb, X) and _same(yb, y),
        "iter_batches_sizes": sorted({b.shape[0] for b, _ in batches}),
        "gpuknn_read_prefix_equals_written": _same(Xp, X_exp[:m])
        and _same(yp, None if y_exp is None else y_exp[:m]),
    })
    if SDK_MISSING:
        w.checks["sdk_equals_gpuknn"] = f"skipped: {SDK_MISSING}"
    else:
        Xs, ys = sdk_read(w.prefix_path, w.sdk_tensor, w.sdk_label_tensor)
        w.checks["sdk_equals_gpuknn"] = _same(Xs, Xp) and _same(ys, yp)


def check_csv(w: Workload) -> None:
    X_exp, y_exp = w.expected
    X, y = read(w.path, "text/csv")
    table = np.loadtxt(w.path, delimiter=",", dtype=np.float32)
    frame = pd.read_csv(w.path, header=None, dtype=np.float32).to_numpy()
    w.checks.update({
        "gpuknn_equals_loadtxt": _same(X, np.ascontiguousarray(table[:, 1:]))
        and _same(y, np.ascontiguousarray(table[:, 0])),
        "pandas_equals_loadtxt": _same(frame, table),
        # %.7g keeps 7 significant digits: float32 values need not survive it exactly
        "gpuknn_max_abs_diff_vs_written": float(np.abs(X - X_exp).max()),
        "gpuknn_labels_equal_written": _same(y, y_exp),
    })


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------
def time_operations(ops: list[Operation], repeats: int, settle: float, seed: int) -> None:
    """One untimed call each, then ``repeats`` rounds of every operation in a random order."""
    rng = np.random.default_rng([ORDER_SEED, seed])
    for op in ops:
        result = op.call()
        del result
    for _ in range(repeats):
        for index in rng.permutation(len(ops)):
            op = ops[index]
            gc.collect()
            time.sleep(settle)
            wall, cpu = time.perf_counter(), time.process_time()
            result = op.call()
            op.times.append(time.perf_counter() - wall)
            op.cpu_times.append(time.process_time() - cpu)
            del result


def _row(w: Workload, op: Operation) -> dict[str, Any]:
    best = min(op.times)
    best_round = op.times.index(best)
    return {"workload": w.name, "key": op.key, "label": op.label, "scope": op.scope,
            "bytes": op.nbytes, "records": op.n_records, "times_s": op.times,
            "cpu_times_s": op.cpu_times, "best_s": best, "median_s": statistics.median(op.times),
            "mb_per_s_best": op.nbytes / best / 1e6,
            "records_per_s_best": op.n_records / best,
            "mb_per_s_median": op.nbytes / statistics.median(op.times) / 1e6,
            "cores_used_best": op.cpu_times[best_round] / best}


def _speed_ratio(a: Operation, b: Operation) -> dict[str, float]:
    """a's throughput over b's (bytes/s), of best times and median of per-round ratios."""
    per_round = [(a.nbytes / ta) / (b.nbytes / tb) for ta, tb in zip(a.times, b.times,
                                                                       strict=True)]
    return {"of_best": (a.nbytes / min(a.times)) / (b.nbytes / min(b.times)),
            "median_paired": statistics.median(per_round)}


def _time_ratio(a: Operation, b: Operation) -> dict[str, float]:
    """a's time over b's, of best times and median of per-round ratios."""
    per_round = [ta / tb for ta, tb in zip(a.times, b.times, strict=True)]
    return {"of_best": min(a.times) / min(b.times), "median_paired": statistics.median(per_round)}


def ratios(w: Workload, ops: dict[str, Operation]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if w.kind == "recordio":
        for key in ("gpuknn.read", "gpuknn.iter_batches"):
            name = key.split(".")[1]
            out[f"{name}_x_copy_floor"] = _time_ratio(ops[key], ops["floor.copy"])
            out[f"{name}_x_read_bytes_floor"] = _time_ratio(ops[key], ops["floor.read_bytes"])
            if "sdk.read_records" in ops:
                out[f"{name}_vs_sdk"] = _speed_ratio(ops[key], ops["sdk.read_records"])
        if "sdk.read_records" in ops:
            out["read_prefix_vs_sdk_same_bytes"] = _speed_ratio(ops["gpuknn.read_prefix"],
                                                                ops["sdk.read_records"])
    else:
        out["read_vs_loadtxt"] = _speed_ratio(ops["gpuknn.read"], ops["numpy.loadtxt"])
        out["read_vs_pandas"] = _speed_ratio(ops["gpuknn.read"], ops["pandas.read_csv"])
        out["pandas_vs_loadtxt"] = _speed_ratio(ops["pandas.read_csv"], ops["numpy.loadtxt"])
        out["read_x_read_bytes_floor"] = _time_ratio(ops["gpuknn.read"], ops["floor.read_bytes"])
    return out


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each workload's ratio against the issue's targets: met, not met or not measured."""
    rows = []
    for w in report["workloads"]:
        r = w["ratios"]
        wanted = ([("gpuknn read ≥ 30x SDK throughput", "read_vs_sdk", TARGETS["vs_sdk"], True),
                   ("gpuknn read ≤ 5x the copy floor's time", "read_x_copy_floor",
                    TARGETS["x_copy_floor"], False)]
                  if w["kind"] == "recordio" else
                  [("gpuknn CSV read ≥ 10x numpy.loadtxt throughput", "read_vs_loadtxt",
                    TARGETS["vs_loadtxt"], True)])
        for text, key, bound, at_least in wanted:
            value = r.get(key)
            if value is None:
                rows.append({"workload": w["name"], "target": text, "value": None,
                             "met": None, "note": SDK_MISSING})
                continue
            best, paired = value["of_best"], value["median_paired"]
            met = best >= bound if at_least else best <= bound
            rows.append({"workload": w["name"], "target": text, "value": best,
                         "median_paired": paired, "met": met})
    return rows


def profile_read(w: Workload, top: int = 10) -> list[dict[str, Any]]:
    """cProfile of one gpuknn ``read`` of the whole file: the top functions by own time."""
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
        where = function if filename == "~" else f"{_short(filename)}:{line}({function})"
        entries.append({"function": where, "calls": calls, "own_s": own,
                        "cumulative_s": cumulative, "own_share": own / total if total else 0})
    entries.sort(key=lambda e: -e["own_s"])
    return [{"total_s": total}, *entries[:top]]


def _short(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("gpuknn", "pandas", "numpy"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) - 1:])
    return Path(filename).name


# ----------------------------------------------------------------------------------------
# Environment and report
# ----------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    return {
        **machine(),
        "versions": {"gpuknn": gpuknn.__version__, "numpy": np.__version__,
                     "pandas": pd.__version__, "protobuf": protobuf_version,
                     "sagemaker": None if SDK_MISSING else sagemaker.__version__},
        "protobuf_implementation": api_implementation.Type(),
        "sdk": SDK_MISSING or "present",
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes competing for the cores)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _ratio_text(value: dict[str, float] | None) -> str:
    if value is None:
        return "-"
    return f"{value['of_best']:.1f} ({value['median_paired']:.1f})"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    v = env["versions"]
    lines = [
        "# gpuknn data layer: read throughput",
        "",
        f"Run {env['date_utc']} on `{env['hostname']}` ({env['cpu']['model']}, "
        f"{env['cpu']['usable_cpus']} usable CPUs) with `{env['python_executable']}`: "
        f"Python {env['python']}, gpuknn {v['gpuknn']}, numpy {v['numpy']}, pandas "
        f"{v['pandas']}, protobuf {v['protobuf']} ({env['protobuf_implementation']} backend), "
        f"sagemaker {v['sagemaker'] or 'not installed'}.",
        "",
        f"{report['repeats']} interleaved rounds (random order, {report['settle_s']} s pause "
        "before each call) after one untimed warm-up; all files are in the page cache. "
        "MB/s and records/s come from the **best** time; the median time is beside it. "
        "Ratios read \"best (median over rounds of the within-round ratio)\". "
        "`gpuknn ÷ this` is gpuknn `read`'s throughput over this row's (above 1, gpuknn is "
        "faster). `x copy` is this row's time over the time of one `bytearray` copy of the "
        "whole file's bytes (the memory-bandwidth floor). `cores` is process CPU time over "
        "wall time in the best round (pandas >= 3.1 splits a CSV file path of 5 MB or more "
        "across threads).",
        "",
    ]
    if SDK_MISSING:
        lines += [f"**SDK rows skipped: {SDK_MISSING}.** Run with a Python that has the "
                  "SageMaker SDK v2 to measure the gpuknn/SDK ratios.", ""]
    else:
        lines += [f"**The SDK is timed on the first {report['sdk_records']:,} records of each "
                  "RecordIO file** (a prefix file cut at a record boundary), gpuknn on the "
                  "whole file and on that prefix; throughputs are compared per byte.", ""]
    writer = report["writer_check"]
    lines += ["Writer: " + (f"check skipped ({writer['skipped']})." if "skipped" in writer else
                            "gpuknn `write_recordio` output is "
                            + ("byte-identical" if writer["byte_identical"] else
                               "**NOT byte-identical**")
                            + " to the SDK's `write_numpy_to_dense_tensor` on "
                            + ", ".join(writer["cases"]) + "."), ""]
    lines += ["## Targets", "", "| Workload | Target | Measured | Met |", "|---|---|---:|---|"]
    for t in report["targets"]:
        measured = ("not measured" if t["value"] is None else
                    f"{t['value']:.1f}x ({t['median_paired']:.1f}x)")
        met = "n/a" if t["met"] is None else ("met" if t["met"] else "**not met**")
        lines.append(f"| {t['workload']} | {t['target']} | {measured} | {met} |")
    lines.append("")
    for w in report["workloads"]:
        lines += _workload_lines(w, [r for r in report["rows"] if r["workload"] == w["name"]])
    return "\n".join(lines) + "\n"


def _workload_lines(w: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    by_key = {r["key"]: r for r in rows}
    g = by_key["gpuknn.read"]
    copy = by_key.get("floor.copy")
    lines = [f"## {w['name']}", "",
             f"{w['description']}; {w['bytes'] / 1e6:,.1f} MB, {w['records']:,} records; "
             f"written in {w['write_seconds']:.1f} s.", "",
             "| Engine / operation | scope | MB | best s | median s | MB/s | records/s "
             "| cores | gpuknn ÷ this | x copy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["key"] == "gpuknn.read":
            vs = "1.0"
        else:
            best = (g["bytes"] / g["best_s"]) / (r["bytes"] / r["best_s"])
            vs = f"{best:.1f}"
        x_copy = "-" if copy is None or r["bytes"] != copy["bytes"] else \
            f"{r['best_s'] / copy['best_s']:.2f}"
        lines.append(f"| {r['label']} | {r['scope']} | {r['bytes'] / 1e6:,.1f} | "
                     f"{r['best_s']:.4f} | {r['median_s']:.4f} | {r['mb_per_s_best']:,.1f} | "
                     f"{r['records_per_s_best']:,.0f} | {r['cores_used_best']:.2f} | {vs} | "
                     f"{x_copy} |")
    ratio_lines = [f"`{k}` {_ratio_text(val)}" for k, val in w["ratios"].items()]
    checks = "; ".join(f"{k}: {val}" for k, val in w["checks"].items())
    lines += ["", "Ratios: " + ", ".join(ratio_lines) + ".", "", f"Checks: {checks}.", "",
              f"Load average (1, 5, 15 min) before / after timing: {w['loadavg_before']} / "
              f"{w['loadavg_after']}.", ""]
    prof = w["profile_read"]
    lines += [f"cProfile of one gpuknn `read` (total {prof[0]['total_s']:.3f} s under the "
              "profiler), top functions by own time: "
              + "; ".join(f"`{e['function']}` {e['own_s']:.3f} s ({100 * e['own_share']:.0f}%)"
                          for e in prof[1:7]) + ".", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one tenth of the rows")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (3; 2 with --quick)")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="pause in seconds before every timed call")
    parser.add_argument("--sdk-records", type=int, default=None,
                        help="records of the prefix the SDK reads (20000; 2000 with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)
    sdk_records = args.sdk_records or (2_000 if args.quick else 20_000)
    started = time.perf_counter()
    print(f"gpuknn {gpuknn.__version__}; SDK: {SDK_MISSING or sagemaker.__version__}; "
          f"protobuf {protobuf_version} ({api_implementation.Type()})", flush=True)
    writer = check_writer()
    print(f"writer check: {writer}", flush=True)
    report: dict[str, Any] = {"repeats": repeats, "settle_s": args.settle,
                              "sdk_records": sdk_records, "quick": args.quick,
                              "writer_check": writer, "workloads": [], "rows": []}
    with tempfile.TemporaryDirectory(prefix="gpuknn-io-bench-") as tmp:
        workloads = make_workloads(Path(tmp), args.quick, sdk_records)
        print(f"data written in {time.perf_counter() - started:.1f} s", flush=True)
        for number, w in enumerate(workloads):
            if w.kind == "recordio":
                check_recordio(w)
                data = w.path.read_bytes()
                ops = recordio_operations(w, data)
            else:
                check_csv(w)
                ops = csv_operations(w)
            load_before = _loadavg()
            time_operations(ops, repeats, args.settle, number)
            data = None
            by_key = {op.key: op for op in ops}
            entry = {"name": w.name, "kind": w.kind, "description": w.description,
                     "path_name": w.path.name, "bytes": w.nbytes, "records": w.n_records,
                     "write_seconds": w.write_seconds, "checks": w.checks,
                     "ratios": ratios(w, by_key), "loadavg_before": load_before,
                     "loadavg_after": _loadavg(), "profile_read": profile_read(w)}
            report["workloads"].append(entry)
            report["rows"] += [_row(w, op) for op in ops]
            print(f"{w.name}: " + ", ".join(f"{op.key} {min(op.times):.3f} s" for op in ops)
                  + " | " + ", ".join(f"{k} {_ratio_text(v)}" for k, v in entry["ratios"].items())
                  + f" | checks {w.checks}", flush=True)
    report["targets"] = targets(report)
    report["environment"] = environment()
    report["total_seconds"] = time.perf_counter() - started
    stem = "io_compare-quick" if args.quick else "io_compare"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out / stem}.json and .md in {report['total_seconds']:.0f} s")
    failed = [(w["name"], k) for w in report["workloads"] for k, val in w["checks"].items()
              if val is False]
    if failed or writer.get("byte_identical") is False:
        print(f"CHECKS FAILED: {failed or 'writer'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
