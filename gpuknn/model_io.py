"""Model files: a directory or a ``model.tar.gz`` holding

=============================== ================================================
``model_algo-1``                the index, in faiss's own file format (CPU form)
``model_algo-1.labels``         labels, little-endian float32, one per indexed row
``model_algo-1.ids``            training row numbers, little-endian int64
``model_algo-1.reduction.npz``  the reduction's arrays (only with a reduction)
``model_algo-1.partition.npz``  a ``faiss.Flat`` L2 index's cluster partition (format 2,
                                only where exact search prunes with one), so that
                                loading runs no k-means
``model_algo-1.json``           metadata: format version, ``k``, ``predictor_type``,
                                all hyperparameters, dimensions, file checksums
=============================== ================================================

The names follow SageMaker's model artifact. ``k`` and ``predictor_type`` may be
edited in the JSON; the checksums cover every other file. Nothing is pickled:
arrays are raw little-endian or ``.npz`` read with ``allow_pickle=False``.

Writes are atomic. Files go to temporary names and are renamed into place, the
JSON last (it is the commit record: a directory without it is not a model), and
an archive is written whole under a temporary name and renamed. Archives are
read member by member into memory; links, devices, absolute paths and ``..`` are
refused, so nothing is ever extracted outside a target.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn._version import __version__
from gpuknn.errors import ClientError, ModelFileError
from gpuknn.exact import ExactSearch
from gpuknn.faiss_index import (
    IVFSearch,
    flat_index_bytes,
    index_bytes,
    index_kind,
    map_index_file,
    read_index,
)
from gpuknn.hyperparameters import parse
from gpuknn.index_file import flat_vectors, read_header
from gpuknn.model import KNNModel, Preparation, check_k
from gpuknn.partition import MIN_ROWS as MIN_PARTITION_ROWS
from gpuknn.partition import ClusterPartition
from gpuknn.reduction import REDUCTIONS

logger = logging.getLogger("gpuknn")
FORMAT = "gpuknn-model"
FORMAT_VERSION = 2
# Format 1 (gpuknn before the partition was stored) still loads: a large Flat L2 base then
# runs k-means again at every load, and the log says so.
READABLE_VERSIONS = (1, 2)
PREFIX = "model_algo-1"
INDEX, LABELS, IDS = PREFIX, f"{PREFIX}.labels", f"{PREFIX}.ids"
REDUCTION, METADATA = f"{PREFIX}.reduction.npz", f"{PREFIX}.json"
PARTITION = f"{PREFIX}.partition.npz"
KNOWN_FILES = (INDEX, LABELS, IDS, REDUCTION, PARTITION, METADATA)
MAX_METADATA_BYTES = 1 << 20
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


def _model_files(model: KNNModel) -> dict[str, bytes]:
    files = {INDEX: _index_bytes(model), IDS: model.ids.astype("<i8").tobytes()}
    if model.labels is not None:
        files[LABELS] = model.labels.astype("<f4").tobytes()
    if model.preparation.reduction is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **model.preparation.reduction.to_arrays())
        files[REDUCTION] = buffer.getvalue()
    partition = getattr(model.index, "partition", None)
    if partition is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **partition.to_arrays(_backend.to_host(model.index.center)))
        files[PARTITION] = buffer.getvalue()
    files[METADATA] = json.dumps(_metadata(model, files), indent=2).encode()
    return files


def _index_bytes(model: KNNModel) -> bytes:
    if isinstance(model.index, ExactSearch):
        return flat_index_bytes(_backend.to_host(model.index.vectors), model.index.metric)
    return index_bytes(model.index.index)


def _metadata(model: KNNModel, files: dict[str, bytes]) -> dict[str, Any]:
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
        "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in files.items()},
    }


def _write_directory(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / METADATA).unlink(missing_ok=True)  # from here on the directory is not a model
    for name in KNOWN_FILES:
        if name not in files:
            (path / name).unlink(missing_ok=True)
    for name in [n for n in files if n != METADATA] + [METADATA]:
        _atomic_write(path / name, files[name])


def _atomic_write(target: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a model is read by other users (serve)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _write_archive(path: Path, files: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    # Level 1: float vectors barely compress, and level 9 costs seconds on large models.
    # The metadata first: a reader learns every other member's size before reading it.
    ordered = {METADATA: files[METADATA], **files}
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for name, data in ordered.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, buffer.getvalue())


# -- loading --------------------------------------------------------------------------------
def load(path: str | Path, device: str = "auto") -> KNNModel:
    """Read a model from a directory or a ``.tar.gz``.

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
        files = _read_archive(path) if path.is_file() else _read_directory(path)
        return _model_from_files(files, device=_backend.resolve_device(device), origin=path)
    except MemoryError:
        raise ModelFileError(f"{path}: the model does not fit in the memory available "
                             f"({_gib(_backend.available_memory())})") from None


