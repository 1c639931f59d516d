"""Read throughput of gpuknn's data layer against the SageMaker SDK, numpy and pandas, all in
this one process (behind ``bench/io_compare.py``; :mod:`~gpuknn.benchmark.io_compare_report`
turns the timings into rows, ratios, targets and Markdown).

Files are written from seeded :mod:`gpuknn.datasets.synthetic` sets into a temporary
directory: RecordIO-protobuf by :func:`gpuknn.io.write_recordio` (checked byte for byte
against the SDK's ``write_numpy_to_dense_tensor`` when the SDK is present) and CSV by
``np.savetxt(fmt="%.7g")``. Per file every reader is timed in interleaved rounds
(:func:`gpuknn.benchmark.timed.time_rounds`) beside two floors (a ``bytearray`` copy of
the bytes in memory, ``open().read()`` from the page cache), every reader's arrays are
checked equal, and one gpuknn ``read`` runs under cProfile. The SDK is imported only
when a run needs it (:func:`load_sdk`); without it its rows are skipped.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpuknn._version import __version__
from gpuknn.benchmark import io_compare_checks as checks
from gpuknn.benchmark import io_compare_report as report_rows
from gpuknn.benchmark import timed
from gpuknn.benchmark.machine import machine
from gpuknn.datasets.synthetic import covtype_like, gaussian
from gpuknn.io import iter_batches, read, write_recordio

ORDER_SEED = 11
BATCH_SIZE = 5000
TENSOR = {np.dtype(np.float32): "float32_tensor", np.dtype(np.float64): "float64_tensor"}


@dataclass(frozen=True)
class Sdk:
    """The SageMaker SDK's pieces the benchmark calls, or why it is missing."""

    version: str | None = None
    read_records: Callable[..., Any] | None = None
    write_dense: Callable[..., Any] | None = None
    missing: str | None = None


