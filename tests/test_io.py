"""The data layer ``gpuknn.io``: sources, RecordIO framing, Record decoding, CSV and JSON.

Every bad input must raise :class:`gpuknn.errors.DataError` naming the file and the place
(byte offset, record number, line, column); the numpy fast path for runs of equal-length
records must agree with the protobuf path record for record; sources are only ever read
forward (pipes, gzip, non-seekable files) and memory stays bounded by a batch.

RecordIO test data is built here from ``write_recordio`` frames or by hand with
``struct``; record numbers in messages are 0-based, CSV and JSON Lines lines 1-based.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import struct
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import gpuknn.io
import gpuknn.io.recordio
import gpuknn.io.records
import gpuknn.io.text
from gpuknn import KNN, DataError, record_set
from gpuknn.io import iter_batches, read, write_recordio
from gpuknn.io._record import messages
from gpuknn.io.recordio import PayloadRun, iter_payloads

RECORDIO = "application/x-recordio-protobuf"
CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
DATA = Path(__file__).parent / "data" / "recordio"
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")


@pytest.fixture(autouse=True, params=["mmap", "blocks"])
def recordio_reader(request, monkeypatch):
    """Every test runs twice: regular files memory-mapped whole, and streamed in blocks."""
    monkeypatch.setattr(gpuknn.io.recordio, "MEMORY_MAP", request.param == "mmap")


# --------------------------------------------------------------------------------- helpers

def at(*places: str) -> str:
    """A ``match`` pattern requiring every place (file name, "record 7", ...) in the message.

    A place ending in a digit must not run on into another digit ("record 5" is not
    "record 50").
    """
    parts = [re.escape(str(p)) + (r"(?!\d)" if str(p)[-1:].isdigit() else "") for p in places]
    return "(?s)" + "".join(f"(?=.*{part})" for part in parts)


def frame(payload: bytes, flag: int = 0) -> bytes:
    """One RecordIO record built by hand: magic, flag and length, payload, zero padding."""
    header = struct.pack("<II", MAGIC, (flag << 29) | len(payload))
    return header + payload + b"\0" * (-len(payload) % 4)


def recordio_bytes(X, labels=None) -> bytes:
    buffer = io.BytesIO()
    write_recordio(buffer, X, labels)
    return buffer.getvalue()


def payloads_of(data: bytes) -> list[bytes]:
    """Split flag-0 RecordIO bytes into payloads (an independent, minimal parser)."""
    out, position = [], 0
    while position < len(data):
        magic, length = struct.unpack_from("<II", data, position)
        assert magic == MAGIC and length >> 29 == 0
        out.append(data[position + 8 : position + 8 + length])
        position += 8 + length + (-length % 4)
    return out


def record(values=None, label=None, *, kind="float32_tensor", keys=None, shape=None) -> bytes:
    """One Record payload, built with the protobuf messages."""
    message = messages().Record()
    tensor = getattr(message.features["values"], kind)
    if values is not None:
        tensor.values.extend(values)
    if keys is not None:
        tensor.keys.extend(keys)
    if shape is not None:
        tensor.shape.extend(shape)
    if label is not None:
        message.label["values"].float32_tensor.values.append(label)
    return message.SerializeToString()


def quarter_grid(rng, shape) -> np.ndarray:
    """float32 values that print exactly as short decimals (multiples of 1/4)."""
    return (rng.integers(-400, 400, size=shape) / 4).astype(np.float32)


def collect(batches):
    """Concatenate ``(X, y)`` batches; returns X (dense or CSR), y and the batch sizes."""
    batches = list(batches)
    features = [X for X, _ in batches]
    X = (sp.vstack(features, format="csr") if sp.issparse(features[0])
         else np.concatenate(features))
    y = None if batches[0][1] is None else np.concatenate([y for _, y in batches])
    return X, y, [X.shape[0] for X, _ in batches]


def assert_same(actual, expected):
    """Exact equality, dense or sparse, dtype float32."""
    assert actual.dtype == np.float32
    if sp.issparse(expected):
        assert sp.issparse(actual)
        assert actual.shape == expected.shape
        np.testing.assert_array_equal(actual.toarray(), expected.toarray())
    else:
        assert not sp.issparse(actual)
        np.testing.assert_array_equal(actual, expected)


class NonSeekable(io.RawIOBase):
    """A forward-only binary file: ``seek``/``tell`` raise, reads return ``step`` bytes."""

    def __init__(self, data: bytes, step: int = 1 << 16, name: str = "nonseekable-source"):
        self._data = io.BytesIO(data)
        self._step = step
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *args):
        raise io.UnsupportedOperation("this stream cannot seek")

    def tell(self):
        raise io.UnsupportedOperation("this stream cannot tell")

    def readinto(self, buffer) -> int:
        chunk = self._data.read(min(len(buffer), self._step))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@contextlib.contextmanager
def fifo_fed_with(path: Path, chunks: list[bytes]):
    """A real named pipe at ``path``, written chunk by chunk by a thread (Pipe mode)."""
    os.mkfifo(path)
    failures: list[BaseException] = []

    def writer():
        try:
            with open(path, "wb", buffering=0) as pipe:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[pipe.write(view) :]
        except BrokenPipeError:
            pass  # the reader stopped early; the test body reports why
        except BaseException as err:  # pragma: no cover - surfaced below
            failures.append(err)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        if thread.is_alive():  # the reader never opened the pipe, or stopped early
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.close(descriptor)
        thread.join(timeout=10)
    assert not failures, failures


def split_in_chunks(data: bytes, sizes=(1, 7, 4093, 10, 65537)) -> list[bytes]:
    """Uneven chunks (cycling through ``sizes``) covering ``data``."""
    chunks, position, index = [], 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        chunks.append(data[position : position + size])
        position += size
        index += 1
    return chunks


# ------------------------------------------------------------------ RecordIO: bad input

def test_wrong_magic_at_the_start_names_file_and_offset_0(tmp_path):
    path = tmp_path / "notrecordio.pbr"
    path.write_bytes(b"1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=at(path.name, "byte offset 0", "magic")):
        read(path)


@pytest.mark.parametrize("block_bytes", [None, 4096])
def test_wrong_magic_mid_run_names_its_byte_offset(tmp_path, monkeypatch, rng, block_bytes):
    if block_bytes:
        monkeypatch.setattr(gpuknn.io.recordio, "BLOCK_BYTES", block_bytes)
    X = rng.standard_normal((500, 7)).astype(np.float32)
    data = bytearray(recordio_bytes(X, np.zeros(500, np.float32)))
    stride = len(data) // 500
    assert stride == 72  # 4096 is not a multiple: records straddle block boundaries
    data[333 * stride : 333 * stride + 4] = b"\xde\xad\xbe\xef"
    path = tmp_path / "corrupt.pbr"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=at(path.name, f"byte offset {333 * stride}")):
        list(iter_batches(path, batch_size=10))


def test_garbage_after_the_last_record_names_its_offset(tmp_path):
    good = recordio_bytes(np.ones((3, 4), np.float32))
    path = tmp_path / "trailing.pbr"
    path.write_bytes(good + b"\x00" * 12)
    with pytest.raises(DataError, match=at(path.name, f"byte offset {len(good)}")):
        read(path)


@pytest.mark.parametrize("cut", [3, 8, 20], ids=["in-header", "after-header", "in-payload"])
def test_truncated_record_names_file_and_offset(tmp_path, cut):
    data = recordio_bytes(np.arange(40, dtype=np.float32).reshape(5, 8))
    stride = len(data) // 5
    path = tmp_path / "truncated.pbr"
    path.write_bytes(data[: 4 * stride + cut])
    with pytest.raises(DataError, match=at(path.name, f"byte offset {4 * stride}", "truncated")):
        read(path)


def test_truncated_run_deep_in_a_large_file(tmp_path, monkeypatch, rng):
    monkeypatch.setattr(gpuknn.io.recordio, "BLOCK_BYTES", 4096)
    data = recordio_bytes(rng.standard_normal((900, 7)).astype(np.float32),
                          np.ones(900, np.float32))
    path = tmp_path / "cut.pbr"
    path.write_bytes(data[:-30])
    with pytest.raises(DataError, match=at(path.name, f"byte offset {899 * 72}", "truncated")):
        list(iter_batches(path, batch_size=64))


@pytest.mark.parametrize("where", ["features", "label"])
def test_bytes_tensor_is_refused_with_its_record_number(tmp_path, where):
    odd = messages().Record()
    odd.features["values"].float32_tensor.values.extend([1.0, 2.0])
    target = odd.features if where == "features" else odd.label
    target["values"].bytes.value.append(b"not a number")
    good = record([1.0, 2.0], 0.0)
    data = frame(good) + frame(good) + frame(odd.SerializeToString()) + frame(good)
    path = tmp_path / "bytes.pbr"
    path.write_bytes(data)
    with pytest.raises(DataError, match=at(path.name, "record 2", "bytes",
                                          f"byte offset {2 * len(frame(good))}")):
        read(path)


def test_record_without_features_is_refused(tmp_path):
    message = messages().Record()
    message.label["values"].float32_tensor.values.append(1.0)
    path = tmp_path / "nofeatures.pbr"
    path.write_bytes(frame(record([1.0], 0.0)) + frame(message.SerializeToString()))
    with pytest.raises(DataError, match=at(path.name, "record 1", "features")):
        read(path)


def test_payload_that_is_not_protobuf_is_refused(tmp_path):
    path = tmp_path / "garbage.pbr"
    path.write_bytes(frame(record([1.0, 2.0])) + frame(b"\xff\xff\xff\xff\xff"))
    with pytest.raises(DataError, match=at(path.name, "record 1")):
        read(path)


def test_different_feature_counts_in_one_batch_name_the_record(tmp_path):
    data = recordio_bytes(np.ones((5, 4), np.float32)) + recordio_bytes(np.ones((3, 5), np.float32))
    path = tmp_path / "ragged.pbr"
    path.write_bytes(data)
    with pytest.raises(DataError, match=at(path.name, "record 5", "5 features")):
        read(path)


def test_different_feature_counts_between_two_runs_name_the_record(tmp_path):
    # 40 records of 5 features, then 40 of 6: two PayloadRuns, decoded separately.
    data = recordio_bytes(np.ones((40, 5), np.float32)) + recordio_bytes(np.ones((40, 6),
                                                                                 np.float32))
    path = tmp_path / "two_runs.pbr"
    path.write_bytes(data)
    with pytest.raises(DataError, match=at(path.name, "record 40")):
        read(path)
    with pytest.raises(DataError, match=at(path.name, "record 40")):
        list(iter_batches(path, batch_size=40))  # batch edges fall exactly on the change


def test_different_feature_counts_across_batches_name_the_record(tmp_path):
    data = recordio_bytes(np.ones((4, 5), np.float32)) + recordio_bytes(np.ones((4, 6), np.float32))
    path = tmp_path / "ragged_batches.pbr"
    path.write_bytes(data)
    with pytest.raises(DataError, match=at(path.name, "record 4")):
        list(iter_batches(path, batch_size=2))


def test_different_feature_counts_across_files_of_a_directory(tmp_path):
    (tmp_path / "a.pbr").write_bytes(recordio_bytes(np.ones((3, 4), np.float32)))
    (tmp_path / "b.pbr").write_bytes(recordio_bytes(np.ones((3, 5), np.float32)))
    with pytest.raises(DataError, match=at("b.pbr", "record 0")):
        list(iter_batches(tmp_path, batch_size=3))


def test_some_records_labelled_and_others_not_is_refused_with_a_place(tmp_path):
    data = (recordio_bytes(np.ones((40, 3), np.float32), np.ones(40, np.float32))
            + recordio_bytes(np.ones((40, 3), np.float32)))
    path = tmp_path / "labels.pbr"
    path.write_bytes(data)
    with pytest.raises(DataError, match=at(path.name, "record 40", "label")):
        read(path)
    with pytest.raises(DataError, match=at(path.name, "record 40", "label")):
        list(iter_batches(path, batch_size=40))  # not silently: y then None


def test_sparse_key_beyond_the_shape_names_the_record(tmp_path):
    good = record([1.0, 2.0], keys=[0, 9], shape=[10])
    bad = record([1.0, 2.0], keys=[3, 10], shape=[10])
    path = tmp_path / "sparse.pbr"
    path.write_bytes(frame(good) + frame(bad) + frame(good))
    with pytest.raises(DataError, match=at(path.name, "record 1", "key 10", "[10]")):
        read(path)


def test_sparse_keys_without_shape_or_with_unequal_counts_are_refused(tmp_path):
    path = tmp_path / "sparse.pbr"
    path.write_bytes(frame(record([1.0], keys=[0], shape=[3]))
                     + frame(record([1.0, 2.0], keys=[0, 1])))
    with pytest.raises(DataError, match=at(path.name, "record 1", "shape")):
        read(path)
    path.write_bytes(frame(record([1.0], keys=[0], shape=[3]))
                     + frame(record([1.0, 2.0], keys=[0], shape=[3])))
    with pytest.raises(DataError, match=at(path.name, "record 1", "keys")):
        read(path)


def test_label_with_several_values_is_refused(tmp_path):
    message = messages().Record()
    message.features["values"].float32_tensor.values.extend([1.0, 2.0])
    message.label["values"].float32_tensor.values.extend([1.0, 2.0])
    path = tmp_path / "labels.pbr"
    path.write_bytes(frame(record([1.0, 2.0], 0.0)) + frame(message.SerializeToString()))
    with pytest.raises(DataError, match=at(path.name, "record 1", "label")):
        read(path)


@pytest.mark.parametrize("content_type", [RECORDIO, CSV, JSONLINES, JSON])
def test_empty_file_is_refused(tmp_path, content_type):
    path = tmp_path / "empty.data"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=at(path.name)):
        list(iter_batches(path, content_type))


def test_empty_gzip_stream_and_empty_directory_are_refused(tmp_path):
    path = tmp_path / "empty.pbr.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match=at(path.name, "no records")):
        read(path)
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / ".hidden").write_bytes(recordio_bytes(np.ones((2, 2), np.float32)))
    with pytest.raises(DataError, match=at("nothing", "no data files")):
        read(empty)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(DataError, match=at("absent.pbr", "no such file")):
        read(tmp_path / "absent.pbr")


def test_gzip_cut_short_names_the_file(tmp_path):
    compressed = gzip.compress(recordio_bytes(np.arange(600, dtype=np.float32).reshape(100, 6)))
    path = tmp_path / "cut.pbr.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=at(path.name, "gzip")):
        read(path)
    csv = tmp_path / "cut.csv.gz"
    text = "".join(f"{i},{np.sin(i):.9f}\n" for i in range(3000)).encode()
    compressed = gzip.compress(text)
    assert len(compressed) > 2000
    csv.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=at(csv.name, "gzip")):
        read(csv, CSV)


def test_unsupported_content_type_is_refused(tmp_path):
    path = tmp_path / "x.pbr"
    path.write_bytes(recordio_bytes(np.ones((2, 2), np.float32)))
    with pytest.raises(DataError, match=at("application/x-parquet", "not supported")):
        read(path, "application/x-parquet")
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------- multi-part records

def split_at_magic(payload: bytes) -> list[bytes]:
    """What dmlc's RecordIOWriter does: cut at each 4-byte-aligned magic, dropping it."""
    parts, start = [], 0
    for position in range(0, len(payload) - 3, 4):
        if payload[position : position + 4] == MAGIC_BYTES:
            parts.append(payload[start:position])
            start = position + 4
    parts.append(payload[start:])
    return parts


