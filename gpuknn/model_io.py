"""Model files: a directory or a ``model.tar.gz`` holding

=============================== ================================================
``model_algo-1``                the index, in faiss's own file format (CPU form)
``model_algo-1.labels``         labels, little-endian float32, one per indexed row
``model_algo-1.ids``            training row numbers, little-endian int64
``model_algo-1.reduction.npz``  the reduction's arrays (only with a reduction)
``model_algo-1.partition.npz``  a ``faiss.Flat`` L2 index's cluster partition (format 2,
                                only where exact search prunes with one), so that
                                loading runs no k-means
``model_algo-1.flat.npz``       a ``faiss.Flat`` index's centre, row norms and rounding
                                bound (format 3), so that loading reads the base once
``model_algo-1.json``           metadata: format version, ``k``, ``predictor_type``,
                                all hyperparameters, dimensions, file checksums
=============================== ================================================

In format 3, where a partition is stored, the index holds its rows cluster by cluster
(the partition's ``order``: index row ``i`` is training-sample row ``order[i]``), as
exact search holds them in memory; ``.ids`` and ``.labels`` stay in sample order.
A flat index in a model directory is memory-mapped, not read: server workers share
one copy of it through the page cache.

The names follow SageMaker's model artifact. ``k`` and ``predictor_type`` may be
edited in the JSON; the checksums cover every other file. Nothing is pickled:
arrays are raw little-endian or ``.npz`` read with ``allow_pickle=False``.

Writes are atomic. Files go to temporary names and are renamed into place, the
JSON last (it is the commit record: a directory without it is not a model), and
an archive is written whole under a temporary name and renamed.

An archive is unpacked once, member by member, into a cache directory
(:func:`unpacked`: ``.gpuknn-models/`` beside it, else ``$GPUKNN_MODEL_CACHE`` or
``~/.cache/gpuknn/models``), and loaded from there like a directory, so that its
index is mapped too. Every member is checked before a byte of it is written: links,
devices, absolute paths and ``..`` are refused, so nothing is ever written outside
the cache. Where no cache is writable, the archive is read into memory instead.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import mmap
import os
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn._version import __version__
from gpuknn.errors import ClientError, ModelFileError, first_line
from gpuknn.exact import ExactSearch
from gpuknn.faiss_index import IVFSearch, index_bytes, index_kind, map_index_file, read_index
from gpuknn.hyperparameters import parse
from gpuknn.index_file import flat_file_head, flat_vectors, read_header
from gpuknn.model import KNNModel, Preparation, check_k
from gpuknn.partition import MIN_ROWS as MIN_PARTITION_ROWS
from gpuknn.partition import ClusterPartition
from gpuknn.reduction import REDUCTIONS
from gpuknn.search_base import SearchBase

logger = logging.getLogger("gpuknn")
FORMAT = "gpuknn-model"
FORMAT_VERSION = 3
# Format 1 (gpuknn before the partition was stored) still loads: a large Flat L2 base then
# runs k-means again at every load, and the log says so. Format 2 stored the partition
# but kept the index in sample order, and no norms: its base is reordered when loaded.
READABLE_VERSIONS = (1, 2, 3)
PREFIX = "model_algo-1"
INDEX, LABELS, IDS = PREFIX, f"{PREFIX}.labels", f"{PREFIX}.ids"
REDUCTION, METADATA = f"{PREFIX}.reduction.npz", f"{PREFIX}.json"
PARTITION, FLAT = f"{PREFIX}.partition.npz", f"{PREFIX}.flat.npz"
KNOWN_FILES = (INDEX, LABELS, IDS, REDUCTION, PARTITION, FLAT, METADATA)
MAX_METADATA_BYTES = 1 << 20
# Where archives are unpacked (see unpacked): beside the archive, or a directory named here.
CACHE_BESIDE, CACHE_VARIABLE = ".gpuknn-models", "GPUKNN_MODEL_CACHE"
READ_CHUNK_BYTES = 16 << 20


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names a gzip-compressed tar archive rather than a directory."""
    return str(path).endswith((".tar.gz", ".tgz"))


