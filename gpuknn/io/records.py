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
from gpuknn.io.limits import MAX_FEATURES

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
# It takes only the canonical layout that the SageMaker SDK writes, and hands anything else
# (repeated or unknown fields, unpacked values, int32, sparse) to protobuf, so that both
# paths accept and refuse exactly the same bytes.
_LENGTH_DELIMITED = 2


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


def _fields(buffer: bytes, start: int, end: int) -> dict[int, tuple[int, int]] | None:
    """``{field: (content_start, content_end)}`` of a message made only of distinct
    length-delimited fields; None for anything else (ValueError if it is malformed)."""
    found: dict[int, tuple[int, int]] = {}
    position = start
    while position < end:
        key, position = _varint(buffer, position)
        field, wire_type = key >> 3, key & 7
        if wire_type != _LENGTH_DELIMITED or field in found:
            return None
        length, position = _varint(buffer, position)
        found[field] = (position, position + length)
        position += length
    if position != end:
        raise ValueError("field overruns its message")
    return found


def _tensor_layout(buffer: bytes, start: int, end: int):
    """``(dtype, values_start, values_end)`` of a map entry ``"values" -> Value`` holding
    one Float32 or Float64 tensor with packed values and nothing else, or None."""
    entry = _fields(buffer, start, end)
    if entry is None or set(entry) != {1, 2} or buffer[slice(*entry[1])] != b"values":
        return None
    value = _fields(buffer, *entry[2])
    if value is None or len(value) != 1:
        return None
    (field, (tensor_start, tensor_end)), = value.items()
    dtype = TENSOR_FIELDS.get(field, (None, None))[1]
    tensor = _fields(buffer, tensor_start, tensor_end)
    if dtype is None or tensor is None or set(tensor) != {1}:
        return None  # int32 varints, keys or shape (sparse), or no values at all
    values_start, values_end = tensor[1]
    if (values_end - values_start) % np.dtype(dtype).itemsize:
        return None  # protobuf refuses a packed field of a partial value
    return dtype, values_start, values_end


def _layout(template: bytes):
    """Where the feature and label values of a canonical dense record lie, or None."""
    record = _fields(template, 0, len(template))
    if record is None or 1 not in record or not set(record) <= {1, 2}:
        return None
    features = _tensor_layout(template, *record[1])
    label = _tensor_layout(template, *record[2]) if 2 in record else None
    if features is None or (2 in record and label is None):
        return None
    return features, label


def decode_run(payloads: np.ndarray) -> Decoded | None:
    """Decode equal-length payloads (n, L) uint8 as dense rows, or None if they differ.

    None means "use :func:`decode_payloads`": the records are not all canonical dense
    fixed-width records laid out like the first one. Where it decodes, the result is
    the one :func:`decode_payloads` gives.
    """
    try:
        layout = _layout(payloads[0].tobytes())
    except ValueError:
        return None
    if layout is None:
        return None
    (dtype, v_start, v_end), label = layout
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
    # float64 beyond float32 becomes infinite (refused by row later), NaN stays NaN
    with np.errstate(over="ignore", invalid="ignore"):
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
        values = _float32(tensor.values)
        # Sparse: keys given, or a shape that the values do not fill (an all-zero row).
        sparse = len(tensor.keys) or (len(tensor.shape) and len(values) != tensor.shape[0])
        keys = np.asarray(tensor.keys, dtype=np.uint64) if sparse else None
        rows.append((values, keys, tuple(tensor.shape), where))
        labels.append(_label(record, where))
    return Decoded(_assemble(rows), _assemble_labels(labels, wheres))


def _float32(values) -> np.ndarray:
    """Tensor values as float32; float64 beyond its range becomes infinite (refused later)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32)


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
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(labels, dtype=np.float32)


def _assemble(rows) -> np.ndarray | sp.csr_matrix:
    if all(keys is None for _, keys, _, _ in rows):
        width = len(rows[0][0])
        for values, _, _, where in rows:
            if len(values) != width:
                raise DataError(f"{where}: {len(values)} features; earlier records have {width}")
        return np.stack([values for values, _, _, _ in rows]) if rows else np.empty((0, 0))
    return _assemble_sparse(rows)


def _sparse_width(shape: tuple[int, ...], where: str) -> int:
    """The feature count of a sparse tensor's shape: one dimension, 1 to MAX_FEATURES."""
    if len(shape) != 1:
        raise DataError(f"{where}: a sparse tensor (with keys) needs a shape of one dimension, "
                        f"[n_features]; got {list(shape)}")
    if not 1 <= shape[0] <= MAX_FEATURES:
        raise DataError(f"{where}: sparse shape [{shape[0]}] must be between 1 and "
                        f"{MAX_FEATURES} features")
    return int(shape[0])


def _assemble_sparse(rows) -> sp.csr_matrix:
    n_cols = None
    indptr, indices, data = [0], [], []
    for values, keys, shape, where in rows:
        width = _sparse_width(shape, where) if keys is not None else len(values)
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
        indices.append(keys.astype(np.int64))
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
