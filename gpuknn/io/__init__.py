"""Data formats: RecordIO-protobuf, CSV, JSON and JSON Lines, streamed in bounded batches.

>>> from gpuknn import io  # doctest: +SKIP
>>> for X, y in io.iter_batches("train/", "text/csv", batch_size=5000): ...  # doctest: +SKIP
>>> io.write_recordio("train.pbr", X, labels=y)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp

from gpuknn.errors import DataError
from gpuknn.io import records
from gpuknn.io.instances import iter_jsonlines, parse_json, read_json_document
from gpuknn.io.limits import InflateLimit
from gpuknn.io.places import Instances, Lines, Place, RecordRun, Records
from gpuknn.io.recordio import PayloadRun, frame, iter_payloads
from gpuknn.io.sources import Stream, iter_streams, name_of
from gpuknn.io.text import iter_csv

RECORDIO = "application/x-recordio-protobuf"
CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
CONTENT_TYPES = (RECORDIO, CSV, JSON, JSONLINES)

__all__ = ["CONTENT_TYPES", "CSV", "JSON", "JSONLINES", "RECORDIO", "iter_batches",
           "parse_content_type", "read",
           "record_set", "write_recordio"]

Batch = tuple[Any, np.ndarray | None]
Block = tuple[Any, np.ndarray | None, Place]  # features, labels, where each row came from
MAX_BAD_ROWS_NAMED = 3


def iter_batches(source: Any, content_type: str = RECORDIO, batch_size: int = 5000,
                 label_size: int | None = None,
                 inflate: InflateLimit | None = None) -> Iterator[Batch]:
    """Stream ``(X, y)`` batches of at most ``batch_size`` rows from a source.

    Parameters
    ----------
    source : str, Path or binary file
        A file (gzip or not), a directory, a SageMaker manifest, a named pipe or an
        open binary file. See :mod:`gpuknn.io.sources`.
    content_type : str
        One of :data:`CONTENT_TYPES`; parameters after ``;`` are ignored except
        ``label_size`` for CSV.
    batch_size : int
        Rows per batch; memory stays bounded by a batch whatever the source's size.
    label_size : int, optional
        CSV label columns (0 or 1). Default 1 for CSV (training data), 0 otherwise.
    inflate : InflateLimit, optional
        How far gzip data may inflate (:mod:`gpuknn.io.limits`); default: the files'
        ratio limit.

    Yields
    ------
    X : ndarray of shape (n, d), float32, or scipy.sparse.csr_matrix (sparse records)
    y : ndarray of shape (n,), float32, or None without labels

    Raises
    ------
    DataError
        Naming the file and the byte offset, record, line or column at fault, including
        rows with NaN or infinite values (features or label).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    yield from _rebatch(_blocks(source, content_type, label_size, batch_size, inflate),
                        batch_size)


def _blocks(source: Any, content_type: str, label_size: int | None,
            batch_size: int, inflate: InflateLimit | None = None) -> Iterator[Batch]:
    """Decoded, consistency-checked blocks of at most ``batch_size`` rows, in order."""
    kind, parameters = parse_content_type(content_type)
    if label_size is None:
        label_size = _label_size(parameters.get("label_size", "1" if kind == CSV else "0"))
    seen_rows = False
    for X, y in _Consistent().check(
            (stream.name, block) for stream in iter_streams(source, inflate)
            for block in _decode(stream, kind, label_size, batch_size)):
        seen_rows = True
        yield X, y
    if not seen_rows:
        raise DataError(f"{name_of(source)}: no records in the data")


def _label_size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"label_size must be an integer (0 or 1); got {text!r}") from None


class _Consistent:
    """Every decoded block must have the first block's feature count and label presence,
    and finite values; a fault is named by its file and record or line."""

    def __init__(self):
        self.width: int | None = None
        self.labelled: bool | None = None

    def check(self, blocks: Iterator[tuple[str, Block]]) -> Iterator[Batch]:
        for name, (X, y, places) in blocks:
            where = f"{name}: {places.describe(0)} onwards"
            if self.width is None:
                self.width, self.labelled = X.shape[1], y is not None
            if X.shape[1] != self.width:
                raise DataError(f"{where}: {X.shape[1]} features; earlier rows have "
                                f"{self.width}")
            if (y is not None) != self.labelled:
                raise DataError(f"{where}: rows are {'labelled' if y is not None else 'unlabelled'}"
                                f"; earlier rows are not (every row needs a label, or none)")
            _check_finite(X, y, name, places)
            yield X, y


