"""Model files: round trips, editable k / predictor_type, corrupt files, hostile archives,
atomic saves, no pickle."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from gpuknn import KNN, ClientError, KNNModel, ModelFileError
from gpuknn.model import files as model_files
from gpuknn.model import layout

JSON = "model_algo-1.json"
INDEX = "model_algo-1"
LABELS = "model_algo-1.labels"
IDS = "model_algo-1.ids"
REDUCTION = "model_algo-1.reduction.npz"
FLAT = "model_algo-1.flat.npz"
BIG = 10**6  # a sample_size above the data: every row is indexed


def fit(X, y, **hyperparameters) -> KNNModel:
    values = {"k": 5, "predictor_type": "classifier", "sample_size": BIG, **hyperparameters}
    return KNN(device="cpu", **values).fit(X, y).model


def load(path) -> KNNModel:
    return KNNModel.load(path, device="cpu")


def assert_same_answers(loaded: KNNModel, original: KNNModel, queries: np.ndarray):
    distances, indices = loaded.kneighbors(queries)
    want_distances, want_indices = original.kneighbors(queries)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(distances, want_distances)
    np.testing.assert_array_equal(loaded.predict(queries), original.predict(queries))
    if original.predictor_type == "classifier":
        np.testing.assert_array_equal(loaded.predict_proba(queries),
                                      original.predict_proba(queries))


def read_meta(directory: Path) -> dict:
    return json.loads((directory / JSON).read_text())


def write_meta(directory: Path, meta: dict) -> None:
    (directory / JSON).write_text(json.dumps(meta))


def edit_meta(directory: Path, **changes) -> None:
    write_meta(directory, {**read_meta(directory), **changes})


def replace_file_consistently(directory: Path, name: str, data: bytes) -> None:
    """Swap a file and update its checksum, so that only its content is wrong."""
    (directory / name).write_bytes(data)
    meta = read_meta(directory)
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_meta(directory, meta)


def tar_of(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, None if data is None else io.BytesIO(data))
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under root: file contents, link targets, directories."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            entries[key] = "dir"
        else:
            entries[key] = path.read_bytes()
    return entries


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread():
    """faiss's k-means over a few hundred rows runs ~10 times slower when OpenMP threads
    compete for a busy machine's cores; these tests compare a model with its own copy, so the
    thread count cannot change what they check."""
    with threadpool_limits(1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def queries(digits):
    return digits[2][:60]


@pytest.fixture(scope="module")
def train(digits):
    """The first 500 training rows of digits: enough for IVFPQ's 256 codes, quick to save."""
    return digits[0][:500], digits[1][:500]


@pytest.fixture(scope="module")
def trained(train):
    """Fit each (config, predictor_type) once for all destinations of the round-trip test."""
    cache: dict[str, KNNModel] = {}

    def get(config: dict, predictor_type: str) -> KNNModel:
        key = json.dumps([config, predictor_type], sort_keys=True)
        if key not in cache:
            cache[key] = fit(*train, predictor_type=predictor_type, seed=7,
                             **config)
        return cache[key]

    return get


# -- round trips ------------------------------------------------------------------------------
CONFIGS = [
    pytest.param({"index_type": "faiss.Flat"}, id="flat-l2"),
    pytest.param({"index_type": "faiss.Flat", "index_metric": "COSINE"}, id="flat-cosine"),
    pytest.param({"index_type": "faiss.Flat", "dimension_reduction_type": "sign",
                  "dimension_reduction_target": 16}, id="flat-l2-sign"),
    pytest.param({"index_type": "faiss.Flat", "index_metric": "COSINE",
                  "dimension_reduction_type": "fjlt", "dimension_reduction_target": 20},
                 id="flat-cosine-fjlt"),
    pytest.param({"index_type": "faiss.IVFFlat"}, id="ivfflat-l2"),
    pytest.param({"index_type": "faiss.IVFFlat", "index_metric": "COSINE",
                  "faiss_index_nprobe": 3}, id="ivfflat-cosine"),
    pytest.param({"index_type": "faiss.IVFFlat", "dimension_reduction_type": "fjlt",
                  "dimension_reduction_target": 24}, id="ivfflat-l2-fjlt"),
    pytest.param({"index_type": "faiss.IVFFlat", "index_metric": "COSINE",
                  "dimension_reduction_type": "sign", "dimension_reduction_target": 12},
                 id="ivfflat-cosine-sign"),
    pytest.param({"index_type": "faiss.IVFPQ", "faiss_index_ivf_nlists": 8}, id="ivfpq-l2"),
    pytest.param({"index_type": "faiss.IVFPQ", "faiss_index_pq_m": 12,
                  "faiss_index_ivf_nlists": 8}, id="ivfpq-l2-padded"),
    pytest.param({"index_type": "faiss.IVFPQ", "index_metric": "COSINE",
                  "faiss_index_ivf_nlists": 8}, id="ivfpq-cosine"),
    pytest.param({"index_type": "faiss.IVFPQ", "faiss_index_ivf_nlists": 8,
                  "dimension_reduction_type": "sign", "dimension_reduction_target": 16},
                 id="ivfpq-l2-sign"),
    pytest.param({"index_type": "faiss.IVFPQ", "faiss_index_pq_m": 8, "index_metric": "COSINE",
                  "dimension_reduction_type": "fjlt", "dimension_reduction_target": 20},
                 id="ivfpq-cosine-fjlt-raised"),
]


