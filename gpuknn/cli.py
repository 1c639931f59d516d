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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``gpuknn`` subcommand; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every attempt
    if args.command == "train":
        from gpuknn import train  # noqa: PLC0415 - keep start-up light

        return train.main(args.ml_root)
    try:
        if args.command == "quickstart":
            from gpuknn import quickstart  # noqa: PLC0415 - keep start-up light

            quickstart.run(k=args.k, index_type=args.index_type,
                           index_metric=args.index_metric, device=args.device, out=sys.stdout)
    except ClientError as err:
        print(f"gpuknn {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
