"""gpuknn's IVF search against raw faiss on the same faiss index: batch and one-row overhead.

    python bench/ivf_overhead.py              # sift-like 1,000,000 x 128, covtype-like 500,000
    python bench/ivf_overhead.py --quick      # 200,000 and 100,000 rows, 5 rounds

Writes ``ivf_overhead.{json,md}`` to ``bench/results`` (``--out`` for another JSON path;
``--quick`` writes ``ivf_overhead-quick.*``). What is timed and how:
``gpuknn.benchmark.ivf_overhead``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gpuknn.benchmark import ivf_overhead

if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    ivf_overhead.main(out=Path("bench/results") / f"ivf_overhead{'-quick' if quick else ''}.json")
