"""RecordIO framing (MXNet / dmlc), as SageMaker's ``application/x-recordio-protobuf`` uses it.

Every record is ``uint32 magic = 0xCED7230A``, ``uint32 lrecord`` (little-endian), the
payload, then zero padding to a 4-byte boundary. ``lrecord`` holds the payload length in
its low 29 bits and a continuation flag in its top 3: 0 a whole record, 1 the first, 2 a
middle and 3 the last part of a record that the writer split where the magic number
occurred in the data (the magic is dropped there and restored by the reader).

:func:`iter_payloads` reads any binary stream sequentially (files, gzip streams, pipes),
in blocks, so memory stays bounded by a block plus one record.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from gpuknn.errors import DataError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
BLOCK_BYTES = 4 << 20
# Map regular uncompressed files whole (one pass, no block copies); pipes and gzip stream.
MEMORY_MAP = True
_HEADER = struct.Struct("<II")


def padded(length: int) -> int:
    """``length`` rounded up to a multiple of 4."""
    return (length + 3) & ~3


def frame(payload: bytes) -> bytes:
    """One RecordIO record (flag 0) holding ``payload``, with its padding."""
    if len(payload) > LENGTH_MASK:
        raise DataError(f"a RecordIO record holds at most {LENGTH_MASK} bytes; got {len(payload)}")
    return b"".join((_HEADER.pack(MAGIC, len(payload)), payload,
                     b"\0" * (padded(len(payload)) - len(payload))))


class PayloadRun:
    """Consecutive complete records whose payloads all have the same length.

    Attributes
    ----------
    offset : int
        Byte offset of the first record in its source.
    payloads : ndarray of shape (n_records, payload_length), uint8
        A zero-copy view of the payload bytes (the padding is cut off).
    """

    __slots__ = ("offset", "payloads")

    def __init__(self, offset: int, payloads: np.ndarray):
        self.offset = offset
        self.payloads = payloads


def iter_payloads(stream: BinaryIO, name: str) -> Iterator[tuple[int, bytes] | PayloadRun]:
    """Yield the records of a RecordIO stream, in order.

    A record comes as ``(byte_offset, payload)``; a run of at least
    :data:`MIN_RUN` equal-length records comes as one :class:`PayloadRun`,
    found with one vectorised check of their headers (the common case of dense
    records written by the SageMaker SDK).

    Parameters
    ----------
    stream : binary file object
        Read sequentially with ``read``; never seeked.
    name : str
        The source's name, for error messages.

    Raises
    ------
    DataError
        Naming the file and byte offset of a wrong magic number, a truncated record
        or a broken multi-part record.
    """
    reader = _Reader(stream, name)
    mapped = _mapped(stream)
    if mapped is not None:
        reader.buffer = mapped  # the whole file at once: no copies between blocks
        reader.eof = True
    yield from reader.records()


def _mapped(stream: BinaryIO):
    """A read-only memory map of a regular, uncompressed file, or None."""
    path = getattr(stream, "path", None)
    if path is None or not MEMORY_MAP:
        return None
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return None
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


MIN_RUN = 32
_SHORT = object()  # a run could not be judged: too few bytes buffered


class _Reader:
    def __init__(self, stream: BinaryIO, name: str):
        self.stream, self.name = stream, name
        self.buffer = b""
        self.position = 0  # stream offset of buffer[0]
        self.parts: list[bytes] = []
        self.parts_bytes = 0  # of the record being joined, magic numbers restored
        self.part_start = 0
        self.single_steps = 0  # records to take one by one before trying a run again
        self.eof = False

    def records(self):
        eof = self.eof
        while True:
            cursor = 0
            while len(self.buffer) - cursor >= 8:
                if not self.parts and self.single_steps <= 0:
                    run = self._run(cursor)
                    if run is _SHORT and not eof:
                        break  # too few bytes buffered to tell: read more first
                    if isinstance(run, PayloadRun):
                        cursor += run.payloads.shape[0] * _stride(run.payloads.shape[1])
                        yield run
                        continue
                    if run is None:
                        self.single_steps = MIN_RUN * 8
                step = self._single(cursor)
                if step is None:
                    break
                cursor, record = step
                self.single_steps -= 1
                if record is not None:
                    yield record
            self.buffer = self.buffer[cursor:]
            self.position += cursor
            if eof:
                break
            block = self.stream.read(max(BLOCK_BYTES, len(self.buffer)))
            eof = not block
            self.buffer += block
        if self.buffer or self.parts:
            where = self.position if self.buffer else self.part_start
            if where == 0 and looks_like_text(self.buffer):
                raise DataError(_text_message(self.name, 0, self.buffer))
            raise DataError(f"{self.name}: byte offset {where}: truncated RecordIO record "
                            f"({len(self.buffer)} bytes left at the end of the data)")

    def _run(self, cursor: int) -> PayloadRun | None:
        """Equal-length flag-0 records from ``cursor``, checked in one numpy pass."""
        magic, lrecord = _HEADER.unpack_from(self.buffer, cursor)
        if magic != MAGIC or lrecord >> 29:
            return None
        length = lrecord & LENGTH_MASK
        stride = _stride(length)
        count = (len(self.buffer) - cursor) // stride
        if count < MIN_RUN:
            return _SHORT
        words = np.frombuffer(self.buffer, dtype="<u4", count=count * stride // 4, offset=cursor)
        headers = words.reshape(count, stride // 4)[:, :2]
        good = (headers[:, 0] == MAGIC) & (headers[:, 1] == lrecord)
        run = count if good.all() else int(np.argmin(good))
        if run < MIN_RUN:
            return None
        raw = np.frombuffer(self.buffer, dtype=np.uint8, count=run * stride, offset=cursor)
        return PayloadRun(self.position + cursor, raw.reshape(run, stride)[:, 8 : 8 + length])

    def _single(self, cursor: int):
        """Parse one record at ``cursor``: ``(next_cursor, record or None)``, None if incomplete."""
        magic, lrecord = _HEADER.unpack_from(self.buffer, cursor)
        offset = self.position + cursor
        if magic != MAGIC:
            head = bytes(self.buffer[cursor : cursor + TEXT_SAMPLE])
            if looks_like_text(head):
                raise DataError(_text_message(self.name, offset, head))
            raise DataError(f"{self.name}: byte offset {offset}: expected the RecordIO magic "
                            f"number 0xCED7230A, found 0x{magic:08X}; not RecordIO-protobuf "
                            "data, or the previous record's length is wrong")
        length, flag = lrecord & LENGTH_MASK, lrecord >> 29
        end = cursor + 8 + padded(length)
        if end > len(self.buffer):
            return None
        payload = self.buffer[cursor + 8 : cursor + 8 + length]
        if flag == 0 and not self.parts:
            return end, (offset, payload)
        if flag not in (1, 2, 3) or (flag == 1) != (not self.parts):
            raise DataError(f"{self.name}: byte offset {offset}: RecordIO continuation flag "
                            f"{flag} out of sequence (a multi-part record is broken)")
        if flag == 1:
            self.part_start = offset
        self.parts.append(payload)
        self.parts_bytes = len(payload) + (self.parts_bytes + len(MAGIC_BYTES) if flag != 1 else 0)
        if self.parts_bytes > LENGTH_MASK:
            raise DataError(f"{self.name}: byte offset {self.part_start}: a multi-part record "
                            f"longer than {LENGTH_MASK} bytes, the most one record may hold")
        if flag != 3:
            return end, None
        record = (self.part_start, MAGIC_BYTES.join(self.parts))
        self.parts = []
        return end, record


TEXT_SAMPLE = 64
# Bytes of text data: printable ASCII, tab, line ends, and UTF-8 sequences (0x80 and up).
_TEXT_BYTES = np.zeros(256, dtype=bool)
_TEXT_BYTES[[9, 10, 13, *range(32, 127), *range(128, 256)]] = True


def looks_like_text(data: bytes) -> bool:
    """Whether bytes read as RecordIO look like text instead (CSV, JSON, JSON Lines).

    Parameters
    ----------
    data : bytes
        The first bytes found where a record should start.

    Returns
    -------
    bool
        True for non-empty, valid UTF-8 (a sequence cut at the end allowed) of printable
        characters, tabs and line ends.
    """
    sample = bytes(data[:TEXT_SAMPLE])
    if not sample or not _TEXT_BYTES[np.frombuffer(sample, dtype=np.uint8)].all():
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(sample) - 3 and err.reason == "unexpected end of data"
    return True


def _text_message(name: str, offset: int, head: bytes) -> str:
    shown = head[:32].decode("utf-8", errors="replace")
    return (f"{name}: byte offset {offset}: found text ({shown!r}) where a RecordIO-protobuf "
            "record should start (with the magic number 0xCED7230A). For CSV, JSON or JSON "
            'Lines data, declare its content type: "ContentType": "text/csv" for the '
            'channel in inputdataconfig.json (training jobs), content_type="text/csv" in '
            "Python (KNN.fit, gpuknn.io.read), or the request's Content-Type header")


def _stride(length: int) -> int:
    return 8 + padded(length)
