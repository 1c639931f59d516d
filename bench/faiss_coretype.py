"""gpuknn exact search vs faiss-cpu IndexFlatL2 with faiss's bundled OpenBLAS on a given core type.

The issue's CPU target (gpuknn at least 1.5x faiss-cpu IndexFlatL2) assumed that the
OpenBLAS bundled in the faiss-cpu wheel runs generic kernels on 2-core x86 machines, about
3x slower than numpy's, as measured on one such box (OpenBLAS detected it as Prescott).
This script measures both situations in one run. numpy's OpenBLAS reads
``OPENBLAS_CORETYPE`` when numpy is imported, faiss's when faiss is imported, so setting
the variable between the two imports changes faiss's kernels only.

    python bench/faiss_coretype.py            # this machine as it is
    python bench/faiss_coretype.py Prescott   # faiss's BLAS on generic kernels

Synthetic 100,000 x 128 base, 2,000 queries, k=10, float32; best of 4 interleaved runs.
Results are appended to ``bench/results/faiss_coretype.md``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np  # numpy's OpenBLAS initialises here, with the detected core type

if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1].startswith("-")):
    sys.exit("usage: python bench/faiss_coretype.py [OPENBLAS_CORETYPE]  (e.g. Prescott)")
CORETYPE = sys.argv[1] if len(sys.argv) > 1 else None
if CORETYPE:
    os.environ["OPENBLAS_CORETYPE"] = CORETYPE  # seen by faiss's OpenBLAS only

from threadpoolctl import threadpool_info  # noqa: E402 - after the environment is set

from gpuknn import KNN  # noqa: E402
from gpuknn.search.faiss_index import require_faiss  # noqa: E402

N_BASE, DIM, N_QUERIES, K, REPEATS = 100_000, 128, 2_000, 10, 4
RESULTS = Path(__file__).parent / "results" / "faiss_coretype.md"


def main() -> None:
    faiss = require_faiss()
    rng = np.random.default_rng(20240601)
    base = rng.standard_normal((N_BASE, DIM), dtype=np.float32)
    queries = rng.standard_normal((N_QUERIES, DIM), dtype=np.float32)
    index = faiss.IndexFlatL2(DIM)
    index.add(base)
    estimator = KNN(k=K, predictor_type="classifier", sample_size=N_BASE, device="cpu")
    estimator.fit(base, np.zeros(N_BASE, dtype=np.float32))
    best = {"faiss": np.inf, "gpuknn": np.inf}
    for _ in range(REPEATS):
        for name, search in (("faiss", lambda: index.search(queries, K)),
                             ("gpuknn", lambda: estimator.kneighbors(queries))):
            time.sleep(0.2)  # let BLAS threads settle between engines
            started = time.perf_counter()
            result = search()
            best[name] = min(best[name], time.perf_counter() - started)
            ids = result[1]
            if name == "faiss":
                faiss_ids = ids
    agree = float(np.mean(np.sort(ids, axis=1) == np.sort(faiss_ids, axis=1)))
    cores = [f"{p['filepath'].split('/')[-1]}: {p.get('architecture')}"
             for p in threadpool_info() if p["internal_api"] == "openblas"]
    line = (f"| {CORETYPE or '(detected)'} | {N_QUERIES / best['faiss']:,.0f} | "
            f"{N_QUERIES / best['gpuknn']:,.0f} | **{best['faiss'] / best['gpuknn']:.2f}** | "
            f"{agree:.4f} | {'; '.join(cores)} | {platform.node()} "
            f"{time.strftime('%Y-%m-%d %H:%M')} |")
    if not RESULTS.exists():
        RESULTS.write_text("# gpuknn vs faiss-cpu IndexFlatL2 by faiss's OpenBLAS core type\n\n"
                           "100k x 128 base, 2k queries, k=10, best of 4; from "
                           "`python bench/faiss_coretype.py [CORETYPE]`.\n\n"
                           "| faiss OpenBLAS core | faiss q/s | gpuknn q/s | gpuknn / faiss | "
                           "same ids | OpenBLAS copies | machine, time |\n"
                           "|---|---:|---:|---:|---:|---|---|\n")
    with RESULTS.open("a") as handle:
        handle.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
