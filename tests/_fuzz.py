"""Fuzz targets: what hostile bytes may and may not do to gpuknn's parsers.

Shared by ``tests/test_fuzz.py`` (a bounded, derandomised run in the suite) and
``bench/fuzz.py`` (a longer random run that saves failing inputs to
``tests/data/fuzz/``, which the suite then replays).

The property, for every decoder and for ``/invocations``: an input either decodes to
finite float32 rows of the right width (and a server answers 200 with the Python API's
answer for them) or is refused with a :class:`~gpuknn.errors.ClientError` (a 4xx) whose
message is short and holds no traceback. Anything else (another exception, a 5xx, a
dead worker) is a failure. For model files: a model either loads or is refused with a
:class:`~gpuknn.errors.ModelFileError`, and nothing is written anywhere.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from gpuknn import io as data_io
from gpuknn.errors import ClientError, ModelFileError
from gpuknn.io import records
from gpuknn.io.recordio import frame
from gpuknn.serving import formats

FEATURES = 16
LIMITS = formats.RequestLimits(max_payload_bytes=1 << 20, k=5, n_classes=26)
CONTENT_TYPES = ("text/csv", "application/json", "application/jsonlines",
                 "application/x-recordio-protobuf")
MAX_MESSAGE = 600
REGRESSIONS = Path(__file__).parent / "data" / "fuzz"
# Tokens that parsers treat specially, spliced in by the mutator.
TOKENS = [b"[", b"]", b"{", b"}", b'"', b",", b"\n", b"\r\n", b"\x00", b"\xff", b"-", b"e",
          b"1e400", b"9" * 40, b"nan", b"NaN", b"Infinity", b"\xce\x23\xd7\xce",
          b"\x0a\x23\xd7\xce", b"\x1f\x8b", b'"keys"', b'"shape"', b'"values"', b"[" * 64,
          b'{"features": [', b"\x80" * 11, b"\x12\x00", b"\x22\x10"]


# -- bodies --------------------------------------------------------------------------------
def encode(rows: np.ndarray, content_type: str, *, sparse: bool = False,
           tensor: str = "float32_tensor") -> bytes:
    """Valid request bodies in each format."""
    if content_type == "text/csv":
        return "".join(",".join(f"{v:g}" for v in row) + "\n" for row in rows).encode()
    if content_type in ("application/json", "application/jsonlines"):
        instances = [_instance(row, sparse) for row in rows]
        if content_type == "application/json":
            return json.dumps({"instances": instances}).encode()
        return "\n".join(json.dumps(instance) for instance in instances).encode()
    payloads = []
    if tensor == "int32_tensor":
        rows = rows.astype(np.int32)
    for row in rows:
        if sparse:
            keys = np.flatnonzero(row)
            payloads.append(records.encode_sparse_row(row[keys], keys, FEATURES, None,
                                                      kind=tensor, label_kind=None))
        else:
            payloads.append(records.encode_dense_row(row, None, tensor, None))
    return b"".join(frame(payload) for payload in payloads)


def _instance(row: np.ndarray, sparse: bool) -> dict:
    if not sparse:
        return {"features": row.tolist()}
    keys = np.flatnonzero(row)
    return {"data": {"features": {"keys": keys.tolist(), "values": row[keys].tolist(),
                                  "shape": [FEATURES]}}}


@st.composite
def valid_bodies(draw, content_type: str | None = None) -> tuple[bytes, str]:
    content_type = content_type or draw(st.sampled_from(CONTENT_TYPES))
    n_rows = draw(st.integers(1, 40))
    values = draw(st.lists(st.integers(-20, 20), min_size=n_rows * FEATURES,
                           max_size=n_rows * FEATURES))
    rows = np.asarray(values, dtype=np.float32).reshape(n_rows, FEATURES) / 4
    tensor = draw(st.sampled_from(["float32_tensor", "float64_tensor", "int32_tensor"]))
    if tensor == "int32_tensor":
        rows = np.round(rows)
    sparse = draw(st.booleans()) and content_type != "text/csv"
    body = encode(rows, content_type, sparse=sparse, tensor=tensor)
    if draw(st.integers(0, 9)) == 0:
        body = gzip.compress(body)
    return body, content_type


@st.composite
def mutated(draw, body: bytes) -> bytes:
    """``body`` after a few random edits: flips, splices of special tokens, cuts, copies."""
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data), 1)))
        edit = draw(st.sampled_from(["flip", "token", "cut", "copy", "truncate", "byte"]))
        if edit == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "byte" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif edit == "token":
            data[at:at] = draw(st.sampled_from(TOKENS)) * draw(st.integers(1, 3))
        elif edit == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif edit == "copy" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[start:start + draw(st.integers(1, 256))]
        elif edit == "truncate":
            del data[at:]
    return bytes(data)


@st.composite
def hostile_bodies(draw) -> tuple[bytes, str]:
    """A mutated valid body (mostly), or random bytes, with a content type."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=2048)), draw(st.sampled_from(CONTENT_TYPES))
    body, content_type = draw(valid_bodies())
    if draw(st.integers(0, 9)) == 0:  # the wrong reader for these bytes
        content_type = draw(st.sampled_from(CONTENT_TYPES))
    return draw(mutated(body)), content_type