def multipart(payload: bytes) -> bytes:
    parts = split_at_magic(payload)
    if len(parts) == 1:
        return frame(payload)
    flags = [1] + [2] * (len(parts) - 2) + [3]
    return b"".join(frame(part, flag) for part, flag in zip(parts, flags, strict=True))


def magic_float() -> float:
    """The float32 whose little-endian bytes are the RecordIO magic number."""
    return float(np.frombuffer(MAGIC_BYTES, dtype="<f4")[0])


@pytest.mark.parametrize("n_magic", [1, 2])
def test_multipart_record_restores_the_magic_inside_real_content(tmp_path, n_magic):
    row = np.array([1.5, magic_float(), 2.5, magic_float() if n_magic == 2 else 3.0, 4.0],
                   dtype=np.float32)
    payload = payloads_of(recordio_bytes(row[None, :], np.array([7.0], np.float32)))[0]
    parts = split_at_magic(payload)
    assert len(parts) == n_magic + 1  # the data really holds the magic, aligned
    before = np.array([[9.0, 8.0, 7.0, 6.0, 5.0]], np.float32)
    data = (recordio_bytes(before, np.array([1.0], np.float32)) + multipart(payload)
            + recordio_bytes(before, np.array([2.0], np.float32)))
    assert [struct.unpack_from("<I", data, 64 + 4)[0] >> 29] == [1]  # after a 64-byte record
    path = tmp_path / "multipart.pbr"
    path.write_bytes(data)
    X, y = read(path)
    np.testing.assert_array_equal(X, np.vstack([before, row[None, :], before]))
    np.testing.assert_array_equal(y, [1.0, 7.0, 2.0])
    assert X[1, 1].tobytes() == MAGIC_BYTES


