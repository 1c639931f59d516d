"""Bytes without copies, for model files.

:class:`Content` is a file to write made of pieces (a header, views of arrays): hashed
and written piece by piece, never joined. :func:`npz_arrays` reads the arrays of an
``.npz`` written by ``np.savez`` as read-only views of its bytes (of a mapped file, so
the pages stay shared), without ``np.load`` and without unpickling anything.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from typing import Any

import numpy as np


class Content:
    """A file's bytes as pieces (a header, views of arrays), hashed and written without
    joining them into one copy.

    Parameters
    ----------
    *pieces : bytes-like
        C-contiguous buffers, written one after another.
    """

    def __init__(self, *pieces: Any):
        self.pieces = [memoryview(piece).cast("B") for piece in pieces]
        self.size = sum(piece.nbytes for piece in self.pieces)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.pieces:
            digest.update(piece)
        return digest.hexdigest()

    def tobytes(self) -> bytes:
        """The whole file as one bytes object (a copy)."""
        return b"".join(self.pieces)

    def write_to(self, handle: Any) -> None:
        for piece in self.pieces:
            handle.write(piece)

    def reader(self) -> io.BufferedIOBase:
        """A file object reading the pieces in turn (for ``tarfile.addfile``)."""
        return io.BufferedReader(_PiecesReader(self.pieces))  # whole reads of any size


class _PiecesReader(io.RawIOBase):
    def __init__(self, pieces: list[memoryview]):
        self._pieces, self._at = list(pieces), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pieces and self._at >= self._pieces[0].nbytes:
            self._pieces.pop(0)
            self._at = 0
        if not self._pieces:
            return 0
        chunk = self._pieces[0][self._at:self._at + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)


def npz_content(arrays: dict[str, np.ndarray]) -> Content:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return Content(buffer.getvalue())


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}


_NPY_HEADER_MAX = 1 << 16  # np.savez writes headers of a few hundred bytes


def npz_arrays(data: Any) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by ``np.savez``, as read-only views of ``data`` (a
    mapped file's arrays stay in the page cache, shared): stored (uncompressed) members
    whose headers declare no more bytes than they hold, and no objects (nothing is
    unpickled; ``np.load`` is not used)."""
    view = memoryview(data).cast("B")
    arrays = {}
    with zipfile.ZipFile(_ViewReader(view)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(view):
                raise ValueError(f"member {info.filename!r} is compressed or larger than "
                                 "the file; np.savez stores its arrays")
            begin = _member_data(view, info)
            arrays[info.filename.removesuffix(".npy")] = _npy_view(
                data, view[begin:begin + info.file_size], begin, info.filename)
    return arrays


_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length


def _member_data(view: memoryview, info: zipfile.ZipInfo) -> int:
    """Where a stored zip member's bytes start (after its local header)."""
    at = info.header_offset
    if at + _ZIP_LOCAL_HEADER.size > len(view):
        raise ValueError(f"member {info.filename!r}: its header lies past the file's end")
    signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack_from(view, at)
    begin = at + _ZIP_LOCAL_HEADER.size + name_length + extra_length
    if signature != b"PK\x03\x04" or begin + info.file_size > len(view):
        raise ValueError(f"member {info.filename!r}: not a zip member that the file holds")
    return begin


def _npy_view(data: Any, member: memoryview, begin: int, name: str) -> np.ndarray:
    """The array of one ``.npy`` member (bytes ``begin`` on of ``data``), as a view."""
    header = io.BytesIO(member[:_NPY_HEADER_MAX])
    version = np.lib.format.read_magic(header)
    read_header = _NPY_HEADERS.get(version)
    if read_header is None:
        raise ValueError(f"member {name!r}: .npy version {version}")
    shape, fortran_order, dtype = read_header(header)
    count = int(np.prod(shape))
    if dtype.hasobject or header.tell() + count * dtype.itemsize > len(member):
        raise ValueError(f"member {name!r} declares {shape} x {dtype}, more than it holds")
    values = np.frombuffer(data, dtype=dtype, count=count, offset=begin + header.tell())
    return values.reshape(shape, order="F" if fortran_order else "C")


class _ViewReader(io.RawIOBase):
    """A seekable file over a memoryview, for ``zipfile`` (no copy of the bytes)."""

    def __init__(self, view: memoryview):
        self._view, self._at = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._at:self._at + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)
