"""Turn a data source into a sequence of named, sequentially readable binary streams.

A source is a file path, an open binary file, a directory (every regular file under
it, sorted by relative path, hidden files skipped), a SageMaker manifest file
(``[{"prefix": ...}, "relative/key", ...]``), or a named pipe (SageMaker Pipe mode).
Streams are only ever read forward, and gzip is recognised by its magic bytes, not by
the file name. Nothing is seeked, so pipes and gzip streams work alike. A gzip stream
inflates under an :class:`~gpuknn.io.limits.InflateLimit` (a ratio for files, an
absolute size for request bodies), so a compression bomb is refused, not inflated.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from gpuknn.errors import DataError
from gpuknn.io.limits import CountingReader, InflatedReader, InflateLimit

GZIP_MAGIC = b"\x1f\x8b"
MANIFEST_MAX_BYTES = 256 << 20


class Stream:
    """A named binary stream (gzip already unwrapped)."""

    def __init__(self, name: str, handle: Any, path: Path | None = None, *,
                 compressed: bool = False):
        self.name = name
        self.handle = handle
        self.path = path  # set for a regular, uncompressed file, which may be memory-mapped
        self.compressed = compressed

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes; a cut-short gzip stream becomes a DataError."""
        try:
            return self.handle.read(size)
        except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as err:
            raise DataError(f"{self.name}: unreadable or truncated gzip data ({err})") from None


def iter_streams(source: Any, inflate: InflateLimit | None = None) -> Iterator[Stream]:
    """Yield the streams of ``source`` one after another; each is closed after use.

    Parameters
    ----------
    source : str, Path or binary file
    inflate : InflateLimit, optional
        How far gzip data may inflate; default :meth:`InflateLimit.for_files`.

    Raises
    ------
    DataError
        For a path that does not exist, an empty directory or a broken manifest.
    """
    inflate = InflateLimit.for_files() if inflate is None else inflate
    if hasattr(source, "read"):
        yield _unwrap(getattr(source, "name", "<stream>"), source, inflate)
        return
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    files = files_of(path)
    if not files:
        raise DataError(f"{path}: the directory holds no data files")
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            stream = _unwrap(str(file), handle, inflate)
            if not stream.compressed and stat.S_ISREG(
                    os.fstat(handle.fileno()).st_mode):
                stream.path = file
            yield stream


def files_of(path: Path) -> list[Path]:
    """The files a source path stands for, in reading order (see the module's docstring)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if stat.S_ISFIFO(path.stat().st_mode):
        return [path]
    manifest = _manifest_entries(path)
    return [path] if manifest is None else manifest


class _Prefixed(io.RawIOBase):
    """A raw stream that yields ``prefix`` and then the rest of ``handle``.

    It only ever calls ``handle.read``, so any object with a ``read`` method works, and
    closing it leaves ``handle`` open (the caller owns it).
    """

    def __init__(self, prefix: bytes, handle: Any):
        self.prefix, self.handle = prefix, handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.prefix:
            count = min(len(buffer), len(self.prefix))
            buffer[:count] = self.prefix[:count]
            self.prefix = self.prefix[count:]
            return count
        if hasattr(self.handle, "readinto"):
            return self.handle.readinto(buffer) or 0
        data = self.handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _unwrap(name: str, handle: Any, inflate: InflateLimit) -> Stream:
    head = b""
    while len(head) < 2:  # short reads (pipes, sockets) may deliver one byte at a time
        more = handle.read(2 - len(head))
        if not more:
            break
        head += more
    if head != GZIP_MAGIC:
        return Stream(name, io.BufferedReader(_Prefixed(head, handle), buffer_size=1 << 20))
    compressed = CountingReader(_Prefixed(head, handle))
    inflated = gzip.GzipFile(fileobj=io.BufferedReader(compressed, buffer_size=1 << 20),
                             mode="rb")
    limited = InflatedReader(name, inflated, compressed, inflate)
    return Stream(name, io.BufferedReader(limited, buffer_size=1 << 20), compressed=True)


def _manifest_entries(path: Path) -> list[Path] | None:
    """The files a SageMaker manifest lists, or None when ``path`` is not a manifest."""
    with open(path, "rb") as handle:
        head = handle.read(64)
        if not head.lstrip().startswith(b"["):
            return None
        text = head + handle.read(MANIFEST_MAX_BYTES)
    try:
        entries = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(entries, list) and entries and isinstance(entries[0], dict)
            and "prefix" in entries[0]):
        return None
    prefix = entries[0]["prefix"]
    keys = entries[1:]
    if not keys or not all(isinstance(key, str) for key in keys):
        raise DataError(f"{path}: a manifest lists its files as strings after the prefix")
    return [_resolve(prefix, key, path) for key in keys]


def _resolve(prefix: str, key: str, manifest: Path) -> Path:
    parsed = urlparse(prefix)
    if parsed.scheme in ("", "file"):
        base = Path(url2pathname(parsed.path) if parsed.scheme else prefix)
        base = base if base.is_absolute() else manifest.parent / base
        candidate = base / key
    else:  # s3:// and friends: the objects must have been copied beside the manifest
        candidate = manifest.parent / key
    if ".." in Path(key).parts or Path(key).is_absolute() or not candidate.is_file():
        raise DataError(f"{manifest}: manifest entry {key!r} (prefix {prefix!r}) is not a "
                        f"readable file at {candidate}; remote objects must be downloaded "
                        "beside the manifest")
    return candidate


def name_of(source: Any) -> str:
    """A printable name for a source."""
    return str(getattr(source, "name", source)) if not isinstance(source, (str, os.PathLike)) \
        else str(source)