@functools.cache
def load_sdk() -> Sdk:
    """Import the SageMaker SDK v2 (quietly: its v2 and config notices are silenced)."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    try:
        import sagemaker  # noqa: PLC0415
        from sagemaker.amazon.common import (  # noqa: PLC0415
            read_records,
            write_numpy_to_dense_tensor,
        )
    except ImportError as err:
        return Sdk(missing=f"sagemaker is not importable ({err})")
    return Sdk(sagemaker.__version__, read_records, write_numpy_to_dense_tensor)


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


def record_stride(data: bytes, n: int, path: Path) -> int:
    """Bytes per record of a RecordIO file of ``n`` records of one fixed length.

    Raises
    ------
    RuntimeError
        When the records differ in length (no prefix can then be cut at a boundary).
    """
    stride, rest = divmod(len(data), n)
    fixed = not rest and not stride % 4
    if fixed:
        heads = np.frombuffer(data, dtype="<u4").reshape(n, stride // 4)[:, :2]
        fixed = bool((heads[:, 0] == 0xCED7230A).all() and (heads[:, 1] == heads[0, 1]).all())
    if not fixed:
        raise RuntimeError(f"{path}: records are not of one fixed length; cannot cut a prefix")
    return stride


def make_recordio(name: str, description: str, X: np.ndarray, y: np.ndarray | None,
                  directory: Path, *, sdk_records: int) -> Workload:
    """Write ``X`` (and ``y``) as RecordIO and a prefix copy of its first records."""
    path = directory / f"{name}.pbr"
    started = time.perf_counter()
    write_recordio(path, X, labels=y)
    seconds = time.perf_counter() - started
    data = path.read_bytes()
    stride = record_stride(data, X.shape[0], path)
    prefix_records = min(sdk_records, X.shape[0])
    prefix_path = directory / f"{name}-first{prefix_records}.pbr"
    prefix_path.write_bytes(data[: prefix_records * stride])
    return Workload(name, "recordio", description, path, X.shape[0],
                    (X.astype(np.float32), None if y is None else y.astype(np.float32)),
                    sdk_tensor=TENSOR[X.dtype],
                    sdk_label_tensor=None if y is None else TENSOR[y.dtype],
                    prefix_path=prefix_path, prefix_records=prefix_records,
                    write_seconds=seconds, checks={"record_stride_bytes": stride})


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
    """The three RecordIO and two CSV files (one tenth of the rows with ``quick``).

    The covtype-shaped set is :func:`gpuknn.datasets.synthetic.covtype_like` with its
    labels shifted to 1-7, as the AWS covtype k-NN sample wrote them.
    """
    scale = 10 if quick else 1
    n_dense, n_cov = 100_000 // scale, 500_000 // scale
    X32, y32 = gaussian(n_dense, 128, np.float32, 1)
    X64, _ = gaussian(n_dense, 128, np.float64, 2)
    Xc, yc = covtype_like(n_cov)
    yc = yc + 1.0
    k = lambda n: f"{n // 1000}k"  # noqa: E731
    return [
        make_recordio(f"dense-f32-{k(n_dense)}-d128",
                      f"{n_dense:,} x 128 Gaussian float32 features, float32 labels 0-9",
                      X32, y32, directory, sdk_records=sdk_records),
        make_recordio(f"dense-f64-{k(n_dense)}-d128",
                      f"{n_dense:,} x 128 Gaussian float64 features, no labels",
                      X64, None, directory, sdk_records=sdk_records),
        make_recordio(f"covtype-f64-{k(n_cov)}-d54",
                      f"{n_cov:,} x 54 covtype-shaped float64 features, float64 labels 1-7",
                      Xc, yc, directory, sdk_records=sdk_records),
        make_csv(f"covtype-csv-{k(n_cov)}-c55",
                 f"the covtype-shaped table, {n_cov:,} x 55 (label first), "
                 "np.savetxt(fmt=\"%.7g\")", Xc, yc, directory),
        make_csv(f"gauss-csv-{k(n_dense)}-c129",
                 f"the float32 Gaussian set with its label, {n_dense:,} x 129 (label first), "
                 "np.savetxt(fmt=\"%.7g\")", X32, y32, directory),
    ]


def sdk_read(path: Path, tensor: str, label_tensor: str | None) -> tuple[np.ndarray,
                                                                         np.ndarray | None]:
    """The SDK's ``read_records`` plus the natural numpy conversion, as a user would write it."""
    with open(path, "rb") as handle:
        records = load_sdk().read_records(handle)
    X = np.array([getattr(r.features["values"], tensor).values for r in records],
                 dtype=np.float32)
    y = None if label_tensor is None else np.array(
        [getattr(r.label["values"], label_tensor).values[0] for r in records], dtype=np.float32)
    return X, y


def sdk_records_only(path: Path) -> list[Any]:
    """The SDK's framing and protobuf parsing alone: how much of its time the ndarray costs."""
    with open(path, "rb") as handle:
        return load_sdk().read_records(handle)


def stream_rows(path: Path) -> int:
    """Consume ``iter_batches`` the way a streaming consumer does; return the row count."""
    return sum(X.shape[0] for X, _ in iter_batches(path, batch_size=BATCH_SIZE))


def read_file(path: Path) -> bytes:
    """The file's bytes, with one ``read`` (from the page cache once warm)."""
    with open(path, "rb") as handle:
        return handle.read()


@dataclass
class Operation:
    """One timed reader of one file, what it reads, and its times over the rounds."""

    key: str
    label: str
    call: Callable[[], Any]
    nbytes: int
    n_records: int
    scope: str
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)


def recordio_operations(w: Workload, data: bytes) -> list[Operation]:
    """gpuknn's readers, the SDK's (on the prefix) and the floors, for a RecordIO file."""
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
    if not load_sdk().missing:
        ops[3:3] = [
            Operation("sdk.read_records", f"SDK read_records + np.array ({w.sdk_tensor})",
                      lambda: sdk_read(prefix, w.sdk_tensor, w.sdk_label_tensor),
                      prefix_bytes, w.prefix_records, prefix_scope),
            Operation("sdk.read_records_only", "SDK read_records alone (no ndarray; not a peer)",
                      lambda: sdk_records_only(prefix), prefix_bytes, w.prefix_records,
                      prefix_scope)]
    return ops


def csv_operations(w: Workload) -> list[Operation]:
    """gpuknn's CSV reader, numpy's ``loadtxt``, pandas' ``read_csv`` and the read floor."""
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


