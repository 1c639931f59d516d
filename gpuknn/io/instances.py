"""JSON and JSON Lines decoding: SageMaker's instances.

JSON is SageMaker's request shape ``{"instances": [...]}``. JSON Lines holds one
instance per line, and skips blank lines anywhere, as SageMaker's JSON Lines convention
does. An instance is ``{"features": [...]}``, ``{"data": {"features": {"values":
[...]}}}``, or a sparse ``{"keys": [...], "shape": [n], "values": [...]}`` in either
place. Lines are numbered from 1; instances are 0-based, written "instance 5 (0-based)".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from gpuknn.errors import DataError
from gpuknn.io.limits import MAX_FEATURES, MAX_JSON_DEPTH, MAX_JSON_DOCUMENT_BYTES
from gpuknn.io.sources import Stream
from gpuknn.io.text import BLOCK_BYTES, check_line_length


def parse_json(data: bytes, name: str) -> Any:
    """Decode a JSON request ``{"instances": [...]}`` into features."""
    document = _load(data, name)
    if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
        raise DataError(f'{name}: a JSON request is {{"instances": [...]}}')
    return instances_to_matrix(document["instances"], name, "instance")


def read_json_document(stream: Stream) -> bytes:
    """A whole JSON document, refused past :data:`MAX_JSON_DOCUMENT_BYTES`."""
    data = stream.read(MAX_JSON_DOCUMENT_BYTES + 1)
    if len(data) > MAX_JSON_DOCUMENT_BYTES:
        raise DataError(f"{stream.name}: a JSON document is read whole and may hold at most "
                        f"{MAX_JSON_DOCUMENT_BYTES >> 20} MiB; use JSON Lines "
                        "(application/jsonlines) for larger data")
    return data


def iter_jsonlines(stream: Stream, *, batch_size: int) -> Iterator[tuple[Any, None, list[int]]]:
    """Yield ``(features, None, line numbers)`` of a JSON Lines stream, one instance per
    non-empty line (lines are 1-based; blank lines are skipped)."""
    pending: list[Any] = []
    for line, raw in enumerate(_byte_lines(stream), start=1):
        if raw.strip():
            pending.append((line, _load(raw, f"{stream.name}: line {line}")))
        if len(pending) >= batch_size:
            yield _jsonl_batch(pending, stream.name), None, [n for n, _ in pending]
            pending = []
    if pending:
        yield _jsonl_batch(pending, stream.name), None, [n for n, _ in pending]


def _byte_lines(stream: Stream) -> Iterator[bytes]:
    """The lines of a stream as bytes (decoded later, so bad UTF-8 is reported by line)."""
    carry = b""
    line = 1
    while chunk := stream.read(BLOCK_BYTES):
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        line += len(lines)
        check_line_length(len(carry), stream.name, line)
        yield from lines
    if carry:
        yield carry


def _jsonl_batch(pending, name: str):
    lines = [line for line, _ in pending]
    return instances_to_matrix([obj for _, obj in pending], name, "line", numbers=lines)


# Integers of more digits than int64 holds are read as floats (so 1e400 and a 400-digit
# integer both become infinity, refused as out of range, instead of an OverflowError).
_INT_DIGITS = 18
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = np.frombuffer(b"[{]}", dtype=np.uint8)


def _parse_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= _INT_DIGITS else float(text)


def _load(data: bytes, where: str) -> Any:
    _check_depth(data, where)
    try:
        return json.loads(data, parse_int=_parse_int)
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: invalid UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON at line {err.lineno}, column {err.colno}: "
                        f"{err.msg}") from None
    except RecursionError:  # a backstop: _check_depth refuses such documents first
        raise DataError(f"{where}: JSON nested too deeply") from None


def _check_depth(data: bytes, where: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_JSON_DEPTH` before parsing it.

    Brackets inside strings do not count; the scan is vectorised over the brackets only.
    """
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return
    text = _STRING.sub(b'""', data) if b'"' in data else data
    raw = np.frombuffer(text, dtype=np.uint8)
    brackets = raw[np.isin(raw, _BRACKETS)]
    depth = np.cumsum(np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1),
                      dtype=np.int64)
    if depth.size and depth.max() > MAX_JSON_DEPTH:
        raise DataError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; an "
                        'instance needs at most 4 ({"data": {"features": {"values": [...]}}})')


