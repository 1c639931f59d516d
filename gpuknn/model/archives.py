"""Model archives (``model.tar.gz``): read member by member, or unpacked once into a cache.

An archive is unpacked once, member by member, into a cache directory
(:func:`unpacked`: the one named, else ``$GPUKNN_MODEL_CACHE``, else ``.gpuknn-models/``
beside it and then ``~/.cache/gpuknn/models``, the first writable), and loaded from there
like a directory, so that its
index is mapped too. Every member is checked before a byte of it is written: links,
devices, absolute paths and ``..`` are refused, so nothing is ever written outside
the cache. Where no cache is writable, the archive is read into memory instead
(:func:`read_archive`), with the same checks.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from gpuknn import _backend
from gpuknn.errors import ModelFileError, first_line
from gpuknn.model.layout import (
    KNOWN_FILES,
    MAX_METADATA_BYTES,
    METADATA,
    declared_sizes,
    read_metadata,
)

logger = logging.getLogger("gpuknn")
# Where archives are unpacked (see unpacked): beside the archive, or a directory named here.
CACHE_BESIDE, CACHE_VARIABLE = ".gpuknn-models", "GPUKNN_MODEL_CACHE"


READ_CHUNK_BYTES = 16 << 20


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names a gzip-compressed tar archive rather than a directory."""
    return str(path).endswith((".tar.gz", ".tgz"))