# -- saving ---------------------------------------------------------------------------------
def save(model: KNNModel, path: str | Path) -> Path:
    """Write ``model`` atomically to a directory or a ``.tar.gz``; returns the path."""
    files = _model_files(model)
    path = Path(path)
    if is_archive(path):
        _write_archive(path, files)
    else:
        _write_directory(path, files)
    return path


def _model_files(model: KNNModel) -> dict[str, Content]:
    files = {INDEX: _index_content(model), IDS: Content(model.ids.astype("<i8"))}
    if model.labels is not None:
        files[LABELS] = Content(model.labels.astype("<f4"))
    if model.preparation.reduction is not None:
        files[REDUCTION] = _npz_content(model.preparation.reduction.to_arrays())
    if isinstance(model.index, ExactSearch):
        files[FLAT] = _npz_content(model.index.base.to_arrays())
        if model.index.partition is not None:
            center = _backend.to_host(model.index.center)
            files[PARTITION] = _npz_content(model.index.partition.to_arrays(center))
    files[METADATA] = Content(json.dumps(_metadata(model, files), indent=2).encode())
    return files


def _index_content(model: KNNModel) -> Content:
    """The index file: a flat index written here from a view of its vectors (no copy),
    other indexes serialised by faiss."""
    if not isinstance(model.index, ExactSearch):
        if model.index.mapped_from is not None:  # the file it maps (of the inode it mapped)
            return Content(model.index.mapped_from)
        return Content(index_bytes(model.index.index))
    vectors = np.ascontiguousarray(_backend.to_host(model.index.vectors), dtype="<f4")
    metric = "L2" if model.index.metric == "L2" else "INNER_PRODUCT"
    return Content(flat_file_head(*vectors.shape, metric), vectors)


def _npz_content(arrays: dict[str, np.ndarray]) -> Content:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return Content(buffer.getvalue())


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


def _metadata(model: KNNModel, files: dict[str, Content]) -> dict[str, Any]:
    hp = model.hyperparameters
    prep = model.preparation
    reduction = prep.reduction
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "k": hp.k,
        "predictor_type": hp.predictor_type,
        "hyperparameters": {name: value for name, value in hp.to_dict().items()
                            if name not in ("k", "predictor_type")},
        "feature_dim": prep.feature_dim,
        "dimension_reduction": None if reduction is None else {
            "type": reduction.kind, "seed": hp.seed, "input_dim": prep.feature_dim,
            "target_dim": reduction.target_dim},
        "normalize": prep.normalize,
        "index": {"type": hp.index_type, "metric": hp.index_metric, "dim": prep.index_dim,
                  "ntotal": model.n_indexed, "pq_m": prep.pq_m,
                  "nprobe": getattr(model.index, "nprobe", None),
                  "partition": PARTITION in files},
        "has_labels": model.labels is not None,
        "rows_seen": model.rows_seen,
        "gpuknn_version": __version__,
        "files": {name: {"bytes": data.size, "sha256": data.sha256()}
                  for name, data in files.items()},
    }


def _write_directory(path: Path, files: dict[str, Content]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / METADATA).unlink(missing_ok=True)  # from here on the directory is not a model
    for name in KNOWN_FILES:
        if name not in files:
            (path / name).unlink(missing_ok=True)
    for name in [n for n in files if n != METADATA] + [METADATA]:
        _atomic_write(path / name, files[name])