def measure_workload(w: Workload, number: int, repeats: int, settle: float) -> tuple[
        dict[str, Any], list[dict[str, Any]]]:
    """Check and time one workload (the ``number``-th): its report entry and its rows."""
    sdk = load_sdk()
    if w.kind == "recordio":
        checks.check_recordio(w, BATCH_SIZE, None if sdk.missing else sdk_read, sdk.missing)
        ops = recordio_operations(w, w.path.read_bytes())
    else:
        checks.check_csv(w)
        ops = csv_operations(w)
    load_before = timed.load_average()
    timed.time_rounds(ops, repeats, settle_s=settle, seed=[ORDER_SEED, number])
    ratios = report_rows.ratios(w.kind, {op.key: op for op in ops})
    rows = [report_rows.row(w.name, op) for op in ops]
    print(f"{w.name}: " + ", ".join(f"{op.key} {min(op.times):.3f} s" for op in ops)
          + " | " + ", ".join(f"{k} {report_rows.ratio_text(v)}" for k, v in ratios.items())
          + f" | checks {w.checks}", flush=True)
    del ops  # and the file's bytes the copy floor held, before the profiled read
    entry = {"name": w.name, "kind": w.kind, "description": w.description,
             "path_name": w.path.name, "bytes": w.nbytes, "records": w.n_records,
             "write_seconds": w.write_seconds, "checks": w.checks, "ratios": ratios,
             "loadavg_before": load_before, "loadavg_after": timed.load_average(),
             "profile_read": checks.profile_read(w)}
    return entry, rows


def protobuf_backend() -> tuple[str, str]:
    """protobuf's version and its implementation (``upb``, ``cpp`` or ``python``)."""
    from google.protobuf import __version__ as protobuf_version  # noqa: PLC0415
    from google.protobuf.internal import api_implementation  # noqa: PLC0415

    return protobuf_version, api_implementation.Type()


def environment() -> dict[str, Any]:
    """The machine, the versions of every reader, protobuf's backend and the load average."""
    sdk = load_sdk()
    protobuf_version, implementation = protobuf_backend()
    return {
        **machine(),
        "versions": {"gpuknn": __version__, "numpy": np.__version__,
                     "pandas": pd.__version__, "protobuf": protobuf_version,
                     "sagemaker": sdk.version},
        "protobuf_implementation": implementation,
        "sdk": sdk.missing or "present",
        "loadavg": timed.load_average(),
    }


def run(quick: bool, repeats: int, settle: float, sdk_records: int) -> dict[str, Any]:
    """Write every file, check and time every reader: the JSON report.

    Parameters
    ----------
    quick : bool
        One tenth of the rows (a smoke test).
    repeats : int
        Interleaved rounds per workload.
    settle : float
        Seconds of sleep before every timed call.
    sdk_records : int
        Records of the prefix file the SDK (and gpuknn, for the same bytes) reads.
    """
    started, sdk = time.perf_counter(), load_sdk()
    protobuf_version, implementation = protobuf_backend()
    print(f"gpuknn {__version__}; SDK: {sdk.missing or sdk.version}; "
          f"protobuf {protobuf_version} ({implementation})", flush=True)
    writer = checks.check_writer(sdk.write_dense, sdk.missing)
    print(f"writer check: {writer}", flush=True)
    report: dict[str, Any] = {"repeats": repeats, "settle_s": settle,
                              "sdk_records": sdk_records, "quick": quick,
                              "writer_check": writer, "workloads": [], "rows": []}
    with tempfile.TemporaryDirectory(prefix="gpuknn-io-bench-") as tmp:
        workloads = make_workloads(Path(tmp), quick, sdk_records)
        print(f"data written in {time.perf_counter() - started:.1f} s", flush=True)
        for number, w in enumerate(workloads):
            entry, rows = measure_workload(w, number, repeats, settle)
            report["workloads"].append(entry)
            report["rows"] += rows
    report["targets"] = report_rows.targets(report["workloads"], sdk.missing)
    report["environment"] = environment()
    report["total_seconds"] = time.perf_counter() - started
    return report
