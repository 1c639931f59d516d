"""The ``gpuknn`` command (also the container entry point): its parser and dispatch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gpuknn import logs
from gpuknn._version import __version__
from gpuknn.errors import ClientError
from gpuknn.help_format import HelpFormatter, subcommand
from gpuknn.hyperparameters import INDEX_TYPES

DEVICES = ("auto", "cpu", "gpu")
DEVICE_HELP = "auto: a GPU when CuPy sees one, else the CPU; gpu without one is an error"

DESCRIPTION = """
k-nearest-neighbour classification and regression compatible with Amazon SageMaker's
built-in k-NN algorithm (the same hyperparameters, data formats and model files), on a
CPU or an NVIDIA GPU. The same command is the entry point of the training and inference
containers (docker run <image> train | serve)."""

EPILOG = """
examples:
  gpuknn quickstart                    # fit and score the bundled letter set
  gpuknn train --ml-root /opt/ml       # run a SageMaker training job
  gpuknn serve --model model.tar.gz    # /ping and /invocations on port 8080
  gpuknn transform --model model.tar.gz --input data/ --output out/ \\
      --content-type text/csv          # one out/<name>.out per file in data/
  gpuknn bench --preset tiny           # measure gpuknn against its peers

'gpuknn COMMAND --help' describes a command and all its options."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuknn", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"gpuknn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, title="commands")
    _add_quickstart(commands)
    _add_train(commands)
    _add_serve(commands)
    _add_transform(commands)
    _add_bench(commands)
    return parser


QUICKSTART = """
Fit gpuknn on the bundled UCI letter-recognition set (16,000 training rows of 16 features,
26 classes) and score it on the set's 4,000 test rows. It prints each step with its time,
then the test accuracy: 0.9565 with the defaults (exact search, k=1, L2). It reads and
writes no files of yours."""

QUICKSTART_EXAMPLES = """
examples:
  gpuknn quickstart
  gpuknn quickstart --k 10 --index-type faiss.IVFPQ --device cpu"""


def _add_quickstart(commands) -> None:
    quick = subcommand(commands, "quickstart", "train and score on the bundled letter set",
                       QUICKSTART, QUICKSTART_EXAMPLES)
    quick.add_argument("--k", type=int, default=1, metavar="K",
                       help="neighbours that vote on each test row")
    quick.add_argument("--index-type", choices=INDEX_TYPES, default="faiss.Flat",
                       help="faiss.Flat searches exactly; faiss.IVFFlat and faiss.IVFPQ are "
                            "faiss's approximate inverted-file indexes")
    quick.add_argument("--index-metric", choices=("L2", "INNER_PRODUCT", "COSINE"),
                       default="L2", help="what nearest means: Euclidean distance, inner "
                                          "product or cosine similarity")
    quick.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)


TRAIN = """
Run a SageMaker training job as the built-in k-NN container's 'train' does: read the
job's configuration and its 'train' channel from the ml root, sample, reduce and index
the rows, and write the model. With a 'test' channel it also scores the model and prints
SageMaker's metric lines (#test_score, #quality_metric). The ml root is --ml-root, else
$GPUKNN_ML_ROOT, else /opt/ml. The exit code is 0 on success; a failure or SIGTERM exits
non-zero and logs its reason, which also goes to output/failure when the ml root exists.

reads, under the ml root:
  input/config/hyperparameters.json   required: the hyperparameters, as strings
  input/config/inputdataconfig.json   ContentType, TrainingInputMode per channel
                                      (without it, every input/data/ folder is
                                      a RecordIO-protobuf channel)
  input/config/resourceconfig.json    current_host and hosts (one host)
  input/data/<channel>/               'train' and optional 'test' data; in Pipe
                                      mode the FIFO input/data/<channel>_0

writes, under the ml root:
  model/                              the model: model_algo-1 with its .json,
                                      .labels, .ids (and .reduction.npz) files
  output/data/metrics.json            throughput and, with 'test', the scores
  output/failure                      on failure, a one-paragraph reason (an
                                      earlier run's is removed first)"""

TRAIN_EXAMPLES = """
examples:
  gpuknn train --ml-root /tmp/job
  GPUKNN_ML_ROOT=/tmp/job gpuknn train"""


