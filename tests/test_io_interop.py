"""RecordIO-protobuf interoperability with the real SageMaker Python SDK.

The golden files in ``tests/data/recordio/`` were written by the SDK's own
``write_numpy_to_dense_tensor`` / ``write_spmatrix_to_sparse_tensor`` (sagemaker 2.257.7,
see ``make_golden.py`` and ``golden.json``); each ``<name>.pbr[.gz]`` has its expected
arrays in ``<name>.npz``. Checked here:

- the files are real RecordIO, and their bytes hold exactly the ``.npz`` arrays (an
  independent framing parser and protobuf wire decoder, neither gpuknn's nor the SDK's);
- ``gpuknn.io.read`` and ``gpuknn.io.iter_batches`` decode every golden file exactly;
- ``gpuknn.io.write_recordio`` writes the SDK's bytes, byte for byte, for the same arrays;
- the SDK's ``read_records`` reads what gpuknn writes (in a subprocess, skipped unless a
  Python with the SDK is found: this interpreter or ``$GPUKNN_SDK_PYTHON``).

The SDK is never imported in the test process.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from _wire import SDK_ENV, decode_record, frames

import gpuknn.io

DATA = Path(__file__).parent / "data" / "recordio"
MANIFEST = json.loads((DATA / "golden.json").read_text())
GOLDEN = MANIFEST["files"]
PLAIN = [entry for entry in GOLDEN if not entry["gzip"]]
CONTENT_TYPE = "application/x-recordio-protobuf"
TENSOR_OF_DTYPE = {"float32": "float32_tensor", "float64": "float64_tensor",
                   "int32": "int32_tensor", "int64": "int32_tensor"}


def ids(entries):
    return [entry["file"] for entry in entries]


# ------------------------------------------------------------------------ golden truth

def raw_bytes(entry) -> bytes:
    data = (DATA / entry["file"]).read_bytes()
    return gzip.decompress(data) if entry["gzip"] else data


def truth(entry) -> dict:
    """The expected arrays: ``X`` (float32 ndarray or CSR), ``y`` (float32 or None), and
    ``X_orig``/``y_orig``, what the SDK was given (dtype int64 for the SDK's int input)."""
    with np.load(DATA / entry["truth"]) as npz:
        arrays = {key: npz[key] for key in npz.files}
    if entry["kind"] == "dense":
        X = arrays["X"]
        X_orig = arrays.get("X_orig", X)
    else:
        shape = tuple(int(n) for n in arrays["shape"])
        X = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape)
        data_orig = arrays.get("data_orig", arrays["data"])
        X_orig = sp.csr_matrix((data_orig, arrays["indices"], arrays["indptr"]), shape=shape)
    y = arrays.get("y")
    return {"X": X, "y": y, "X_orig": X_orig, "y_orig": arrays.get("y_orig", y)}


def as_writer_input(array):
    """gpuknn's writer takes int32 where the SDK insisted on np.dtype(int) (int64)."""
    if array is not None and array.dtype == np.int64:
        return array.astype(np.int32)
    return array


# ------------------------------------------------- independent RecordIO + protobuf parsing

# --------------------------------------------------------------- the golden files themselves

@pytest.mark.parametrize("entry", GOLDEN, ids=ids(GOLDEN))
def test_golden_file_is_real_recordio(entry):
    stored = (DATA / entry["file"]).read_bytes()
    assert len(stored) == entry["bytes"]
    assert hashlib.sha256(stored).hexdigest() == entry["sha256"], "golden file changed"
    data = raw_bytes(entry)
    if entry["gzip"]:
        assert stored[:2] == b"\x1f\x8b"
        plain = entry["file"].replace("_gzip.pbr.gz", ".pbr")
        assert data == (DATA / plain).read_bytes()
    assert len(frames(data)) == entry["rows"]


