"""The ``gpuknn`` command (also the container entry point)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gpuknn._version import __version__
from gpuknn.errors import ClientError
from gpuknn.hyperparameters import INDEX_TYPES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuknn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gpuknn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser("quickstart", help="train and score on the bundled letter set")
    quick.add_argument("--k", type=int, default=1, help="neighbours (default 1)")
    quick.add_argument("--index-type", choices=INDEX_TYPES, default="faiss.Flat")
    quick.add_argument("--index-metric", choices=("L2", "INNER_PRODUCT", "COSINE"),
                       default="L2")
    quick.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    train = commands.add_parser(
        "train", help="run a SageMaker training job from an ml root (the container's 'train')")
    train.add_argument("--ml-root", default=None,
                       help="default: $GPUKNN_ML_ROOT, else /opt/ml")
    _add_serve(commands)
    _add_transform(commands)
    bench = commands.add_parser(
        "bench", help="measure gpuknn against scikit-learn, faiss and hnswlib on a data set")
    from gpuknn.benchmark.runner import add_arguments  # noqa: PLC0415 - argparse only

    add_arguments(bench)
    return parser


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve a model over HTTP (the container's 'serve'): /ping, /invocations")
    serve.add_argument("--ml-root", default=None,
                       help="the model is <ml root>/model (default root: $GPUKNN_ML_ROOT, "
                            "else /opt/ml)")
    serve.add_argument("--model", default=None, help="a model directory or model.tar.gz "
                                                     "(instead of <ml root>/model)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=None,
                       help="default: $SAGEMAKER_BIND_TO_PORT, else 8080")
    serve.add_argument("--workers", type=_workers, default="auto",
                       help="worker processes, or 'auto' (default): one per core on the CPU, "
                            "as memory allows; one on a GPU")
    serve.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    serve.add_argument("--max-batch-rows", type=int, default=4096,
                       help="rows per coalesced search batch (default 4096)")
    serve.add_argument("--max-wait-ms", type=float, default=2.0,
                       help="longest wait for requests still arriving (default 2 ms)")
    serve.add_argument("--max-payload-mb", type=float, default=None,
                       help="larger bodies get 413 (default: $SAGEMAKER_MAX_PAYLOAD_IN_MB, "
                            "else 6)")
    serve.add_argument("--body-timeout-s", type=float, default=60.0,
                       help="a request body that takes longer to arrive gets 408 "
                            "(default 60, SageMaker's invocation timeout)")
    serve.add_argument("--access-log", action="store_true", help="log every request")


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive integer or 'auto'")
    return int(text)


def _add_transform(commands) -> None:
    transform = commands.add_parser(
        "transform", help="batch transform: one <name>.out per input file, like SageMaker's")
    transform.add_argument("--model", required=True, help="a model directory or model.tar.gz")
    transform.add_argument("--input", required=True, help="an input file or directory")
    transform.add_argument("--output", required=True, help="directory for the .out files")
    transform.add_argument("--content-type", required=True,
                           help="text/csv, application/jsonlines, application/json or "
                                "application/x-recordio-protobuf")
    transform.add_argument("--split-type", choices=("Line", "RecordIO", "None"), default=None,
                           help="default: Line for CSV and JSON Lines, RecordIO for RecordIO, "
                                "None for JSON")
    transform.add_argument("--accept", default="application/jsonlines",
                           help="output format (default application/jsonlines)")
    transform.add_argument("--batch-rows", type=int, default=4096)
    transform.add_argument("--max-payload-mb", type=float, default=None,
                           help="split type None reads each file as one request of at most "
                                "this size (default: $SAGEMAKER_MAX_PAYLOAD_IN_MB, else 6)")
    transform.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``gpuknn`` subcommand; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every attempt
    if args.command == "train":
        from gpuknn import train  # noqa: PLC0415 - keep start-up light

        return train.main(args.ml_root)
    if args.command == "serve":
        return _serve(args)
    try:
        if args.command == "quickstart":
            from gpuknn import quickstart  # noqa: PLC0415 - keep start-up light

            quickstart.run(k=args.k, index_type=args.index_type,
                           index_metric=args.index_metric, device=args.device, out=sys.stdout)
        elif args.command == "transform":
            _transform(args)
        elif args.command == "bench":
            from gpuknn.benchmark import runner  # noqa: PLC0415 - keep start-up light

            runner.run(args)
    except ClientError as err:
        print(f"gpuknn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gpuknn.serving import app, server  # noqa: PLC0415 - keep start-up light

    payload = args.max_payload_mb or app.default_max_payload_mb()
    settings = app.ServeSettings(server.model_location(args.ml_root, args.model), args.device,
                                 args.max_batch_rows, args.max_wait_ms, payload,
                                 args.body_timeout_s)
    return server.serve(settings, host=args.host, port=args.port, workers=args.workers,
                        access_log=args.access_log)


def _transform(args: argparse.Namespace) -> None:
    from pathlib import Path  # noqa: PLC0415

    from gpuknn.model import KNNModel  # noqa: PLC0415 - keep start-up light
    from gpuknn.serving import transform  # noqa: PLC0415 - keep start-up light
    from gpuknn.serving.app import default_max_payload_mb  # noqa: PLC0415

    job = transform.TransformJob(Path(args.input), Path(args.output), args.content_type,
                                 args.split_type, args.accept, args.batch_rows,
                                 args.max_payload_mb or default_max_payload_mb())
    report = transform.run(KNNModel.load(args.model, device=args.device), job)
    print(f"gpuknn transform: {len(report.written)} file(s) written, {len(report.skipped)} "
          f"skipped (output exists), {report.rows} rows answered")


if __name__ == "__main__":
    sys.exit(main())