def _check_finite(X: Any, y: np.ndarray | None, name: str, places: Place) -> None:
    """Refuse NaN and infinite values, naming the first rows that hold them."""
    if sp.issparse(X):
        cells = np.flatnonzero(~np.isfinite(X.data))
        bad = np.unique(np.searchsorted(X.indptr, cells, side="right") - 1)
    else:
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if y is not None:
        bad = np.union1d(bad, np.flatnonzero(~np.isfinite(y)))
    if bad.size == 0:
        return
    shown = "; ".join(places.describe(int(row)) for row in bad[:MAX_BAD_ROWS_NAMED])
    more = f" and {bad.size - MAX_BAD_ROWS_NAMED} more in this block" if (
        bad.size > MAX_BAD_ROWS_NAMED) else ""
    raise DataError(f"{name}: {shown}{more}: NaN, infinite or out-of-float32-range value "
                    "(features or label); k-NN needs finite numbers in every row")


def read(source: Any, content_type: str = RECORDIO, label_size: int | None = None,
         inflate: InflateLimit | None = None) -> Batch:
    """All of a source at once: ``(X, y)`` as :func:`iter_batches` yields them, concatenated."""
    batches = list(_blocks(source, content_type, label_size, batch_size=1 << 16,
                           inflate=inflate))
    features = [X for X, _ in batches]
    if any(sp.issparse(X) for X in features):
        X = sp.vstack(features, format="csr")
    else:
        X = features[0] if len(features) == 1 else np.concatenate(features)
    labels = [y for _, y in batches]
    y = None if labels[0] is None else labels[0] if len(labels) == 1 else np.concatenate(labels)
    return X, y


def parse_content_type(content_type: str) -> tuple[str, dict[str, str]]:
    """Split ``"text/csv; label_size=1"`` into the canonical type and its parameters.

    Raises
    ------
    DataError
        For a type that is not one of :data:`CONTENT_TYPES` (or a known alias).
    """
    kind, *rest = (part.strip() for part in content_type.split(";"))
    kind = kind.lower()
    aliases = {"application/jsonl": JSONLINES, "application/x-jsonlines": JSONLINES,
               "application/json-lines": JSONLINES, "text/x-csv": CSV}
    kind = aliases.get(kind, kind)
    if kind not in CONTENT_TYPES:
        raise DataError(f"content type {content_type!r} is not supported; use one of "
                        f"{', '.join(CONTENT_TYPES)}")
    parameters = dict(p.split("=", 1) for p in rest if "=" in p)
    return kind, {k.strip().lower(): v.strip() for k, v in parameters.items()}


def _decode(stream: Stream, kind: str, label_size: int, batch_size: int) -> Iterator[Block]:
    if kind == RECORDIO:
        yield from _decode_recordio(stream, batch_size)
    elif kind == CSV:
        for X, y, line in iter_csv(stream, label_size=label_size):
            yield X, y, Lines(line)
    elif kind == JSONLINES:
        for X, y, numbers in iter_jsonlines(stream, batch_size=batch_size):
            yield X, y, Lines(numbers[0], numbers)
    else:
        yield parse_json(read_json_document(stream), stream.name), None, Instances()


def _decode_recordio(stream: Stream, batch_size: int) -> Iterator[Block]:
    pending: list[tuple[int, bytes]] = []
    record_number = 0
    for item in iter_payloads(stream, stream.name):
        if isinstance(item, PayloadRun):
            if pending:
                yield _decode_pending(pending, stream.name, record_number - len(pending))
                pending = []
            yield from _decode_run(item, stream.name, record_number, batch_size)
            record_number += item.payloads.shape[0]
            continue
        pending.append(item)
        record_number += 1
        if len(pending) >= batch_size:
            yield _decode_pending(pending, stream.name, record_number - len(pending))
            pending = []
    if pending:
        yield _decode_pending(pending, stream.name, record_number - len(pending))


def _decode_run(run: PayloadRun, name: str, first_record: int, batch_size: int):
    stride = run.payloads.shape[1] + 8 + (-run.payloads.shape[1] % 4)
    for start in range(0, run.payloads.shape[0], batch_size):
        chunk = run.payloads[start : start + batch_size]
        decoded = records.decode_run(chunk)
        if decoded is None:
            pending = [(run.offset + (start + i) * stride, row.tobytes())
                       for i, row in enumerate(chunk)]
            yield _decode_pending(pending, name, first_record + start)
        else:
            yield (decoded.features, decoded.labels,
                   RecordRun(first_record + start, run.offset + start * stride, stride))


def _decode_pending(pending: list[tuple[int, bytes]], name: str, first_record: int) -> Block:
    places = Records(first_record, [offset for offset, _ in pending])
    decoded = records.decode_payloads([payload for _, payload in pending],
                                      [f"{name}: {places.describe(i)}"
                                       for i in range(len(pending))])
    return decoded.features, decoded.labels, places


def _rebatch(batches: Iterator[Batch], batch_size: int) -> Iterator[Batch]:
    """Cut or join decoded blocks into batches of exactly ``batch_size`` rows (the last less)."""
    held: list[Batch] = []
    count = 0
    for X, y in batches:
        held.append((X, y))
        count += X.shape[0]
        while count >= batch_size:
            batch, held, count = _take(held, batch_size)
            yield batch
    if count:
        yield _take(held, count)[0]


