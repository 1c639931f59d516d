"""Multi-model serving against its peers: load, invoke, and 1,000 models in one server.

Run from the project root with the project's virtual environment::

    python bench/multimodel.py              # the issue's sizes: about 6 minutes on 2 cores
    python bench/multimodel.py --quick      # small sizes, a smoke test: about a minute

Goals (each a ratio in this run, :mod:`gpuknn.benchmark.multimodel` says how):

1. ``POST /models`` of a 1M x 128 Flat model into a running server: at most 1.5x
   ``KNNModel.load`` of the same directory;
2. ``/models/<name>/invoke`` against a single-model server of the same model (covtype-like
   200k x 54, k=10), 1 row and 581 rows: p50 at most 1.1x;
3. 1,000 models of 10k x 16 in one server: resident memory at most 1.2x the sum of their
   files (with 1 and 2 workers); the time to load them all and the p50 of invoking a
   random one.

Writes ``<out>/multimodel.json`` and ``<out>/multimodel.md`` (``multimodel-quick.*`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpuknn.benchmark import multimodel
from gpuknn.benchmark.multimodel_report import markdown

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FULL = {"big": 1_000_000, "covtype": 200_000, "small": 1000, "small_rows": 10_000}
QUICK = {"big": 100_000, "covtype": 50_000, "small": 100, "small_rows": 10_000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for multimodel.json and .md (default: bench/results)")
    args = parser.parse_args(argv)
    report = multimodel.run(QUICK if args.quick else FULL, rounds=args.rounds)
    name = "multimodel-quick" if args.quick else "multimodel"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