def cache_roots(archive: Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Where :func:`unpacked` may unpack ``archive``, in order of preference."""
    if cache_dir is not None:
        return [Path(cache_dir)]
    named = os.environ.get(CACHE_VARIABLE, "").strip()
    if named:
        return [Path(named)]
    return [archive.parent / CACHE_BESIDE, Path.home() / ".cache" / "gpuknn" / "models"]


def unpacked(archive: str | Path, cache_dir: str | Path | None = None) -> Path | None:
    """The directory holding ``archive``'s model files, unpacked the first time.

    The copy is named by the archive's name and path, and its device, inode, size and
    modification time: a replaced archive is unpacked again, and the copies of its older
    versions are removed (copies of other archives in a shared cache are left alone).
    Members are checked as :func:`read_archive` checks them, written under a temporary
    name and renamed into place whole: a copy that exists is complete, and processes
    that race to unpack one archive end up with the same directory.

    Parameters
    ----------
    archive : path
        A ``.tar.gz`` model.
    cache_dir : path, optional
        Where to unpack; default ``$GPUKNN_MODEL_CACHE``, else ``.gpuknn-models/`` beside
        the archive, else ``~/.cache/gpuknn/models``.

    Returns
    -------
    Path or None
        None where no cache directory is writable (the archive is then read into memory).

    Raises
    ------
    ModelFileError
        For a hostile or corrupt archive (nothing is left written then).
    """
    archive = Path(archive)
    stat = archive.stat()
    place = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:12]
    prefix = f"{archive.name}.{place}."
    name = f"{prefix}{stat.st_dev:x}-{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"
    for root in cache_roots(archive, cache_dir):
        if (root / name / METADATA).is_file():
            return root / name
        try:
            _unpack_into(archive, root, name)
        except (OSError, _CacheWriteError) as err:
            logger.info("%s: cannot unpack into %s (%s)", archive, root, first_line(err))
            continue
        _remove_older_copies(root, prefix, name)
        return root / name
    logger.info("%s: no writable cache directory: reading the archive into memory", archive)
    return None


def _unpack_into(archive: Path, root: Path, name: str) -> None:
    """Unpack ``archive`` into ``root/name`` through a temporary directory; on any error,
    leave nothing behind (not even ``root``, if this made it)."""
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=root, prefix=".unpacking-"))
    try:
        read_archive(archive, into=temp)
        temp.chmod(0o755)
        try:
            temp.rename(root / name)
        except OSError:
            if not (root / name / METADATA).is_file():
                raise
            shutil.rmtree(temp)  # another process unpacked it first
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if made_root:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise


def _remove_older_copies(root: Path, prefix: str, keep: str) -> None:
    """Remove the copies of this archive's earlier versions (the same path's)."""
    for entry in root.glob(f"{glob.escape(prefix)}*"):
        if entry.name != keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def read_archive(path: Path, into: Path | None = None) -> dict[str, bytes]:
    """The model files of a ``.tar.gz``, member by member, into memory, or written into
    the directory ``into`` (then only the metadata is kept in memory).

    Every member's type, name and declared size are checked before a byte of it is read:
    only regular files at the top level (no links, devices, sparse files, ``..``), each
    name once, the metadata at most 1 MiB and every other file of the size the metadata
    gives (or, in archives with the metadata last, within the memory available).
    """
    reader = _ArchiveReader(path, into)
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                reader.add(archive, member)
    except _CacheWriteError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ModelFileError(f"{path}: not a readable .tar.gz model archive ({err})") from None
    if METADATA not in reader.files:
        raise ModelFileError(f"{path}: the archive holds no {METADATA}")
    return reader.files


class _ArchiveReader:
    """Collects an archive's model files, checking each member before reading it."""

    def __init__(self, archive: Path, into: Path | None = None):
        self.archive, self.into = archive, into
        self.files: dict[str, bytes] = {}
        self.seen: set[str] = set()
        self.sizes: dict[str, int] | None = None  # from the metadata, once read
        self.budget = _backend.available_memory()

    def add(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _safe_member_name(member, self.archive)
        if not name:
            return
        if name in self.seen:
            raise ModelFileError(f"{self.archive}: archive member {name!r} appears twice")
        self.seen.add(name)
        if name not in KNOWN_FILES or (self.sizes is not None and name != METADATA
                                       and name not in self.sizes):
            return  # SageMaker archives may carry unrelated files
        self._check_size(name, member.size)
        if self.into is not None and name != METADATA:
            _write_member(archive, member, self.archive, self.into / name)
            self.files[name] = b""  # on disk; only its presence matters here
        else:
            self.files[name] = _read_member(archive, member, self.archive)
            if self.into is not None:
                with _cache_file(self.into / name) as write:
                    write(self.files[name])
        if self.budget is not None:
            self.budget -= member.size
        if name == METADATA:
            self.sizes = declared_sizes(read_metadata(self.files, self.archive), self.archive)

    def _check_size(self, name: str, declared: int) -> None:
        if name == METADATA:
            allowed, what = MAX_METADATA_BYTES, "at most"
        elif self.sizes is not None:
            allowed, what = self.sizes[name], "exactly"
            if declared != allowed:
                raise ModelFileError(f"{self.archive}: archive member {name!r} declares "
                                     f"{declared} bytes; {METADATA} says {allowed}")
        else:
            allowed, what = self.budget, "within the memory available:"
        if allowed is not None and declared > allowed:
            raise ModelFileError(f"{self.archive}: archive member {name!r} declares {declared} "
                                 f"bytes; {what} {allowed} allowed")


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    """A member's declared bytes, read in bounded chunks (a short member is an error)."""
    handle = archive.extractfile(member)
    data = bytearray(member.size)
    view, filled = memoryview(data), 0
    while filled < member.size:
        count = handle.readinto(view[filled:filled + READ_CHUNK_BYTES])
        if not count:
            raise ModelFileError(f"{path}: archive member {member.name!r} is truncated "
                                 f"({filled} of {member.size} bytes)")
        filled += count
    return bytes(data) if member.size <= READ_CHUNK_BYTES else data


def _write_member(archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path,
                  target: Path) -> None:
    """A member's declared bytes, copied in bounded chunks to ``target`` (a short member is
    an error)."""
    handle, left = archive.extractfile(member), member.size
    with _cache_file(target) as out:
        while left:
            chunk = handle.read(min(left, READ_CHUNK_BYTES))
            if not chunk:
                raise ModelFileError(f"{path}: archive member {member.name!r} is truncated "
                                     f"({member.size - left} of {member.size} bytes)")
            out(chunk)
            left -= len(chunk)


@contextlib.contextmanager
def _cache_file(target: Path):
    """A writer of a new file in the cache: ``write(bytes)``; the cache's own failures
    (full, read-only) come out as :class:`_CacheWriteError`."""
    try:
        handle = open(target, "xb")
        os.fchmod(handle.fileno(), 0o644)
    except OSError as err:
        raise _CacheWriteError(f"{target}: {err}") from err

    def write(data: Any) -> None:
        try:
            handle.write(data)
        except OSError as err:
            raise _CacheWriteError(f"{target}: {err}") from err

    try:
        yield write
    finally:
        handle.close()


class _CacheWriteError(Exception):
    """The cache could not be written (full, read-only): not the archive's fault."""


def _safe_member_name(member: tarfile.TarInfo, archive: Path) -> str:
    name = member.name[2:] if member.name.startswith("./") else member.name
    if member.isdir() and name in ("", "."):
        return ""
    parts = Path(name).parts
    regular = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse()
    if not regular or name.startswith("/") or ".." in parts or len(parts) != 1:
        raise ModelFileError(f"{archive}: refusing archive member {member.name!r}: model "
                             "archives hold only regular, non-sparse files at the top level")
    return name
