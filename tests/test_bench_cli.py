"""``gpuknn bench``: the tiny preset end to end (outputs checked for shape, never for speed),
and the harness's recall and accuracy against an independent numpy computation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _compare import reference_knn

from gpuknn.benchmark import engines, measure
from gpuknn.benchmark.presets import Dataset
from gpuknn.datasets.synthetic import clustered

FIELDS = {"dataset", "engine", "index", "device", "settings", "k", "build_s", "queries_per_s",
          "search_s", "recall", "peak_host_mib_added", "latency", "accuracy", "environment"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run([sys.executable, "-m", "gpuknn.cli", "bench", "--preset", "tiny",
                             "--latency-budget", "0.1", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_tiny_preset_writes_every_output(tiny_run):
    rows = [json.loads(line) for line in (tiny_run / "results.jsonl").read_text().splitlines()]
    expected = {("gpuknn", index) for index in engines.INDEX_TYPES}
    expected |= {("faiss", index) for index in engines.INDEX_TYPES}
    expected |= {(peer, index) for peer, index in (("sklearn", "brute"), ("hnswlib", "HNSW"))
                 if engines.available(peer)}
    assert {(row["engine"], row["index"]) for row in rows} == expected
    for row in rows:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert 0.0 <= row["recall"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
        assert row["queries_per_s"] > 0 and row["build_s"] >= 0
        assert set(row["latency"]) == {"1", "64", "4096"}
        assert row["dataset"] == {"name": "tiny", "n_base": 5000, "dim": 32, "n_queries": 500,
                                  "labelled": True}
        assert {"cpu", "cores", "blas", "versions"} <= set(row["environment"])
    exact = [row for row in rows if row["index"] in ("faiss.Flat", "brute")]
    assert all(row["recall"] == 1.0 for row in exact)  # exact engines find exact neighbours
    table = (tiny_run / "results.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # the header and one row per setting


def test_tiny_preset_draws_both_plots(tiny_run):
    pytest.importorskip("matplotlib")
    for name in ("throughput_vs_recall.png", "latency_vs_batch.png"):
        data = (tiny_run / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_recall_and_accuracy_against_numpy(rng):
    """The harness's ground truth, recall and vote against a float64 numpy brute force."""
    X, y = clustered(3_000, 12, 4, seed=3)
    Q, y_q = X[2_800:], y[2_800:]
    X, y = X[:2_800], y[:2_800]
    _, want, clear = reference_knn(X, Q, 10)
    exact = measure.exact_neighbours(X, Q, 10)
    np.testing.assert_array_equal(np.sort(exact[clear], axis=1), np.sort(want[clear], axis=1))
    assert measure.recall_at_k(want, want) == 1.0
    damaged = want.copy()
    damaged[:, -3:] = -1  # three of ten neighbours missed on every row
    assert measure.recall_at_k(damaged, want) == pytest.approx(0.7)
    labels = y[want]
    votes = np.array([np.bincount(row.astype(int), minlength=4).argmax() for row in labels])
    assert measure.vote_accuracy(want, y, y_q) == pytest.approx(np.mean(votes == y_q))


def test_faiss_peer_pads_for_pq_like_gpuknn(rng):
    pytest.importorskip("faiss")
    data = Dataset("odd", rng.standard_normal((3_000, 54)).astype(np.float32),
                   rng.standard_normal((20, 54)).astype(np.float32))
    peer = engines.Faiss("faiss.IVFPQ", {"nlists": 8, "nprobe": 8, "pq_m": 8})
    peer.build(data.X)  # 54 is not a multiple of 8: padded to 56, as gpuknn pads
    assert peer.search(data.Q, 5).shape == (20, 5)
