"""Model files: a directory or a ``model.tar.gz`` holding

=============================== ================================================
``model_algo-1``                the index, in faiss's own file format (CPU form)
``model_algo-1.labels``         labels, little-endian float32, one per indexed row
``model_algo-1.ids``            training row numbers, little-endian int64
``model_algo-1.reduction.npz``  the reduction's arrays (only with a reduction)
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
import os
import tarfile
import tempfile
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
    flat_vectors,
    index_bytes,
    index_kind,
    map_index_file,
    read_index,
)
from gpuknn.hyperparameters import parse
from gpuknn.model import KNNModel, Preparation, check_k
from gpuknn.reduction import REDUCTIONS

FORMAT = "gpuknn-model"
FORMAT_VERSION = 1
PREFIX = "model_algo-1"
INDEX, LABELS, IDS = PREFIX, f"{PREFIX}.labels", f"{PREFIX}.ids"
REDUCTION, METADATA = f"{PREFIX}.reduction.npz", f"{PREFIX}.json"
KNOWN_FILES = (INDEX, LABELS, IDS, REDUCTION, METADATA)
MAX_METADATA_BYTES = 1 << 20


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
                  "nprobe": getattr(model.index, "nprobe", None)},
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
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for name, data in files.items():
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
        Naming the file that is missing, corrupt, truncated or of another format.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such model directory or archive")
    files = _read_archive(path) if path.is_file() else _read_directory(path)
    return _model_from_files(files, device=_backend.resolve_device(device), origin=path)


def verify(path: str | Path) -> dict[str, Any]:
    """Check a model's files (presence, format version, checksums) without building it.

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
    files = _read_archive(path) if path.is_file() else _read_directory(path)
    meta = _read_metadata(files, path)
    _verify_checksums(files, meta, path)
    return meta


def _read_directory(path: Path) -> dict[str, bytes]:
    if not (path / METADATA).is_file():
        raise ModelFileError(f"{path}: not a gpuknn model directory ({METADATA} is missing)")
    return {name: (path / name).read_bytes() for name in KNOWN_FILES if (path / name).is_file()}


def _read_archive(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                name = _safe_member_name(member, path)
                if name not in KNOWN_FILES:
                    continue  # SageMaker archives may carry unrelated files
                handle = archive.extractfile(member)
                files[name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ModelFileError(f"{path}: not a readable .tar.gz model archive ({err})") from None
    if METADATA not in files:
        raise ModelFileError(f"{path}: the archive holds no {METADATA}")
    return files


def _safe_member_name(member: tarfile.TarInfo, archive: Path) -> str:
    name = member.name[2:] if member.name.startswith("./") else member.name
    if member.isdir() and name in ("", "."):
        return ""
    parts = Path(name).parts
    if not member.isfile() or name.startswith("/") or ".." in parts or len(parts) != 1:
        raise ModelFileError(f"{archive}: refusing archive member {member.name!r}: model "
                             "archives hold only regular files at the top level")
    return name


def _model_from_files(files: dict[str, bytes], *, device: str, origin: Path) -> KNNModel:
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
    index = _index(files, meta, hp, device, origin)
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
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{origin / METADATA}: model format version {version!r}; this "
                             f"gpuknn {__version__} reads version {FORMAT_VERSION}")
    required = ("k", "predictor_type", "hyperparameters", "feature_dim", "normalize", "index",
                "has_labels", "rows_seen", "files")
    missing = [key for key in required if key not in meta]
    if missing:
        raise ModelFileError(f"{origin / METADATA}: missing keys {', '.join(missing)}")
    return meta


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
        with np.load(io.BytesIO(files[REDUCTION]), allow_pickle=False) as arrays:
            reduction = REDUCTIONS[kind].from_arrays({k: arrays[k] for k in arrays.files})
    except (ValueError, KeyError, OSError) as err:
        raise ModelFileError(f"{origin / REDUCTION}: unreadable ({err})") from None
    if reduction.input_dim != meta["feature_dim"]:
        raise ModelFileError(f"{origin / REDUCTION}: input dimension {reduction.input_dim}, "
                             f"but feature_dim is {meta['feature_dim']}")
    return reduction


def _index(files: dict[str, bytes], meta: dict[str, Any], hp, device: str, origin: Path):
    index = read_index(files[INDEX], str(origin / INDEX))
    kind = index_kind(index)
    if kind != hp.index_type:
        raise ModelFileError(f"{origin / INDEX}: holds a {kind} index; {METADATA} says "
                             f"{hp.index_type}")
    if kind == "faiss.Flat":
        xp = _backend.array_module(device)
        return ExactSearch(_backend.to_device(flat_vectors(index), xp), hp.index_metric, xp=xp)
    if origin.is_dir():
        # The file's checksum was verified above; map it so processes share the lists.
        del index
        index = map_index_file(str(origin / INDEX))
    return IVFSearch(index, hp.index_metric, hp.faiss_index_nprobe).to_device(device)