@pytest.mark.parametrize("entry", GOLDEN, ids=ids(GOLDEN))
def test_golden_bytes_hold_the_npz_arrays(entry):
    """The .npz truth agrees with the bytes, checked without the SDK or gpuknn."""
    expected = truth(entry)
    X_orig = expected["X_orig"]
    dense = X_orig if entry["kind"] == "dense" else X_orig.toarray()
    labels = []
    for row, (_, payload) in enumerate(frames(raw_bytes(entry))):
        record = decode_record(payload)
        assert list(record["features"]) == ["values"]
        name, values, keys, shape = record["features"]["values"]
        assert name == entry["feature_tensor"]
        if entry["kind"] == "dense":
            assert keys == [] and shape == []
            got = values
        else:
            assert shape == [entry["cols"]]
            got = np.zeros(entry["cols"], values.dtype)
            got[keys] = values
        assert got.dtype == dense.dtype
        np.testing.assert_array_equal(got, dense[row])
        if entry["labelled"]:
            assert list(record["label"]) == ["values"]
            name, values, keys, shape = record["label"]["values"]
            assert (name, len(values), keys, shape) == (entry["label_tensor"], 1, [], [])
            labels.append(values[0])
        else:
            assert record["label"] == {}
    if entry["labelled"]:
        np.testing.assert_array_equal(np.array(labels), expected["y_orig"])
        np.testing.assert_array_equal(expected["y_orig"].astype(np.float32), expected["y"])
    assert expected["X"].dtype == np.float32


# ------------------------------------------------------------------------ gpuknn reads

def assert_same_X(got, want) -> None:
    if sp.issparse(want):
        assert sp.issparse(got) and got.format == "csr", type(got)
        assert got.dtype == np.float32
        assert got.shape == want.shape
        got, want = got.sorted_indices(), want.sorted_indices()
        np.testing.assert_array_equal(got.data, want.data)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.indptr, want.indptr)
    else:
        assert isinstance(got, np.ndarray), type(got)
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def assert_same_y(got, want) -> None:
    if want is None:
        assert got is None
    else:
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.ndim == 1
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("entry", GOLDEN, ids=ids(GOLDEN))
def test_read_golden_file(entry):
    expected = truth(entry)
    X, y = gpuknn.io.read(DATA / entry["file"])
    assert_same_X(X, expected["X"])
    assert_same_y(y, expected["y"])


@pytest.mark.parametrize("entry", GOLDEN, ids=ids(GOLDEN))
def test_iter_batches_golden_file(entry):
    expected = truth(entry)
    rows = entry["rows"]
    batch_size = 7 if rows < 500 else 333
    assert rows % batch_size != 0
    batches = list(gpuknn.io.iter_batches(DATA / entry["file"], content_type=CONTENT_TYPE,
                                          batch_size=batch_size))
    assert len(batches) >= 2
    assert all(0 < X.shape[0] <= batch_size for X, _ in batches)
    assert sum(X.shape[0] for X, _ in batches) == rows
    if entry["kind"] == "dense":
        X = np.concatenate([X for X, _ in batches])
    else:
        assert all(X.shape[1] == entry["cols"] for X, _ in batches)
        X = sp.vstack([X for X, _ in batches], format="csr")
    assert_same_X(X, expected["X"])
    if entry["labelled"]:
        assert_same_y(np.concatenate([y for _, y in batches]), expected["y"])
    else:
        assert all(y is None for _, y in batches)


@pytest.mark.parametrize("name", ["dense_f32_37x13_labels.pbr", "sparse_f64_25x50_labels.pbr"])
def test_read_from_str_path_and_open_file(name):
    (entry,) = [e for e in GOLDEN if e["file"] == name]
    expected = truth(entry)
    path = DATA / name
    X, y = gpuknn.io.read(str(path), content_type=CONTENT_TYPE)
    assert_same_X(X, expected["X"])
    assert_same_y(y, expected["y"])
    with path.open("rb") as f:
        X, y = gpuknn.io.read(f, content_type=CONTENT_TYPE)
    assert_same_X(X, expected["X"])
    assert_same_y(y, expected["y"])


def test_gzip_copy_reads_like_the_plain_file():
    X_gz, y_gz = gpuknn.io.read(DATA / "dense_f32_37x13_labels_gzip.pbr.gz")
    X, y = gpuknn.io.read(DATA / "dense_f32_37x13_labels.pbr")
    np.testing.assert_array_equal(X_gz, X)
    np.testing.assert_array_equal(y_gz, y)


# ------------------------------------------------------------------------ gpuknn writes

def first_difference(got: bytes, want: bytes) -> str:
    """Where two RecordIO byte strings part, in words, for a readable failure."""
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
              min(len(got), len(want)))
    starts = [offset for offset, _ in frames(want)]
    record = sum(offset <= at for offset in starts) - 1
    return (f"{len(got)} bytes vs the SDK's {len(want)}; first difference at byte {at} "
            f"(record {record}): gpuknn {got[at : at + 16].hex(' ')} / "
            f"SDK {want[at : at + 16].hex(' ')}")