def assert_round_trip(original: KNNModel, path: Path, queries: np.ndarray) -> KNNModel:
    assert original.save(path) == path
    assert path.is_file() == str(path).endswith(("tar.gz", "tgz"))
    loaded = load(path)
    assert loaded.hyperparameters == original.hyperparameters
    assert loaded.preparation.index_dim == original.preparation.index_dim
    assert loaded.preparation.pq_m == original.preparation.pq_m
    assert loaded.preparation.normalize == original.preparation.normalize
    assert (loaded.n_indexed, loaded.feature_dim, loaded.rows_seen) == (500, 64, 500)
    np.testing.assert_array_equal(loaded.ids, original.ids)
    np.testing.assert_array_equal(loaded.labels, original.labels)
    np.testing.assert_array_equal(loaded.classes_, original.classes_)
    assert_same_answers(loaded, original, queries)
    return loaded


# Every config to a directory and to an archive, each config once as a classifier and once as
# a regressor, and each predictor type to both destinations.
ROUND_TRIPS = [
    pytest.param(config.values[0], predictor_type, where,
                 id=f"{config.id}-{predictor_type}-{where}")
    for number, config in enumerate(CONFIGS)
    for where, predictor_type in zip(
        ("model", "model.tar.gz"),
        ("classifier", "regressor") if number % 2 else ("regressor", "classifier"),
        strict=True)
]


@pytest.mark.parametrize(("config", "predictor_type", "where"), ROUND_TRIPS)
def test_round_trip(tmp_path, trained, queries, *, config, predictor_type, where):
    assert_round_trip(trained(config, predictor_type), tmp_path / where, queries)


@pytest.mark.parametrize("config", CONFIGS[::4])
def test_round_trip_of_a_loaded_model(tmp_path, trained, queries, config):
    original = trained(config, "classifier")
    loaded = assert_round_trip(original, tmp_path / "nested" / "dir" / "model.tgz", queries)
    assert_round_trip(loaded, tmp_path / "again", queries)
    assert_same_answers(load(tmp_path / "again"), original, queries)


def test_directory_holds_the_sagemaker_files(tmp_path, train):
    model = fit(*train, dimension_reduction_type="sign",
                dimension_reduction_target=8)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [INDEX, LABELS, IDS, REDUCTION, FLAT, JSON])
    meta = read_meta(tmp_path / "m")
    assert (meta["k"], meta["predictor_type"]) == (5, "classifier")
    assert meta["dimension_reduction"] == {"type": "sign", "seed": 0, "input_dim": 64,
                                           "target_dim": 8}
    assert meta["normalize"] is False
    labels = np.frombuffer((tmp_path / "m" / LABELS).read_bytes(), dtype="<f4")
    np.testing.assert_array_equal(labels, train[1])


def test_archive_holds_the_same_files_at_top_level(tmp_path, train):
    fit(*train).save(tmp_path / "model.tar.gz")
    with tarfile.open(tmp_path / "model.tar.gz") as archive:
        members = archive.getmembers()
    assert sorted(m.name for m in members) == sorted([INDEX, LABELS, IDS, FLAT, JSON])
    assert all(m.isfile() for m in members)


def test_unlabelled_model_round_trip(tmp_path, train, queries):
    original = fit(train[0], None)
    original.save(tmp_path / "m.tar.gz")
    loaded = load(tmp_path / "m.tar.gz")
    assert loaded.labels is None
    assert not (tmp_path / "m.tar.gz").is_dir()
    for got, want in zip(loaded.kneighbors(queries), original.kneighbors(queries),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_sagemaker_style_archive_with_dot_prefix_loads(tmp_path, train, queries):
    # `tar czf model.tar.gz -C model .` names members "./model_algo-1" under a "." entry,
    # and may carry files of its own.
    original = fit(*train)
    original.save(tmp_path / "model")
    (tmp_path / "model" / "README").write_text("not part of the model")
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "model", arcname=".")
    assert_same_answers(load(tmp_path / "model.tar.gz"), original, queries)


@pytest.mark.parametrize("mini_batch_size", [100, 5000])
@pytest.mark.parametrize("where", ["model", "model.tar.gz"])
def test_sampled_model_keeps_original_row_ids(tmp_path, digits, queries, mini_batch_size,
                                              where):
    X, y = digits[0], digits[1]
    original = fit(X, y, sample_size=500, mini_batch_size=mini_batch_size, seed=3)
    original.save(tmp_path / where)
    loaded = load(tmp_path / where)
    assert loaded.n_indexed == 500
    assert loaded.rows_seen == 1500
    np.testing.assert_array_equal(loaded.ids, original.ids)
    assert np.all(np.diff(loaded.ids) > 0)
    assert loaded.ids[-1] >= 500, "ids are positions in the training data, not in the sample"
    np.testing.assert_array_equal(loaded.labels, y[loaded.ids])
    # a sampled training row finds itself (or an identical row) at distance 0
    rows = loaded.ids[::50]
    distances, indices = loaded.kneighbors(X[rows], k=1)
    np.testing.assert_array_equal(distances[:, 0], 0)
    assert np.isin(indices, loaded.ids).all()
    np.testing.assert_array_equal(X[indices[:, 0]], X[rows])
    assert_same_answers(loaded, original, queries)


# -- editing k and predictor_type in the JSON -------------------------------------------------
@pytest.fixture(scope="module")
def small_model(digits):
    """300 indexed rows, with a sign reduction (so every optional file exists)."""
    return fit(digits[0][:300], digits[1][:300], k=3, dimension_reduction_type="sign",
               dimension_reduction_target=16)


@pytest.fixture
def saved(tmp_path, small_model) -> Path:
    return small_model.save(tmp_path / "model")


@pytest.mark.parametrize(("k", "predictor_type"), [(7, "regressor"), (1, "classifier"),
                                                    (300, "classifier"), (12, "regressor")])
