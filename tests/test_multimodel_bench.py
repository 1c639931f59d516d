"""The multi-model harness (:mod:`gpuknn.benchmark.multimodel`, ``bench/multimodel.py``) on
small models: its outputs are checked for shape and sense (positive samples, ratios that
are the quotients they claim, an accounting that counts every file), never for speed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuknn import KNN
from gpuknn.benchmark import multimodel


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three models of 2,000 x 16 rows and the queries of the first one's kind."""
    root = tmp_path_factory.mktemp("small")
    paths = []
    for i in range(3):
        rng = np.random.default_rng(i)
        X = rng.normal(size=(2000, 16)).astype(np.float32)
        y = rng.integers(0, 3, len(X)).astype(np.float32)
        model = KNN(k=3, predictor_type="classifier", sample_size=len(X), device="cpu")
        paths.append(model.fit(X, y).model.save(root / f"m{i}"))
    queries = np.random.default_rng(9).normal(size=(40, 16)).astype(np.float32)
    return paths, queries


def _is_summary(values: dict, samples: int) -> bool:
    return (values["samples"] == samples and values["median"] > 0
            and values["q1"] <= values["median"] <= values["q3"])


def test_load_ratio(small, tmp_path):
    paths, _ = small
    result = multimodel.load_ratio(paths[0], tmp_path, rounds=2)
    for name in ("server_s", "load_s", "server_cold_s", "load_cold_s", "ratio", "cold_ratio"):
        assert _is_summary(result[name], 2), name
    assert result["model_bytes"] == sum(f.stat().st_size for f in paths[0].iterdir())
    assert "loaded model 'big'" in (tmp_path / "serve-load.log").read_text()


def test_invoke_ratio(small, tmp_path):
    paths, queries = small
    result = multimodel.invoke_ratio(paths[0], queries, tmp_path, sizes=(1, 7), requests=4,
                                     rounds=2)
    for size in ("1", "7"):
        row = result[size]
        assert _is_summary(row["multi_p50_s"], 2) and _is_summary(row["single_p50_s"], 2)
        assert _is_summary(row["ratio"], 2)


def test_many_models(small, tmp_path):
    paths, _ = small
    result = multimodel.many_models(paths, 16, tmp_path, workers=1, invokes=6)
    files = sum(f.stat().st_size for path in paths for f in path.iterdir())
    assert result["models"] == 3 and result["files_bytes"] == files
    assert result["accounted_bytes"] >= files  # every mapped file, and private memory
    assert result["added_pss_bytes"] == result["loaded_pss_bytes"] - result["empty_pss_bytes"]
    assert math.isclose(result["resident_ratio"], result["added_pss_bytes"] / files)
    assert _is_summary(result["invoke_random_s"], 6) and _is_summary(result["load_each_s"], 3)