@pytest.mark.parametrize("target", ["file", "path"])
@pytest.mark.parametrize("entry", PLAIN, ids=ids(PLAIN))
def test_write_recordio_is_byte_identical_to_the_sdk(entry, target, tmp_path):
    expected = truth(entry)
    X, labels = as_writer_input(expected["X_orig"]), as_writer_input(expected["y_orig"])
    if target == "file":
        buffer = io.BytesIO()
        gpuknn.io.write_recordio(buffer, X, labels=labels)
        got = buffer.getvalue()
    else:
        path = tmp_path / entry["file"]
        gpuknn.io.write_recordio(path, X, labels=labels)
        got = path.read_bytes()
    want = raw_bytes(entry)
    assert got == want, first_difference(got, want)


# -------------------------------------------------------- the SDK reads what gpuknn writes

SDK_READER = r"""
import json, sys
from sagemaker.amazon.common import read_records

out = {}
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        records = read_records(f)
    rows = []
    for record in records:
        row = {}
        for part in ("features", "label"):
            row[part] = {}
            for key, value in getattr(record, part).items():
                kind = value.WhichOneof("value")
                tensor = getattr(value, kind)
                row[part][key] = [kind, list(tensor.values), list(tensor.keys),
                                  list(tensor.shape)]
        rows.append(row)
    out[path] = rows
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"""




def sdk_read(python: str, paths: list[Path], tmp_path: Path) -> dict:
    out = tmp_path / "sdk_read.json"
    result = subprocess.run([python, "-c", SDK_READER, str(out), *map(str, paths)],
                            capture_output=True, text=True, timeout=600, env=SDK_ENV,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def extra_cases() -> dict[str, tuple]:
    """Arrays not in the golden set: keys and shapes past one varint byte, mixed dtypes."""
    rng = np.random.default_rng(20240607)
    wide = sp.random(12, 300_000, density=2e-5, format="lil", dtype=np.float32,
                     random_state=rng)
    wide[3, :] = 0
    wide[5, 299_999] = 2.5
    wide = wide.tocsr()
    wide.eliminate_zeros()
    return {
        "extra_sparse_wide.pbr": (wide, rng.integers(0, 4, 12).astype(np.float32)),
        "extra_dense_f32_f64labels.pbr": (rng.standard_normal((9, 4)).astype(np.float32),
                                          rng.standard_normal(9)),
        "extra_dense_int32.pbr": (rng.integers(-(2**31), 2**31 - 1, (6, 3), dtype=np.int32),
                                  None),
        "extra_dense_f64_1col.pbr": (rng.standard_normal((11, 1)), None),
    }


def test_sdk_reads_files_gpuknn_writes(sdk_python, tmp_path):
    cases = {entry["file"]: (as_writer_input(truth(entry)["X_orig"]),
                             as_writer_input(truth(entry)["y_orig"])) for entry in PLAIN}
    cases.update(extra_cases())
    paths = {}
    for name, (X, labels) in cases.items():
        paths[name] = tmp_path / name
        gpuknn.io.write_recordio(paths[name], X, labels=labels)
    decoded = sdk_read(sdk_python, list(paths.values()), tmp_path)
    for name, (X, labels) in cases.items():
        rows = decoded[str(paths[name])]
        assert len(rows) == X.shape[0], name
        want_kind = TENSOR_OF_DTYPE[str(X.dtype)]
        dense = X.toarray() if sp.issparse(X) else X
        for i, row in enumerate(rows):
            assert list(row["features"]) == ["values"], (name, i)
            kind, values, keys, shape = row["features"]["values"]
            assert kind == want_kind, (name, i)
            values = np.array(values, dtype=X.dtype)
            if sp.issparse(X):
                assert shape and shape[-1] == X.shape[1], (name, i, shape)
                got = np.zeros(X.shape[1], X.dtype)
                got[np.array(keys, dtype=np.int64)] = values
            else:
                assert keys == [], (name, i)
                got = values
            np.testing.assert_array_equal(got, dense[i], err_msg=f"{name} row {i}")
            if labels is None:
                assert row["label"] == {}, (name, i)
            else:
                assert list(row["label"]) == ["values"], (name, i)
                _, label, _, _ = row["label"]["values"]
                assert len(label) == 1, (name, i)
                assert np.float32(label[0]) == np.float32(labels[i]), (name, i)