def test_edited_k_and_predictor_type_take_effect(saved, small_model, queries, k,
                                                 predictor_type):
    edit_meta(saved, k=k, predictor_type=predictor_type)
    loaded = load(saved)
    assert (loaded.k, loaded.predictor_type) == (k, predictor_type)
    assert loaded.hyperparameters == small_model.hyperparameters.replace(
        k=k, predictor_type=predictor_type)
    distances, indices = loaded.kneighbors(queries)
    assert indices.shape == (len(queries), k)
    want_distances, want_indices = small_model.kneighbors(queries, k=k)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(distances, want_distances)
    neighbour_labels = small_model.labels[np.searchsorted(small_model.ids, indices)]
    if predictor_type == "regressor":
        np.testing.assert_allclose(loaded.predict(queries), neighbour_labels.mean(axis=1),
                                   rtol=1e-6)
    else:
        votes = np.stack([np.bincount(row.astype(int), minlength=10) for row in
                          neighbour_labels])
        np.testing.assert_array_equal(loaded.predict(queries), votes.argmax(axis=1))


def test_rows_seen_of_null_counts_the_indexed_rows(saved, small_model, queries):
    """The schema allows null (as KNNModel(rows_seen=None) does): it loads, and verifies."""
    edit_meta(saved, rows_seen=None)
    assert model_files.verify(saved)["rows_seen"] is None
    loaded = load(saved)
    assert loaded.rows_seen == loaded.n_indexed == small_model.n_indexed
    assert_same_answers(loaded, small_model, queries)


def test_edited_k_in_an_archive_takes_effect(tmp_path, saved, queries):
    edit_meta(saved, k=9, predictor_type="regressor")
    with tarfile.open(tmp_path / "edited.tar.gz", "w:gz") as archive:
        for path in saved.iterdir():
            archive.add(path, arcname=path.name)
    loaded = load(tmp_path / "edited.tar.gz")
    assert (loaded.k, loaded.predictor_type) == (9, "regressor")
    assert loaded.kneighbors(queries)[1].shape == (len(queries), 9)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"k": 301}, "k=301"),                # above the 300 indexed rows
    ({"k": 2048}, "k=2048"),
    ({"k": 0}, "'k'"),
    ({"k": -1}, "'k'"),
    ({"k": "many"}, "'k'"),
    ({"k": 3000}, "'k'"),                 # above the hyperparameter's maximum
    ({"predictor_type": "classify"}, "'predictor_type'"),
    ({"predictor_type": None}, "'predictor_type'"),
])
def test_bad_edited_k_or_predictor_type(saved, changes, fragment):
    edit_meta(saved, **changes)
    with pytest.raises(ModelFileError) as info:
        load(saved)
    message = str(info.value)
    assert str(saved / JSON) in message, message
    assert fragment in message, message


# -- corrupt model directories ----------------------------------------------------------------
def _drop(name):
    return lambda path: (path / name).unlink()


def _write(name, data):
    return lambda path: (path / name).write_bytes(data)


def _truncate(name, keep=-4):
    return lambda path: (path / name).write_bytes((path / name).read_bytes()[:keep])


def _flip_byte(name, at=None):
    def corrupt(path):
        data = bytearray((path / name).read_bytes())
        position = len(data) // 2 if at is None else at
        data[position] ^= 0x01
        (path / name).write_bytes(bytes(data))
    return corrupt


def _meta(**changes):
    return lambda path: edit_meta(path, **changes)


def _meta_drop(key):
    def corrupt(path):
        meta = read_meta(path)
        del meta[key]
        write_meta(path, meta)
    return corrupt


CORRUPTIONS = [
    pytest.param(_drop(JSON), JSON, id="missing-json"),
    pytest.param(_write(JSON, b"{not json"), JSON, id="invalid-json"),
    pytest.param(_write(JSON, b"\xff\xfe\x00"), JSON, id="json-not-utf8"),
    pytest.param(_write(JSON, b"[1, 2, 3]"), JSON, id="json-not-an-object"),
    pytest.param(_write(JSON, b""), JSON, id="empty-json"),
    pytest.param(_write(JSON, b" " * (1 << 20) + b"{}"), JSON, id="huge-json"),
    pytest.param(_meta(format_version=layout.FORMAT_VERSION + 1), JSON,
                 id="newer-format-version"),
    pytest.param(_meta(format_version="1"), JSON, id="format-version-string"),
    pytest.param(_meta(format="something-else"), JSON, id="other-format"),
    pytest.param(_meta_drop("index"), JSON, id="json-missing-key"),
    pytest.param(_truncate(LABELS), LABELS, id="truncated-labels"),
    pytest.param(_write(LABELS, b""), LABELS, id="empty-labels"),
    pytest.param(_flip_byte(LABELS), LABELS, id="flipped-label"),
    pytest.param(_flip_byte(INDEX), INDEX, id="flipped-index-byte"),
    pytest.param(_flip_byte(INDEX, at=0), INDEX, id="flipped-index-header"),
    pytest.param(_truncate(INDEX, keep=100), INDEX, id="truncated-index"),
    pytest.param(_drop(INDEX), INDEX, id="missing-index"),
    pytest.param(_drop(IDS), IDS, id="missing-ids"),
    pytest.param(_truncate(IDS), IDS, id="truncated-ids"),
    pytest.param(_drop(LABELS), LABELS, id="missing-labels"),
    pytest.param(_drop(REDUCTION), REDUCTION, id="missing-reduction"),
    pytest.param(_flip_byte(REDUCTION), REDUCTION, id="flipped-reduction"),
    pytest.param(_drop(FLAT), FLAT, id="missing-flat-arrays"),
    pytest.param(_flip_byte(FLAT), FLAT, id="flipped-flat-arrays"),
]