@pytest.mark.parametrize("payload", [MAGIC_BYTES + b"abcd", b"abcd" + MAGIC_BYTES,
                                     MAGIC_BYTES + MAGIC_BYTES, b"ab" + b"\0\0" + MAGIC_BYTES
                                     + b"xyz" + MAGIC_BYTES + b"q"],
                         ids=["magic-first", "magic-last", "two-magics", "odd-length"])
def test_multipart_framing_joins_parts_with_the_magic(payload):
    data = frame(b"head") + multipart(payload) + frame(b"tail!")
    items = list(iter_payloads(io.BytesIO(data), "parts"))
    assert [item for item in items if not isinstance(item, PayloadRun)] == [
        (0, b"head"), (12, payload), (len(data) - 16, b"tail!")]


@pytest.mark.parametrize(("flags", "bad_part"), [((2, 3), 0), ((3,), 0), ((1, 0), 1),
                                                 ((1, 1, 3), 1), ((1, 2, 4), 2)],
                         ids=["starts-with-2", "starts-with-3", "flag0-inside", "1-after-1",
                              "flag-4"])
def test_broken_multipart_sequence_names_the_offset(tmp_path, flags, bad_part):
    head = frame(record([1.0, 2.0]))
    parts = [frame(b"part", flag) for flag in flags]
    path = tmp_path / "broken.pbr"
    path.write_bytes(head + b"".join(parts))
    offset = len(head) + sum(len(part) for part in parts[:bad_part])
    with pytest.raises(DataError, match=at(path.name, f"byte offset {offset}")):
        read(path)


def test_multipart_record_cut_off_at_the_end_is_truncated(tmp_path):
    head = frame(record([1.0, 2.0]))
    path = tmp_path / "unfinished.pbr"
    path.write_bytes(head + frame(b"part", 1) + frame(b"more", 2))
    with pytest.raises(DataError, match=at(path.name, f"byte offset {len(head)}", "truncated")):
        read(path)


def test_multipart_records_inside_runs_across_small_blocks(tmp_path, monkeypatch, rng):
    monkeypatch.setattr(gpuknn.io.recordio, "BLOCK_BYTES", 4096)
    X = quarter_grid(rng, (600, 5))
    X[[100, 101, 350, 599], 2] = magic_float()
    y = np.arange(600, dtype=np.float32)
    data = b"".join(multipart(payload) for payload in payloads_of(recordio_bytes(X, y)))
    assert data.count(MAGIC_BYTES) > 600  # the four split records add headers
    path = tmp_path / "runs_and_parts.pbr"
    path.write_bytes(data)
    for batch_size in (1, 37, 600, 5000):
        got_X, got_y, sizes = collect(iter_batches(path, batch_size=batch_size))
        np.testing.assert_array_equal(got_X, X)
        np.testing.assert_array_equal(got_y, y)
        assert sizes[:-1] == [batch_size] * (len(sizes) - 1)


# ------------------------------------------------------------- fast path == slow path

def force_slow_path(monkeypatch):
    """Every run goes through protobuf decoding, record by record."""
    monkeypatch.setattr(gpuknn.io.records, "decode_run", lambda payloads: None)


def count_fast_decodes(monkeypatch) -> list[int]:
    """Spy on the numpy path: the row counts it decoded."""
    real = gpuknn.io.records.decode_run
    rows: list[int] = []

    def spy(payloads):
        decoded = real(payloads)
        if decoded is not None:
            rows.append(payloads.shape[0])
        return decoded

    monkeypatch.setattr(gpuknn.io.records, "decode_run", spy)
    return rows


def interleaved_file(rng) -> tuple[bytes, np.ndarray, np.ndarray]:
    """1,000 float32 records of 7 features, with odd records (float64, another length) at
    300, 301 and 700: runs, single records and runs again."""
    X = quarter_grid(rng, (1000, 7))
    y = rng.integers(0, 5, 1000).astype(np.float32)
    frames = []
    for start, stop, dtype in [(0, 300, np.float32), (300, 302, np.float64),
                               (302, 700, np.float32), (700, 701, np.float64),
                               (701, 1000, np.float32)]:
        frames.append(recordio_bytes(X[start:stop].astype(dtype), y[start:stop].astype(dtype)))
    return b"".join(frames), X, y


