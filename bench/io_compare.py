"""Read throughput of gpuknn's data layer against the SageMaker SDK, numpy and pandas.

Run from the project root, ideally with a Python that has both gpuknn and the
SageMaker Python SDK v2 (so that both are measured in the same run)::

    python bench/io_compare.py              # full: about 1-2 minutes on a 2-core box
    python bench/io_compare.py --quick      # smoke test, well under 30 s

Without an importable ``sagemaker`` the script still runs: the SDK rows, the
gpuknn/SDK ratios and the writer check are reported as skipped.

Workloads (from fixed seeds, ``gpuknn.datasets.synthetic``; one tenth with ``--quick``):
RecordIO-protobuf ``dense-f32-100k-d128`` (Gaussian float32, labels 0-9),
``dense-f64-100k-d128`` (Gaussian float64, no labels) and ``covtype-f64-500k-d54``
(``covtype_like``, float64, labels 1-7 as the AWS covtype k-NN sample wrote them); CSV
(label first, ``np.savetxt(fmt="%.7g")``) ``covtype-csv-500k-c55`` and
``gauss-csv-100k-c129``. Peers: the SDK's ``read_records`` plus the natural
``np.array`` conversion (on a prefix of ``--sdk-records`` records: it reads about
20 MB/s), ``np.loadtxt`` and ``pandas.read_csv``; floors: a ``bytearray`` copy of the
bytes in memory and ``open().read()``. :mod:`gpuknn.benchmark.io_compare` says what each
row calls and how it is timed (one warm-up, then ``--repeats`` interleaved rounds,
``--settle`` s pause; best and median).

Goals (the issue's targets): gpuknn ``read`` at least 30x the SDK's throughput and at
most 5x the copy floor's time on RecordIO, at least 10x ``numpy.loadtxt`` on CSV.

Outputs ``<out>/io_compare.json`` and ``<out>/io_compare.md`` (``io_compare-quick.*``
with ``--quick``) and, for each workload, a cProfile summary of one gpuknn ``read``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpuknn.benchmark import io_compare, io_compare_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one tenth of the rows")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (3; 2 with --quick)")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="pause in seconds before every timed call")
    parser.add_argument("--sdk-records", type=int, default=None,
                        help="records of the prefix the SDK reads (20000; 2000 with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 3)
    sdk_records = args.sdk_records or (2_000 if args.quick else 20_000)
    report = io_compare.run(args.quick, repeats, args.settle, sdk_records)
    stem = "io_compare-quick" if args.quick else "io_compare"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = io_compare_report.markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {args.out / stem}.json and .md in {report['total_seconds']:.0f} s")
    failed = [(w["name"], k) for w in report["workloads"] for k, val in w["checks"].items()
              if val is False]
    if failed or report["writer_check"].get("byte_identical") is False:
        print(f"CHECKS FAILED: {failed or 'writer'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