@pytest.mark.parametrize(("corrupt", "broken"), CORRUPTIONS)
def test_corrupt_directory(saved, corrupt, broken):
    corrupt(saved)
    with pytest.raises(ModelFileError) as info:
        load(saved)
    assert isinstance(info.value, ClientError)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    if (saved / broken).exists() or broken != JSON:
        assert f"{saved / broken}:" in message, message
    else:  # no JSON: the directory is not a model
        assert f"{saved}: not a gpuknn model directory ({JSON} is missing)" in message


def _signs_of_wrong_input_dim(path):
    signs = np.ones((63, 16), dtype=np.int8)
    buffer = io.BytesIO()
    np.savez(buffer, signs=signs)
    replace_file_consistently(path, REDUCTION, buffer.getvalue())


def _reduction_without_signs(path):
    buffer = io.BytesIO()
    np.savez(buffer, flips=np.ones(4, dtype=np.int8))
    replace_file_consistently(path, REDUCTION, buffer.getvalue())


WRONG_SHAPES = [
    # Files whose checksums were updated, so that only their shapes are wrong.
    pytest.param(lambda p: replace_file_consistently(
        p, LABELS, (p / LABELS).read_bytes()[:-4]), LABELS, id="labels-one-short"),
    pytest.param(lambda p: replace_file_consistently(
        p, LABELS, (p / LABELS).read_bytes()[:-2]), LABELS, id="labels-not-whole-floats"),
    pytest.param(lambda p: replace_file_consistently(
        p, IDS, (p / IDS).read_bytes() + b"\0" * 8), IDS, id="ids-one-extra"),
    pytest.param(_signs_of_wrong_input_dim, REDUCTION, id="reduction-input-dim"),
    pytest.param(_reduction_without_signs, REDUCTION, id="reduction-missing-array"),
    pytest.param(lambda p: edit_meta(p, index={**read_meta(p)["index"], "dim": 17}), JSON,
                 id="json-index-dim"),
    pytest.param(lambda p: edit_meta(p, feature_dim=63), REDUCTION, id="json-feature-dim"),
    pytest.param(lambda p: replace_file_consistently(p, INDEX, b"\x00" * 200), INDEX,
                 id="index-zeros"),
    pytest.param(lambda p: replace_file_consistently(p, INDEX, b"IxF2" + b"\xff" * 200), INDEX,
                 id="index-bad-header"),
    pytest.param(lambda p: replace_file_consistently(
        p, INDEX, (p / INDEX).read_bytes()[:-100]), INDEX, id="index-truncated"),
    pytest.param(lambda p: replace_file_consistently(
        p, INDEX, (p / INDEX).read_bytes()[:60]), INDEX, id="index-header-only"),
]


@pytest.mark.parametrize(("corrupt", "broken"), WRONG_SHAPES)
def test_wrong_shapes(saved, corrupt, broken):
    corrupt(saved)
    with pytest.raises(ModelFileError) as info:
        load(saved)
    assert f"{saved / broken}:" in str(info.value), str(info.value)


@pytest.mark.parametrize(("config", "broken"), [
    pytest.param({"index_type": "faiss.IVFFlat"}, INDEX, id="ivfflat-instead-of-flat"),
    pytest.param({"dimension_reduction_type": "sign", "dimension_reduction_target": 8},
                 INDEX, id="index-of-another-dim"),
    pytest.param({"dimension_reduction_type": "sign", "dimension_reduction_target": 16,
                  "sample_size": 299, "mini_batch_size": 299}, INDEX, id="index-of-fewer-rows"),
])
def test_index_file_of_another_model(saved, digits, config, broken):
    other = fit(digits[0][:300], digits[1][:300], **config)
    index = model_files._model_files(other.parts())[INDEX]
    replace_file_consistently(saved, INDEX, index.tobytes())
    with pytest.raises(ModelFileError) as info:
        load(saved)
    assert f"{saved / broken}:" in str(info.value), str(info.value)


def test_edited_feature_dim_without_reduction_is_refused(tmp_path, digits):
    # No reduction: the index holds feature_dim-wide vectors. A feature_dim of 63 in the JSON
    # must not load (queries of 63 features would be silently padded with a zero).
    fit(digits[0][:300], digits[1][:300]).save(tmp_path / "m")
    edit_meta(tmp_path / "m", feature_dim=63)
    with pytest.raises(ModelFileError) as info:
        load(tmp_path / "m")
    assert str(tmp_path / "m") in str(info.value)


def test_missing_path(tmp_path):
    for missing in (tmp_path / "nothing", tmp_path / "nothing.tar.gz"):
        with pytest.raises(ModelFileError, match="no such model"):
            load(missing)


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match=JSON):
        load(tmp_path / "empty")


# -- corrupt and hostile archives -------------------------------------------------------------
@pytest.fixture
def archive_files(small_model) -> dict[str, bytes]:
    files = model_files._model_files(small_model.parts())
    return {name: data.tobytes() for name, data in files.items()}


@pytest.fixture
def jail(tmp_path, monkeypatch) -> Path:
    """tmp_path/a/b as the working directory: any escape would still land in tmp_path."""
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    return inner


def test_archive_round_trip_from_the_files(jail, archive_files, small_model, queries):
    tar_of(jail / "ok.tar.gz", [regular(n, d) for n, d in archive_files.items()])
    assert_same_answers(load(jail / "ok.tar.gz"), small_model, queries)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 10])
def test_truncated_archive(jail, small_model, keep):
    path = small_model.save(jail / "model.tar.gz")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ModelFileError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_archive_that_is_not_gzip(jail):
    (jail / "model.tar.gz").write_bytes(b"this is not an archive at all" * 10)
    with pytest.raises(ModelFileError, match=r"model\.tar\.gz"):
        load(jail / "model.tar.gz")


def test_gzip_that_is_not_tar(jail):
    (jail / "model.tar.gz").write_bytes(gzip.compress(b"\x01" * 5000))
    with pytest.raises(ModelFileError, match=r"model\.tar\.gz"):
        load(jail / "model.tar.gz")