def instances_to_matrix(instances: list[Any], name: str, unit: str,
                        numbers: list[int] | None = None):
    """Features of SageMaker JSON instances: a float32 array, or CSR if any is sparse."""
    numbers = numbers or list(range(len(instances)))
    if not instances:
        raise DataError(f"{name}: no instances")
    rows = [_instance(obj, f"{name}: {_place(unit, number)}") for obj, number in
            zip(instances, numbers, strict=True)]
    if all(keys is None for _, keys, _ in rows):
        widths = {len(values) for values, _, _ in rows}
        if len(widths) > 1:
            first = next(i for i, (v, _, _) in enumerate(rows) if len(v) != len(rows[0][0]))
            raise DataError(f"{name}: {_place(unit, numbers[first])}: {len(rows[first][0])} "
                            f"features; {unit} {numbers[0]} has {len(rows[0][0])}")
        return np.asarray([values for values, _, _ in rows], dtype=np.float32).reshape(
            len(rows), -1)
    return _sparse_rows(rows, name, unit, numbers)


def _place(unit: str, number: int) -> str:
    """``line 3`` (lines are 1-based) or ``instance 2 (0-based)``."""
    return f"{unit} {number}" + (" (0-based)" if unit == "instance" else "")


def _instance(obj: Any, where: str):
    features = obj.get("features") if isinstance(obj, dict) else None
    if features is None and isinstance(obj, dict) and isinstance(obj.get("data"), dict):
        features = obj["data"].get("features")
    if isinstance(features, list):
        return _numbers(features, where, "features"), None, None
    if isinstance(features, dict) and "values" in features:
        values = _numbers(features["values"], where, "features.values")
        if "keys" not in features:
            return values, None, None
        width = _sparse_width(features.get("shape"), where)
        keys = _keys(features["keys"], where, width)
        if len(keys) != len(values):
            raise DataError(f"{where}: a sparse instance has one key per value; got "
                            f"{len(keys)} keys for {len(values)} values")
        return values, keys, width
    raise DataError(f'{where}: expected {{"features": [...]}} or '
                    f'{{"data": {{"features": {{"values": [...]}}}}}}')


def _numbers(values: Any, where: str, field: str) -> np.ndarray:
    """float32 values; beyond float32's range they become infinite (refused later, by row)."""
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DataError(f"{where}: {field} must be a list of numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32)


def _sparse_width(shape: Any, where: str) -> int:
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int)
            and not isinstance(shape[0], bool)):
        raise DataError(f"{where}: a sparse instance needs \"shape\": [n_features], one "
                        "whole number")
    if not 1 <= shape[0] <= MAX_FEATURES:
        raise DataError(f"{where}: sparse shape [{shape[0]}] must be between 1 and "
                        f"{MAX_FEATURES} features")
    return shape[0]


def _keys(keys: Any, where: str, width: int) -> np.ndarray:
    """Sparse keys as int64, each a whole number in ``[0, width)`` (exact, never via float)."""
    if not isinstance(keys, list) or not all(
            isinstance(key, int) and not isinstance(key, bool) and 0 <= key < width
            for key in keys):
        raise DataError(f"{where}: features.keys must be whole numbers within [0, {width}), "
                        "the sparse shape")
    return np.asarray(keys, dtype=np.int64)


def _sparse_rows(rows, name: str, unit: str, numbers: list[int]) -> sp.csr_matrix:
    widths = {width if keys is not None else len(values) for values, keys, width in rows}
    if len(widths) > 1:
        raise DataError(f"{name}: {unit}s have different feature counts {sorted(widths)}")
    n_cols = widths.pop()
    indptr = np.cumsum([0] + [len(values) for values, _, _ in rows])
    indices = np.concatenate([keys if keys is not None else np.arange(len(values))
                              for values, keys, _ in rows]).astype(np.int64)
    data = np.concatenate([values for values, _, _ in rows])
    matrix = sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_cols), dtype=np.float32)
    matrix.sum_duplicates()
    return matrix
