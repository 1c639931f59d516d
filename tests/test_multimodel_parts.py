"""The parts of a multi-model server, in one process: model names and urls, the shared
registry (two :class:`Registry` objects on one file stand for two worker processes), the
memory budget, and what a loaded model holds (:mod:`gpuknn.model.footprint`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from gpuknn import KNN, KNNModel, _backend
from gpuknn.errors import (
    ClientError,
    InsufficientMemoryError,
    ModelAlreadyLoadedError,
    ModelFileError,
    ModelNotLoadedError,
)
from gpuknn.model import footprint as fp
from gpuknn.model.layout import METADATA
from gpuknn.multimodel import budget, names
from gpuknn.multimodel.budget import Charge
from gpuknn.multimodel.registry import Registry

MiB = 2**20


@pytest.fixture(scope="module")
def saved(letter, tmp_path_factory):
    """The letter set as a Flat model directory, an IVFFlat one and a Flat archive."""
    X, y, _, _ = letter
    root = tmp_path_factory.mktemp("saved")
    flat = KNN(k=5, predictor_type="classifier", sample_size=len(X)).fit(X, y).model
    ivf = KNN(k=5, predictor_type="classifier", sample_size=len(X),
              index_type="faiss.IVFFlat", faiss_index_ivf_nlists=16).fit(X, y).model
    return {"flat": flat.save(root / "flat"), "ivf": ivf.save(root / "ivf"),
            "archive": flat.save(root / "flat.tar.gz"), "fitted": flat}


# -- names and urls -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "model-1.tar.gz", "customer 42", "é" * 1024,
                                  "a..b", "%2F"])
def test_valid_names(name):
    assert names.check_name(name) == name


@pytest.mark.parametrize(("name", "why"), [("", "0 characters"), ("a" * 1025, "1025"),
                                           ("a/b", "'/'"), ("a\\b", "'\\\\'"), ("..", "'..'"),
                                           (".", "'.'"), ("a\0b", "'\\x00'"),
                                           ("tab\there", "'\\t'"), (7, "int"),
                                           (None, "NoneType")])
def test_invalid_names_are_refused_with_what_is_allowed(name, why):
    with pytest.raises(ClientError) as raised:
        names.check_name(name)
    assert raised.value.status_code == 400
    assert why in str(raised.value) and "printable characters" in str(raised.value)


def test_names_in_messages_are_cut():
    assert names.shown("x" * 10_000) == repr("x" * 80 + "...")
    assert names.shown("short") == "'short'"


def test_locating_a_model(saved, tmp_path):
    assert names.locate(str(saved["flat"])) == saved["flat"]
    assert names.locate(str(saved["archive"])) == saved["archive"]
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "model.tar.gz").write_bytes(saved["archive"].read_bytes())
    (holder / "notes.txt").write_text("other files are fine")
    assert names.locate(str(holder)) == holder / "model.tar.gz"


def test_locating_nothing(tmp_path):
    with pytest.raises(ModelNotLoadedError) as raised:
        names.locate(str(tmp_path / "absent"))
    assert raised.value.status_code == 404 and str(tmp_path / "absent") in str(raised.value)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelFileError, match="not a model archive"):
        names.locate(str(tmp_path / "file.bin"))
    with pytest.raises(ModelFileError, match=f"no {METADATA}, and none"):
        names.locate(str(tmp_path))
    (tmp_path / "a.tar.gz").write_bytes(b"x")
    (tmp_path / "b.tgz").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"2 \.tar\.gz"):
        names.locate(str(tmp_path))


@pytest.mark.parametrize("url", [None, 3, "", "a\0b", "x" * 5000])
def test_invalid_urls(url):
    with pytest.raises(ClientError, match="url must be"):
        names.check_url(url)


# -- the registry -------------------------------------------------------------------------------
def make(tmp_path, budget_mb: float = 100, host_mb: float | None = None,
         device: str = "cpu") -> tuple[Registry, Registry]:
    """Two views of one registry, as two workers have."""
    path = Registry.create(tmp_path / "registry.sqlite")
    host = budget_mb if host_mb is None else host_mb
    return tuple(Registry(path, budget_bytes=int(budget_mb * MiB),
                          host_budget_bytes=int(host * MiB), device=device) for _ in range(2))


FOOT = fp.Footprint(4 * MiB, MiB, 0)


def test_a_load_is_seen_by_every_worker_once_committed(tmp_path):
    first, second = make(tmp_path)
    entry = first.reserve("m", "/url", "/url", Charge(5 * MiB), FOOT)
    assert not entry.ready and second.get("m") is None and second.ready() == {}
    assert second.used() == Charge(5 * MiB)  # the reservation is counted at once
    ready = first.commit(entry, Charge(6 * MiB), FOOT)
    assert ready.ready and ready.charge == Charge(6 * MiB)
    seen = second.get("m")
    assert seen == ready
    assert second.ready() == {"m": entry.generation}
    assert second.remove("m").generation == entry.generation
    assert first.get("m") is None and first.used() == Charge(0)
    with pytest.raises(ModelNotLoadedError):
        first.remove("m")


def test_a_name_is_loaded_once(tmp_path):
    first, second = make(tmp_path)
    entry = first.reserve("m", "/a", "/a", Charge(MiB), FOOT)
    with pytest.raises(ModelAlreadyLoadedError, match="being loaded") as raised:
        second.reserve("m", "/b", "/b", Charge(MiB), FOOT)
    assert raised.value.status_code == 409
    first.commit(entry, Charge(MiB), FOOT)
    with pytest.raises(ModelAlreadyLoadedError, match="already loaded"):
        second.reserve("m", "/b", "/b", Charge(MiB), FOOT)
    second.reserve("loading", "/c", "/c", Charge(0), FOOT)
    with pytest.raises(ModelNotLoadedError):  # a name still loading cannot be unloaded
        first.remove("loading")


def test_a_claim_of_a_loader_that_died_is_taken_over(tmp_path, monkeypatch):
    first, second = make(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    monkeypatch.setattr("os.getpid", lambda: int(gone.stdout))
    first.reserve("m", "/a", "/a", Charge(MiB), FOOT)
    monkeypatch.undo()
    taken = second.reserve("m", "/b", "/b", Charge(MiB), FOOT)
    assert taken.url == "/b" and second.used() == Charge(MiB)


def test_generations_tell_loads_of_one_name_apart(tmp_path):
    first, _ = make(tmp_path)
    generations = []
    for _ in range(3):
        entry = first.reserve("m", "/a", "/a", Charge(MiB), FOOT)
        generations.append(first.commit(entry, Charge(MiB), FOOT).generation)
        first.remove("m")
    assert len(set(generations)) == 3


def test_the_budget_is_checked_when_reserving_and_when_committing(tmp_path):
    first, second = make(tmp_path, budget_mb=10)
    kept = first.commit(first.reserve("a", "/a", "/a", Charge(4 * MiB), FOOT),
                        Charge(6 * MiB), FOOT)
    with pytest.raises(InsufficientMemoryError) as raised:
        second.reserve("b", "/b", "/b", Charge(5 * MiB), FOOT)
    message = str(raised.value)
    assert raised.value.status_code == 507
    assert "needs 5.0 MiB of host memory" in message and "4.0 MiB of the 10.0 MiB" in message
    entry = second.reserve("b", "/b", "/b", Charge(3 * MiB), FOOT)
    with pytest.raises(InsufficientMemoryError):  # measured larger than estimated
        second.commit(entry, Charge(5 * MiB), FOOT)
    assert second.get("b") is None and first.used() == kept.charge  # the claim is freed


def test_on_a_gpu_the_device_and_the_host_are_budgeted_apart(tmp_path):
    first, _ = make(tmp_path, budget_mb=8, host_mb=100, device="gpu")
    first.reserve("a", "/a", "/a", Charge(50 * MiB, 6 * MiB), FOOT)
    with pytest.raises(InsufficientMemoryError, match="of GPU memory"):
        first.reserve("b", "/b", "/b", Charge(MiB, 3 * MiB), FOOT)
    with pytest.raises(InsufficientMemoryError, match="of host memory"):
        first.reserve("c", "/c", "/c", Charge(60 * MiB, MiB), FOOT)
    first.reserve("d", "/d", "/d", Charge(MiB, MiB), FOOT)


def test_pages_follow_name_order(tmp_path):
    first, _ = make(tmp_path)
    for name in ["c", "a", "é", "b", "A"]:
        first.commit(first.reserve(name, "/u", "/u", Charge(0), FOOT), Charge(0), FOOT)
    first.reserve("loading", "/u", "/u", Charge(0), FOOT)  # not listed until ready
    assert [e.name for e in first.page(None, 10)] == ["A", "a", "b", "c", "é"]
    assert [e.name for e in first.page("a", 2)] == ["b", "c"]
    assert [e.name for e in first.page("é", 2)] == []


# -- the budget ---------------------------------------------------------------------------------
def test_a_charge_counts_mapped_files_once_and_the_rest_per_worker():
    footprint = fp.Footprint(mapped_bytes=100, private_bytes=10, device_bytes=7)
    assert budget.charge(footprint, 1) == Charge(110, 7)
    assert budget.charge(footprint, 4) == Charge(140, 28)


def test_the_budget_asked_for(monkeypatch):
    monkeypatch.delenv(budget.BUDGET_VARIABLE, raising=False)
    assert budget.configured_mb(None) is None
    assert budget.configured_mb(12.5) == 12.5
    monkeypatch.setenv(budget.BUDGET_VARIABLE, "256")
    assert budget.configured_mb(None) == 256.0
    assert budget.configured_mb(8) == 8
    for bad in ("-1", "0", "lots", "nan"):
        monkeypatch.setenv(budget.BUDGET_VARIABLE, bad)
        with pytest.raises(ClientError, match=budget.BUDGET_VARIABLE):
            budget.configured_mb(None)
    assert budget.budgets("cpu", 2, 6, 100) == (100 * MiB, 100 * MiB)


def test_the_default_budget_leaves_room_for_searching():
    available = _backend.available_memory()
    one, host = budget.budgets("cpu", 1, 6, None)
    two, _ = budget.budgets("cpu", 2, 6, None)
    assert one == host and 0 < two < one <= available


# -- what a model holds -------------------------------------------------------------------------
def _file_bytes(directory) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.name != METADATA)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_loaded_model_maps_its_files(saved, kind):
    model = KNNModel.load(saved[kind], device="cpu")
    model.answer(np.zeros((1, model.feature_dim), np.float32))  # the vote's arrays exist now
    held = fp.footprint(model)
    assert held.mapped_bytes == _file_bytes(saved[kind])
    assert held.device_bytes == 0
    # the vote's label classes (2 bytes a row), and for IVF the quantizer's centroids
    assert held.private_bytes >= fp.OBJECT_BYTES + 2 * model.n_indexed
    assert held.private_bytes < fp.OBJECT_BYTES + 4 * model.n_indexed + (1 << 20)
    assert fp.estimate(saved[kind]).mapped_bytes == held.mapped_bytes


def test_a_fitted_model_holds_everything_itself(saved):
    model = saved["fitted"]
    held = fp.footprint(model)
    assert held.mapped_bytes == 0
    vectors = model.n_indexed * model.feature_dim * 4
    assert held.private_bytes >= vectors + 8 * model.n_indexed  # vectors and ids at least


def test_the_estimate_of_an_archive_is_its_size(saved):
    assert fp.estimate(saved["archive"]).mapped_bytes == saved["archive"].stat().st_size
    assert fp.estimate(saved["archive"], "gpu").device_bytes == saved["archive"].stat().st_size


def test_a_broken_archive_is_not_estimated_past_its_size(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    assert fp.estimate(archive).mapped_bytes == archive.stat().st_size


# -- on a GPU ---------------------------------------------------------------------------------
@pytest.mark.gpu
def test_unloading_returns_the_device_memory(tmp_path):
    """A pool on the GPU: loading takes device memory (counted in the footprint), and
    unloading gives it back to the driver. A first load and unload warm the device up
    (CUDA context, cuBLAS workspace), which stays."""
    from gpuknn.multimodel.pool import ModelPool
    from gpuknn.serving.settings import ServeSettings

    rng = np.random.default_rng(7)
    X = rng.normal(size=(40_000, 128)).astype(np.float32)  # 20 MB, exact search
    y = rng.integers(0, 5, len(X)).astype(np.float32)
    directory = KNN(k=5, predictor_type="classifier", sample_size=len(X),
                    device="cpu").fit(X, y).model.save(tmp_path / "model")
    path = Registry.create(tmp_path / "registry.sqlite")
    settings = ServeSettings("", device="gpu", multi_model=True, registry=str(path),
                             budget_bytes=8 << 30, host_budget_bytes=8 << 30)
    registry = Registry(path, budget_bytes=8 << 30, host_budget_bytes=8 << 30, device="gpu")

    async def run() -> tuple[int, int, int, int]:
        pool = ModelPool(settings, registry)
        await pool.start()
        await pool.load("warm-up", str(directory))
        await pool.unload("warm-up")
        _backend.release_device_memory()
        before = _backend.device_free_memory()
        entry = await pool.load("gpu-model", str(directory))
        during = _backend.device_free_memory()
        await pool.unload("gpu-model")
        after = _backend.device_free_memory()
        await pool.stop()
        return before, during, after, entry.footprint.device_bytes

    before, during, after, counted = asyncio.run(run())
    assert counted >= X.nbytes
    assert before - during >= X.nbytes
    assert abs(before - after) < X.nbytes // 10