def test_archive_without_json(jail, archive_files):
    members = [regular(n, d) for n, d in archive_files.items() if n != JSON]
    tar_of(jail / "model.tar.gz", members)
    with pytest.raises(ModelFileError, match=JSON):
        load(jail / "model.tar.gz")


def test_corrupt_member_in_archive(jail, archive_files):
    files = dict(archive_files)
    files[LABELS] = files[LABELS][:-4]
    path = tar_of(jail / "model.tar.gz", [regular(n, d) for n, d in files.items()])
    with pytest.raises(ModelFileError) as info:
        load(path)
    assert f"{path / LABELS}:" in str(info.value)


HOSTILE = [
    pytest.param(lambda root: regular("../evil", b"x"), "../evil", id="dotdot"),
    pytest.param(lambda root: regular("../../evil", b"x"), "../../evil", id="dotdot-twice"),
    pytest.param(lambda root: regular("./../evil", b"x"), "./../evil", id="dot-dotdot"),
    pytest.param(lambda root: regular(f"../{JSON}", b"{}"), f"../{JSON}", id="dotdot-json"),
    pytest.param(lambda root: regular(str(root / "abs_evil"), b"x"), "abs_evil",
                 id="absolute"),
    pytest.param(lambda root: regular(f"/{JSON}", b"{}"), f"/{JSON}", id="absolute-json"),
    pytest.param(lambda root: special(LABELS, tarfile.SYMTYPE, str(root / "target")),
                 LABELS, id="symlink"),
    pytest.param(lambda root: special("link", tarfile.SYMTYPE, "../../.."), "link",
                 id="symlink-up"),
    pytest.param(lambda root: special(IDS, tarfile.LNKTYPE, "/etc/passwd"), IDS,
                 id="hardlink"),
    pytest.param(lambda root: special("fifo", tarfile.FIFOTYPE), "fifo", id="fifo"),
    pytest.param(lambda root: special("dev", tarfile.CHRTYPE), "dev", id="device"),
    pytest.param(lambda root: regular(f"sub/{JSON}", b"{}"), f"sub/{JSON}",
                 id="subdirectory-file"),
    pytest.param(lambda root: regular("model/extra", b"x"), "model/extra",
                 id="subdirectory-other-file"),
    pytest.param(lambda root: special("sub", tarfile.DIRTYPE), "sub", id="subdirectory"),
]


@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize(("member", "named"), HOSTILE)
def test_hostile_archive_member_is_refused(tmp_path, jail, archive_files, *, member, named,
                                           position):
    bad = member(tmp_path)
    good = [regular(n, d) for n, d in archive_files.items()]
    path = tar_of(jail / "model.tar.gz", [bad, *good] if position == "first" else [*good, bad])
    before = snapshot(tmp_path)
    with pytest.raises(ModelFileError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message, message
    assert named in message, message
    assert snapshot(tmp_path) == before, "nothing may be written anywhere"
    assert not (tmp_path.parent / "evil").exists()
    assert not Path("/" + JSON).exists()


# -- atomic saves -----------------------------------------------------------------------------
def no_temporary_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.startswith(".") or
                p.name.endswith(".tmp")]


def test_saving_over_a_model_directory_replaces_it(tmp_path, train, queries, small_model):
    path = small_model.save(tmp_path / "model")
    assert (path / REDUCTION).exists()
    (path / "unrelated.txt").write_text("kept")
    other = fit(train[0], None, k=2)  # no reduction, no labels
    other.save(path)
    assert not (path / REDUCTION).exists()
    assert not (path / LABELS).exists()
    assert (path / "unrelated.txt").read_text() == "kept"
    assert no_temporary_files(path)
    loaded = load(path)
    assert loaded.labels is None
    assert loaded.n_indexed == 500
    for got, want in zip(loaded.kneighbors(queries), other.kneighbors(queries), strict=True):
        np.testing.assert_array_equal(got, want)


def test_saving_over_an_archive_replaces_it(tmp_path, train, queries, small_model):
    path = small_model.save(tmp_path / "model.tar.gz")
    other = fit(*train, predictor_type="regressor")
    other.save(path)
    assert_same_answers(load(path), other, queries)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gpuknn-models", "model.tar.gz"]
    unpacked = list((tmp_path / ".gpuknn-models").iterdir())
    assert len(unpacked) == 1, "the copy of the replaced archive is removed"


class SimulatedCrashError(Exception):
    pass


def crash_after(monkeypatch, files_written: int) -> list[str]:
    """Make model_files._atomic_write raise once ``files_written`` files were written."""
    real = model_files._atomic_write
    written: list[str] = []

    def flaky(target, data):
        if len(written) >= files_written:
            raise SimulatedCrashError(f"simulated crash before writing {target.name}")
        real(target, data)
        written.append(target.name)

    monkeypatch.setattr(model_files, "_atomic_write", flaky)
    return written


@pytest.mark.parametrize("files_written", [0, 1, 3])
@pytest.mark.parametrize("existing", [True, False])
def test_crash_mid_save_leaves_no_loadable_model(tmp_path, monkeypatch, train, small_model, *,
                                                 files_written, existing):
    path = tmp_path / "model"
    if existing:
        small_model.save(path)
    other = fit(*train, k=4)
    written = crash_after(monkeypatch, files_written)
    with pytest.raises(SimulatedCrashError):
        other.save(path)
    assert len(written) == files_written
    assert JSON not in written
    assert not (path / JSON).exists(), "the JSON is written last: no commit record"
    assert no_temporary_files(path)
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match=JSON):
        load(path)
    other.save(path)  # and a later save succeeds
    assert load(path).k == 4


