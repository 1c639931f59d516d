"""CPU comparison of gpuknn's exact search and prediction against faiss-cpu and scikit-learn.

Run from the project root::

    python bench/compare.py            # full workloads, about a minute or two on 2 cores
    python bench/compare.py --quick    # small workloads, a smoke test of under 20 s

Workloads: a 128-d Gaussian mixture (100,000 base rows and 2,000 queries, k=10;
``gpuknn.datasets.synthetic.gaussian_mixture``) and UCI letter (k=10 and k=1).
Peers: faiss-cpu ``IndexFlatL2`` (its "predict" a numpy vote) and scikit-learn's brute
force, with a bare numpy GEMM as the floor; all run in this one process, in interleaved
repetitions after one warm-up (:mod:`gpuknn.benchmark.cpu_compare` says what each engine
calls). The headline is the **best** wall time; the median, and the median of the
per-repetition gpuknn/peer ratios, are beside it. Goal: faiss's neighbours on every row
without a tie at the k-th distance, and gpuknn's speed over each peer's above 1 (the
README's "at least 1.5x faiss" target assumed faiss's BLAS on generic kernels).

Outputs ``<out>/cpu_compare.json`` (rows, checks and the environment) and
``<out>/cpu_compare.md`` (tables); ``--quick`` writes ``cpu_compare-quick.*`` so a
smoke test never overwrites a full run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpuknn.benchmark import cpu_compare, cpu_compare_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small workloads and 2 repetitions (a smoke test, < 20 s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per operation (default 5, or 2 with --quick)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds of sleep before every timed call (default 0.2, or 0.05 "
                             "with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    settle = args.settle if args.settle is not None else (0.05 if args.quick else 0.2)
    report = cpu_compare.run(args.quick, repeats, settle)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu_compare-quick" if args.quick else "cpu_compare"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(cpu_compare_report.markdown(report))
    print(f"wrote {args.out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