@pytest.mark.parametrize("block_bytes", [None, 4096, 100])
@pytest.mark.parametrize("batch_size", [1, 64, 333, 1000, 5000])
def test_runs_and_single_records_interleave_like_the_slow_path(tmp_path, monkeypatch, rng,
                                                               block_bytes, batch_size):
    if block_bytes:
        monkeypatch.setattr(gpuknn.io.recordio, "BLOCK_BYTES", block_bytes)
    data, X, y = interleaved_file(rng)
    path = tmp_path / "interleaved.pbr"
    path.write_bytes(data)
    fast_rows = count_fast_decodes(monkeypatch)
    fast = collect(iter_batches(path, batch_size=batch_size))
    assert sum(fast_rows) >= 450  # the numpy path really ran (runs 0-299, ~557-699, ~957-)
    force_slow_path(monkeypatch)
    slow = collect(iter_batches(path, batch_size=batch_size))
    for got in (fast, slow):
        assert_same(got[0], X)
        np.testing.assert_array_equal(got[1], y)
        assert got[2] == [batch_size] * (1000 // batch_size) + (
            [1000 % batch_size] if 1000 % batch_size else [])


def test_payload_runs_cross_many_block_boundaries(monkeypatch, rng):
    monkeypatch.setattr(gpuknn.io.recordio, "BLOCK_BYTES", 4096)
    X = rng.standard_normal((3000, 7)).astype(np.float32)
    data = recordio_bytes(X, np.ones(3000, np.float32))
    stride = 72
    items = list(iter_payloads(NonSeekable(data), "blocks"))
    runs = [item for item in items if isinstance(item, PayloadRun)]
    assert len(runs) > 40  # ~216 KB in 4 KiB blocks: runs end at block edges
    position = 0
    for item in items:  # every record exactly once, in order, none lost at a block edge
        if isinstance(item, PayloadRun):
            assert item.offset == position
            n = item.payloads.shape[0]
            expected = payloads_of(data[position : position + n * stride])
            assert [row.tobytes() for row in item.payloads] == expected
            position += n * stride
        else:
            assert item[0] == position
            assert item[1] == payloads_of(data[position : position + stride])[0]
            position += stride
    assert position == len(data)
    np.testing.assert_array_equal(read(NonSeekable(data))[0], X)


def test_fast_path_decodes_float64_like_the_slow_path(monkeypatch, rng):
    X = rng.standard_normal((80, 9))  # float64, not float32-exact
    y = rng.standard_normal(80)
    data = recordio_bytes(X, y)
    fast_rows = count_fast_decodes(monkeypatch)
    fast_X, fast_y = read(io.BytesIO(data))
    assert sum(fast_rows) == 80
    force_slow_path(monkeypatch)
    slow_X, slow_y = read(io.BytesIO(data))
    np.testing.assert_array_equal(fast_X, X.astype(np.float32))
    np.testing.assert_array_equal(fast_X, slow_X)
    np.testing.assert_array_equal(fast_y, slow_y)


def test_equal_length_records_with_different_layouts_fall_back(rng):
    # Same payload length, but one record carries a uid field instead of a label:
    # the byte comparison outside the values must send the run to the protobuf path.
    X = quarter_grid(rng, (64, 4))
    payloads = payloads_of(recordio_bytes(X))
    odd = messages().Record()
    odd.features["values"].float32_tensor.values.extend(X[40].tolist())
    odd.uid = "u"
    odd_payload = odd.SerializeToString()
    assert len(odd_payload) == len(payloads[40]) + 3
    with_uid = [*payloads[:40], odd_payload, *payloads[41:]]
    X_read, y_read = read(io.BytesIO(b"".join(frame(p) for p in with_uid)))
    np.testing.assert_array_equal(X_read, X)
    assert y_read is None


@pytest.mark.parametrize("batch_size", [40, 45, 100])
def test_run_of_empty_sparse_rows_reads_as_sparse_rows(rng, batch_size):
    # 40 identical empty sparse records (only shape) form a PayloadRun of equal payloads.
    dense = np.zeros((45, 10), np.float32)
    dense[40:, :5] = np.eye(5, dtype=np.float32)
    X = sp.csr_matrix(dense)
    batches = [X for X, _ in iter_batches(io.BytesIO(recordio_bytes(X)), batch_size=batch_size)]
    kinds = [(type(batch).__name__, batch.shape) for batch in batches]
    assert all(sp.issparse(batch) and batch.shape[1] == 10 for batch in batches), kinds
    assert_same(sp.vstack(batches, format="csr"), X)


def test_sparse_records_read_exactly_in_any_batch_size(rng):
    dense = quarter_grid(rng, (103, 20))
    dense[rng.random(dense.shape) < 0.8] = 0
    dense[[0, 50, 102]] = 0  # empty rows
    X = sp.csr_matrix(dense)
    y = np.arange(103, dtype=np.float32)
    for batch_size in (1, 10, 102, 103, 500):
        got_X, got_y, sizes = collect(iter_batches(io.BytesIO(recordio_bytes(X, y)),
                                                   batch_size=batch_size))
        assert_same(got_X, X)
        np.testing.assert_array_equal(got_y, y)
        assert max(sizes) == min(batch_size, 103)


def test_int32_records_read_through_the_protobuf_path():
    X = np.array([[0, -1, 2**31 - 1], [-(2**31), 5, 16777217]] * 20, dtype=np.int64)
    X_read, y_read = read(io.BytesIO(recordio_bytes(X, np.arange(40))))
    np.testing.assert_array_equal(X_read, X.astype(np.float32))
    np.testing.assert_array_equal(y_read, np.arange(40, dtype=np.float32))


@pytest.mark.parametrize("batch_size", [1, 3, 7, 500, 2000, 5000])
def test_batch_sizes_that_do_not_divide_the_rows(batch_size):
    with np.load(DATA / "dense_f32_2000x5_labels.npz") as truth:
        X, y = truth["X"], truth["y"]
    got_X, got_y, sizes = collect(iter_batches(DATA / "dense_f32_2000x5_labels.pbr",
                                               batch_size=batch_size))
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_y, y)
    assert sizes == [batch_size] * (2000 // batch_size) + (
        [2000 % batch_size] if 2000 % batch_size else [])


def test_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches(DATA / "dense_f32_37x13.pbr", batch_size=0))


# ------------------------------------------------------------------------ directories

def test_directory_reads_nested_files_sorted_skipping_hidden_mixing_gzip(tmp_path, rng):
    X = quarter_grid(rng, (60, 3))
    y = np.arange(60, dtype=np.float32)
    pieces = {"a.pbr": (0, 10, False), "b.pbr": (10, 25, True),  # gzip, no .gz suffix
              "c/a.pbr.gz": (25, 30, True), "c/b/z.pbr": (30, 45, False),
              "d.bin": (45, 60, False)}
    for name, (start, stop, compress) in pieces.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        data = recordio_bytes(X[start:stop], y[start:stop])
        target.write_bytes(gzip.compress(data) if compress else data)
    (tmp_path / ".hidden.pbr").write_bytes(b"not recordio at all")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "junk.pbr").write_bytes(b"junk")
    (tmp_path / "c" / ".DS_Store").write_bytes(b"junk")
    for batch_size in (7, 60, 1000):
        got_X, got_y, sizes = collect(iter_batches(tmp_path, batch_size=batch_size))
        np.testing.assert_array_equal(got_X, X)
        np.testing.assert_array_equal(got_y, y)
        assert max(sizes) <= batch_size  # "at most": each file ends with its own batch