def _add_train(commands) -> None:
    train = subcommand(commands, "train", "run a SageMaker training job from an ml root "
                                          "(the container's 'train')", TRAIN, TRAIN_EXAMPLES)
    train.add_argument("--ml-root", default=None, metavar="DIR",
                       help="the job's ml root (default: $GPUKNN_ML_ROOT, else /opt/ml)")
    train.add_argument("--devices", default=None, metavar="all|0,2,...",
                       help="GPUs to use: the test channel is scored on all of them "
                            "(default $GPUKNN_DEVICES, else every visible GPU)")


SERVE = """
Serve a model over HTTP as SageMaker's k-NN inference container ('serve') does.
GET /ping answers 503 while the model loads, then 200. POST /invocations answers rows
sent as text/csv, application/json, application/jsonlines or
application/x-recordio-protobuf with predictions in the Accept type (application/json,
the default, application/jsonlines or application/x-recordio-protobuf; add
'; verbose=true' for the neighbours' distances, labels and ids). GET /model describes
the model, and GET /execution-parameters answers batch transform when SAGEMAKER_BATCH
is true. Requests that arrive together are searched together. SIGTERM finishes the
requests in flight and exits 0; a model that cannot be loaded exits 1.

With --multi-model (or SAGEMAKER_MULTI_MODEL=true, as SageMaker sets it for a multi-model
endpoint) the server starts with no model and keeps SageMaker's multi-model contract:
POST /models {"model_name": ..., "url": ...} loads a model directory or .tar.gz, GET
/models lists them, GET and DELETE /models/NAME describe and unload one, and POST
/models/NAME/invoke (or /invocations with the header X-Amzn-SageMaker-Target-Model:
NAME) answers as /invocations does. A model that would not fit --max-models-mb is
refused with 507.

environment:
  SAGEMAKER_BIND_TO_PORT        port without --port (else 8080)
  SAGEMAKER_MAX_PAYLOAD_IN_MB   payload limit without --max-payload-mb (else 6)
  SAGEMAKER_BATCH               'true' enables GET /execution-parameters
  SAGEMAKER_MULTI_MODEL         'true' is --multi-model
  GPUKNN_MAX_MODELS_MB          the budget without --max-models-mb
  GPUKNN_ML_ROOT                ml root without --ml-root (else /opt/ml)"""

SERVE_EXAMPLES = """
examples:
  gpuknn serve --model model.tar.gz --port 8080
  curl localhost:8080/ping
  curl -H 'Content-Type: text/csv' --data-binary @queries.csv \\
      localhost:8080/invocations
  gpuknn serve --multi-model --max-models-mb 4096
  curl -d '{"model_name": "a", "url": "/opt/ml/models/a/model"}' localhost:8080/models
  curl -H 'Content-Type: text/csv' --data-binary @queries.csv \\
      localhost:8080/models/a/invoke"""


def _add_serve(commands) -> None:
    serve = subcommand(commands, "serve", "serve a model over HTTP (the container's 'serve'): "
                                          "/ping, /invocations", SERVE, SERVE_EXAMPLES)
    serve.add_argument("--ml-root", default=None, metavar="DIR",
                       help="the model is <ml root>/model (default root: $GPUKNN_ML_ROOT, "
                            "else /opt/ml)")
    serve.add_argument("--model", default=None, metavar="PATH",
                       help="a model directory or model.tar.gz (default: <ml root>/model)")
    serve.add_argument("--host", default="0.0.0.0",
                       help="address to listen on (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=None,
                       help="port to listen on (default: $SAGEMAKER_BIND_TO_PORT, else 8080)")
    serve.add_argument("--workers", type=_workers, default="auto", metavar="N|auto",
                       help="worker processes, or 'auto' (default): one per core on the CPU, "
                            "as memory allows; one on a GPU")
    serve.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    _add_placement(serve)
    serve.add_argument("--max-batch-rows", type=int, default=4096, metavar="N",
                       help="rows per coalesced search batch")
    serve.add_argument("--max-wait-ms", type=float, default=2.0, metavar="MS",
                       help="longest wait, in milliseconds, for requests still arriving")
    serve.add_argument("--max-payload-mb", type=float, default=None, metavar="MB",
                       help="larger bodies get 413 (default: $SAGEMAKER_MAX_PAYLOAD_IN_MB, "
                            "else 6)")
    serve.add_argument("--body-timeout-s", type=float, default=60.0, metavar="S",
                       help="a request body that takes longer to arrive gets 408; the "
                            "default is SageMaker's invocation timeout")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (default: off)")
    serve.add_argument("--multi-model", action="store_true",
                       help="start with no model and serve SageMaker's multi-model contract "
                            "(/models); also when $SAGEMAKER_MULTI_MODEL is true")
    serve.add_argument("--max-models-mb", type=_positive_float, default=None, metavar="MB",
                       help="multi-model mode: memory the loaded models may take, on the GPU "
                            "where they search there (default: $GPUKNN_MAX_MODELS_MB, else "
                            "what the machine has free at start, less room for searching)")


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive integer or 'auto'")
    return int(text)