@pytest.mark.parametrize("fails", ["write", "fsync", "replace"])
@pytest.mark.parametrize("existing", [True, False])
def test_failed_archive_save_leaves_nothing(tmp_path, monkeypatch, train, queries,
                                           small_model, *, fails, existing):
    path = tmp_path / "out" / "model.tar.gz"
    path.parent.mkdir()
    if existing:
        small_model.save(path)
    before = snapshot(tmp_path)
    other = fit(*train, k=4)

    def fail(*args, **kwargs):
        raise SimulatedCrashError(fails)

    if fails == "write":
        monkeypatch.setattr(model_files, "_atomic_write", fail)
    else:
        monkeypatch.setattr(os, fails, fail)
    with pytest.raises(SimulatedCrashError):
        other.save(path)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before, "no partial archive, no temporary file"
    if existing:
        assert_same_answers(load(path), small_model, queries)
    else:
        assert not path.exists()


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_failed_file_write_in_a_directory_leaves_no_temporary_file(tmp_path, monkeypatch,
                                                                   small_model, fails):
    def fail(*args, **kwargs):
        raise SimulatedCrashError(fails)

    monkeypatch.setattr(os, fails, fail)
    with pytest.raises(SimulatedCrashError):
        small_model.save(tmp_path / "model")
    monkeypatch.undo()
    assert no_temporary_files(tmp_path)
    assert not (tmp_path / "model" / JSON).exists()


# -- no pickle --------------------------------------------------------------------------------
class _TouchOnUnpickle:
    """Unpickling this creates the file ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.parametrize("kind", ["sign", "fjlt"])
@pytest.mark.parametrize("where", ["model", "model.tar.gz"])
def test_loading_never_unpickles(tmp_path, monkeypatch, train, queries, *, kind, where):
    original = fit(*train, dimension_reduction_type=kind,
                   dimension_reduction_target=16)
    path = original.save(tmp_path / where)
    real_load = np.load
    calls = []

    def strict_load(*args, **kwargs):
        assert kwargs.get("allow_pickle", False) is False, "np.load called allowing pickles"
        calls.append(kwargs)
        return real_load(*args, **{**kwargs, "allow_pickle": False})

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used while loading a model")

    monkeypatch.setattr(np, "load", strict_load)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    loaded = load(path)
    monkeypatch.undo()
    assert not calls, "the .npz members are read as views, never through np.load"
    assert_same_answers(loaded, original, queries)


@pytest.mark.parametrize("where", ["model", "model.tar.gz"])
def test_object_array_in_reduction_is_refused(tmp_path, small_model, where):
    path = small_model.save(tmp_path / "model")
    sentinel = tmp_path / "pickle-was-executed"
    payload = np.empty((64, 16), dtype=object)
    payload[0, 0] = _TouchOnUnpickle(sentinel)
    buffer = io.BytesIO()
    np.savez(buffer, signs=payload)  # an object array is stored as a pickle
    replace_file_consistently(path, REDUCTION, buffer.getvalue())
    if where == "model.tar.gz":
        with tarfile.open(tmp_path / where, "w:gz") as archive:
            for member in path.iterdir():
                archive.add(member, arcname=member.name)
        path = tmp_path / where
    with pytest.raises(ModelFileError) as info:
        load(path)
    assert f"{path / REDUCTION}:" in str(info.value)
    assert not sentinel.exists(), "the pickle in the model file was executed"


# -- the stored cluster partition (format 2), and models of format 1 ---------------------------
PARTITION = "model_algo-1.partition.npz"
FORMAT_1 = Path(__file__).parent / "data" / "model-format-1"
FORMAT_2 = Path(__file__).parent / "data" / "model-format-2"


def in_sample_order(path: Path, model: KNNModel) -> None:
    """Rewrite a saved partitioned model's index with its rows in sample order (as formats
    1 and 2 stored them), its checksum updated."""
    restored = np.empty_like(model.index.vectors)
    restored[model.index.partition.order] = model.index.vectors
    head = (path / INDEX).read_bytes()[: -restored.nbytes]
    replace_file_consistently(path, INDEX, head + restored.tobytes())


def test_a_model_of_format_1_still_loads_and_answers_as_before():
    """tests/data/model-format-1 was written by gpuknn's format 1 (before the partition was
    stored), with the answers it gave then."""
    assert read_meta(FORMAT_1)["format_version"] == 1
    expected = np.load(FORMAT_1.parent / "model-format-1-expected.npz")
    model = load(FORMAT_1)
    distances, positions = model.kneighbors(expected["queries"])
    np.testing.assert_array_equal(positions, expected["positions"])
    np.testing.assert_allclose(distances, expected["distances"], rtol=1e-6)
    np.testing.assert_array_equal(model.predict(expected["queries"]), expected["predictions"])


def test_a_model_of_format_2_still_loads_and_answers_as_before():
    """tests/data/model-format-2 was written by gpuknn's format 2 (a stored partition, the
    index in sample order, no norms), with the answers it gave then."""
    assert read_meta(FORMAT_2)["format_version"] == 2
    assert read_meta(FORMAT_2)["index"]["partition"] is True
    expected = np.load(FORMAT_2.parent / "model-format-2-expected.npz")
    model = load(FORMAT_2)
    assert model.index.partitioned
    distances, positions = model.kneighbors(expected["queries"])
    np.testing.assert_array_equal(positions, expected["positions"])
    np.testing.assert_array_equal(distances, expected["distances"])
    np.testing.assert_array_equal(model.predict(expected["queries"]), expected["predictions"])


@pytest.fixture(scope="module")
def pruned_model() -> KNNModel:
    """A base large enough for cluster pruning, with clusters for it to prune."""
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=20.0, size=(200, 8))
    X = (centres[rng.integers(0, 200, 60_000)] + rng.normal(size=(60_000, 8))).astype(
        np.float32)
    model = fit(X, (np.arange(60_000) % 7).astype(np.float32))
    assert model.index.partitioned
    return model


@pytest.fixture
def no_kmeans(monkeypatch):
    """faiss's k-means, made to fail: whatever runs it is caught."""
    import faiss

    def refuse(*args, **kwargs):
        raise AssertionError("k-means ran")

    monkeypatch.setattr(faiss, "Kmeans", refuse)


