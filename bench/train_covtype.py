"""End-to-end ``gpuknn train`` on a covtype-shaped set, against SageMaker's own log.

Run from the project root with the project's virtual environment::

    python bench/train_covtype.py                # full: 3 File-mode jobs + 1 Pipe-mode job
    python bench/train_covtype.py --quick        # 50,000 / 5,800 rows, sample 20,000
    python bench/train_covtype.py --profile      # also one job under cProfile
    python bench/train_covtype.py --from-json bench/results/train_covtype.json  # redo .md

The workload is the AWS covtype k-NN sample (UCI Covertype, 54 float64 features, 7
classes, RecordIO; ``k=10``, ``sample_size=200000``, ``faiss.Flat``, L2) on a synthetic
covtype-shaped set of 500,000 train / 58,000 test rows; the peer is SageMaker's log of
that sample on one ml.m5.2xlarge; the goals are the whole job in under 20 s and a
training pass of at least 1M records/s. :mod:`gpuknn.benchmark.train_covtype` describes
the data, the jobs, what is read from their logs and the caveats.

Outputs: ``<out>/train_covtype.json`` and ``<out>/train_covtype.md``
(``train_covtype-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpuknn.benchmark import train_covtype
from gpuknn.benchmark.train_report import markdown

WORKLOAD = "covtype-shaped synthetic, k=10, sample_size 200000, faiss.Flat, L2"
SAGEMAKER = {
    "instance": "ml.m5.2xlarge (8 vCPU, 32 GiB)",
    "dataset": "UCI Covertype, 522,910 train / 58,102 test x 54 float64, 7 classes",
    "throughput_records_per_s": [385_000, 536_000],
    "billed_seconds": {"2018": 130, "2021": 191},
    "test_accuracy": 0.9221,
    "source": "aws/amazon-sagemaker-examples k_nearest_neighbors_covtype (2018, 2021 runs);"
              " /work/shared/reference/sagemaker-knn.md section 7",
}
TARGETS = {"job_seconds_below": 20.0, "train_records_per_s_at_least": 1_000_000}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="50,000 / 5,800 rows, sample_size 20,000 (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="File-mode jobs (default 3)")
    parser.add_argument("--no-pipe", action="store_true", help="skip the Pipe-mode job")
    parser.add_argument("--profile", action="store_true",
                        help="also run one File-mode job under cProfile")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the faiss reference accuracy")
    parser.add_argument("--breakdown-queries", type=int, default=None,
                        help="test rows for the in-process scoring breakdown (default 4096, "
                             "512 with --quick; 0 skips it)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--keep", action="store_true", help="keep the ml roots and logs")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only rewrite the Markdown next to this saved JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        args.from_json.with_suffix(".md").write_text(markdown(report))
        print(f"wrote {args.from_json.with_suffix('.md')}")
        return 0
    n_train, n_test, sample = (train_covtype.QUICK_SIZES if args.quick
                               else train_covtype.FULL_SIZES)
    queries = args.breakdown_queries
    plan = train_covtype.Plan(
        n_train, n_test, sample, sagemaker=SAGEMAKER, targets=TARGETS,
        workload="quick smoke test (not the benchmark)" if args.quick else WORKLOAD,
        repeats=args.repeats, pipe=not args.no_pipe, profile=args.profile,
        reference=not args.no_reference, keep=args.keep,
        breakdown_queries=(512 if args.quick else 4096) if queries is None else queries)
    stem = "train_covtype-quick" if args.quick else "train_covtype"
    args.out.mkdir(parents=True, exist_ok=True)
    report = train_covtype.run(plan, repo=Path(__file__).resolve().parent.parent)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(f"wrote {args.out / stem}.json and .md", flush=True)
    print(json.dumps(report["targets"], indent=2), flush=True)
    return 0 if all(r["exit_code"] == 0 for r in report["file_runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