TRANSFORM = """
Batch transform without SageMaker: answer every file under --input with the model and
write one <name>.out per input file under --output (relative paths kept), as a SageMaker
batch transform job does. Each batch of rows is answered as the server's /invocations
answers a request. Outputs are written to a .partial file and renamed when complete, so
a rerun skips the finished files and an interrupted run resumes."""

TRANSFORM_EXAMPLES = """
examples:
  gpuknn transform --model model.tar.gz --input data/ --output out/ \\
      --content-type text/csv
  gpuknn transform --model model/ --input queries.pbr --output out/ \\
      --content-type application/x-recordio-protobuf \\
      --accept 'application/json; verbose=true'"""


def _add_transform(commands) -> None:
    transform = subcommand(commands, "transform", "batch transform: one <name>.out per input "
                                                  "file, like SageMaker's",
                           TRANSFORM, TRANSFORM_EXAMPLES)
    transform.add_argument("--model", required=True, metavar="PATH",
                           help="a model directory or model.tar.gz (required)")
    transform.add_argument("--input", required=True, metavar="PATH",
                           help="an input file, or a directory whose files (hidden ones "
                                "skipped) are all inputs (required)")
    transform.add_argument("--output", required=True, metavar="DIR",
                           help="directory for the .out files (required)")
    transform.add_argument("--content-type", required=True, metavar="TYPE",
                           help="of every input, gzip allowed: text/csv, application/jsonlines, "
                                "application/json or application/x-recordio-protobuf "
                                "(required)")
    transform.add_argument("--split-type", choices=("Line", "RecordIO", "None"), default=None,
                           help="how inputs are cut into requests (default: Line for CSV and "
                                "JSON Lines, RecordIO for RecordIO, None, the whole file, for "
                                "JSON)")
    transform.add_argument("--accept", default="application/jsonlines", metavar="TYPE",
                           help="output format: application/jsonlines, application/json or "
                                "application/x-recordio-protobuf, '; verbose=true' allowed")
    transform.add_argument("--batch-rows", type=int, default=4096, metavar="N",
                           help="rows per search batch with split types Line and RecordIO")
    transform.add_argument("--max-payload-mb", type=float, default=None, metavar="MB",
                           help="split type None reads each file as one request of at most "
                                "this size (default: $SAGEMAKER_MAX_PAYLOAD_IN_MB, else 6)")
    transform.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    _add_placement(transform)
    transform.add_argument("--ray-address", default=None, metavar="ADDR",
                           help="run on a Ray cluster with Ray Data: actors that each load "
                                "the model once (on a GPU of their own where the cluster has "
                                "GPUs) answer one file at a time, with the same outputs. "
                                "ADDR: host:port of the cluster's head, 'auto', or 'local' to "
                                "start one on this machine. Every node must see the model and "
                                "the files at the same paths (default: no Ray, this "
                                "process answers every file). Needs pip install "
                                "\"gpuknn[ray]\"")
    transform.add_argument("--ray-workers", type=_positive, default=None, metavar="N",
                           help="with --ray-address: actors, each with a copy of the model "
                                "(default: one per GPU of the cluster, else one per CPU)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number")
    return value


def _add_placement(parser: argparse.ArgumentParser) -> None:
    """``--shards`` and ``--devices``, defaulting to ``$GPUKNN_SHARDS`` and
    ``$GPUKNN_DEVICES`` (the container's way to set them)."""
    shards = os.environ.get("GPUKNN_SHARDS", "").strip() or None
    parser.add_argument("--shards", type=_positive, default=shards, metavar="N",
                        help="split the index into N shards searched concurrently and merged "
                             "(identical answers); default $GPUKNN_SHARDS, else only a model "
                             "too large for one GPU is split")
    parser.add_argument("--devices", default=os.environ.get("GPUKNN_DEVICES") or None,
                        metavar="all|0,2,...",
                        help="GPUs to use (default $GPUKNN_DEVICES, else every visible GPU)")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive integer")
    return int(text)