def test_directory_of_csv_files_in_sorted_order(tmp_path):
    (tmp_path / "part-2.csv").write_bytes(b"2,2.5\n")
    (tmp_path / "part-1.csv").write_bytes(gzip.compress(b"1,1.5\n1,1.25\n"))
    (tmp_path / "part-3.csv").write_bytes(b"3,3.5")
    X, y = read(tmp_path, CSV)
    np.testing.assert_array_equal(X, [[1.5], [1.25], [2.5], [3.5]])
    np.testing.assert_array_equal(y, [1, 1, 2, 3])


def test_directory_error_names_the_bad_file(tmp_path):
    (tmp_path / "a.pbr").write_bytes(recordio_bytes(np.ones((2, 2), np.float32)))
    (tmp_path / "b.pbr").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError, match=at(str(tmp_path / "b.pbr"), "byte offset 0")):
        read(tmp_path)


def test_csv_files_of_different_widths_in_a_directory_are_refused(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"1,2,3\n4,5,6\n")
    (tmp_path / "b.csv").write_bytes(b"1,2,3,4\n")
    with pytest.raises(DataError, match=at("b.csv", "line 1")):
        list(iter_batches(tmp_path, CSV))


# -------------------------------------------------------------------------- manifests

def test_record_set_with_three_shards_reads_back(tmp_path, rng):
    X = quarter_grid(rng, (100, 4))
    y = rng.integers(0, 3, 100).astype(np.float32)
    manifest = record_set(X, y, path=tmp_path / "rs", shards=3)
    assert manifest == tmp_path / "rs" / ".amazon.manifest"
    entries = json.loads(manifest.read_text())
    assert entries[1:] == ["matrix_0.pbr", "matrix_1.pbr", "matrix_2.pbr"]
    shard_rows = [read(tmp_path / "rs" / key)[0].shape[0] for key in entries[1:]]
    assert shard_rows == [33, 33, 34]
    for source in (manifest, tmp_path / "rs"):  # the directory skips the hidden manifest
        got_X, got_y, _ = collect(iter_batches(source, batch_size=30))
        np.testing.assert_array_equal(got_X, X)
        np.testing.assert_array_equal(got_y, y)


def test_record_set_in_a_directory_with_spaces_and_accents(tmp_path, rng):
    X = quarter_grid(rng, (10, 2))
    manifest = record_set(X, path=tmp_path / "my data é", shards=2)
    np.testing.assert_array_equal(read(manifest)[0], X)


def test_record_set_of_sparse_data(tmp_path, rng):
    dense = quarter_grid(rng, (30, 12))
    dense[dense < 50] = 0
    X = sp.csr_matrix(dense)
    manifest = record_set(X, np.ones(30), path=tmp_path / "sparse", shards=2)
    assert_same(read(manifest)[0], X)


def test_record_set_refuses_more_shards_than_rows(tmp_path):
    with pytest.raises(DataError, match="shards"):
        record_set(np.ones((2, 2), np.float32), path=tmp_path / "rs", shards=3)


def test_hand_written_manifest_with_a_relative_prefix(tmp_path, rng):
    X = quarter_grid(rng, (20, 3))
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "first.pbr").write_bytes(recordio_bytes(X[:5]))
    (tmp_path / "data" / "sub" / "second.pbr").write_bytes(gzip.compress(recordio_bytes(X[5:])))
    (tmp_path / "data" / "unlisted.pbr").write_bytes(b"junk")
    manifest = tmp_path / "train.manifest"
    manifest.write_text(json.dumps([{"prefix": "data/"}, "sub/second.pbr", "first.pbr"]))
    got, _ = read(manifest)
    np.testing.assert_array_equal(got, np.vstack([X[5:], X[:5]]))  # manifest order


def test_manifest_with_an_s3_prefix_reads_objects_beside_it(tmp_path, rng):
    X = quarter_grid(rng, (6, 2))
    (tmp_path / "part-0").write_bytes(recordio_bytes(X))
    manifest = tmp_path / "m.manifest"
    manifest.write_text(json.dumps([{"prefix": "s3://bucket/train/"}, "part-0"]))
    np.testing.assert_array_equal(read(manifest)[0], X)


@pytest.mark.parametrize("key", ["../outside.pbr", "sub/../../outside.pbr", "missing.pbr"])
def test_manifest_entry_outside_or_missing_is_refused(tmp_path, key):
    (tmp_path / "outside.pbr").write_bytes(recordio_bytes(np.ones((2, 2), np.float32)))
    (tmp_path / "data" / "sub").mkdir(parents=True)
    manifest = tmp_path / "data" / "m.manifest"
    manifest.write_text(json.dumps([{"prefix": "./"}, key]))
    with pytest.raises(DataError, match=at(manifest.name, key)):
        read(manifest)


def test_manifest_larger_than_one_mebibyte(tmp_path):
    # 2,600 shards with long keys: a ~1.1 MB manifest, as large data sets produce.
    data = recordio_bytes(np.ones((1, 3), np.float32))
    nested = tmp_path / ("d" * 200) / ("e" * 200)
    nested.mkdir(parents=True)
    keys = []
    for index in range(2600):
        (nested / f"{index:05d}.pbr").write_bytes(data)
        keys.append(f"{'d' * 200}/{'e' * 200}/{index:05d}.pbr")
    manifest = tmp_path / "train.manifest"
    manifest.write_text(json.dumps([{"prefix": "./"}, *keys]))
    assert manifest.stat().st_size > 1 << 20
    X, _ = read(manifest)
    np.testing.assert_array_equal(X, np.ones((2600, 3), np.float32))


def test_manifest_without_keys_is_refused(tmp_path):
    manifest = tmp_path / "m.manifest"
    manifest.write_text(json.dumps([{"prefix": "./"}]))
    with pytest.raises(DataError, match=at(manifest.name, "manifest")):
        read(manifest)


# --------------------------------------------------------- pipes and file objects

@needs_fifo
def test_recordio_through_a_real_named_pipe(tmp_path, monkeypatch, rng):
    monkeypatch.setattr(gpuknn.io.recordio, "BLOCK_BYTES", 4096)
    X = rng.standard_normal((1500, 7)).astype(np.float32)
    y = rng.integers(0, 3, 1500).astype(np.float32)
    data = recordio_bytes(X, y)
    with fifo_fed_with(tmp_path / "train_0", split_in_chunks(data)) as pipe:
        got_X, got_y, sizes = collect(iter_batches(pipe, batch_size=400))
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_y, y)
    assert sizes == [400, 400, 400, 300]


@needs_fifo
def test_gzip_csv_through_a_real_named_pipe(tmp_path, rng):
    X = quarter_grid(rng, (2000, 4))
    text = "".join(",".join(f"{v:g}" for v in row) + "\n" for row in X)
    compressed = gzip.compress(text.encode())
    chunks = split_in_chunks(compressed, sizes=(10, 3, 777, 1))  # first write: whole magic
    with fifo_fed_with(tmp_path / "train_0", chunks) as pipe:
        got_X, got_y = read(pipe, CSV)
    np.testing.assert_array_equal(got_X, X[:, 1:])
    np.testing.assert_array_equal(got_y, X[:, 0])


