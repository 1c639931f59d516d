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
holds, before anything is built. A flat or IVF index in a model directory is
memory-mapped, not read: server workers share one copy of it through the page cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn._version import __version__
from gpuknn.errors import ClientError, ModelFileError, ModelTooLargeError
from gpuknn.hyperparameters import parse
from gpuknn.model.archives import is_archive, read_archive, unpacked
from gpuknn.model.buffers import Content, npz_arrays, npz_content
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
    read_metadata,
)
from gpuknn.model.parts import ModelParts, Preparation, check_k
from gpuknn.model.reduction import REDUCTIONS
from gpuknn.search.base import SearchBase
from gpuknn.search.exact import ExactSearch
from gpuknn.search.faiss_index import IVFSearch, index_bytes, index_kind, map_index_file, read_index
from gpuknn.search.index_file import flat_file_head, flat_vectors, read_header
from gpuknn.search.partition import MIN_ROWS as MIN_PARTITION_ROWS
from gpuknn.search.partition import ClusterPartition

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
    return _model_from_files(files, device=_backend.resolve_device(device), origin=Path(origin))


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
        return _model_from_files(read_directory(path), device=device, origin=path)
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
        return _model_from_files(read_directory(path), device="cpu", origin=path,
                                 build=False)
    except MemoryError:
        raise ModelTooLargeError(f"{path}: the model does not fit in the memory available "
                                 f"({gib(_backend.available_memory())})") from None


def _from_archive(archive: Path, device: str, cache_dir: str | Path | None, *,
                  build: bool = True) -> Any:
    """:func:`_model_from_files` of an archive: from its unpacked copy where there is one
    that loads, else from the archive itself (whose errors then name it)."""
    directory = unpacked(archive, cache_dir)
    if directory is not None:
        try:
            return _model_from_files(read_directory(directory), device=device,
                                     origin=directory, build=build)
        except ModelFileError as err:
            logger.warning("%s: its unpacked copy %s does not load (%s); reading the "
                           "archive itself", archive, directory, err)
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                directory.parent.rmdir()  # the cache itself, if nothing else is in it
    return _model_from_files(read_archive(archive), device=device, origin=archive,
                             build=build)


def _model_from_files(files: dict[str, bytes], *, device: str, origin: Path,
                      build: bool = True) -> ModelParts | dict[str, Any]:
    """The model parts of checked files; with ``build`` False, every check and, instead of
    the parts, the metadata."""
    meta = read_metadata(files, origin)
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
    rows_seen = meta["rows_seen"]  # null in a hand-edited file: the indexed rows then
    return ModelParts(hp, prep, index, labels, ids,
                      len(ids) if rows_seen is None else int(rows_seen), device)


def _check_dimensions(prep: Preparation, origin: Path) -> None:
    """The index dimension must follow from feature_dim, the reduction and the PQ padding."""
    reduced = prep.feature_dim if prep.reduction is None else prep.reduction.target_dim
    padded = reduced if not prep.pq_m or reduced % prep.pq_m == 0 else (
        reduced + prep.pq_m - reduced % prep.pq_m)
    if prep.index_dim != padded:
        raise ModelFileError(f"{origin / METADATA}: feature_dim {prep.feature_dim} gives index "
                             f"vectors of dimension {padded}, but the index has "
                             f"{prep.index_dim}")


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
        arrays = npz_arrays(files[REDUCTION])
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
        return ClusterPartition.from_arrays(npz_arrays(files[PARTITION]),
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
        arrays = npz_arrays(files[FLAT])
        SearchBase.check_arrays(arrays, index["ntotal"], index["dim"], index["metric"])
    except (ValueError, KeyError, OSError, EOFError, TypeError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{origin / FLAT}: unreadable ({err})"[:500]) from None
    return arrays
