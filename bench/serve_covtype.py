"""Client-measured latency and throughput of ``gpuknn serve`` on a covtype-shaped model.

Run from the project root with the project's virtual environment::

    python bench/serve_covtype.py            # full: about 2 minutes on a 2-core box
    python bench/serve_covtype.py --quick    # smoke test: 20,000-row model, short runs

Workload: SageMaker's covtype endpoint model, 200,000 x 54 rows of
:func:`gpuknn.datasets.synthetic.covtype_like`, ``k=10``, ``faiss.Flat``, L2, classifier,
saved as a directory, served by ``python -m gpuknn.cli serve --model DIR`` with its
defaults (``--workers auto``, micro-batching on); clients are threads of this process
with keep-alive connections sending ``text/csv`` (what the AWS covtype notebook did).

* ``single``: ``--single`` (2,000) sequential one-row requests: mean, p50, p90, p99.
* ``batch``: ``--batches`` (30) sequential 581-row requests, every answer checked equal
  to ``KNNModel.predict``.
* ``concurrent``: 32 clients sending one-row requests for ``--seconds`` (10) s, against
  the default server and against ``--workers 1`` (micro-batching alone).

Peers: SageMaker's ml.c5.xlarge figures (below), and in the same run, without HTTP,
scikit-learn ``KNeighborsClassifier(algorithm="brute")`` and ``KNNModel.predict``.
Goals on 2 cores: :data:`TARGETS`. The measuring code is
:mod:`gpuknn.benchmark.serve_covtype`. Results go to
``bench/results/serve_covtype[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpuknn.benchmark import serve_covtype

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SAGEMAKER_C5 = {"single_mean_ms": 15.1, "single_p90_ms": 17.2, "single_p99_ms": 21.2,
                "batch_581_mean_ms": 162.5}
TARGETS = {"single_p50_ms": 5.0, "single_p99_ms": 15.0, "batch_581_mean_ms": 100.0,
           "concurrency_gain": 4.0}


def main(argv: list[str] | None = None) -> int:
    args = _with_defaults(_parser().parse_args(argv))
    report = serve_covtype.run(20_000 if args.quick else 200_000, single=args.single,
                               batches=args.batches, seconds=args.seconds,
                               settings=vars(args), sagemaker=SAGEMAKER_C5, targets=TARGETS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "serve_covtype-quick" if args.quick else "serve_covtype"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(serve_covtype.render(report))
    print(serve_covtype.render(report))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--single", type=int, default=None, help="one-row requests (2000)")
    parser.add_argument("--batches", type=int, default=None, help="581-row requests (30)")
    parser.add_argument("--seconds", type=float, default=None, help="concurrent phase (10)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    return parser


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    args.single = args.single or (200 if args.quick else 2000)
    args.batches = args.batches or (5 if args.quick else 30)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    return args


if __name__ == "__main__":
    sys.exit(main())
