"""Hostile input, each hole of issue 12 on the real paths: a ``gpuknn serve`` process and its
socket, ``gpuknn train`` and ``transform`` as subprocesses, model files read from disk.

Every refusal must be a 4xx (or ``ModelFileError``, or an ``output/failure`` reason) that
names the problem, leave the server healthy (``/ping`` 200, no traceback in its log),
and cost bounded memory (a worker's peak RSS, read from ``/proc``).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _server import Server, invoke, request

from gpuknn import KNN, KNNModel
from gpuknn import io as data_io
from gpuknn.errors import DataError, ModelFileError
from gpuknn.io import records
from gpuknn.io._record import messages
from gpuknn.io.limits import GZIP_RATIO_VARIABLE, MAX_JSON_DEPTH
from gpuknn.io.recordio import frame
from gpuknn.model import layout

RECORDIO = "application/x-recordio-protobuf"
MIB = 1 << 20
PAYLOAD_MB = 6


# -- a server over a letter classifier ---------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(letter, tmp_path_factory):
    X, y, _, _ = letter
    estimator = KNN(k=5, predictor_type="classifier", sample_size=4000, feature_dim=16)
    return estimator.fit(X[:4000], y[:4000]).model.save(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = Server(["--model", str(model_dir), "--max-payload-mb", str(PAYLOAD_MB),
                      "--body-timeout-s", "2"], log).wait_ready()
    yield process
    assert process.stop() == 0, process.output()
    assert "Traceback" not in process.output()


def peak_rss(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def refused(server, body: bytes, content_type: str, status: int, *needles: str,
            headers: dict[str, str] | None = None) -> str:
    """Send a hostile body: it must get ``status`` with a short JSON message holding every
    needle, and the server must stay healthy."""
    all_headers = {"Content-Type": content_type, **(headers or {})}
    got, _, answer = request(server.port, "POST", "/invocations", body, all_headers)
    assert got == status, answer[:500]
    message = json.loads(answer)["error"]
    assert len(message) < 600 and "Traceback" not in message
    for needle in needles:
        assert needle in message, message
    assert request(server.port, "GET", "/ping")[0] == 200
    return message


def letter_json(rows: list[list]) -> bytes:
    return json.dumps({"instances": [{"features": row} for row in rows]}).encode()


# -- 1. deep nesting ---------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["application/json", "application/jsonlines"])
def test_deep_nesting_is_a_400_that_says_so(server, content_type):
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"instances": ' + deep + b"}" if content_type == "application/json" else deep
    refused(server, body, content_type, 400, f"nested deeper than {MAX_JSON_DEPTH} levels")


def test_brackets_inside_strings_do_not_count():
    name = '"' + "[" * 100 + '"'
    body = json.dumps({"instances": [{"features": [1.0, 2.0]}], name: 1}).encode()
    X, _ = data_io.read(io.BytesIO(body), "application/json")
    np.testing.assert_array_equal(X, [[1.0, 2.0]])


# -- 2. huge integers --------------------------------------------------------------------------
@pytest.mark.parametrize("digits", [400, 5000])
@pytest.mark.parametrize("content_type", ["application/json", "application/jsonlines"])
def test_huge_integers_are_out_of_range_not_a_crash(server, digits, content_type):
    row = "[" + "9" * digits + ", 1" * 15 + "]"
    body = (f'{{"instances": [{{"features": {row}}}]}}' if content_type == "application/json"
            else f'{{"features": {row}}}').encode()
    refused(server, body, content_type, 400, "out-of-float32-range")


def test_integers_within_int64_are_exact_sparse_keys():
    key = 2**24 + 1  # float32 would round it to 2**24
    body = json.dumps({"instances": [{"features": {"keys": [key], "values": [3.0],
                                                   "shape": [key + 1]}}]}).encode()
    X, _ = data_io.read(io.BytesIO(body), "application/json")
    assert X.indices.tolist() == [key]


# -- 3. the two RecordIO decoders agree (generated inputs: tests/test_fuzz.py) ----------------
def odd_float_record(rng) -> bytes:
    """A dense record whose packed float32 field holds 13 bytes (not a multiple of 4)."""
    payload = records.encode_dense_row(rng.random(16).astype(np.float32), None,
                                       "float32_tensor", None)
    template = bytearray(payload)
    at = bytes(template).index(bytes([0x0A, 64]))  # field 1 (packed values), 64 bytes
    template[at + 1] = 13
    return bytes(template[: at + 2 + 13]) + bytes(template[at + 2 + 64:])


@pytest.mark.parametrize("count", [31, 32, 200])
def test_bad_packed_floats_get_one_answer_whichever_decoder(server, rng, count):
    payload = odd_float_record(rng)
    body = b"".join(frame(payload) for _ in range(count))
    message = refused(server, body, RECORDIO, 400, "record 0 (0-based; byte offset 0)")
    assert "not a valid Record protobuf" in message


# -- 4. sparse shapes and keys beyond int64 ----------------------------------------------------
def sparse_record(keys: list[int], values: list[float], shape: list[int]) -> bytes:
    record = messages().Record()
    tensor = record.features["values"].float32_tensor
    tensor.values.extend(values)
    tensor.keys.extend(keys)
    tensor.shape.extend(shape)
    return frame(record.SerializeToString())


@pytest.mark.parametrize(("keys", "shape", "needle"), [
    ([0], [2**63], "sparse shape [9223372036854775808]"),
    ([0], [2**64 - 1], "must be between 1 and"),
    ([2**63 + 5], [16], "outside the shape [16]"),
    ([0], [16, 2], "one dimension"),
    ([3], [17], "17 features; the model expects 16"),
])
def test_sparse_shapes_and_keys_that_do_not_fit(server, keys, shape, needle):
    refused(server, sparse_record(keys, [1.0], shape), RECORDIO, 400, needle)


@pytest.mark.parametrize("shape", [[-1], [0], [10**30], [2.5]])
def test_json_sparse_shapes_that_do_not_fit(server, shape):
    body = json.dumps({"instances": [{"features": {"keys": [0], "values": [1.0],
                                                   "shape": shape}}]}).encode()
    refused(server, body, "application/json", 400, "shape")


# -- 5. compression bombs ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb() -> bytes:
    """About 0.3 MB of gzip that inflates to 300 MiB of CSV zeros."""
    return gzip.compress(b"0," * (150 * MIB), compresslevel=9)


def test_gzip_body_is_bounded_when_inflated(server, bomb):
    assert len(bomb) < MIB
    before = peak_rss(server.process.pid)
    refused(server, bomb, "text/csv", 413, "inflates past the 6 MB payload limit")
    grown = peak_rss(server.process.pid) - before
    assert grown < 2 * PAYLOAD_MB * MIB, f"worker grew by {grown / MIB:.0f} MiB"


def test_corrupt_gzip_body_is_a_400(server, rng):
    body = gzip.compress("".join(f"{v:.6f}," for v in rng.random(16_000)).encode())
    broken = body[:200] + bytes(64) + body[264:]
    refused(server, broken, "text/csv", 400, "unreadable or truncated gzip data")


def test_gzip_training_file_bomb_fails_with_the_setting_to_raise(tmp_path):
    root = tmp_path / "ml"
    write_job(root, {"k": "3", "predictor_type": "classifier", "sample_size": "100"}, "text/csv")
    bomb_file = data_dir(root) / "train.csv.gz"
    bomb_file.write_bytes(gzip.compress(b"1,0,0,0\n" * (24 * MIB), compresslevel=9))
    result = run_gpuknn("train", "--ml-root", str(root))
    assert result.returncode == 1
    reason = (root / "output" / "failure").read_text()
    assert "train.csv.gz: gzip data inflates more than 100x" in reason
    assert GZIP_RATIO_VARIABLE in reason


def test_the_gzip_ratio_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "zeros.csv.gz"
    path.write_bytes(gzip.compress(b"1,0,0,0\n" * (10 * MIB), compresslevel=9))
    with pytest.raises(DataError, match="inflates more than 100x"):
        list(data_io.iter_batches(path, "text/csv", 1 << 20))
    monkeypatch.setenv(GZIP_RATIO_VARIABLE, "5000")
    rows = sum(X.shape[0] for X, _ in data_io.iter_batches(path, "text/csv", 1 << 20))
    assert rows == 10 * MIB
    monkeypatch.setenv(GZIP_RATIO_VARIABLE, "lots")
    with pytest.raises(DataError, match=f"{GZIP_RATIO_VARIABLE} must be a number >= 1"):
        list(data_io.iter_batches(path, "text/csv", 1 << 20))


def test_transform_whole_file_is_held_to_the_payload_limit(model_dir, tmp_path, bomb):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "bomb.json.gz").write_bytes(gzip.compress(
        b'{"instances": [' + b'{"features": [0]}, ' * (1 * MIB) + b"]}", 9))
    result = run_gpuknn("transform", "--model", str(model_dir), "--input", str(inputs),
                        "--output", str(tmp_path / "out"), "--content-type",
                        "application/json")
    assert result.returncode == 2, result.stderr
    assert "inflates past the 6 MB payload limit" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "bomb.json.gz.out").exists()


# -- rows that cost far more than their bytes --------------------------------------------------
def test_sparse_rows_are_refused_before_they_densify(server):
    empty_rows = sparse_record([], [], [16]) * 210_000  # 28 bytes each, 248 to answer
    assert len(empty_rows) < PAYLOAD_MB * MIB
    message = refused(server, empty_rows, RECORDIO, 413, "210000 rows", "rows per request")
    assert "(8x the payload limit)" in message


def test_many_small_rows_are_refused_by_their_answer_size(tmp_path):
    """A 1-feature model with k=100: a 2-byte CSV row asks for a 1.6 KB answer."""
    X = np.arange(200, dtype=np.float32)[:, None]
    model = KNN(k=100, predictor_type="regressor", sample_size=200).fit(X, X[:, 0]).model
    path = model.save(tmp_path / "wide")
    server = Server(["--model", str(path), "--max-payload-mb", "1"],
                    tmp_path / "serve.log").wait_ready()
    try:
        body = b"1\n" * 400_000  # 800 kB
        status, _, answer = invoke(server.port, body, "text/csv")
        assert status == 413, answer
        # 8 MiB / (4 bytes x (1 feature + 4 x 100 neighbours)) = 5229 rows
        assert "send at most 5229 rows per request" in json.loads(answer)["error"]
        status, _, answer = invoke(server.port, b"1\n" * 5229, "text/csv")
        assert status == 200, answer
    finally:
        assert server.stop() == 0


# -- slow and endless bodies -------------------------------------------------------------------
def test_a_body_that_never_finishes_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                     b"Content-Length: 100\r\n\r\n1,2,3")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"did not arrive within 2 s" in reply
    assert request(server.port, "GET", "/ping")[0] == 200


def test_a_chunked_upload_past_the_limit_stops_there(server):
    before = peak_rss(server.process.pid)

    def chunks():
        block = b"1," * 8191 + b"1\n"
        for _ in range(200 * MIB // len(block)):
            yield block

    status = _chunked_post(server.port, chunks())
    assert status == 413
    assert peak_rss(server.process.pid) - before < 2 * PAYLOAD_MB * MIB
    assert request(server.port, "GET", "/ping")[0] == 200


def _chunked_post(port: int, chunks) -> int:
    """POST a chunked body until the server answers; its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_until_closed(sock)
    return int(reply.split()[1])


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (as it does after 408
    and 413)."""
    parts = []
    try:
        while part := sock.recv(65536):
            parts.append(part)
    except ConnectionResetError:
        pass
    return b"".join(parts)


def test_worker_memory_stays_bounded_under_the_worst_bodies(model_dir, tmp_path, letter):
    """The worst bodies one after another, each at the 6 MB limit or inflating past it: the
    worker's peak resident set grows by at most WORST_FACTOR x the payload limit.

    Measured on the 2-core CI box (MiB of peak growth): gzip bomb 10, 10**6 columns 41,
    210,000 empty sparse rows 66, deep JSON 66, a 200 MiB chunked upload 66, and the
    largest legitimate bodies: 5.5 MB of JSON 109, 6 MB of CSV (161,000 rows) 109. JSON
    costs the most: Python's parser makes an object per number.
    """
    server = Server(["--model", str(model_dir), "--max-payload-mb", str(PAYLOAD_MB)],
                    tmp_path / "serve.log").wait_ready()
    try:
        warm = b"".join(b",".join(b"%g" % v for v in row) + b"\n" for row in letter[0][:2000])
        assert invoke(server.port, warm, "text/csv")[0] == 200
        before = peak_rss(server.process.pid)
        row_json = b'{"features": [' + b", ".join([b"0.5"] * 16) + b"]}"
        row_csv = b",".join(b"%d" % v for v in range(1, 17))
        bodies = [
            (gzip.compress(b"0," * (150 * MIB), 9), "text/csv", 413),
            (b",".join([b"1"] * 1_000_000), "text/csv", 400),
            (sparse_record([], [], [16]) * 210_000, RECORDIO, 413),
            (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", 400),
            (b'{"instances": [' + b", ".join([row_json] * 60_000) + b"]}", "application/json",
             200),
            (b"\n".join([row_csv] * 161_000), "text/csv", 200),
        ]
        for body, content_type, status in bodies:
            assert len(body) <= PAYLOAD_MB * MIB
            assert invoke(server.port, body, content_type)[0] == status
        assert _chunked_post(server.port, (b"1," * 8191 + b"1\n" for _ in range(12_800))) == 413
        grown = peak_rss(server.process.pid) - before
        assert grown <= WORST_FACTOR * PAYLOAD_MB * MIB, f"grew by {grown / MIB:.0f} MiB"
        assert request(server.port, "GET", "/ping")[0] == 200
    finally:
        assert server.stop() == 0


WORST_FACTOR = 24


def test_a_million_columns(server):
    body = b",".join([b"1"] * 1_000_000)
    refused(server, body, "text/csv", 400, "1000000 features; the model expects 16")


# -- 6. archive members that lie ---------------------------------------------------------------
def member(info: tarfile.TarInfo, data: bytes) -> bytes:
    """One tar member as written: its header, then ``data`` padded to 512 bytes."""
    return info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)


def archive_with(model_dir: Path, target: Path, lie: tarfile.TarInfo, data: bytes,
                 *, metadata_first: bool) -> Path:
    """The model as a .tar.gz holding its metadata and ``lie`` over ``data`` (which may be
    shorter than ``lie`` declares: the archive then ends there)."""
    metadata = (model_dir / layout.METADATA).read_bytes()
    info = tarfile.TarInfo(layout.METADATA)
    info.size = len(metadata)
    parts = [member(info, metadata), member(lie, data)]
    target.write_bytes(gzip.compress(b"".join(parts if metadata_first else parts[::-1])))
    return target


@pytest.mark.parametrize("metadata_first", [True, False])
def test_a_member_claiming_a_terabyte_is_refused_before_reading(model_dir, tmp_path,
                                                                  metadata_first):
    lie = tarfile.TarInfo(layout.INDEX)
    lie.size = 1 << 40
    path = archive_with(model_dir, tmp_path / "model.tar.gz", lie, bytes(512),
                        metadata_first=metadata_first)
    with pytest.raises(ModelFileError, match=f"archive member '{layout.INDEX}' declares "
                                             f"{1 << 40} bytes"):
        KNNModel.load(path)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write a sparse file")
def test_a_sparse_member_is_refused(model_dir, tmp_path):
    staging = tmp_path / "staging"
    shutil.copytree(model_dir, staging)
    with open(staging / layout.INDEX, "r+b") as handle:
        handle.truncate(10 << 30)  # 10 GiB of holes, nothing on disk
    path = tmp_path / "model.tar.gz"
    subprocess.run(["tar", "-czSf", str(path), "-C", str(staging), layout.METADATA,
                    layout.INDEX], check=True)
    assert path.stat().st_size < MIB
    with pytest.raises(ModelFileError, match=f"refusing archive member '{layout.INDEX}'"):
        KNNModel.load(path)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_exits_1_with_the_reason_for_a_lying_archive(model_dir, tmp_path, workers):
    lie = tarfile.TarInfo(layout.INDEX)
    lie.size = 1 << 40
    path = archive_with(model_dir, tmp_path / "model.tar.gz", lie, bytes(512),
                        metadata_first=True)
    result = run_gpuknn("serve", "--model", str(path), "--workers", workers, "--port", "0")
    assert result.returncode == 1, result.stdout
    assert f"could not load the model: {path}: archive member" in result.stdout


def test_duplicated_members_are_refused(model_dir, tmp_path):
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name in (layout.METADATA, layout.INDEX, layout.INDEX):
            archive.add(model_dir / name, arcname=name)
    with pytest.raises(ModelFileError, match=f"member '{layout.INDEX}' appears twice"):
        KNNModel.load(path)


# -- 7. a model that cannot serve stops the server, whatever the worker count -------------------
def edited_copy(model_dir: Path, target: Path, **changes) -> Path:
    shutil.copytree(model_dir, target)
    meta = json.loads((target / layout.METADATA).read_text())
    meta.update(changes)
    (target / layout.METADATA).write_text(json.dumps(meta))
    return target


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_the_metadata_contradicts_stops_the_server(model_dir, tmp_path, workers):
    broken = edited_copy(model_dir, tmp_path / "model", feature_dim=17)
    started = time.monotonic()
    result = run_gpuknn("serve", "--model", str(broken), "--workers", workers, "--port", "0")
    assert result.returncode == 1, result.stdout
    assert "gpuknn serve stopped: could not load the model:" in result.stdout
    assert "feature_dim 17" in result.stdout
    assert time.monotonic() - started < 60


def test_a_worker_that_cannot_load_stops_the_server(model_dir, tmp_path):
    """The parent's check passes; each worker fails while building its search (here a bad
    tile setting, as a device out of memory would): exit 1, the worker's reason logged."""
    result = run_gpuknn("serve", "--model", str(model_dir), "--workers", "2", "--port", "0",
                        env={"GPUKNN_TILE_MB": "lots"})
    assert result.returncode == 1, result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert "gpuknn serve stopped: could not load the model: $GPUKNN_TILE_MB must be" in last


