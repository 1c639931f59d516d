"""Checking a model's files, read as hostile input, and building its parts from them.

:func:`model_from_files` takes the files that :mod:`gpuknn.model.layout` read unchecked
(from a directory, or from an archive through :mod:`gpuknn.model.archives`) and checks
sizes and checksums, hyperparameters, arrays, dimensions, the reduction and the index
header against the metadata before anything is built; a failure names the file at fault.
:mod:`gpuknn.model.files` (``load``, ``verify``, ``from_bytes``) calls it.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn.errors import ClientError, ModelFileError
from gpuknn.hyperparameters import parse
from gpuknn.model.buffers import npz_arrays
from gpuknn.model.layout import (
    FLAT,
    IDS,
    INDEX,
    LABELS,
    METADATA,
    PARTITION,
    REDUCTION,
    read_metadata,
)
from gpuknn.model.parts import ModelParts, Preparation, check_k
from gpuknn.model.reduction import REDUCTIONS
from gpuknn.search.base import SearchBase
from gpuknn.search.exact import ExactSearch
from gpuknn.search.faiss_index import IVFSearch, index_kind, map_index_file, read_index
from gpuknn.search.index_file import flat_vectors, read_header
from gpuknn.search.partition import MIN_ROWS as MIN_PARTITION_ROWS
from gpuknn.search.partition import ClusterPartition

logger = logging.getLogger("gpuknn")


def model_from_files(files: dict[str, bytes], *, device: str, origin: Path,
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