@needs_fifo
def test_gzip_recordio_through_a_real_named_pipe(tmp_path, rng):
    X = quarter_grid(rng, (700, 6))
    chunks = split_in_chunks(gzip.compress(recordio_bytes(X)), sizes=(2, 5, 1000))
    with fifo_fed_with(tmp_path / "train_0", chunks) as pipe:
        np.testing.assert_array_equal(read(pipe)[0], X)


@needs_fifo
def test_bad_data_in_a_pipe_names_the_pipe_and_offset(tmp_path):
    data = recordio_bytes(np.ones((3, 4), np.float32)) + b"\x01\x02\x03\x04\x05\x06\x07\x08"
    with fifo_fed_with(tmp_path / "train_0", [data]) as pipe:
        with pytest.raises(DataError, match=at("train_0", f"byte offset {len(data) - 8}")):
            read(pipe)


@pytest.mark.parametrize("step", [1 << 16, 5], ids=["big-reads", "short-reads"])
def test_non_seekable_file_object(rng, step):
    X = quarter_grid(rng, (300, 5))
    y = np.arange(300, dtype=np.float32)
    data = recordio_bytes(X, y)
    got_X, got_y, _ = collect(iter_batches(NonSeekable(data, step), batch_size=128))
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_y, y)
    csv = b"".join(b"%g,%g\n" % (a, b) for a, b in X[:, :2])
    np.testing.assert_array_equal(read(NonSeekable(csv, step), CSV)[0], X[:, 1:2])


def test_gzip_through_a_non_seekable_file_object(rng):
    X = quarter_grid(rng, (300, 5))
    got, _ = read(NonSeekable(gzip.compress(recordio_bytes(X)), 1 << 16))
    np.testing.assert_array_equal(got, X)


def test_gzip_through_a_stream_of_one_byte_reads(rng):
    # A pipe or socket may deliver the first byte alone: gzip must still be recognised.
    X = quarter_grid(rng, (50, 5))
    got, _ = read(NonSeekable(gzip.compress(recordio_bytes(X)), step=1))
    np.testing.assert_array_equal(got, X)


def test_open_binary_file_and_its_name_in_errors(tmp_path, rng):
    X = quarter_grid(rng, (40, 3))
    path = tmp_path / "open.pbr"
    good = recordio_bytes(X)
    path.write_bytes(good + b"\0" * 8)
    with open(path, "rb") as handle, pytest.raises(
            DataError, match=at(path.name, f"byte offset {len(good)}")):
        read(handle)


def test_object_with_only_a_read_method(rng):
    class Body:  # the shape of an HTTP or S3 streaming body: read(amt) and nothing else
        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    X = quarter_grid(rng, (20, 3))
    np.testing.assert_array_equal(read(Body(recordio_bytes(X)))[0], X)


# ----------------------------------------------------------------------- bounded memory

def write_large_file(path: Path, n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """A dense float32 RecordIO file built with numpy from one SDK-format frame (fast);
    returns the float64 column sums of the data written."""
    template = np.frombuffer(recordio_bytes(np.zeros((1, n_cols), np.float32)), np.uint8)
    stride, width = template.size, 4 * n_cols
    payload_length = struct.unpack_from("<I", template, 4)[0]
    values_end = 8 + payload_length  # the packed values end the payload
    X = np.random.default_rng(seed).standard_normal((n_rows, n_cols)).astype(np.float32)
    frames = np.tile(template, (n_rows, 1))
    frames[:, values_end - width : values_end] = X.view(np.uint8).reshape(n_rows, width)
    frames.tofile(path)
    assert stride == 156 and path.stat().st_size == n_rows * stride
    assert payloads_of(frames[:2].tobytes())[1][-width:] == X[1].tobytes()
    return X.sum(axis=0, dtype=np.float64)


@pytest.mark.parametrize("block_bytes", [None, 256 << 10], ids=["4MiB-blocks", "256KiB-blocks"])
def test_streaming_memory_stays_bounded_by_blocks_and_batch(tmp_path, monkeypatch, block_bytes):
    """Peak traced memory while streaming a 31 MB file in batches of 1,000 rows.

    The reader holds at most three read blocks at once (the buffer still viewed by the
    run being decoded, the block just read, and their concatenation) plus one batch
    (1,000 x 32 float32 = 128 KB) and its temporaries: bound 3 x BLOCK_BYTES + 2 MiB,
    i.e. 14 MiB with the default 4 MiB blocks (under half the file) and under 3 MiB with
    256 KiB blocks (under a tenth): memory follows the batch and block, not the file.
    """
    if block_bytes:
        monkeypatch.setattr(gpuknn.io.recordio, "BLOCK_BYTES", block_bytes)
    block = gpuknn.io.recordio.BLOCK_BYTES
    n_rows, n_cols = 200_000, 32
    path = tmp_path / "large.pbr"
    expected_sums = write_large_file(path, n_rows, n_cols, seed=20240601)
    file_size = path.stat().st_size
    sums = np.zeros(n_cols)
    rows = 0
    tracemalloc.start()
    try:
        for X, y in iter_batches(path, batch_size=1000):
            assert X.shape == (1000, n_cols) and X.dtype == np.float32 and y is None
            sums += X.sum(axis=0, dtype=np.float64)
            rows += X.shape[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == n_rows
    np.testing.assert_allclose(sums, expected_sums, rtol=1e-9, atol=1e-6)
    bound = 3 * block + (2 << 20)
    assert peak < bound, f"peak {peak:,} bytes, bound {bound:,}, file {file_size:,}"
    assert bound < file_size / 2


# ------------------------------------------------------------------------------- CSV

def test_csv_label_size_one_by_default_and_zero_on_request(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"1,0.5,2.5\n0,-1.5,3\n")
    X, y = read(path, CSV)
    np.testing.assert_array_equal(X, [[0.5, 2.5], [-1.5, 3.0]])
    np.testing.assert_array_equal(y, [1, 0])
    assert X.dtype == np.float32 and y.dtype == np.float32
    for kwargs in ({"content_type": "text/csv; label_size=0"},
                   {"content_type": "Text/CSV;label_size=0"},
                   {"content_type": CSV, "label_size": 0}):
        X, y = read(path, **kwargs)
        np.testing.assert_array_equal(X, [[1, 0.5, 2.5], [0, -1.5, 3.0]])
        assert y is None


def test_csv_label_size_above_one_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"1,2,3\n")
    with pytest.raises(DataError, match="label_size"):
        read(path, "text/csv; label_size=2")


def test_csv_with_only_a_label_column_is_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"1\n2\n")
    with pytest.raises(DataError, match=at(path.name, "line 1", "no features")):
        read(path, CSV)


@pytest.mark.parametrize("text", [b"1,2.5\r\n0,3\r\n", b"1,2.5\n0,3", b"1,2.5\r\n0,3",
                                  b"1e0,25e-1\n0.0E+00,3.000\n", b"+1,2.5\n0,  3\n"],
                         ids=["crlf", "no-final-newline", "crlf-no-final-newline",
                              "scientific", "signs-and-spaces"])
def test_csv_line_endings_and_number_forms(tmp_path, text):
    path = tmp_path / "train.csv"
    path.write_bytes(text)
    X, y = read(path, CSV)
    np.testing.assert_array_equal(X, [[2.5], [3.0]])
    np.testing.assert_array_equal(y, [1, 0])