# -- 8. bad values are named by file and record or line ----------------------------------------
def test_nan_among_many_files_names_the_file_and_line(tmp_path):
    root = tmp_path / "ml"
    write_job(root, {"k": "3", "predictor_type": "classifier", "sample_size": "500"}, "text/csv")
    rng = np.random.default_rng(8)
    for part in range(100):
        rows = np.column_stack([rng.integers(0, 3, 10), rng.random((10, 4))])
        lines = [",".join(f"{v:g}" for v in row) + "\n" for row in rows]
        if part == 57:
            lines[10 - 1] = "1,0.5,1e39,0.2,0.1\n"  # line 10: beyond float32
        (data_dir(root) / f"part-{part:03d}.csv").write_text("".join(lines))
    result = run_gpuknn("train", "--ml-root", str(root))
    assert result.returncode == 1
    reason = (root / "output" / "failure").read_text()
    assert "part-057.csv: line 10: NaN, infinite or out-of-float32-range value" in reason


def test_recordio_nan_names_the_record_and_offset(tmp_path):
    X = np.ones((40, 3), dtype=np.float32)
    X[33, 1] = np.inf
    data_io.write_recordio(tmp_path / "x.pbr", X, np.zeros(40, dtype=np.float32))
    with pytest.raises(DataError, match=r"x\.pbr: record 33 \(0-based; byte offset \d+\): NaN"):
        KNN(k=1, predictor_type="classifier", sample_size=40).fit(str(tmp_path / "x.pbr"))