def pruned_model_rows(n: int) -> np.ndarray:
    """The first n training rows of :func:`pruned_model` (the same draws)."""
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=20.0, size=(200, 8))
    X = centres[rng.integers(0, 200, 60_000)] + rng.normal(size=(60_000, 8))
    return X[:n].astype(np.float32)


def pruning_queries() -> np.ndarray:
    rng = np.random.default_rng(4)
    return (rng.normal(scale=20.0, size=(300, 8))).astype(np.float32)


def test_the_partition_is_stored_and_loading_runs_no_kmeans(tmp_path, pruned_model, no_kmeans):
    pruned_model.save(tmp_path / "model")
    assert read_meta(tmp_path / "model")["index"]["partition"] is True
    loaded = load(tmp_path / "model")
    assert loaded.index.partitioned
    assert_same_answers(loaded, pruned_model, pruning_queries())


def test_a_partitioned_index_is_stored_cluster_by_cluster_and_mapped(tmp_path, pruned_model,
                                                                     no_kmeans):
    """Format 3: index row i is sample row order[i], as the search holds it; loading maps
    the file (read-only, shared) and takes the norms from the flat file."""
    path = pruned_model.save(tmp_path / "model")
    order = np.load(path / PARTITION)["order"]
    stored = np.frombuffer((path / INDEX).read_bytes()[-pruned_model.index.vectors.nbytes:],
                           dtype="<f4").reshape(pruned_model.index.vectors.shape)
    loaded = load(path)
    np.testing.assert_array_equal(stored, loaded.index.vectors)
    assert not loaded.index.vectors.flags.writeable  # a view of the mapped file
    np.testing.assert_array_equal(stored[np.argsort(order)][:50], pruned_model_rows(50))
    np.testing.assert_array_equal(np.load(path / FLAT)["sq_norms"],
                                  pruned_model.index.base.sq_norms)


def test_a_brute_force_model_stores_that_it_has_no_partition(tmp_path, small_model, no_kmeans):
    small_model.save(tmp_path / "model")
    assert read_meta(tmp_path / "model")["index"]["partition"] is False
    assert not (tmp_path / "model" / PARTITION).exists()
    assert not load(tmp_path / "model").index.partitioned


def test_format_1_rebuilds_the_partition_and_says_so(tmp_path, pruned_model, caplog):
    """The same model as format 1 wrote it: no partition or flat file, rows in sample order."""
    path = pruned_model.save(tmp_path / "model")
    in_sample_order(path, pruned_model)
    for name in (PARTITION, FLAT):
        (path / name).unlink()
    meta = read_meta(path)
    meta["format_version"] = 1
    del meta["index"]["partition"]
    del meta["files"][PARTITION], meta["files"][FLAT]
    write_meta(path, meta)
    with caplog.at_level("INFO", logger="gpuknn"):
        loaded = load(path)
    assert "model format 1 stores no cluster partition; building it again" in caplog.text
    assert loaded.index.partitioned
    assert_same_answers(loaded, pruned_model, pruning_queries())


@pytest.mark.parametrize(("arrays", "fragment"), [
    ({"order": np.zeros(60_000, np.int64)}, "order must be a permutation"),
    ({"sizes": np.array([60_001], np.int64)}, "add up to 60000"),
    ({"radii": None}, "centroids must be"),
    ({"centroids": "nan"}, "must be finite"),
])
def test_a_stored_partition_that_does_not_fit_is_refused(tmp_path, pruned_model, arrays,
                                                         fragment):
    path = pruned_model.save(tmp_path / "model")
    stored = dict(np.load(path / PARTITION))
    for name, value in arrays.items():
        if value is None:
            stored[name] = stored[name][:-1]
        elif isinstance(value, str):
            stored[name] = stored[name].copy()
            stored[name][0, 0] = np.nan
        else:
            stored[name] = value
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    replace_file_consistently(path, PARTITION, buffer.getvalue())
    with pytest.raises(ModelFileError, match=fragment):
        load(path)


@pytest.mark.parametrize(("arrays", "fragment"), [
    ({"sq_norms": "short"}, "sq_norms must be 60000"),
    ({"sq_norms": "negative"}, "sq_norms must be"),
    ({"center": "fraction"}, "center must be 8 finite whole"),
    ({"radius": "nan"}, "radius must be one finite number"),
    ({"integer": "array"}, "integer must be one true or false"),
])
def test_stored_norms_that_do_not_fit_are_refused(tmp_path, pruned_model, arrays, fragment):
    path = pruned_model.save(tmp_path / "model")
    stored = dict(np.load(path / FLAT))
    for name, how in arrays.items():
        value = stored[name].copy()
        if how == "short":
            value = value[:-1]
        elif how == "negative":
            value[7] = -1.0
        elif how == "fraction":
            value[0] += 0.5
        elif how == "nan":
            value = np.float64(np.nan)
        else:
            value = np.array([True, False])
        stored[name] = value
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    replace_file_consistently(path, FLAT, buffer.getvalue())
    with pytest.raises(ModelFileError, match=fragment) as info:
        load(path)
    assert f"{path / FLAT}:" in str(info.value)


