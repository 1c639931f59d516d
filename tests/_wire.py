"""Helpers shared by the interoperability tests: an independent RecordIO and protobuf
wire decoder (neither gpuknn's nor the SDK's), and the Python that has the SageMaker SDK.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from functools import cache

import numpy as np

MAGIC = 0xCED7230A
LENGTH_MASK = (1 << 29) - 1
# Value's oneof field numbers -> (tensor name, little-endian dtype of the packed values)
TENSORS = {2: ("float32_tensor", "<f4"), 3: ("float64_tensor", "<f8"), 7: ("int32_tensor", None)}
SDK_ENV = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, payload) of every record; asserts the RecordIO framing is exact."""
    out, offset = [], 0
    while offset < len(data):
        assert offset % 4 == 0, f"record at unaligned offset {offset}"
        assert len(data) - offset >= 8, f"truncated header at {offset}"
        magic, lrecord = struct.unpack("<II", data[offset : offset + 8])
        assert magic == MAGIC, f"bad magic {magic:#x} at {offset}"
        assert lrecord >> 29 == 0, f"continuation flag {lrecord >> 29} at {offset}"
        length = lrecord & LENGTH_MASK
        start, end = offset + 8, offset + 8 + length
        padded = start + ((length + 3) // 4) * 4
        assert padded <= len(data), f"record at {offset} runs past the end"
        assert data[end:padded] == bytes(padded - end), f"non-zero padding at {end}"
        out.append((offset, data[start:end]))
        offset = padded
    assert offset == len(data)
    return out


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = varint(buf, pos)
        out.append(value)
    return out


def fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message, in order."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            size, pos = varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, wire, value))
    assert pos == len(buf)
    return out


def decode_value(buf: bytes) -> tuple[str, np.ndarray, list[int], list[int]]:
    """A ``Value`` holding one packed tensor -> (tensor name, values, keys, shape)."""
    ((number, _, body),) = fields(buf)
    name, dtype = TENSORS[number]
    parts = {1: [], 2: [], 3: []}
    for field, wire, value in fields(body):
        assert wire == 2, "the SDK writes packed repeated fields"
        parts[field].append(value)
    packed = b"".join(parts[1])
    if dtype is None:  # int32: varints, negatives sign-extended to 64 bits
        values = np.array([v - (1 << 64) if v >> 63 else v for v in varints(packed)], np.int64)
    else:
        values = np.frombuffer(packed, dtype=dtype)
    return name, values, varints(b"".join(parts[2])), varints(b"".join(parts[3]))


def decode_record(buf: bytes) -> dict:
    """A ``Record`` -> {"features": {key: tensor}, "label": {key: tensor}}."""
    record = {"features": {}, "label": {}}
    for number, _, entry in fields(buf):
        assert number in (1, 2), f"unexpected Record field {number}"
        items = {field: value for field, _, value in fields(entry)}
        record["features" if number == 1 else "label"][items[1].decode()] = decode_value(
            items[2])
    return record


def has_sdk(python: str) -> bool:
    try:
        result = subprocess.run([python, "-c", "import sagemaker.amazon.common"],
                                capture_output=True, timeout=300, env=SDK_ENV, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@cache
def find_sdk_python() -> tuple[str | None, str]:
    """(interpreter, why): this interpreter if it has the SDK, else $GPUKNN_SDK_PYTHON."""
    if has_sdk(sys.executable):
        return sys.executable, ""
    configured = os.environ.get("GPUKNN_SDK_PYTHON")
    if not configured:
        return None, (f"no SageMaker SDK: `import sagemaker.amazon.common` fails in "
                      f"{sys.executable} and GPUKNN_SDK_PYTHON is not set")
    if not has_sdk(configured):
        return None, f"GPUKNN_SDK_PYTHON={configured} cannot `import sagemaker.amazon.common`"
    return configured, ""
