"""The head of faiss's index file format, read without faiss, and flat indexes whole.

A model's index file is untrusted input to the loader: before any of it reaches
faiss's reader (which allocates whatever sizes a file declares, up to 2**40
elements), its header is checked here against the model's metadata. Flat indexes
(gpuknn's ``faiss.Flat``) are simple enough to read entirely here, as a view of
the file's bytes: their vector count must match the file's length exactly.

Every index starts with a four-byte code and the common header::

    fourcc  d:int32  ntotal:int64  dummy:int64  dummy:int64  is_trained:uint8  metric:int32

(little-endian, unpadded). An ``IndexFlat`` then holds its vectors as one
length-prefixed array: ``count:uint64`` float32 values, then the values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from gpuknn.errors import ModelFileError

_HEADER = struct.Struct("<4siqqq?i")
_COUNT = struct.Struct("<Q")
FLAT_CODES = {b"IxF2": "L2", b"IxFI": "INNER_PRODUCT"}
IVF_CODES = {b"IwFl": "faiss.IVFFlat", b"IwPQ": "faiss.IVFPQ"}
_METRICS = {1: "L2", 0: "INNER_PRODUCT"}


@dataclass(frozen=True)
class IndexHeader:
    """What the first bytes of an index file declare.

    Attributes
    ----------
    kind : {"faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ"}
    dim : int
    ntotal : int
    metric : {"L2", "INNER_PRODUCT"}
        The faiss metric (a COSINE model's index is an inner-product index).
    """

    kind: str
    dim: int
    ntotal: int
    metric: str


def read_header(data: bytes, name: str) -> IndexHeader:
    """The header of a faiss index file of one of gpuknn's index types.

    Raises
    ------
    ModelFileError
        For a file too short for a header, an index type gpuknn does not write, or
        an impossible dimension, count or metric.
    """
    if len(data) < _HEADER.size:
        raise ModelFileError(f"{name}: {len(data)} bytes, too short for a faiss index header")
    code, dim, ntotal, _, _, _, metric = _HEADER.unpack_from(data)
    kind = "faiss.Flat" if code in FLAT_CODES else IVF_CODES.get(code)
    if kind is None:
        raise ModelFileError(f"{name}: not a faiss index of a type gpuknn writes (starts with "
                             f"{code!r}; expected one of "
                             f"{', '.join(map(repr, [*FLAT_CODES, *IVF_CODES]))})")
    if dim < 1 or ntotal < 0 or metric not in _METRICS:
        raise ModelFileError(f"{name}: impossible index header (dimension {dim}, {ntotal} "
                             f"vectors, metric code {metric})")
    return IndexHeader(kind, dim, ntotal, _METRICS[metric])


def flat_vectors(data: bytes, name: str) -> np.ndarray:
    """The vectors of a faiss ``IndexFlat`` file, as a read-only (ntotal, d) float32 view.

    Raises
    ------
    ModelFileError
        When the file is not a flat index, or its length is not exactly what its
        header and value count declare.
    """
    header = read_header(data, name)
    if header.kind != "faiss.Flat":
        raise ModelFileError(f"{name}: holds a {header.kind} index, not a flat one")
    start = _HEADER.size + _COUNT.size
    if len(data) < start:
        raise ModelFileError(f"{name}: truncated flat index ({len(data)} bytes)")
    (count,) = _COUNT.unpack_from(data, _HEADER.size)
    expected = header.ntotal * header.dim
    if count != expected or len(data) != start + 4 * expected:
        raise ModelFileError(f"{name}: a flat index of {header.ntotal} x {header.dim} vectors "
                             f"takes {start + 4 * expected} bytes; this one declares {count} "
                             f"values in {len(data)} bytes")
    values = np.frombuffer(data, dtype="<f4", count=expected, offset=start)
    return values.reshape(header.ntotal, header.dim)


def flat_file_head(ntotal: int, dim: int, metric: str) -> bytes:
    """The bytes of an ``IndexFlat`` file before its vectors, as faiss writes them.

    Parameters
    ----------
    ntotal, dim : int
        The vectors' shape.
    metric : {"L2", "INNER_PRODUCT"}
        The faiss metric.
    """
    code = next(code for code, kind in FLAT_CODES.items() if kind == metric)
    metric_code = next(code for code, kind in _METRICS.items() if kind == metric)
    # faiss writes 1 << 20 into both unused header fields, and is_trained is true
    head = _HEADER.pack(code, dim, ntotal, 1 << 20, 1 << 20, True, metric_code)
    return head + _COUNT.pack(ntotal * dim)
