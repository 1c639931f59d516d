"""Ray scaling of sampling and batch transform, against the single-process paths.

    python bench/distributed.py                    # 500,000 x 54; 10 + 5 rounds
    python bench/distributed.py --quick            # 50,000 rows, 2 rounds

Needs ``pip install -e ".[cpu,ray,bench]"``. Writes ``distributed.{json,md,png}`` to
``--out`` (default ``bench/results``). What is timed and how: ``gpuknn.benchmark.distributed``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gpuknn.benchmark import distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run, to check it works")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows, test_rows, sample, model_rows = (50_000, 8_000, 20_000, 5_000) if args.quick else \
        (500_000, 500_000, 200_000, 50_000)
    count = args.rounds or (2 if args.quick else 5)
    out = args.out / "distributed-quick" if args.quick else args.out
    # 32 input files: the actors start a second or so apart, and whole files are the unit
    # of work, so with few files the first actor ends up with more of them.
    results = distributed.run(rows, out, count=count, sample_size=sample, test_rows=test_rows,
                              model_rows=model_rows, files=8 if args.quick else 32)
    print(distributed.markdown(results))


if __name__ == "__main__":
    main()
