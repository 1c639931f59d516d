"""Bounds on what one input may cost, so that hostile bytes meet a clear error, not the OOM killer.

Every limit names itself in its error message, with the setting that raises it.

- **Decompressed size.** gzip input is inflated in a stream that counts its output. A
  request body may inflate to the server's payload limit at most (HTTP 413). A data
  file (``train``, ``transform``, ``KNN.fit``) may inflate to at most
  ``$GPUKNN_MAX_GZIP_RATIO`` (default 100) times the compressed bytes read so far,
  once past a grace of 64 MiB: real data rarely compresses 100:1, and gzip can reach
  about 1000:1. The ratio is the usual compression-bomb test (Apache POI uses 100:1 too).
- **Lines and documents.** A CSV or JSON Lines line is at most :data:`MAX_LINE_BYTES`;
  a JSON document (``application/json``) at most :data:`MAX_JSON_DOCUMENT_BYTES`, and
  nested at most :data:`MAX_JSON_DEPTH` levels (an instance needs four).
- **Records.** A RecordIO record, joined from its parts, is at most 2**29 bytes (the
  format's own limit on one part).
- **Features.** A sparse shape is at most :data:`MAX_FEATURES`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

from gpuknn.errors import DataError, PayloadTooLargeError

MAX_LINE_BYTES = 64 << 20
MAX_JSON_DOCUMENT_BYTES = 256 << 20
MAX_JSON_DEPTH = 32
MAX_FEATURES = (1 << 31) - 1
GZIP_RATIO_VARIABLE = "GPUKNN_MAX_GZIP_RATIO"
DEFAULT_GZIP_RATIO = 100.0
GZIP_GRACE_BYTES = 64 << 20


@dataclass(frozen=True)
class InflateLimit:
    """How far one gzip stream may inflate.

    Attributes
    ----------
    max_bytes : int or None
        Absolute cap on the decompressed bytes (a request body: the payload limit).
    max_ratio : float or None
        Cap on decompressed / compressed bytes, checked past ``grace_bytes``.
    grace_bytes : int
    """

    max_bytes: int | None = None
    max_ratio: float | None = None
    grace_bytes: int = GZIP_GRACE_BYTES

    @classmethod
    def for_body(cls, max_bytes: int) -> InflateLimit:
        """A request body: at most ``max_bytes`` once inflated, like the raw body."""
        return cls(max_bytes=max_bytes)

    @classmethod
    def for_files(cls) -> InflateLimit:
        """Data files: ``$GPUKNN_MAX_GZIP_RATIO`` (default 100) past 64 MiB.

        Raises
        ------
        DataError
            When the variable is set to something other than a number >= 1.
        """
        text = os.environ.get(GZIP_RATIO_VARIABLE, "").strip()
        if not text:
            return cls(max_ratio=DEFAULT_GZIP_RATIO)
        try:
            ratio = float(text)
        except ValueError:
            ratio = 0.0
        if not ratio >= 1:
            raise DataError(f"${GZIP_RATIO_VARIABLE} must be a number >= 1 (a decompressed to "
                            f"compressed ratio); got {text!r}")
        return cls(max_ratio=ratio)

    def check(self, name: str, inflated: int, compressed: int) -> None:
        """Raise once ``inflated`` bytes from ``compressed`` pass this limit."""
        if self.max_bytes is not None and inflated > self.max_bytes:
            raise PayloadTooLargeError(
                f"{name}: gzip data inflates past the {self.max_bytes / (1 << 20):g} MB "
                "payload limit; send fewer rows per request")
        if (self.max_ratio is not None and inflated > self.grace_bytes
                and inflated > self.max_ratio * max(compressed, 1)):
            raise DataError(
                f"{name}: gzip data inflates more than {self.max_ratio:g}x ({inflated >> 20} "
                f"MiB from {compressed >> 20} MiB so far), which looks like a compression "
                f"bomb; if the data is genuine, raise ${GZIP_RATIO_VARIABLE}")


class CountingReader(io.RawIOBase):
    """A raw stream over ``handle`` that counts the bytes read through it."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.handle.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


class InflatedReader(io.RawIOBase):
    """Decompressed bytes of a gzip stream, refused past an :class:`InflateLimit`.

    Reads go through ``readinto`` in bounded pieces, so even ``read()`` of everything
    stops at the limit instead of inflating the whole stream first.
    """

    def __init__(self, name: str, gzip_file: Any, compressed: CountingReader,
                 limit: InflateLimit):
        self.name, self.gzip_file, self.compressed, self.limit = name, gzip_file, compressed, limit
        self.inflated = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.gzip_file.read(min(len(buffer), 1 << 20))
        buffer[: len(data)] = data
        self.inflated += len(data)
        self.limit.check(self.name, self.inflated, self.compressed.count)
        return len(data)