BENCH = """
Measure gpuknn's index types next to its peers on one data set: raw faiss with the same
index and parameters, scikit-learn's brute force and hnswlib (missing peers are skipped).
For each: build time, throughput, p50/p99 latency for calls of 1, 64 and 4,096 queries,
recall@k against exact search, accuracy when there are labels, and the memory it added.
The data is a preset made on the fly or your own files. Each run writes results.jsonl,
results.md and two PNG plots to a new folder under --out."""

BENCH_EXAMPLES = """
examples:
  gpuknn bench --preset tiny
  gpuknn bench --preset covtype-like --device all --out bench-out
  gpuknn bench --data train.csv --content-type text/csv --index-type faiss.Flat"""


def _add_bench(commands) -> None:
    from gpuknn.benchmark.runner import add_arguments  # noqa: PLC0415 - argparse only

    bench = subcommand(commands, "bench", "measure gpuknn against scikit-learn, faiss and "
                                          "hnswlib on a data set", BENCH, BENCH_EXAMPLES)
    add_arguments(bench)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``gpuknn`` subcommand; returns the process exit code."""
    args = _parser().parse_args(argv)
    logs.configure()
    if args.command == "train":
        from gpuknn import train  # noqa: PLC0415 - keep start-up light

        return train.main(args.ml_root, gpus=args.devices)
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
    from gpuknn.multimodel.budget import configured_mb  # noqa: PLC0415 - keep start-up light
    from gpuknn.serving import server  # noqa: PLC0415
    from gpuknn.serving.settings import ServeSettings, default_max_payload_mb  # noqa: PLC0415

    multi_model = server.multi_model_requested(args.multi_model)
    try:
        if multi_model and args.model:
            raise ClientError("--model serves one model; a multi-model server (--multi-model "
                              "or $SAGEMAKER_MULTI_MODEL) starts with none and loads them "
                              "through POST /models")
        max_models_mb = configured_mb(args.max_models_mb) if multi_model else None
    except ClientError as err:
        print(f"gpuknn serve: error: {err}", file=sys.stderr)
        return 2
    payload = args.max_payload_mb or default_max_payload_mb()
    path = "" if multi_model else server.model_location(args.ml_root, args.model)
    settings = ServeSettings(path, args.device, args.max_batch_rows, args.max_wait_ms, payload,
                             args.body_timeout_s, multi_model=multi_model,
                             shards=args.shards, devices=args.devices)
    try:
        return server.serve(settings, host=args.host, port=args.port, workers=args.workers,
                            access_log=args.access_log, max_models_mb=max_models_mb)
    except ClientError as err:  # before serving: a device that is not there, say
        print(f"gpuknn serve: error: {err}", file=sys.stderr)
        return 2


def _transform(args: argparse.Namespace) -> None:
    from pathlib import Path  # noqa: PLC0415

    from gpuknn.serving import transform  # noqa: PLC0415 - keep start-up light
    from gpuknn.serving.replicas import load_replicas  # noqa: PLC0415
    from gpuknn.serving.settings import default_max_payload_mb  # noqa: PLC0415

    job = transform.TransformJob(Path(args.input), Path(args.output), args.content_type,
                                 args.split_type, args.accept, args.batch_rows,
                                 args.max_payload_mb or default_max_payload_mb())
    if args.ray_address is not None:
        from gpuknn.distributed import transform as distributed  # noqa: PLC0415

        report = distributed.run(args.model, job, ray_address=args.ray_address,
                                 workers=args.ray_workers, device=args.device)
    elif args.ray_workers is not None:
        raise ClientError("--ray-workers needs --ray-address (host:port, auto or local)")
    else:
        report = transform.run(load_replicas(args.model, args.device, shards=args.shards,
                                             gpus=args.devices), job)
    print(f"gpuknn transform: {len(report.written)} file(s) written, {len(report.skipped)} "
          f"skipped (output exists), {report.rows} rows answered")


if __name__ == "__main__":
    sys.exit(main())