def test_gzip_csv(tmp_path, rng):
    X = quarter_grid(rng, (500, 3))
    text = "".join(",".join(f"{v:.6e}" for v in row) + "\n" for row in X)
    path = tmp_path / "train.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    got_X, got_y, sizes = collect(iter_batches(path, CSV, batch_size=128))
    np.testing.assert_array_equal(got_X, X[:, 1:])
    np.testing.assert_array_equal(got_y, X[:, 0])
    assert sizes == [128, 128, 128, 116]


def test_csv_across_many_blocks_keeps_rows_and_line_numbers(tmp_path, monkeypatch, rng):
    monkeypatch.setattr(gpuknn.io.text, "BLOCK_BYTES", 64)
    X = quarter_grid(rng, (300, 4))
    lines = [",".join(f"{v:g}" for v in row) for row in X]
    path = tmp_path / "blocks.csv"
    path.write_text("\n".join(lines) + "\n")
    got_X, got_y, _ = collect(iter_batches(path, "text/csv; label_size=0", batch_size=77))
    np.testing.assert_array_equal(got_X, X)
    assert got_y is None
    lines[250] += ",9"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=at(path.name, "line 251", "5 columns")):
        read(path, CSV)
    lines[250] = lines[250][:-2].replace(",", ",x", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=at(path.name, "line 251", "column 2", "'x")):
        read(path, CSV)


@pytest.mark.parametrize(("text", "line", "column", "cell"),
                         [(b"1,2,3\n4,abc,6\n", 2, 2, "abc"), (b"1,2,3\n4,5,6\n7,8,\n", 3, 3, ""),
                          (b"1,2\n3,1.2.3\n", 2, 2, "1.2.3"), (b"x,2\n", 1, 1, "x"),
                          (b"1,2\n3,1_0\n", 2, 2, "1_0"), (b"1,2\n3,nan\n", 2, 2, "nan")])
def test_csv_cell_that_is_not_a_number_names_line_and_column(tmp_path, text, line, column, cell):
    path = tmp_path / "cells.csv"
    path.write_bytes(text)
    with pytest.raises(DataError, match=at(path.name, f"line {line}", f"column {column}",
                                          repr(cell))):
        read(path, CSV)


def test_csv_ragged_rows_name_the_line(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_bytes(b"1,2,3\n4,5,6\n7,8\n9,10,11\n")
    with pytest.raises(DataError, match=at(path.name, "line 3", "2 columns")):
        read(path, CSV)


@pytest.mark.parametrize(("text", "line"), [(b"1,2\n\n3,4\n", 2), (b"1,2\r\n\r\n3,4\r\n", 2),
                                            (b"\n1,2\n", 1), (b"1,2\n \n3,4\n", 2),
                                            (b"1,2\n3,4\n\n5,6\n\n\n", 3)],
                         ids=["middle", "middle-crlf", "first", "spaces", "middle-and-end"])
def test_csv_empty_line_is_refused_with_its_number(tmp_path, text, line):
    path = tmp_path / "blank.csv"
    path.write_bytes(text)
    with pytest.raises(DataError, match=at(path.name, f"line {line}: empty line")):
        read(path, CSV)


@pytest.mark.parametrize("end", [b"\n", b"\n\n", b"\n\n\n", b"\r\n", b"\r\n\r\n", b"\n \n"],
                         ids=["one", "two", "three", "crlf", "two-crlf", "spaces"])
def test_csv_blank_lines_at_the_end_are_ignored(tmp_path, end):
    path = tmp_path / "end.csv"
    path.write_bytes(b"1,2\n3,4" + end)
    X, y = read(path, CSV)
    np.testing.assert_array_equal(X, [[2], [4]])
    np.testing.assert_array_equal(y, [1, 3])


def test_csv_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"1,2\n3,4\n5,\xe96\n")
    with pytest.raises(DataError, match=at(path.name, "line 3", "UTF-8")):
        read(path, CSV)


# ------------------------------------------------------------------ JSON and JSON Lines

def test_json_dense_and_data_features_values(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"instances": [
        {"features": [1, 2.5, -3]},
        {"data": {"features": {"values": [0.25, 0, 1e3]}}},
        {"features": {"values": [4, 5, 6]}}]}))
    X, y = read(path, JSON)
    np.testing.assert_array_equal(X, [[1, 2.5, -3], [0.25, 0, 1000], [4, 5, 6]])
    assert X.dtype == np.float32 and y is None


def test_json_sparse_and_mixed_instances(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"instances": [
        {"features": {"keys": [1, 4], "shape": [5], "values": [2.5, -1]}},
        {"features": [1, 2, 3, 4, 5]},
        {"data": {"features": {"keys": [], "shape": [5], "values": []}}}]}))
    X, _ = read(path, JSON)
    expected = np.array([[0, 2.5, 0, 0, -1], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]], np.float32)
    assert_same(X, sp.csr_matrix(expected))


@pytest.mark.parametrize(("document", "place"), [
    ('{"instances": [\n  {"features": [1, 2]},\n  {"features": [1, 2,]}\n]}', "line 3, column"),
    ('{"instances": [{"features": [1, 2]}', "line 1, column 36"),
])
def test_bad_json_names_line_and_column(tmp_path, document, place):
    path = tmp_path / "bad.json"
    path.write_text(document)
    with pytest.raises(DataError, match=at(path.name, place)):
        read(path, JSON)


@pytest.mark.parametrize(("instances", "place", "what"), [
    ([{"features": [1, 2]}, {"features": [1, "2"]}], "instance 1", "number"),
    ([{"features": [1, 2]}, {"features": [True, 2]}], "instance 1", "number"),
    ([{"features": [1, 2]}, {"features": [1, None]}], "instance 1", "number"),
    ([{"features": [1, 2]}, {"features": [1, 2]}, {"features": [1, 2, 3]}], "instance 2",
     "3 features"),
    ([{"features": {"keys": [5], "shape": [5], "values": [1]}}], "instance 0", "[0, 5)"),
    ([{"features": {"keys": [0, 1], "values": [1, 2]}}], "instance 0", "shape"),
    ([{"values": [1, 2]}], "instance 0", "features"),
    ([], "", "no instances"),
])
def test_bad_json_instances_name_the_instance(tmp_path, instances, place, what):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"instances": instances}))
    with pytest.raises(DataError, match=at(path.name, place, what)):
        read(path, JSON)


def test_json_without_instances_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([[1, 2]]))
    with pytest.raises(DataError, match=at(path.name, "instances")):
        read(path, JSON)


def test_json_invalid_utf8_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"instances": [{"features": [1]}], "note": "\xe9"}')
    with pytest.raises(DataError, match=at(path.name, "UTF-8")):
        read(path, JSON)


