"""Decode and encode ``aialgs.data.Record`` payloads (features and label tensors).

Decoding has two paths. A run of equal-length records (dense Float32 or Float64
tensors, as the SageMaker SDK writes them) is decoded with numpy views: the first
record is walked at the protobuf wire level to find where its feature and label
values lie, every other record is checked byte-for-byte against it outside those
values, and the values are read as a strided array. Anything else (Int32 varints,
sparse tensors, records of varying shape) goes through the protobuf messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from gpuknn.errors import DataError
from gpuknn.io._record import messages

TENSOR_FIELDS = {2: ("float32_tensor", "<f4"), 3: ("float64_tensor", "<f8"),
                 7: ("int32_tensor", None)}
ALLOWED_TENSORS = "Float32Tensor, Float64Tensor or Int32Tensor"


@dataclass
class Decoded:
    """Rows decoded from consecutive records.

    Attributes
    ----------
    features : ndarray of shape (n, d), float32, or scipy.sparse.csr_matrix
    labels : ndarray of shape (n,), float32, or None
    """

    features: np.ndarray | sp.csr_matrix
    labels: np.ndarray | None


# -- the fast path ---------------------------------------------------------------------------
def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise ValueError("truncated varint")
        byte = buffer[position]
        value |= (byte & 0x7F) << shift
        position += 1
        shift += 7
        if byte < 0x80:
            return value, position


def _fields(buffer: bytes, start: int, end: int):
    """Yield ``(field_number, content_start, content_end)`` of length-delimited fields."""
    position = start
    while position < end:
        key, position = _varint(buffer, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, position = _varint(buffer, position)
            yield field, position, position + length
            position += length
        elif wire_type == 0:
            _, position = _varint(buffer, position)
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if position != end:
        raise ValueError("field overruns its message")


def _tensor_layout(buffer: bytes, start: int, end: int):
    """``(dtype, values_start, values_end, has_keys)`` of the "values" tensor of a map field."""
    key_value = dict((field, (s, e)) for field, s, e in _fields(buffer, start, end))
    if buffer[slice(*key_value.get(1, (0, 0)))] != b"values" or 2 not in key_value:
        return None
    for field, s, e in _fields(buffer, *key_value[2]):
        if field not in TENSOR_FIELDS:
            return None
        dtype = TENSOR_FIELDS[field][1]
        parts = {f: (fs, fe) for f, fs, fe in _fields(buffer, s, e)}
        values = parts.get(1, (s, s))
        return dtype, values[0], values[1], 2 in parts or 3 in parts  # keys or shape: sparse
    return None


def _layout(template: bytes):
    """Where the feature and label values of a dense fixed-width record lie, or None."""
    features = label = None
    for field, start, end in _fields(template, 0, len(template)):
        layout = _tensor_layout(template, start, end) if field in (1, 2) else None
        if field == 1:
            features = layout
        elif field == 2:
            label = layout
        else:
            return None
        if field in (1, 2) and (layout is None or layout[0] is None or layout[3]):
            return None  # int32 varints, or sparse keys / shape: not fixed-width
    return None if features is None else (features, label)


def decode_run(payloads: np.ndarray) -> Decoded | None:
    """Decode equal-length payloads (n, L) uint8 as dense rows, or None if they differ.

    None means "use :func:`decode_payloads`": the records are not all dense fixed-width
    records laid out like the first one.
    """
    try:
        layout = _layout(payloads[0].tobytes())
    except ValueError:
        return None
    if layout is None:
        return None
    (dtype, v_start, v_end, _), label = layout
    regions = [(v_start, v_end)] + ([] if label is None else [(label[1], label[2])])
    edges = [0, *(x for region in sorted(regions) for x in region), payloads.shape[1]]
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if end > start and not (payloads[:, start:end] == payloads[0, start:end]).all():
            return None
    width = np.dtype(dtype).itemsize
    features = _values(payloads, v_start, v_end, dtype, width)
    labels = None
    if label is not None:
        label_values = _values(payloads, label[1], label[2], label[0], np.dtype(label[0]).itemsize)
        if label_values.shape[1] != 1:
            return None
        labels = label_values[:, 0]
    return Decoded(features, labels)


def _values(payloads: np.ndarray, start: int, end: int, dtype: str, width: int) -> np.ndarray:
    """The values as float32, in one copy from a strided typed view of the payload bytes."""
    if start == end:
        return np.empty((payloads.shape[0], 0), dtype=np.float32)
    return payloads[:, start:end].view(dtype).astype(np.float32)


# -- the general path ------------------------------------------------------------------------
def _tensor(value, where: str, what: str):
    kind = value.WhichOneof("value")
    if kind not in ("float32_tensor", "float64_tensor", "int32_tensor"):
        raise DataError(f"{where}: {what} holds a {kind or 'empty'} value; "
                        f"allowed: {ALLOWED_TENSORS}")
    return getattr(value, kind)


def decode_payloads(payloads: list[bytes], wheres: list[str]) -> Decoded:
    """Decode records one by one with protobuf: dense or sparse, any tensor type.

    Parameters
    ----------
    payloads : list of bytes
    wheres : list of str
        For each payload, its place ("file: record 7 (byte offset 812)") for errors.
    """
    Record = messages().Record
    rows, labels = [], []
    for payload, where in zip(payloads, wheres, strict=True):
        record = Record()
        try:
            record.ParseFromString(payload)
        except Exception as err:
            raise DataError(f"{where}: not a valid Record protobuf ({err})") from None
        if "values" not in record.features:
            raise DataError(f"{where}: the record has no features[\"values\"] tensor")
        tensor = _tensor(record.features["values"], where, 'features["values"]')
        values = np.asarray(tensor.values, dtype=np.float32)
        # Sparse: keys given, or a shape that the values do not fill (an all-zero row).
        sparse = len(tensor.keys) or (len(tensor.shape) and len(values) != tensor.shape[0])
        keys = np.asarray(tensor.keys, dtype=np.int64) if sparse else None
        rows.append((values, keys, tuple(tensor.shape), where))
        labels.append(_label(record, where))
    return Decoded(_assemble(rows), _assemble_labels(labels, wheres))


def _label(record, where: str) -> float | None:
    if "values" not in record.label:
        return None
    values = _tensor(record.label["values"], where, 'label["values"]').values
    if len(values) != 1:
        raise DataError(f"{where}: label[\"values\"] holds {len(values)} values; k-NN needs one")
    return float(values[0])


def _assemble_labels(labels: list[float | None], wheres: list[str]) -> np.ndarray | None:
    missing = [i for i, label in enumerate(labels) if label is None]
    if len(missing) == len(labels):
        return None
    if missing:
        raise DataError(f"{wheres[missing[0]]}: the record has no label, but other records do")
    return np.asarray(labels, dtype=np.float32)


def _assemble(rows) -> np.ndarray | sp.csr_matrix:
    if all(keys is None for _, keys, _, _ in rows):
        width = len(rows[0][0])
        for values, _, _, where in rows:
            if len(values) != width:
                raise DataError(f"{where}: {len(values)} features; earlier records have {width}")
        return np.stack([values for values, _, _, _ in rows]) if rows else np.empty((0, 0))
    return _assemble_sparse(rows)


def _assemble_sparse(rows) -> sp.csr_matrix:
    n_cols = None
    indptr, indices, data = [0], [], []
    for values, keys, shape, where in rows:
        width = (int(shape[0]) if shape else None) if keys is not None else len(values)
        if width is None:
            raise DataError(f"{where}: a sparse tensor (with keys) must set its shape")
        if n_cols is not None and width != n_cols:
            raise DataError(f"{where}: {width} features; earlier records have {n_cols}")
        n_cols = width
        if keys is None:
            keys = np.arange(len(values))  # noqa: PLW2901 - a dense row inside sparse data
        if len(keys) != len(values):
            raise DataError(f"{where}: {len(keys)} keys for {len(values)} values")
        if len(keys) and (keys.max() >= n_cols):
            raise DataError(f"{where}: sparse key {int(keys.max())} is outside the shape "
                            f"[{n_cols}]")
        indices.append(keys)
        data.append(values)
        indptr.append(indptr[-1] + len(keys))
    matrix = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr),
                           shape=(len(rows), n_cols), dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


# -- encoding --------------------------------------------------------------------------------
TENSOR_FOR_DTYPE = {np.dtype(np.float32): "float32_tensor",
                    np.dtype(np.float64): "float64_tensor",
                    np.dtype(np.int32): "int32_tensor"}


def encode_dense_row(row: np.ndarray, label: float | None, kind: str,
                     label_kind: str | None) -> bytes:
    """One Record with ``features["values"]`` (and ``label["values"]``) as the SDK writes it."""
    record = messages().Record()
    getattr(record.features["values"], kind).values.extend(row.tolist())
    if label is not None:
        getattr(record.label["values"], label_kind).values.append(label)
    return record.SerializeToString()


def encode_sparse_row(values, keys, n_cols: int, label: float | None, *, kind: str,
                      label_kind: str | None) -> bytes:
    """One sparse Record: values, keys and the shape ``[n_cols]``."""
    record = messages().Record()
    tensor = getattr(record.features["values"], kind)
    tensor.values.extend(values.tolist())
    tensor.keys.extend(keys.tolist())
    tensor.shape.append(n_cols)
    if label is not None:
        getattr(record.label["values"], label_kind).values.append(label)
    return record.SerializeToString()
