"""Memory: a fitted faiss.Flat model holds its sample once, fitting never holds it twice
(an IVF fit neither), and processes that load one model directory share its vectors.

Each measurement runs in a fresh process (``gpuknn.benchmark.fit_memory``), so that the
resident sizes are this model's alone. Nothing is timed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpuknn import KNN
from gpuknn.benchmark.fit_memory import fit_memory

pytest.importorskip("faiss")

# The goals (1.15x held, 2x peak) with room for the allocator's and the
# interpreter's noise; the code before measured 2.23x and 4.23x on 1M x 128.
HELD_LIMIT, PEAK_LIMIT = 1.2, 2.0


@pytest.mark.parametrize(("dataset", "rows"), [("sift-like", 400_000),
                                               ("covtype-like", 300_000)])
def test_a_fitted_flat_model_holds_its_sample_once(dataset, rows):
    """400k x 128 (205 MB) and 300k x 54 (65 MB): the model adds its sample once (plus
    norms, row order, ids and labels), and the fit's peak stays under twice the sample."""
    result = fit_memory(dataset, rows)
    assert result["raw_bytes"] == rows * (128 if dataset == "sift-like" else 54) * 4
    assert result["held_ratio"] <= HELD_LIMIT, result
    assert result["peak_ratio"] <= PEAK_LIMIT, result
    assert result["arrays"][0]["nbytes"] == result["raw_bytes"]  # the base, held once
    assert sum(array["nbytes"] for array in result["arrays"]) <= 1.15 * result["raw_bytes"]


# IVFFlat: faiss's lists (the vectors, their ids, the lists' spare capacity) measured
# 1.13x and 1.23x held. The peak is now k-means training's (1.53x and 1.80x); filling the
# lists from the whole sample in one add peaked at 2.28x and 2.47x.
IVF_HELD_LIMIT, IVF_PEAK_LIMIT = 1.35, 2.0


@pytest.mark.parametrize(("dataset", "rows"), [("sift-like", 400_000),
                                               ("covtype-like", 300_000)])
def test_an_ivf_fit_gives_its_sample_up_as_faiss_copies_it(dataset, rows):
    result = fit_memory(dataset, rows, index="faiss.IVFFlat")
    assert result["held_ratio"] <= IVF_HELD_LIMIT, result
    assert result["peak_ratio"] <= IVF_PEAK_LIMIT, result


SHARER = textwrap.dedent("""
    import sys
    import numpy as np
    from gpuknn import KNNModel
    model = KNNModel.load(sys.argv[1], device="cpu")
    model.kneighbors(np.zeros((4, model.feature_dim), np.float32))
    model.index.vectors.sum()  # touch every page of the base
    print("ready", flush=True)
    sys.stdin.readline()
""")


def mapping_of(pid: int, path: Path) -> dict[str, int]:
    """Rss and Pss (bytes) of the mappings of ``path`` in process ``pid``."""
    sizes, inside = {"Rss": 0, "Pss": 0}, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = fields[-1] == str(path)
        elif inside and fields and fields[0].rstrip(":") in sizes:
            sizes[fields[0].rstrip(":")] += int(fields[1]) * 1024
    return sizes


def test_processes_that_load_one_model_share_its_vectors(tmp_path):
    """Two processes load a 100k x 128 (51 MB) model directory and touch all of it: each
    maps the index file whole, and each is charged half of it (one copy in the page
    cache), not a private copy."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((100_000, 128)).astype(np.float32)
    model = KNN(k=5, predictor_type="classifier", sample_size=len(X), device="cpu").fit(
        X, (np.arange(len(X)) % 3).astype(np.float32)).model
    path = model.save(tmp_path / "model")
    index = (path / "model_algo-1").resolve()
    processes = [subprocess.Popen([sys.executable, "-c", SHARER, str(path)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in processes] == ["ready", "ready"]
        mapped = [mapping_of(p.pid, index) for p in processes]
    finally:
        for process in processes:
            process.communicate("done\n", timeout=60)
    size = index.stat().st_size
    for sizes in mapped:
        assert sizes["Rss"] >= 0.99 * size, mapped  # the whole base, resident, mapped
        assert sizes["Pss"] <= 0.55 * size, mapped  # and shared by the two processes