def _take(held: list[Batch], size: int):
    X_parts, y_parts, taken = [], [], 0
    rest: list[Batch] = []
    for index, (X, y) in enumerate(held):
        need = size - taken
        if need <= 0:
            rest = held[index:]
            break
        X_parts.append(X[:need])
        y_parts.append(None if y is None else y[:need])
        taken += min(need, X.shape[0])
        if X.shape[0] > need:
            rest = [(X[need:], None if y is None else y[need:]), *held[index + 1 :]]
            break
    X = (sp.vstack(X_parts, format="csr") if any(sp.issparse(x) for x in X_parts)
         else np.concatenate(X_parts) if len(X_parts) > 1 else X_parts[0])
    y = None if y_parts[0] is None else (np.concatenate(y_parts) if len(y_parts) > 1
                                         else y_parts[0])
    return (X, y), rest, sum(x.shape[0] for x, _ in rest)


# -- writing ---------------------------------------------------------------------------------
def write_recordio(file: str | Path | BinaryIO, X: Any, labels: Any = None) -> None:
    """Write rows as Amazon Record protobuf in RecordIO framing, byte-compatible with the SDK.

    Parameters
    ----------
    file : str, Path or binary file
    X : ndarray of shape (n, d) or a scipy.sparse matrix
        One Record per row, ``features["values"]`` typed by the dtype: float32 as
        Float32Tensor, float64 as Float64Tensor, any integer dtype (values within
        int32) as Int32Tensor, as the SDK does for ``int``.
    labels : array of shape (n,), optional
        ``label["values"]``, typed by its own dtype.
    """
    if hasattr(file, "write"):
        _write_records(file, X, labels)
        return
    with open(file, "wb") as handle:
        _write_records(handle, X, labels)


INT32_RANGE = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)


def _tensor_kind(values: Any, what: str) -> str:
    """The Record tensor for an array's dtype; integers of any width go to Int32Tensor."""
    dtype = np.dtype(values.dtype)
    if dtype.kind in "iu":
        data = values.data if sp.issparse(values) else values
        if data.size and (data.min() < INT32_RANGE[0] or data.max() > INT32_RANGE[1]):
            raise DataError(f"{what} holds integers outside the int32 range of Int32Tensor")
        return "int32_tensor"
    kind = records.TENSOR_FOR_DTYPE.get(dtype)
    if kind is None:
        raise DataError(f"{what} dtype {dtype} has no Record tensor type; use float32, "
                        "float64 or an integer type")
    return kind


def _write_records(handle: BinaryIO, X: Any, labels: Any) -> None:
    sparse = sp.issparse(X)
    matrix = X.tocsr() if sparse else np.asarray(X)
    if matrix.ndim != 2:
        raise DataError(f"X must be 2-D (rows, features); got shape {matrix.shape}")
    kind = _tensor_kind(matrix, "X")
    label_kind = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (matrix.shape[0],):
            raise DataError(f"labels must have shape ({matrix.shape[0]},); got {labels.shape}")
        label_kind = _tensor_kind(labels, "labels")
    for row in range(matrix.shape[0]):
        label = None if labels is None else labels[row].item()
        if sparse:
            cells = slice(matrix.indptr[row], matrix.indptr[row + 1])
            payload = records.encode_sparse_row(matrix.data[cells], matrix.indices[cells],
                                                matrix.shape[1], label, kind=kind,
                                                label_kind=label_kind)
        else:
            payload = records.encode_dense_row(matrix[row], label, kind, label_kind)
        handle.write(frame(payload))


def record_set(train: Any, labels: Any = None, path: str | Path = "record-set",
               shards: int = 1) -> Path:
    """Write ``matrix_<i>.pbr`` shards and a ``.amazon.manifest``, like the SDK's ``record_set``.

    Parameters
    ----------
    train : ndarray of shape (n, d) or scipy.sparse matrix
    labels : array of shape (n,), optional
    path : str or Path
        Directory to write (created if needed).
    shards : int
        Number of shards: ``n // shards`` rows each, the last one takes the rest.

    Returns
    -------
    Path
        The manifest, which :func:`iter_batches` and ``KNN.fit`` accept.
    """
    n_rows = train.shape[0]
    if not 1 <= shards <= n_rows:
        raise DataError(f"shards must be between 1 and the number of rows ({n_rows}); "
                        f"got {shards}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    size = n_rows // shards
    keys = []
    for shard in range(shards):
        rows = slice(shard * size, n_rows if shard == shards - 1 else (shard + 1) * size)
        key = f"matrix_{shard}.pbr"
        write_recordio(directory / key, train[rows], None if labels is None else
                       np.asarray(labels)[rows])
        keys.append(key)
    manifest = directory / ".amazon.manifest"
    manifest.write_text(json.dumps([{"prefix": f"{directory.resolve().as_uri()}/"}, *keys]))
    return manifest
