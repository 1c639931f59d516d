"""Write the RecordIO-protobuf golden files in this folder with the REAL SageMaker Python SDK.

Run it with a Python that has the SageMaker Python SDK v2 and scipy installed (not the
project venv, which deliberately has no SDK). The files in this folder were made with::

    SAGEMAKER_SUPPRESS_V2_WARNING=1 /tmp/sdkvenv/bin/python tests/data/recordio/make_golden.py

from the repository root, with sagemaker 2.257.7, protobuf 6.33.6, numpy 2.4.6 and
scipy 1.17.1 (the SDK does not depend on scipy; ``pip install scipy`` into its venv for
``write_spmatrix_to_sparse_tensor``). Its outputs are committed: the tests read them and
never need the SDK. Rerunning it rewrites byte-identical ``.pbr``/``.pbr.gz`` files (the
SDK writer is deterministic and the gzip header carries mtime 0); the ``.npz`` files
hold the same arrays but their zip timestamps change.

Every ``<name>.pbr`` (or ``<name>.pbr.gz``) comes with ``<name>.npz`` holding the truth:

- dense: ``X`` (float32, what a reader should return) and, when labelled, ``y`` (float32);
- sparse: ``data``, ``indices``, ``indptr``, ``shape`` of the float32 CSR matrix, and
  ``y`` (float32) when labelled;
- where the array given to the SDK was not float32, also that array in its own dtype:
  ``X_orig`` (dense), ``data_orig`` (sparse values) and ``y_orig`` (labels), so a writer
  can be fed exactly what the SDK was fed. Missing ``*_orig`` means "same as float32".

``golden.json`` lists every file with the SDK call, tensor types, dtypes, row/column
counts, byte size and sha256. Before writing anything the script checks each file by
reading it back with the SDK's own ``read_records`` and with an independent RecordIO
framing parser, so the fixtures and their truth cannot silently disagree.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sagemaker.amazon.common import (
    read_records,
    write_numpy_to_dense_tensor,
    write_spmatrix_to_sparse_tensor,
)

HERE = Path(__file__).resolve().parent
MAGIC = 0xCED7230A
EXPECTED_SDK = "2.257.7"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# np.dtype(int) is the only integer dtype the SDK accepts (int64 on Linux/macOS); it is
# written as an Int32Tensor and values outside int32 make protobuf raise ValueError.
SDK_INT = np.dtype(int)

TENSOR_OF = {np.dtype(np.float32): "float32_tensor", np.dtype(np.float64): "float64_tensor",
             SDK_INT: "int32_tensor"}


# ----------------------------------------------------------------------------- data

def dense_f32_37x13():
    rng = np.random.default_rng(1001)
    X = (rng.standard_normal((37, 13)) * 10).astype(np.float32)
    X[0, 0] = -0.0                      # negative zero
    X[1, 1] = 3.0e38                    # near float32 max
    X[2, 2] = -1.0e-30                  # tiny normal
    X[3, :] = 0.0                       # an all-zero dense row (13 zeros are still written)
    X[4, 4] = np.float32(1.0e-45)       # the smallest float32 subnormal
    X[5, 12] = 16777217.0               # rounds to 2**24 in float32
    y = rng.integers(0, 5, size=37).astype(np.float32)
    return X, y


def dense_f64_20x7():
    rng = np.random.default_rng(1002)
    X = rng.standard_normal((20, 7)) * 1000.0     # float64, mostly not float32-exact
    X[0, 0] = 0.1
    X[1, :] = 0.0
    X[2, 3] = -123456789.123456789
    y = rng.standard_normal(20) * 3.0             # float64 regression targets
    y[0] = 0.1
    return X, y


def dense_int_25x6():
    rng = np.random.default_rng(1003)
    X = rng.integers(INT32_MIN, INT32_MAX, size=(25, 6), endpoint=True).astype(SDK_INT)
    X[0] = [INT32_MIN, INT32_MAX, -1, 0, 1, 16777217]
    X[1] = [127, 128, -128, -129, 2**24, -(2**24) - 1]
    X[2] = rng.integers(-3, 4, size=6)
    y = rng.choice(np.array([-1, 0, 1, 7]), size=25).astype(SDK_INT)
    return X, y


def dense_f32_50x1():
    rng = np.random.default_rng(1004)
    X = rng.uniform(-5, 5, size=(50, 1)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    return X, y


def dense_f32_2000x5():
    rng = np.random.default_rng(1005)
    X = rng.standard_normal((2000, 5)).astype(np.float32)
    y = rng.integers(0, 10, size=2000).astype(np.float32)
    return X, y


def sparse_f32_30x40():
    rng = np.random.default_rng(2001)
    A = np.where(rng.random((30, 40)) < 0.15, rng.standard_normal((30, 40)), 0.0)
    A = A.astype(np.float32)
    A[0, :] = 0.0                       # first row empty
    A[17, :] = 0.0                      # a middle row empty
    A[10, :] = rng.uniform(0.5, 2.0, size=40).astype(np.float32)   # a full row
    A[5, :] = 0.0
    A[5, 39] = 4.25                     # only nonzero is the last column
    A[29, :] = 0.0
    A[29, 39] = -1.5                    # last row: only the last column
    y = rng.integers(0, 3, size=30).astype(np.float32)
    return sp.csr_matrix(A), y


def sparse_f64_25x50():
    rng = np.random.default_rng(2002)
    A = np.where(rng.random((25, 50)) < 0.1, rng.standard_normal((25, 50)) * 100.0, 0.0)
    A[:, 45:] = 0.0                     # trailing columns empty: only `shape` tells 50
    A[3, :] = 0.0
    A[24, :] = 0.0                      # the file ends with an empty record
    A[7, 0] = 0.1
    y = rng.standard_normal(25)
    return sp.csr_matrix(A), y


# --------------------------------------------------------------------------- checks

def framing(data: bytes) -> list[bytes]:
    """Independent RecordIO parse: aligned magic, flags 0, zero padding, exact end."""
    payloads, offset = [], 0
    while offset < len(data):
        assert offset % 4 == 0, offset
        magic, lrec = struct.unpack_from("<II", data, offset)
        assert magic == MAGIC, (offset, hex(magic))
        assert lrec >> 29 == 0, ("continuation flag set", offset)
        length = lrec & ((1 << 29) - 1)
        start = offset + 8
        end = start + length
        padded = start + ((length + 3) & ~3)
        assert padded <= len(data), "truncated record"
        assert data[end:padded] == b"\0" * (padded - end), "non-zero padding"
        payloads.append(data[start:end])
        offset = padded
    assert offset == len(data)
    return payloads


def check_dense(data: bytes, X: np.ndarray, y: np.ndarray | None) -> None:
    records = read_records(io.BytesIO(data))
    assert len(records) == X.shape[0] == len(framing(data))
    want = TENSOR_OF[X.dtype]
    for i, rec in enumerate(records):
        assert list(rec.features) == ["values"]
        value = rec.features["values"]
        assert value.WhichOneof("value") == want
        tensor = getattr(value, want)
        assert list(tensor.keys) == [] and list(tensor.shape) == []
        got = np.array(tensor.values, dtype=X.dtype)
        assert got.tobytes() == X[i].tobytes(), i     # bit-exact, -0.0 included
        check_label(rec, y, i)
        assert not rec.HasField("uid") and not rec.HasField("metadata")


def check_sparse(data: bytes, A: sp.csr_matrix, y: np.ndarray | None) -> None:
    records = read_records(io.BytesIO(data))
    assert len(records) == A.shape[0] == len(framing(data))
    want = TENSOR_OF[A.dtype]
    for i, rec in enumerate(records):
        value = rec.features["values"]
        assert value.WhichOneof("value") == want
        tensor = getattr(value, want)
        lo, hi = A.indptr[i], A.indptr[i + 1]
        assert list(tensor.shape) == [A.shape[1]]
        assert list(tensor.keys) == A.indices[lo:hi].tolist()
        assert np.array(tensor.values, dtype=A.dtype).tobytes() == A.data[lo:hi].tobytes()
        check_label(rec, y, i)


def check_label(rec, y: np.ndarray | None, i: int) -> None:
    if y is None:
        assert list(rec.label) == []
        return
    assert list(rec.label) == ["values"]
    value = rec.label["values"]
    want = TENSOR_OF[y.dtype]
    assert value.WhichOneof("value") == want
    tensor = getattr(value, want)
    assert list(tensor.keys) == [] and list(tensor.shape) == []
    assert np.array(tensor.values, dtype=y.dtype).tobytes() == y[i : i + 1].tobytes()


# --------------------------------------------------------------------------- writing

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Golden:
    """Collects the files to write (bytes by name) and their ``golden.json`` entries."""

    def __init__(self, version: str) -> None:
        self.outputs: dict[str, bytes] = {}
        self.manifest = {
            "generator": "tests/data/recordio/make_golden.py",
            "sagemaker": version,
            "protobuf": metadata.version("protobuf"),
            "numpy": np.__version__,
            "scipy": metadata.version("scipy"),
            "python": sys.version.split()[0],
            "files": [],
        }

    def add(self, name, kind, call, X, y, data, suffix=".pbr", note=""):
        """``<name><suffix>`` holding ``data``, and ``<name>.npz`` holding the truth."""
        file = name + suffix
        truth = {}
        if kind == "dense":
            truth["X"] = X.astype(np.float32)
            if X.dtype != np.float32:
                truth["X_orig"] = X
        else:
            f32 = X.astype(np.float32)
            truth.update(data=f32.data, indices=f32.indices, indptr=f32.indptr,
                         shape=np.array(f32.shape, dtype=np.int64))
            if X.dtype != np.float32:
                truth["data_orig"] = X.data
        if y is not None:
            truth["y"] = y.astype(np.float32)
            if y.dtype != np.float32:
                truth["y_orig"] = y
        buf = io.BytesIO()
        np.savez(buf, **truth)
        self.outputs[file] = data
        self.outputs[name + ".npz"] = buf.getvalue()
        self.manifest["files"].append({
            "file": file, "truth": name + ".npz", "kind": kind, "sdk_call": call,
            "rows": int(X.shape[0]), "cols": int(X.shape[1]),
            "input_dtype": str(X.dtype), "feature_tensor": TENSOR_OF[X.dtype],
            "labelled": y is not None,
            "label_dtype": None if y is None else str(y.dtype),
            "label_tensor": None if y is None else TENSOR_OF[y.dtype],
            "gzip": suffix.endswith(".gz"), "bytes": len(data), "sha256": sha256(data),
            "note": note,
        })

    def save(self) -> None:
        self.outputs["golden.json"] = (json.dumps(self.manifest, indent=1) + "\n").encode()
        for file, data in self.outputs.items():
            (HERE / file).write_bytes(data)
        total = sum(len(d) for d in self.outputs.values())
        for entry in self.manifest["files"]:
            label = f"  label {entry['label_tensor']}" if entry["labelled"] else ""
            print(f"{entry['file']:38s} {entry['bytes']:7d} bytes  "
                  f"{entry['feature_tensor']}{label}")
        print(f"{len(self.outputs)} files, {total} bytes in {HERE}")


DENSE = {  # stem: (data, write a labelled file, write an unlabelled file, note)
    "dense_f32_37x13": (dense_f32_37x13, True, True,
                        "float32; -0.0, 3e38, -1e-30, subnormal 1e-45, zero row"),
    "dense_f64_20x7": (dense_f64_20x7, True, True,
                       "float64 (not float32-exact); the _labels file has float64 labels"),
    "dense_int_25x6": (dense_int_25x6, True, True,
                       "int64 input (the only int dtype the SDK takes) -> Int32Tensor; "
                       "INT32_MIN/MAX, negatives; the _labels file has int64 labels"),
    "dense_f32_50x1": (dense_f32_50x1, True, False, "a single column"),
    "dense_f32_2000x5": (dense_f32_2000x5, True, False, "many rows, for batching"),
}

SPARSE = {  # stem: (data, note); each gets a labelled and an unlabelled file
    "sparse_f32_30x40": (sparse_f32_30x40,
                         "float32 CSR; rows 0 and 17 empty, row 10 full, rows 5 and 29 "
                         "hold only column 39"),
    "sparse_f64_25x50": (sparse_f64_25x50,
                         "float64 CSR (float64 labels); columns 45-49 empty everywhere, "
                         "rows 3 and 24 (the last) empty"),
}


def write_dense(golden: Golden) -> None:
    for stem, (make, with_labels, without_labels, note) in DENSE.items():
        X, y = make()
        variants = ([(stem + "_labels", y)] if with_labels else []) + (
            [(stem, None)] if without_labels else [])
        for name, labels in variants:
            buf = io.BytesIO()
            write_numpy_to_dense_tensor(buf, X, labels)
            data = buf.getvalue()
            check_dense(data, X, labels)
            golden.add(name, "dense", "write_numpy_to_dense_tensor", X, labels, data,
                       note=note)


def write_sparse(golden: Golden) -> None:
    for stem, (make, note) in SPARSE.items():
        A, y = make()
        assert A.has_sorted_indices and not np.any(A.data == 0)
        for name, labels in ((stem + "_labels", y), (stem, None)):
            buf = io.BytesIO()
            write_spmatrix_to_sparse_tensor(buf, A, labels)
            data = buf.getvalue()
            check_sparse(data, A, labels)
            golden.add(name, "sparse", "write_spmatrix_to_sparse_tensor", A, labels, data,
                       note=note)


def write_gzip_copy(golden: Golden) -> None:
    """The bytes of dense_f32_37x13_labels.pbr, gzip-compressed with mtime 0."""
    X, y = dense_f32_37x13()
    plain = golden.outputs["dense_f32_37x13_labels.pbr"]
    packed = gzip.compress(plain, compresslevel=9, mtime=0)
    assert gzip.decompress(packed) == plain
    golden.add("dense_f32_37x13_labels_gzip", "dense", "write_numpy_to_dense_tensor + gzip",
               X, y, packed, suffix=".pbr.gz",
               note="gzip (mtime 0) of dense_f32_37x13_labels.pbr")


def main() -> None:
    version = metadata.version("sagemaker")
    if version != EXPECTED_SDK:
        print(f"warning: sagemaker {version}, the committed files came from {EXPECTED_SDK}",
              file=sys.stderr)
    golden = Golden(version)
    write_dense(golden)
    write_sparse(golden)
    write_gzip_copy(golden)
    golden.save()


if __name__ == "__main__":
    main()