def _atomic_write(target: Path, data: Content | Callable[[Any], None]) -> None:
    """Write ``data`` (or what a writer function writes to the open file) to a temporary
    name beside ``target``, flush it to disk and rename it into place."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a model is read by other users (serve)
        with os.fdopen(fd, "wb") as handle:
            data.write_to(handle) if isinstance(data, Content) else data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _write_archive(path: Path, files: dict[str, Content]) -> None:
    # Level 1: float vectors barely compress, and level 9 costs seconds on large models.
    # The metadata first: a reader learns every other member's size before reading it.
    ordered = {METADATA: files[METADATA], **files}

    def write(handle: Any) -> None:
        with tarfile.open(fileobj=handle, mode="w:gz", compresslevel=1) as archive:
            for name, data in ordered.items():
                info = tarfile.TarInfo(name)
                info.size = data.size
                info.mode = 0o644
                archive.addfile(info, data.reader())

    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, write)


# -- loading --------------------------------------------------------------------------------
def load(path: str | Path, device: str = "auto", *,
         cache_dir: str | Path | None = None) -> KNNModel:
    """Read a model from a directory or a ``.tar.gz``.

    A directory's index is memory-mapped (processes that load the same model share its
    pages); an archive is unpacked once into a cache (``cache_dir``, else
    :func:`unpacked`'s default) and mapped from there.

    Raises
    ------
    ModelFileError
        Naming the file that is missing, corrupt, truncated, of another format, or
        larger than the memory available.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model directory or archive")
    try:
        device = _backend.resolve_device(device)
        if path.is_file():
            return _from_archive(path, device, cache_dir)
        return _model_from_files(_read_directory(path), device=device, origin=path)
    except MemoryError:
        raise ModelFileError(f"{path}: the model does not fit in the memory available "
                             f"({_gib(_backend.available_memory())})") from None


def verify(path: str | Path, *, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Check a whole model without building its search structure: files, sizes, checksums,
    metadata, hyperparameters, arrays, reduction and index header (and, for IVF, that
    faiss reads the index). ``gpuknn serve`` runs it before starting several workers.

    Returns
    -------
    dict
        The model's metadata (``model_algo-1.json``).

    Raises
    ------
    ModelFileError
        As :func:`load` would.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model directory or archive")
    try:
        if path.is_file():  # unpacked here once: server workers then find the copy
            return _from_archive(path, "cpu", cache_dir, build=False)
        return _model_from_files(_read_directory(path), device="cpu", origin=path,
                                 build=False)
    except MemoryError:
        raise ModelFileError(f"{path}: the model does not fit in the memory available "
                             f"({_gib(_backend.available_memory())})") from None


def _gib(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**30:.1f} GiB"


def _declared_sizes(meta: dict[str, Any], origin: Path) -> dict[str, int]:
    """``{file: bytes}`` that the metadata lists, each a known model file, in all no more
    than the memory available (nothing is read before this holds)."""
    listed = meta["files"]
    if not isinstance(listed, dict):
        raise ModelFileError(f"{origin / METADATA}: 'files' must map file names to sizes")
    sizes = {}
    for name, entry in listed.items():
        if name == METADATA:
            continue
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if name not in KNOWN_FILES or not isinstance(size, int) or isinstance(size, bool) \
                or size < 0:
            raise ModelFileError(f"{origin / METADATA}: files entry {name!r} must be a model "
                                 "file with a size in bytes")
        sizes[name] = size
    available = _backend.available_memory()
    if available is not None and sum(sizes.values()) > available:
        raise ModelFileError(f"{origin}: the model's files take {_gib(sum(sizes.values()))}, "
                             f"more than the {_gib(available)} of memory available")
    return sizes


def _read_directory(path: Path) -> dict[str, bytes]:
    """The metadata, then every file it lists, each checked for its size before reading.

    The files are mapped rather than read (several processes then share their pages); a
    model's files are replaced only by renaming new ones into place, so a mapped file
    never changes under a reader.
    """
    metadata = path / METADATA
    if not metadata.is_file():
        raise ModelFileError(f"{path}: not a gpuknn model directory ({METADATA} is missing)")
    files = {METADATA: _read_file(metadata, MAX_METADATA_BYTES, exact=False)}
    for name, size in _declared_sizes(_read_metadata(files, path), path).items():
        if not (path / name).is_file():
            raise ModelFileError(f"{path / name}: missing from the model")
        files[name] = _read_file(path / name, size, exact=True, mapped=True)
    return files


def _read_file(file: Path, size: int, *, exact: bool, mapped: bool = False) -> Any:
    """At most ``size`` bytes of ``file`` (exactly ``size`` if ``exact``): a read-only
    memory map of it with ``mapped`` (and a size that a map can hold), else its bytes."""
    actual = file.stat().st_size
    if (actual != size) if exact else (actual > size):
        expected = f"expected {size}" if exact else f"at most {size} allowed"
        raise ModelFileError(f"{file}: {actual} bytes, {expected} (truncated or replaced)")
    with open(file, "rb") as handle:
        if mapped and size > 0:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            if len(data) != size:
                raise ModelFileError(f"{file}: changed while it was read")
            return data
        data = handle.read(size + 1)
    if (len(data) != size) if exact else (len(data) > size):
        raise ModelFileError(f"{file}: changed while it was read")
    return data


def _from_archive(archive: Path, device: str, cache_dir: str | Path | None, *,
                  build: bool = True) -> Any:
    """:func:`_model_from_files` of an archive: from its unpacked copy where there is one
    that loads, else from the archive itself (whose errors then name it)."""
    directory = unpacked(archive, cache_dir)
    if directory is not None:
        try:
            return _model_from_files(_read_directory(directory), device=device,
                                     origin=directory, build=build)
        except ModelFileError as err:
            logger.warning("%s: its unpacked copy %s does not load (%s); reading the "
                           "archive itself", archive, directory, err)
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                directory.parent.rmdir()  # the cache itself, if nothing else is in it
    return _model_from_files(_read_archive(archive), device=device, origin=archive,
                             build=build)


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
    Members are checked as :func:`load` checks them, written under a temporary name and
    renamed into place whole: a copy that exists is complete, and processes that race
    to unpack one archive end up with the same directory.

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
        _read_archive(archive, into=temp)
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


def _read_archive(path: Path, into: Path | None = None) -> dict[str, bytes]:
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
            self.sizes = _declared_sizes(_read_metadata(self.files, self.archive), self.archive)

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


def _model_from_files(files: dict[str, bytes], *, device: str, origin: Path,
                      build: bool = True) -> KNNModel | dict[str, Any]:
    """The model of checked files; with ``build`` False, every check and, instead of the
    model, its metadata."""
    meta = _read_metadata(files, origin)
    _verify_checksums(files, meta, origin)
    hp = _hyperparameters(meta, origin)
    ntotal = int(meta["index"]["ntotal"])
    ids = _array(files, IDS, "<i8", ntotal, origin)
    labels = _array(files, LABELS, "<f4", ntotal, origin) if meta["has_labels"] else None
    reduction = _reduction(files, meta, origin)
    prep = Preparation(int(meta["feature_dim"]), reduction, bool(meta["normalize"]),
                       int(meta["index"]["dim"]), meta["index"].get("pq_m"))
    _check_dimensions(prep, origin)
    index = _index(files, meta, hp, device, origin, build=build)
    if index is None:
        return meta
    if index.ntotal != ntotal or index.dim != prep.index_dim:
        raise ModelFileError(f"{origin / INDEX}: index holds {index.ntotal} x {index.dim} "
                             f"vectors; {METADATA} says {ntotal} x {prep.index_dim}")
    return KNNModel(hp, prep, index, labels, ids, device=device, rows_seen=meta["rows_seen"])


def _check_dimensions(prep: Preparation, origin: Path) -> None:
    """The index dimension must follow from feature_dim, the reduction and the PQ padding."""
    reduced = prep.feature_dim if prep.reduction is None else prep.reduction.target_dim
    padded = reduced if not prep.pq_m or reduced % prep.pq_m == 0 else (
        reduced + prep.pq_m - reduced % prep.pq_m)
    if prep.index_dim != padded:
        raise ModelFileError(f"{origin / METADATA}: feature_dim {prep.feature_dim} gives index "
                             f"vectors of dimension {padded}, but the index has "
                             f"{prep.index_dim}")


def _read_metadata(files: dict[str, bytes], origin: Path) -> dict[str, Any]:
    raw = files.get(METADATA, b"")
    if len(raw) > MAX_METADATA_BYTES:
        raise ModelFileError(f"{origin / METADATA}: larger than {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{origin / METADATA}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{origin / METADATA}: not a gpuknn model (format is not {FORMAT!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ModelFileError(f"{origin / METADATA}: model format version {version!r}; this "
                             f"gpuknn {__version__} reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    missing = [key for key in _SCHEMA if key not in meta]
    if missing:
        raise ModelFileError(f"{origin / METADATA}: missing keys {', '.join(missing)}")
    _check_types(meta, _SCHEMA, origin / METADATA, "")
    _check_types(meta["index"], _INDEX_SCHEMA, origin / METADATA, "index.")
    if version >= 2:
        _check_types(meta["index"], {"partition": _FLAG}, origin / METADATA, "index.")
    if meta.get("dimension_reduction") is not None:
        _check_types(meta["dimension_reduction"], _REDUCTION_SCHEMA, origin / METADATA,
                     "dimension_reduction.")
    return meta


_POSITIVE, _COUNT, _FLAG, _TEXT, _TABLE = ("a whole number >= 1", "a whole number >= 0",
                                           "true or false", "a string", "an object")
_ANY = "anything"  # k and predictor_type: user-editable, checked by the hyperparameter parser
_SCHEMA = {"k": _ANY, "predictor_type": _ANY, "hyperparameters": _TABLE,
           "feature_dim": _POSITIVE, "normalize": _FLAG, "index": _TABLE, "has_labels": _FLAG,
           "rows_seen": (_COUNT, None), "files": _TABLE}
_INDEX_SCHEMA = {"type": _TEXT, "metric": _TEXT, "dim": _POSITIVE, "ntotal": _POSITIVE,
                 "pq_m": (_POSITIVE, None), "nprobe": (_POSITIVE, None)}
_REDUCTION_SCHEMA = {"type": _TEXT, "seed": _COUNT, "input_dim": _POSITIVE,
                     "target_dim": _POSITIVE}
_TYPE_TESTS = {
    _POSITIVE: lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    _COUNT: lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    _FLAG: lambda v: isinstance(v, bool),
    _TEXT: lambda v: isinstance(v, str),
    _TABLE: lambda v: isinstance(v, dict),
    _ANY: lambda v: True,
    None: lambda v: v is None,
}


def _check_types(table: Any, schema: dict[str, Any], where: Path, prefix: str) -> None:
    """Every key of ``schema`` present in ``table`` with a value of its kind."""
    if not isinstance(table, dict):
        raise ModelFileError(f"{where}: {prefix.rstrip('.')} must be an object")
    for key, kinds in schema.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)  # noqa: PLW2901
        if key not in table or not any(_TYPE_TESTS[kind](table[key]) for kind in kinds):
            allowed = " or ".join("null" if kind is None else kind for kind in kinds)
            raise ModelFileError(f"{where}: {prefix}{key} must be {allowed}; got "
                                 f"{table.get(key)!r}"[:300])


def _verify_checksums(files: dict[str, bytes], meta: dict[str, Any], origin: Path) -> None:
    for name, expected in meta["files"].items():
        if name == METADATA:
            continue
        if name not in files:
            raise ModelFileError(f"{origin / name}: missing from the model")
        data = files[name]
        if len(data) != expected.get("bytes"):
            raise ModelFileError(f"{origin / name}: {len(data)} bytes, expected "
                                 f"{expected.get('bytes')} (truncated or replaced)")
        if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            raise ModelFileError(f"{origin / name}: checksum mismatch (corrupt or replaced)")


def _hyperparameters(meta: dict[str, Any], origin: Path):
    values = {**meta["hyperparameters"], "k": meta["k"], "predictor_type": meta["predictor_type"]}
    try:
        hp = parse(values)
        check_k(hp.k, int(meta["index"]["ntotal"]))
    except ClientError as err:
        raise ModelFileError(f"{origin / METADATA}: {err}") from None
    return hp


def _array(files: dict[str, bytes], name: str, dtype: str, count: int, origin: Path):
    data = files.get(name)
    if data is None:
        raise ModelFileError(f"{origin / name}: missing from the model")
    itemsize = np.dtype(dtype).itemsize
    if len(data) != count * itemsize:
        raise ModelFileError(f"{origin / name}: {len(data)} bytes; expected {count} values "
                             f"of {itemsize} bytes")
    # a read-only view (of the mapped file, in a directory): no copy on little-endian hosts
    return np.frombuffer(data, dtype=dtype).astype(dtype[1:], copy=False)


def _reduction(files: dict[str, bytes], meta: dict[str, Any], origin: Path):
    spec = meta.get("dimension_reduction")
    if spec is None:
        return None
    kind = spec.get("type")
    if kind not in REDUCTIONS or REDUCTION not in files:
        raise ModelFileError(f"{origin / REDUCTION}: missing, or unknown reduction {kind!r}")
    try:
        arrays = _npz_arrays(files[REDUCTION])
        reduction = REDUCTIONS[kind].from_arrays(arrays)
        reduction.check()
    except (ValueError, KeyError, OSError, EOFError, TypeError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{origin / REDUCTION}: unreadable ({err})"[:500]) from None
    declared = (spec["input_dim"], spec["target_dim"])
    if (reduction.input_dim, reduction.target_dim) != declared or \
            reduction.input_dim != meta["feature_dim"]:
        raise ModelFileError(f"{origin / REDUCTION}: maps {reduction.input_dim} to "
                             f"{reduction.target_dim} dimensions; {METADATA} says "
                             f"{declared[0]} to {declared[1]} (feature_dim "
                             f"{meta['feature_dim']})")
    return reduction


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}
_NPY_HEADER_MAX = 1 << 16  # np.savez writes headers of a few hundred bytes


def _npz_arrays(data: Any) -> dict[str, np.ndarray]:
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


def _index(files: dict[str, bytes], meta: dict[str, Any], hp, device: str, origin: Path, *,
           build: bool = True):
    """The search structure (None, once checked, without ``build``); its header is checked
    against the metadata before faiss reads it, and a flat index is read without faiss."""
    name = str(origin / INDEX)
    header = read_header(files[INDEX], name)
    metric = "L2" if hp.index_metric == "L2" else "INNER_PRODUCT"
    declared = (hp.index_type, meta["index"]["ntotal"], meta["index"]["dim"], metric)
    found = (header.kind, header.ntotal, header.dim, header.metric)
    if found != declared:
        raise ModelFileError(f"{name}: holds a {found[0]} index of {found[1]} x {found[2]} "
                             f"vectors ({found[3]}); {METADATA} says {declared[0]} of "
                             f"{declared[1]} x {declared[2]} ({declared[3]})")
    if header.kind == "faiss.Flat":
        return _exact_search(files, meta, hp, device, origin, build=build)
    index = read_index(files[INDEX], name)
    if index_kind(index) != header.kind:
        raise ModelFileError(f"{name}: faiss reads a {index_kind(index)} index; its header "
                             f"says {header.kind}")
    if not build:
        return None
    mapped_from = None
    if origin.is_dir():
        # The file's checksum was verified above; map it so processes share the lists.
        del index
        index, mapped_from = map_index_file(str(origin / INDEX)), files[INDEX]
    return IVFSearch(index, hp.index_metric, hp.faiss_index_nprobe,
                     mapped_from=mapped_from).to_device(device)


def _exact_search(files: dict[str, Any], meta: dict[str, Any], hp, device: str,
                  origin: Path, *, build: bool) -> ExactSearch | None:
    """A ``faiss.Flat`` index's search over a view of the file's vectors (a map, for a
    directory), with the stored partition and norms where the format has them."""
    vectors = flat_vectors(files[INDEX], str(origin / INDEX))
    partition = _stored_partition(files, meta, origin)
    stored = _stored_base(files, meta, origin)
    if isinstance(partition, ClusterPartition) and stored is not None and \
            not np.array_equal(partition.center, stored["center"]):
        # the rows are stored in the partition's order: it cannot be built again
        raise ModelFileError(f"{origin / PARTITION}: the stored cluster partition and norms "
                             "disagree on the base's centre")
    if not build:
        return None
    if device == "gpu":  # exact search on a GPU is brute force, over rows in sample order
        if isinstance(partition, ClusterPartition):
            if stored is not None:  # format 3: stored in the partition's order
                vectors = _in_sample_order(vectors, partition.order)
            stored = None
        xp = _backend.array_module(device)
        return ExactSearch(_backend.to_device(vectors, xp), hp.index_metric, xp=xp,
                           partition="never", stored=stored)
    return ExactSearch(vectors, hp.index_metric, partition=partition, stored=stored)


def _in_sample_order(vectors: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rows stored in a partition's order, put back in sample order (a copy)."""
    restored = np.empty(vectors.shape, dtype=np.float32)
    restored[order] = vectors
    return restored


def _stored_partition(files: dict[str, bytes], meta: dict[str, Any], origin: Path,
                      ) -> str | ClusterPartition:
    """How a Flat index gets its cluster partition: the stored one, none ("never"), or, for
    a format-1 model, built again ("auto", logged when the base is large enough)."""
    if meta["format_version"] == 1:
        if meta["index"]["ntotal"] >= MIN_PARTITION_ROWS and meta["index"]["metric"] == "L2":
            logger.info("%s: model format 1 stores no cluster partition; building it again "
                        "(k-means). Save the model again to store it and load faster.", origin)
        return "auto"
    stored = meta["index"].get("partition")
    if stored is not True:
        if PARTITION in files:
            raise ModelFileError(f"{origin / PARTITION}: present, but {METADATA} says the "
                                 "index has no partition")
        return "never"
    if PARTITION not in files or meta["index"]["metric"] != "L2":
        raise ModelFileError(f"{origin / PARTITION}: missing from the model, or the index is "
                             f"not L2 ({METADATA} lists a partition)")
    try:
        return ClusterPartition.from_arrays(_npz_arrays(files[PARTITION]),
                                            meta["index"]["ntotal"], meta["index"]["dim"])
    except (ValueError, KeyError, OSError, EOFError, TypeError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{origin / PARTITION}: unreadable ({err})"[:500]) from None


def _stored_base(files: dict[str, bytes], meta: dict[str, Any],
                 origin: Path) -> dict[str, np.ndarray] | None:
    """The stored centre, norms and rounding bound of a Flat index (format 3), checked;
    None for earlier formats (computed from the vectors then)."""
    if meta["format_version"] < 3:
        if FLAT in files:
            raise ModelFileError(f"{origin / FLAT}: not part of model format "
                                 f"{meta['format_version']}")
        return None
    if FLAT not in files:
        raise ModelFileError(f"{origin / FLAT}: missing from the model (format 3 stores it "
                             "with every faiss.Flat index)")
    index = meta["index"]
    try:
        arrays = _npz_arrays(files[FLAT])
        SearchBase.check_arrays(arrays, index["ntotal"], index["dim"], index["metric"])
    except (ValueError, KeyError, OSError, EOFError, TypeError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{origin / FLAT}: unreadable ({err})"[:500]) from None
    return arrays