def verify(path: str | Path) -> dict[str, Any]:
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
        files = _read_archive(path) if path.is_file() else _read_directory(path)
        _model_from_files(files, device="cpu", origin=path, build=False)
    except MemoryError:
        raise ModelFileError(f"{path}: the model does not fit in the memory available "
                             f"({_gib(_backend.available_memory())})") from None
    return _read_metadata(files, path)


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
    """The metadata, then every file it lists, each checked for its size before reading."""
    metadata = path / METADATA
    if not metadata.is_file():
        raise ModelFileError(f"{path}: not a gpuknn model directory ({METADATA} is missing)")
    files = {METADATA: _read_file(metadata, MAX_METADATA_BYTES, exact=False)}
    for name, size in _declared_sizes(_read_metadata(files, path), path).items():
        if not (path / name).is_file():
            raise ModelFileError(f"{path / name}: missing from the model")
        files[name] = _read_file(path / name, size, exact=True)
    return files


def _read_file(file: Path, size: int, *, exact: bool) -> bytes:
    """At most ``size`` bytes of ``file`` (exactly ``size`` if ``exact``)."""
    actual = file.stat().st_size
    if (actual != size) if exact else (actual > size):
        expected = f"expected {size}" if exact else f"at most {size} allowed"
        raise ModelFileError(f"{file}: {actual} bytes, {expected} (truncated or replaced)")
    with open(file, "rb") as handle:
        data = handle.read(size + 1)
    if (len(data) != size) if exact else (len(data) > size):
        raise ModelFileError(f"{file}: changed while it was read")
    return data


def _read_archive(path: Path) -> dict[str, bytes]:
    """The model files of a ``.tar.gz``, member by member, into memory (nothing extracted).

    Every member's type, name and declared size are checked before a byte of it is read:
    only regular files at the top level (no links, devices, sparse files, ``..``), each
    name once, the metadata at most 1 MiB and every other file of the size the metadata
    gives (or, in archives with the metadata last, within the memory available).
    """
    reader = _ArchiveReader(path)
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                reader.add(archive, member)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ModelFileError(f"{path}: not a readable .tar.gz model archive ({err})") from None
    if METADATA not in reader.files:
        raise ModelFileError(f"{path}: the archive holds no {METADATA}")
    return reader.files


class _ArchiveReader:
    """Collects an archive's model files, checking each member before reading it."""

    def __init__(self, archive: Path):
        self.archive = archive
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
        self.files[name] = _read_member(archive, member, self.archive)
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
                      build: bool = True) -> KNNModel | None:
    """The model of checked files; with ``build`` False, every check and no model."""
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
        return None
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
    return np.frombuffer(data, dtype=dtype).astype(dtype[1:], copy=True)


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


def _npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by ``np.savez``: stored (uncompressed) members whose
    headers declare no more bytes than they hold, and no objects (nothing unpickled)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                raise ValueError(f"member {info.filename!r} is compressed or larger than "
                                 "the file; np.savez stores its arrays")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = _NPY_HEADERS.get(version)
                if read_header is None:
                    raise ValueError(f"member {info.filename!r}: .npy version {version}")
                shape, _, dtype = read_header(member)
            if dtype.hasobject or int(np.prod(shape)) * dtype.itemsize > info.file_size:
                raise ValueError(f"member {info.filename!r} declares {shape} x {dtype}, more "
                                 "than it holds")
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


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
        vectors = flat_vectors(files[INDEX], name)
        partition = _stored_partition(files, meta, origin)
        if not build:
            return None
        xp = _backend.array_module(device)
        return ExactSearch(_backend.to_device(vectors, xp), hp.index_metric, xp=xp,
                           partition=partition)
    index = read_index(files[INDEX], name)
    if index_kind(index) != header.kind:
        raise ModelFileError(f"{name}: faiss reads a {index_kind(index)} index; its header "
                             f"says {header.kind}")
    if not build:
        return None
    if origin.is_dir():
        # The file's checksum was verified above; map it so processes share the lists.
        del index
        index = map_index_file(str(origin / INDEX))
    return IVFSearch(index, hp.index_metric, hp.faiss_index_nprobe).to_device(device)


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
    if PARTITION not in files:
        raise ModelFileError(f"{origin / PARTITION}: missing from the model ({METADATA} lists "
                             "a partition)")
    try:
        return ClusterPartition.from_arrays(_npz_arrays(files[PARTITION]),
                                            meta["index"]["ntotal"], meta["index"]["dim"])
    except (ValueError, KeyError, OSError, EOFError, TypeError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{origin / PARTITION}: unreadable ({err})"[:500]) from None
