"""Saving and loading models: :func:`save`, :func:`load` and :func:`verify`.

They write and read a model's :class:`~gpuknn.model.parts.ModelParts` (never the model
class itself): :meth:`KNNModel.save <gpuknn.model.knn_model.KNNModel.save>` and
:meth:`KNNModel.load <gpuknn.model.knn_model.KNNModel.load>` call them. The files and
their metadata are described in :mod:`gpuknn.model.layout`; archives and their cache in
:mod:`gpuknn.model.archives`.

Writes are atomic. Files go to temporary names and are renamed into place, the
JSON last (it is the commit record: a directory without it is not a model), and
an archive is written whole under a temporary name and renamed.

Loading checks every file against the metadata's sizes and checksums, then what each
holds, before anything is built; those checks, and the building of the parts, are
:mod:`gpuknn.model.checks`. A flat or IVF index in a model directory is memory-mapped,
not read: server workers share one copy of it through the page cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn._version import __version__
from gpuknn.errors import ModelFileError, ModelTooLargeError
from gpuknn.model.archives import is_archive, read_archive, unpacked
from gpuknn.model.buffers import Content, npz_content
from gpuknn.model.checks import model_from_files
from gpuknn.model.layout import (
    FLAT,
    FORMAT,
    FORMAT_VERSION,
    IDS,
    INDEX,
    KNOWN_FILES,
    LABELS,
    METADATA,
    PARTITION,
    REDUCTION,
    gib,
    read_directory,
)
from gpuknn.model.parts import ModelParts
from gpuknn.search.exact import ExactSearch
from gpuknn.search.faiss_index import index_bytes
from gpuknn.search.index_file import flat_file_head

logger = logging.getLogger("gpuknn")
# -- saving ---------------------------------------------------------------------------------
def save(parts: ModelParts, path: str | Path) -> Path:
    """Write a model's parts atomically to a directory or a ``.tar.gz``; returns the path."""
    files = _model_files(parts)
    path = Path(path)
    if is_archive(path):
        _write_archive(path, files)
    else:
        _write_directory(path, files)
    return path


def to_bytes(parts: ModelParts) -> dict[str, bytes]:
    """A model's files as ``{file name: bytes}``, exactly what :func:`save` writes: the form
    in which a pickled scikit-learn estimator carries its model (no object is pickled)."""
    return {name: content.tobytes() for name, content in _model_files(parts).items()}


def from_bytes(files: dict[str, bytes], device: str = "auto", *,
               origin: str = "<model bytes>") -> ModelParts:
    """The parts of a model given as ``{file name: bytes}`` (:func:`to_bytes`), with every
    check :func:`load` makes.

    Raises
    ------
    ModelFileError
        Naming ``origin`` and the file at fault.
    """
    if not isinstance(files, dict) or not all(
            isinstance(name, str) and isinstance(data, bytes) for name, data in files.items()):
        raise ModelFileError(f"{origin}: a model's files must be a dict of names to bytes")
    return model_from_files(files, device=_backend.resolve_device(device), origin=Path(origin))


def _model_files(parts: ModelParts) -> dict[str, Content]:
    files = {INDEX: _index_content(parts), IDS: Content(parts.ids.astype("<i8"))}
    if parts.labels is not None:
        files[LABELS] = Content(parts.labels.astype("<f4"))
    if parts.preparation.reduction is not None:
        files[REDUCTION] = npz_content(parts.preparation.reduction.to_arrays())
    if isinstance(parts.index, ExactSearch):
        files[FLAT] = npz_content(parts.index.base.to_arrays())
        if parts.index.partition is not None:
            center = _backend.to_host(parts.index.center)
            files[PARTITION] = npz_content(parts.index.partition.to_arrays(center))
    files[METADATA] = Content(json.dumps(_metadata(parts, files), indent=2).encode())
    return files


def _index_content(parts: ModelParts) -> Content:
    """The index file: a flat index written here from a view of its vectors (no copy),
    other indexes serialised by faiss."""
    if not isinstance(parts.index, ExactSearch):
        if parts.index.mapped_from is not None:  # the file it maps (of the inode it mapped)
            return Content(parts.index.mapped_from)
        return Content(index_bytes(parts.index.index))
    vectors = np.ascontiguousarray(_backend.to_host(parts.index.vectors), dtype="<f4")
    metric = "L2" if parts.index.metric == "L2" else "INNER_PRODUCT"
    return Content(flat_file_head(*vectors.shape, metric), vectors)


def _metadata(parts: ModelParts, files: dict[str, Content]) -> dict[str, Any]:
    hp = parts.hyperparameters
    prep = parts.preparation
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
                  "ntotal": parts.n_indexed, "pq_m": prep.pq_m,
                  "nprobe": getattr(parts.index, "nprobe", None),
                  "partition": PARTITION in files},
        "has_labels": parts.labels is not None,
        "rows_seen": parts.rows_seen,
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
         cache_dir: str | Path | None = None) -> ModelParts:
    """Read a model's parts from a directory or a ``.tar.gz`` (``KNNModel.load`` makes the
    model of them).

    A directory's index is memory-mapped (processes that load the same model share its
    pages); an archive is unpacked once into a cache (``cache_dir``, else
    :func:`~gpuknn.model.archives.unpacked`'s default) and mapped from there.

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
        return model_from_files(read_directory(path), device=device, origin=path)
    except MemoryError:
        raise ModelTooLargeError(f"{path}: the model does not fit in the memory available "
                                 f"({gib(_backend.available_memory())})") from None


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
        return model_from_files(read_directory(path), device="cpu", origin=path,
                                build=False)
    except MemoryError:
        raise ModelTooLargeError(f"{path}: the model does not fit in the memory available "
                                 f"({gib(_backend.available_memory())})") from None


def _from_archive(archive: Path, device: str, cache_dir: str | Path | None, *,
                  build: bool = True) -> Any:
    """:func:`~gpuknn.model.checks.model_from_files` of an archive: from its unpacked copy
    where there is one that loads, else from the archive itself (whose errors then name it)."""
    directory = unpacked(archive, cache_dir)
    if directory is not None:
        try:
            return model_from_files(read_directory(directory), device=device,
                                    origin=directory, build=build)
        except ModelFileError as err:
            logger.warning("%s: its unpacked copy %s does not load (%s); reading the "
                           "archive itself", archive, directory, err)
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                directory.parent.rmdir()  # the cache itself, if nothing else is in it
    return model_from_files(read_archive(archive), device=device, origin=archive,
                            build=build)