# -- 9. a successful job removes an earlier failure --------------------------------------------
def test_a_successful_job_removes_an_earlier_failure(tmp_path, letter):
    root = tmp_path / "ml"
    write_job(root, {"k": "3", "predictor_type": "classifier", "sample_size": "500"})
    X, y, _, _ = letter
    data_io.write_recordio(data_dir(root) / "train.pbr", X[:500], y[:500])
    failure = root / "output" / "failure"
    failure.parent.mkdir(parents=True)
    failure.write_text("an earlier run failed")
    assert run_gpuknn("train", "--ml-root", str(root)).returncode == 0
    assert not failure.exists()


# -- the reader of model files never takes more than the file allows ----------------------------
def test_reduction_npz_that_declares_more_than_it_holds(letter, tmp_path):
    X, y, _, _ = letter
    model = KNN(k=1, predictor_type="classifier", sample_size=500,
                dimension_reduction_type="sign", dimension_reduction_target=8)
    path = model.fit(X[:500], y[:500]).model.save(tmp_path / "model")
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|i1", "fortran_order": False,
                                               "shape": (1 << 40, 8)})
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as archive:  # stored, as np.savez writes it
        archive.writestr("signs.npy", npy.getvalue() + bytes(128))
    forge_file(path, layout.REDUCTION, npz.getvalue())
    with pytest.raises(ModelFileError, match="declares"):
        KNNModel.load(path)