def test_a_format_2_model_is_reordered_when_loaded(tmp_path, pruned_model, no_kmeans):
    """The same model as format 2 wrote it: a partition, rows in sample order, no norms."""
    path = pruned_model.save(tmp_path / "model")
    in_sample_order(path, pruned_model)
    (path / FLAT).unlink()
    meta = read_meta(path)
    meta["format_version"] = 2
    del meta["files"][FLAT]
    write_meta(path, meta)
    loaded = load(path)
    assert loaded.index.partitioned
    assert_same_answers(loaded, pruned_model, pruning_queries())


# -- archives: unpacked once into a cache, then mapped ----------------------------------------
CACHE = ".gpuknn-models"


def test_an_archive_is_unpacked_once_beside_it_and_mapped(tmp_path, small_model, queries):
    path = small_model.save(tmp_path / "model.tar.gz")
    first = load(path)
    copies = list((tmp_path / CACHE).iterdir())
    assert len(copies) == 1 and copies[0].name.startswith("model.tar.gz.")
    assert not first.index.vectors.flags.writeable, "the index is a map of the copy"
    made = (copies[0] / INDEX).stat().st_ino
    assert_same_answers(load(path), small_model, queries)
    assert (copies[0] / INDEX).stat().st_ino == made, "the second load reuses the copy"
    assert not [p for p in (tmp_path / CACHE).iterdir() if p.name.startswith(".")]


def test_a_named_cache_directory_or_variable_is_used(tmp_path, monkeypatch, small_model,
                                                     queries):
    path = small_model.save(tmp_path / "in" / "model.tar.gz")
    assert_same_answers(KNNModel.load(path, device="cpu", cache_dir=tmp_path / "named"),
                        small_model, queries)
    assert len(list((tmp_path / "named").iterdir())) == 1
    monkeypatch.setenv("GPUKNN_MODEL_CACHE", str(tmp_path / "variable"))
    assert_same_answers(load(path), small_model, queries)
    assert len(list((tmp_path / "variable").iterdir())) == 1
    assert not (tmp_path / "in" / CACHE).exists()


def test_without_a_writable_cache_the_archive_is_read_into_memory(tmp_path, small_model,
                                                                 queries, caplog):
    path = small_model.save(tmp_path / "model.tar.gz")
    (tmp_path / "a-file").write_text("not a directory")
    with caplog.at_level("INFO", logger="gpuknn"):
        loaded = KNNModel.load(path, device="cpu", cache_dir=tmp_path / "a-file" / "cache")
    assert "reading the archive into memory" in caplog.text
    assert_same_answers(loaded, small_model, queries)


def test_a_damaged_copy_is_replaced_by_the_archive_itself(tmp_path, small_model, queries,
                                                          caplog):
    path = small_model.save(tmp_path / "model.tar.gz")
    load(path)
    (copy,) = (tmp_path / CACHE).iterdir()
    labels = bytearray((copy / LABELS).read_bytes())
    labels[0] ^= 0xFF
    (copy / LABELS).write_bytes(bytes(labels))
    with caplog.at_level("WARNING", logger="gpuknn"):
        assert_same_answers(load(path), small_model, queries)
    assert "does not load" in caplog.text and "checksum mismatch" in caplog.text
    assert_same_answers(load(path), small_model, queries)  # unpacked again, whole


def test_processes_racing_to_unpack_one_archive_share_one_copy(tmp_path, small_model):
    path = small_model.save(tmp_path / "model.tar.gz")
    script = ("import sys; from gpuknn import KNNModel; "
              "print(KNNModel.load(sys.argv[1], device='cpu').n_indexed)")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(path)],
                             stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0]
    assert outputs == [str(small_model.n_indexed)] * 3
    assert len(list((tmp_path / CACHE).iterdir())) == 1, "one copy, no temporary left"


def test_a_partition_whose_centre_contradicts_the_norms_is_refused(tmp_path, pruned_model):
    """Format 3 stores the rows in the partition's order: a partition made for another
    centre cannot be built again from them, so the model is refused, naming the file."""
    path = pruned_model.save(tmp_path / "model")
    stored = dict(np.load(path / PARTITION))
    stored["center"] = stored["center"] + 1
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    replace_file_consistently(path, PARTITION, buffer.getvalue())
    with pytest.raises(ModelFileError, match="disagree on the base's centre") as info:
        load(path)
    assert f"{path / PARTITION}:" in str(info.value)


@pytest.mark.parametrize("metric", ["L2", "INNER_PRODUCT", "COSINE"])
def test_the_flat_index_file_is_the_one_faiss_writes(tmp_path, train, metric):
    """gpuknn writes a flat index itself (from a view of the vectors, no copy): the bytes
    are faiss's own ``serialize_index`` of the same vectors, and faiss reads them back."""
    import faiss

    model = fit(*train, index_metric=metric)
    path = model.save(tmp_path / "model")
    reference = faiss.IndexFlat(model.index.dim, faiss.METRIC_L2 if metric == "L2"
                                else faiss.METRIC_INNER_PRODUCT)
    reference.add(np.ascontiguousarray(model.index.vectors))
    assert (path / INDEX).read_bytes() == faiss.serialize_index(reference).tobytes()
    assert faiss.read_index(str(path / INDEX)).ntotal == model.n_indexed


def test_a_shared_cache_keeps_the_copies_of_other_archives(tmp_path, small_model, train):
    """Two archives of one name in a shared cache directory keep a copy each; replacing
    one archive removes only its own older copy."""
    cache = tmp_path / "cache"
    first = small_model.save(tmp_path / "a" / "model.tar.gz")
    second = fit(*train, predictor_type="regressor").save(tmp_path / "b" / "model.tar.gz")
    for path in (first, second):
        KNNModel.load(path, device="cpu", cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    small_model.save(first)  # a new version of the first archive
    KNNModel.load(first, device="cpu", cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    assert KNNModel.load(second, device="cpu", cache_dir=cache).predictor_type == "regressor"
