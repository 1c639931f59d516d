"""GPU benchmarks for issue 6, each beside its measured floor and the CPU path.

Run by ``bench/gpu_check.sh`` on a machine with a CUDA GPU and CuPy::

    python bench/gpu_bench.py [--quick] [--out bench/results]

Workload (:data:`FULL`, or :data:`QUICK`), each timed as the best of ``--repeats`` after
one warm-up, synchronised around every call, by :mod:`gpuknn.benchmark.gpu_bench`:

* **GEMM floor**: the card's FP32 GEMM rate on an 8192^3 ``matmul`` (TF32 off), and
  its memory bandwidth from a 1 GiB device-to-device copy (bytes read + written).
* **exact search**: ``ExactSearch`` on the GPU, 1,000,000 x 128 base, 10,000 queries,
  k=10, float32; peers: the GEMM floor ``2 Q N d / rate``, the CPU path (timed on 200
  queries and scaled; its ids checked equal to the GPU's) and faiss-gpu's
  ``GpuIndexFlatL2`` where installed.
* **fjlt**: the fused kernel on 1,000,000 x 1024 rows to 128, against the bandwidth.
* **vote / mean**: the kernels on 1,000,000 queries x k=100, against the exact search
  time of the same number of queries.
* **train and predict**: the whole ``gpuknn train`` (File mode) on the covtype-shaped
  set of ``bench/train_covtype.py``, then a 10,000-row ``predict`` of its model, on the
  GPU and on the CPU path (``CUDA_VISIBLE_DEVICES=""``, ``device="cpu"``).

Goals: :data:`TARGETS`. Results go to ``gpu_bench[-quick].json`` and ``.md`` with the
card, driver and library versions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpuknn import _backend
from gpuknn.benchmark import gpu_bench

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FULL = {"base": 1_000_000, "queries": 10_000, "dim": 128, "rows": 1_000_000}
QUICK = {"base": 100_000, "queries": 1_000, "dim": 128, "rows": 100_000}
TARGETS = gpu_bench.TARGETS  # GEMM floor x2, CPU path /50, half the bandwidth, vote < 5%
render = gpu_bench.render  # tests/test_kernels.py renders a report through this script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a smoke test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not _backend.has_gpu():
        print("gpu_bench: no CUDA GPU with CuPy here; nothing measured", file=sys.stderr)
        return 2
    report = gpu_bench.run(_backend.array_module("gpu"), QUICK if args.quick else FULL,
                           TARGETS, quick=args.quick, repeats=args.repeats)
    stem = "gpu_bench-quick" if args.quick else "gpu_bench"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
