"""What a model file holds: its files' names, its metadata, and reading them unchecked.

A model is a directory or a ``model.tar.gz`` holding

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

The names follow SageMaker's model artifact. ``k`` and ``predictor_type`` may be
edited in the JSON; the checksums cover every other file. Nothing is pickled:
arrays are raw little-endian, or ``.npz`` members read as views
(:func:`gpuknn.model.buffers.npz_arrays`).

This module checks the metadata (:func:`read_metadata`) and reads a directory's files,
each of the size the metadata declares (:func:`read_directory`);
:mod:`gpuknn.model.checks` checks what they hold and builds the model's parts.
"""

from __future__ import annotations

import json
import mmap
import sys
from pathlib import Path
from typing import Any

from gpuknn import _backend
from gpuknn._version import __version__
from gpuknn.errors import ModelFileError, ModelTooLargeError

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
# Python keeps a duplicate of a mapped file's descriptor for the map's life; from 3.13 it
# need not. A multi-model server maps four files per model, so this saves thousands.
_UNTRACKED = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def read_metadata(files: dict[str, bytes], origin: Path) -> dict[str, Any]:
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


def declared_sizes(meta: dict[str, Any], origin: Path) -> dict[str, int]:
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
        raise ModelTooLargeError(f"{origin}: the model's files take "
                                 f"{gib(sum(sizes.values()))}, more than the "
                                 f"{gib(available)} of memory available")
    return sizes


def read_directory(path: Path) -> dict[str, bytes]:
    """The metadata, then every file it lists, each checked for its size before reading.

    The files are mapped rather than read (several processes then share their pages); a
    model's files are replaced only by renaming new ones into place, so a mapped file
    never changes under a reader.
    """
    metadata = path / METADATA
    if not metadata.is_file():
        raise ModelFileError(f"{path}: not a gpuknn model directory ({METADATA} is missing)")
    files = {METADATA: _read_file(metadata, MAX_METADATA_BYTES, exact=False)}
    for name, size in declared_sizes(read_metadata(files, path), path).items():
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
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ, **_UNTRACKED)
            if len(data) != size:
                raise ModelFileError(f"{file}: changed while it was read")
            return data
        data = handle.read(size + 1)
    if (len(data) != size) if exact else (len(data) > size):
        raise ModelFileError(f"{file}: changed while it was read")
    return data


def gib(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**30:.1f} GiB"