def test_jsonlines_dense_sparse_and_batches(tmp_path):
    lines = [{"features": [1, 2, 3]}, {"data": {"features": {"values": [4, 5, 6]}}},
             {"features": {"keys": [2], "shape": [3], "values": [9]}},
             {"features": [7, 8, 9]}, {"features": [0, 0, 1]}]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    expected = np.array([[1, 2, 3], [4, 5, 6], [0, 0, 9], [7, 8, 9], [0, 0, 1]], np.float32)
    for content_type in (JSONLINES, "application/jsonl", "application/x-jsonlines"):
        X, y = read(path, content_type)
        np.testing.assert_array_equal(X.toarray() if sp.issparse(X) else X, expected)
        assert y is None
    dense = tmp_path / "dense.jsonl"
    dense.write_bytes(gzip.compress(
        "".join(json.dumps({"features": row.tolist()}) + "\r\n" for row in expected).encode()))
    got, _, sizes = collect(iter_batches(dense, JSONLINES, batch_size=2))
    np.testing.assert_array_equal(got, expected)
    assert sizes == [2, 2, 1]


def test_jsonlines_bad_json_names_the_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"features": [1, 2]}\n{"features": [1, 2]}\n{"features": [1, 2}\n')
    with pytest.raises(DataError, match=at(path.name, "line 3", "column 19")):
        read(path, JSONLINES)


def test_jsonlines_non_number_and_wrong_counts_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"features": [1, 2]}\n{"features": [1, "a"]}\n')
    with pytest.raises(DataError, match=at(path.name, "line 2", "number")):
        read(path, JSONLINES)
    path.write_text('{"features": [1, 2]}\n{"features": [1, 2]}\n{"features": [1, 2, 3]}\n')
    with pytest.raises(DataError, match=at(path.name, "line 3", "3 features")):
        read(path, JSONLINES)


def test_jsonlines_wrong_counts_across_batches_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"features": [1, 2]}\n{"features": [1, 2]}\n{"features": [1, 2, 3]}\n')
    with pytest.raises(DataError, match=at(path.name, "line 3")):
        list(iter_batches(path, JSONLINES, batch_size=2))


def test_jsonlines_invalid_utf8_names_the_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"features": [1, 2]}\n{"features": [1, 2], "n": "\xe9"}\n')
    with pytest.raises(DataError, match=at(path.name, "UTF-8")):
        read(path, JSONLINES)


# ------------------------------------------------------------------------- KNN.fit

def small_problem(seed: int = 7):
    rng = np.random.default_rng(seed)
    centres = quarter_grid(rng, (3, 6))
    y = rng.integers(0, 3, 300).astype(np.float32)
    X = (centres[y.astype(int)] + quarter_grid(rng, (300, 6)) / 8).astype(np.float32)
    Q = (centres[rng.integers(0, 3, 40)] + quarter_grid(rng, (40, 6)) / 8).astype(np.float32)
    return X, y, Q


def fitted(X, y=None, **kwargs):
    return KNN(device="cpu", k=3, predictor_type="classifier", sample_size=1000,
               mini_batch_size=64).fit(X, y, **kwargs)


def assert_same_model(est, reference, Q):
    np.testing.assert_array_equal(est.predict(Q), reference.predict(Q))
    distances, indices = est.kneighbors(Q)
    ref_distances, ref_indices = reference.kneighbors(Q)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(distances, ref_distances)


def test_fit_on_csv_file_directory_and_record_set_equals_fit_on_arrays(tmp_path):
    X, y, Q = small_problem()
    reference = fitted(X, y)
    csv = tmp_path / "train.csv"
    csv.write_text("".join(f"{label:g}," + ",".join(f"{v:.9g}" for v in row) + "\n"
                           for label, row in zip(y, X, strict=True)))
    assert_same_model(fitted(csv, content_type=CSV), reference, Q)
    shards = tmp_path / "shards"
    shards.mkdir()
    for index, rows in enumerate(np.array_split(np.arange(300), 4)):
        data = recordio_bytes(X[rows], y[rows])
        (shards / f"part-{index}.pbr").write_bytes(gzip.compress(data) if index % 2 else data)
    assert_same_model(fitted(shards), reference, Q)
    manifest = record_set(X, y, path=tmp_path / "rs", shards=3)
    assert_same_model(fitted(manifest), reference, Q)
    assert_same_model(fitted(str(manifest)), reference, Q)


def test_fit_on_sparse_recordio_equals_fit_on_the_dense_array(tmp_path):
    X, y, Q = small_problem(11)
    X[np.abs(X) < 20] = 0
    reference = fitted(X, y)
    path = tmp_path / "sparse.pbr"
    write_recordio(path, sp.csr_matrix(X), y)
    assert_same_model(fitted(path), reference, Q)


def test_fit_on_a_source_refuses_separate_labels(tmp_path):
    path = tmp_path / "x.pbr"
    write_recordio(path, np.ones((4, 2), np.float32), np.zeros(4, np.float32))
    with pytest.raises(DataError, match="y must be None"):
        fitted(path, np.zeros(4))


# -------------------------------------------------------------------- write_recordio

@pytest.mark.parametrize(("X", "labels", "what"), [
    (np.ones((2, 3, 4), np.float32), None, "2-D"),
    (np.ones(5, np.float32), None, "2-D"),
    (np.ones((4, 2), np.float32), np.ones(3, np.float32), "labels"),
    (np.ones((4, 2), np.float32), np.ones((4, 1), np.float32), "labels"),
    (np.ones((2, 2), np.complex64), None, "complex64"),
    (np.ones((2, 2), np.float16), None, "float16"),
    (np.ones((2, 2), bool), None, "bool"),
    (np.ones((2, 2), np.float32), np.ones(2, np.float16), "float16"),
    (np.array([[2**31, 0]], np.int64), None, "int32"),
    (np.array([[-(2**31) - 1, 0]], np.int64), None, "int32"),
    (np.array([[1, 2]], np.float32), np.array([2**40]), "int32"),
])
def test_write_recordio_refuses_what_a_record_cannot_hold(tmp_path, X, labels, what):
    with pytest.raises(DataError, match=re.escape(what)):
        write_recordio(tmp_path / "out.pbr", X, labels)


def test_write_recordio_accepts_int64_within_int32_as_int32_tensor(tmp_path):
    X = np.array([[2**31 - 1, -(2**31), 0], [1, -1, 16777217]], dtype=np.int64)
    labels = np.array([3, -4], dtype=np.int64)
    data = recordio_bytes(X, labels)
    assert data == recordio_bytes(X.astype(np.int32), labels.astype(np.int32))
    first = messages().Record.FromString(payloads_of(data)[0])
    assert first.features["values"].WhichOneof("value") == "int32_tensor"
    assert list(first.features["values"].int32_tensor.values) == [2**31 - 1, -(2**31), 0]
    assert first.label["values"].WhichOneof("value") == "int32_tensor"
    X_read, y_read = read(io.BytesIO(data))
    np.testing.assert_array_equal(X_read, X.astype(np.float32))
    np.testing.assert_array_equal(y_read, [3, -4])


def test_write_recordio_to_a_path_and_an_open_file_agree(tmp_path, rng):
    X = quarter_grid(rng, (12, 3))
    y = np.arange(12, dtype=np.float64)
    write_recordio(tmp_path / "a.pbr", X, y)
    write_recordio(str(tmp_path / "b.pbr"), X, y)
    with open(tmp_path / "c.pbr", "wb") as handle:
        write_recordio(handle, X, y)
    contents = {(tmp_path / name).read_bytes() for name in ("a.pbr", "b.pbr", "c.pbr")}
    assert len(contents) == 1
    got_X, got_y = read(tmp_path / "a.pbr")
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_y, y)