# -- the properties ------------------------------------------------------------------------
def check_refusal(error: BaseException) -> None:
    """A refusal must be a client error with a short message and no traceback."""
    assert isinstance(error, ClientError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert message and len(message) <= MAX_MESSAGE, message[:2000]
    assert "Traceback" not in message


def decode_or_refuse(body: bytes, content_type: str) -> np.ndarray | None:
    """The rows a request body decodes to, or None when it is refused cleanly."""
    try:
        rows = formats.decode_request(body, content_type, FEATURES, LIMITS)
    except Exception as error:
        check_refusal(error)
        return None
    assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == FEATURES
    assert np.isfinite(rows).all()
    return rows


def recordio_paths_agree(payloads: list[bytes]) -> None:
    """The vectorised run decoder and protobuf decode equal-length records alike.

    Also through the whole reader: a body of these records gives the same rows, or the
    same refusal, whether runs are taken (32 records or more) or never.
    """
    from gpuknn.io import recordio

    stacked = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(payloads), -1)
    fast = records.decode_run(stacked)
    try:
        slow = records.decode_payloads(payloads, [f"record {i}" for i in range(len(payloads))])
    except Exception as error:
        check_refusal(error)
        assert fast is None, "the run decoder accepted records that protobuf refuses"
        slow = None
    if fast is not None:
        np.testing.assert_array_equal(fast.features, slow.features)
        assert (fast.labels is None) == (slow.labels is None)
        if fast.labels is not None:
            np.testing.assert_array_equal(fast.labels, slow.labels)
    body = b"".join(frame(payload) for payload in payloads)
    outcomes = []
    for min_run in (recordio.MIN_RUN, 1 << 30):
        saved, recordio.MIN_RUN = recordio.MIN_RUN, min_run
        try:
            outcomes.append(_outcome(lambda: data_io.read(io.BytesIO(body), data_io.RECORDIO)))
        finally:
            recordio.MIN_RUN = saved
    assert outcomes[0] == outcomes[1], outcomes


def _outcome(read: Callable[[], tuple]) -> tuple:
    """("rows", features, labels) or ("refused", status, message), comparable with ==."""
    try:
        X, y = read()
    except Exception as error:
        check_refusal(error)
        return ("refused", error.status_code, str(error))
    dense = X.toarray() if hasattr(X, "toarray") else X
    return ("rows", dense.tobytes(), dense.shape, None if y is None else y.tobytes())


@st.composite
def record_runs(draw) -> list[bytes]:
    """Equal-length Record payloads: copies of one valid record with the same few byte
    edits at the same places (so they stay equal in length), values differing."""
    n_values = draw(st.integers(0, 8))
    tensor = draw(st.sampled_from(["float32_tensor", "float64_tensor"]))
    labelled = draw(st.booleans())
    count = draw(st.integers(1, 70))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = rng.random((count, n_values)).astype(np.float32)
    payloads = [records.encode_dense_row(row, float(i % 3) if labelled else None, tensor,
                                         tensor if labelled else None)
                for i, row in enumerate(rows)]
    edits = draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3))
    edited = []
    for payload in payloads:
        data = bytearray(payload)
        for at, value in edits:
            if data:
                data[at % len(data)] = value
        edited.append(bytes(data))
    return edited


# -- model files ---------------------------------------------------------------------------
def archive_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return [(member, archive.extractfile(member).read()) for member in archive]


def pack(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            if info.isfile():
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


@st.composite
def hostile_archives(draw, archive: bytes) -> bytes:
    """A model archive after tar-level edits (or raw byte edits of the gzip or the tar)."""
    how = draw(st.sampled_from(["raw-gzip", "raw-tar", "members"]))
    if how == "raw-gzip":
        return draw(mutated(archive))
    if how == "raw-tar":
        return gzip.compress(draw(mutated(gzip.decompress(archive))))
    members = archive_members(archive)
    for _ in range(draw(st.integers(1, 3))):
        members = draw(_member_edit(members))
    return pack(members)


@st.composite
def _member_edit(draw, members):
    members = list(members)
    if not members:
        return members
    at = draw(st.integers(0, len(members) - 1))
    info, data = members[at]
    edit = draw(st.sampled_from(["rename", "duplicate", "reorder", "drop", "link", "data",
                                 "directory", "nested"]))
    copy = tarfile.TarInfo(info.name)
    copy.size, copy.mode = info.size, info.mode
    if edit == "rename":
        copy.name = draw(st.sampled_from(["model_algo-1", "model_algo-1.json", "x",
                                          "model_algo-1.ids", "../model_algo-1"]))
        members[at] = (copy, data)
    elif edit == "duplicate":
        members.insert(draw(st.integers(0, len(members))), (copy, data))
    elif edit == "reorder":
        members = draw(st.permutations(members))
    elif edit == "drop":
        del members[at]
    elif edit == "link":
        link = tarfile.TarInfo(info.name)
        link.type = draw(st.sampled_from([tarfile.SYMTYPE, tarfile.LNKTYPE]))
        link.linkname = draw(st.sampled_from(["/etc/passwd", "../x", "/dev/zero"]))
        members[at] = (link, b"")
    elif edit == "data":
        members[at] = (copy, draw(mutated(data)) if data else data)
    elif edit == "directory":
        folder = tarfile.TarInfo(info.name)
        folder.type = tarfile.DIRTYPE
        members[at] = (folder, b"")
    else:
        copy.name = "sub/" + info.name
        members[at] = (copy, data)
    return members


def load_or_refuse(path: Path) -> bool:
    """A model loads (True), or is refused with a ModelFileError naming the model's path."""
    from gpuknn import KNNModel

    try:
        KNNModel.load(path, device="cpu")
    except Exception as error:
        assert isinstance(error, ModelFileError), f"{type(error).__name__}: {error}"
        assert str(path) in str(error), str(error)
        assert "Traceback" not in str(error)
        return False
    return True
