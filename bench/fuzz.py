"""Fuzz gpuknn's parsers for longer than the test suite does, with fresh random seeds.

    python bench/fuzz.py                      # every target, 60 s each
    python bench/fuzz.py --seconds 600 --target invocations

Targets (defined in ``tests/_fuzz.py``, shared with ``tests/test_fuzz.py``):

- ``decoders``: hostile request bodies through every decoder (CSV, JSON, JSON Lines,
  RecordIO dense and sparse, gzip);
- ``recordio``: the vectorised RecordIO run decoder against protobuf, and the whole
  reader with and without runs;
- ``invocations``: the same bodies over HTTP to a real ``gpuknn serve`` process;
- ``archives``: hostile ``model.tar.gz`` files through the model reader.

Each target runs rounds of Hypothesis examples under a new random seed until its time
is up (:mod:`gpuknn.benchmark.fuzz`), then prints its cases per second. A failing input
(after Hypothesis shrinks it) is saved to
``tests/data/fuzz/<target>--<content type>--<hash>.bin``, where ``tests/test_fuzz.py``
replays it from then on; fix the bug, keep the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gpuknn.benchmark import fuzz

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    parser.add_argument("--target", action="append", choices=sorted(fuzz.TARGET_NAMES),
                        help="run only these targets (default: all)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    import _fuzz  # tests/_fuzz.py: the strategies and properties

    targets = fuzz.targets(_fuzz, _server)
    failures = 0
    for name in args.target or sorted(targets):
        with targets[name]() as (strategy, check):
            cases, seconds, saved = fuzz.fuzz(name, strategy, check, args.seconds, _fuzz)
        print(fuzz.report_line(name, cases, seconds, saved))
        failures += bool(saved)
    return 1 if failures else 0


def _server(args: list[str], log: Path) -> Any:
    """tests/_server.py's ``gpuknn serve`` process (imported only for ``invocations``)."""
    from _server import Server

    return Server(args, log)


if __name__ == "__main__":
    sys.exit(main())