def forge_file(path: Path, name: str, data: bytes) -> None:
    """Replace a model file and its size and checksum in the metadata: a crafted model."""
    import hashlib

    (path / name).write_bytes(data)
    meta = json.loads((path / layout.METADATA).read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / layout.METADATA).write_text(json.dumps(meta))


def test_a_crafted_flat_index_cannot_make_the_loader_allocate(model_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(model_dir, path)
    data = bytearray((path / layout.INDEX).read_bytes())
    data[37:45] = (1 << 39).to_bytes(8, "little")  # the value count: 2 TiB of floats
    forge_file(path, layout.INDEX, bytes(data))
    with pytest.raises(ModelFileError, match="declares 549755813888 values"):
        KNNModel.load(path)


def test_metadata_with_wrong_types_is_a_model_file_error(model_dir, tmp_path):
    for changes in ({"index": []}, {"feature_dim": "16"}, {"files": {"x": 1}},
                    {"rows_seen": -1}, {"dimension_reduction": {"type": "sign"}}):
        broken = edited_copy(model_dir, tmp_path / f"m{len(list(tmp_path.iterdir()))}",
                             **changes)
        with pytest.raises(ModelFileError):
            KNNModel.load(broken)


# -- helpers -----------------------------------------------------------------------------------
def run_gpuknn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "gpuknn.cli", *args], capture_output=True,
                          text=True, timeout=180, check=False, env={**os.environ, **(env or {})})


def write_job(root: Path, hyperparameters: dict[str, str],
              content_type: str = RECORDIO) -> None:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {"train": {"ContentType": content_type, "TrainingInputMode": "File"}}))


def data_dir(root: Path, name: str = "train") -> Path:
    path = root / "input" / "data" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
