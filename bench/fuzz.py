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
is up, then prints its cases per second. A failing input (after Hypothesis shrinks it)
is saved to ``tests/data/fuzz/<target>--<content type>--<hash>.bin``, where
``tests/test_fuzz.py`` replays it from then on; fix the bug, keep the file.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import random
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import _fuzz  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

ROUND_EXAMPLES = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS),
                        help="run only these targets (default: all)")
    args = parser.parse_args(argv)
    failures = 0
    for name in args.target or sorted(TARGETS):
        with TARGETS[name]() as (strategy, check):
            cases, seconds, saved = fuzz(name, strategy, check, args.seconds)
        rate = cases / max(seconds, 1e-9)
        status = f"FAILED, saved {saved}" if saved else "no failure"
        print(f"{name:12s} {cases:8d} cases in {seconds:6.1f} s = {rate:8.1f} cases/s: {status}")
        failures += bool(saved)
    return 1 if failures else 0


def fuzz(name: str, strategy, check, seconds: float) -> tuple[int, float, Path | None]:
    """Rounds of examples until ``seconds`` pass; (cases, seconds, saved failure or None)."""
    state = {"cases": 0, "last": None}

    def recorded(case):
        state["cases"] += 1
        state["last"] = case
        check(case)

    started = time.monotonic()
    while time.monotonic() - started < seconds:
        run = settings(max_examples=ROUND_EXAMPLES, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck))(
            seed(random.getrandbits(64))(given(strategy)(recorded)))
        try:
            run()
        except Exception as error:
            print(f"{name}: {type(error).__name__}: {str(error)[:500]}", file=sys.stderr)
            return state["cases"], time.monotonic() - started, save(name, state["last"])
    return state["cases"], time.monotonic() - started, None


def save(name: str, case) -> Path:
    """Write the shrunk failing input where the test suite replays it."""
    if name == "archives":
        data, kind = case, "model"
    elif name == "recordio":
        data = b"".join(_fuzz.frame(payload) for payload in case)
        name, kind = "body", "application+x-recordio-protobuf"
    else:
        (data, content_type), name = case, "body"
        kind = content_type.replace("/", "+")
    target = "archive" if name == "archives" else name
    _fuzz.REGRESSIONS.mkdir(parents=True, exist_ok=True)
    path = _fuzz.REGRESSIONS / f"{target}--{kind}--{hashlib.sha256(data).hexdigest()[:12]}.bin"
    path.write_bytes(data)
    return path


# -- the targets: context managers giving (strategy, check) --------------------------------
class _Target:
    def __init__(self, strategy, check):
        self.pair = (strategy, check)

    def __enter__(self):
        return self.pair

    def __exit__(self, *exc) -> None:
        return None


def _decoders():
    return _Target(_fuzz.hostile_bodies(), lambda case: _fuzz.decode_or_refuse(*case))


def _recordio():
    return _Target(_fuzz.record_runs(), _fuzz.recordio_paths_agree)


class _Invocations:
    """A real server on a small letter model; the check posts each body to it."""

    def __enter__(self):
        from _server import Server

        from gpuknn import KNN, KNNModel
        from gpuknn.datasets import load_letter

        self.scratch = tempfile.TemporaryDirectory()
        X, y, _, _ = load_letter()
        path = KNN(k=_fuzz.LIMITS.k, predictor_type="classifier", sample_size=2000).fit(
            X[:2000], y[:2000]).model.save(Path(self.scratch.name) / "model")
        self.reference = KNNModel.load(path)
        self.server = Server(["--model", str(path), "--max-payload-mb", "1"],
                             Path(self.scratch.name) / "serve.log").wait_ready()
        return _fuzz.hostile_bodies(), self.check

    def check(self, case) -> None:
        body, content_type = case
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        try:
            connection.request("POST", "/invocations", body, {"Content-Type": content_type})
            response = connection.getresponse()
            status, answer = response.status, response.read()
        finally:
            connection.close()
        assert status in (200, 400, 413, 415), (status, answer[:300])
        assert self.server.process.poll() is None, "the worker died"
        expected = _fuzz.decode_or_refuse(body, content_type)
        assert (status == 200) == (expected is not None), (status, answer[:300])

    def __exit__(self, *exc) -> None:
        try:
            assert self.server.stop() == 0
            assert "Traceback" not in self.server.output(), self.server.output()[-3000:]
        finally:
            self.scratch.cleanup()


class _Archives:
    """Hostile archives made from a real model with a reduction."""

    def __enter__(self):
        from gpuknn import KNN
        from gpuknn.datasets import load_letter

        self.scratch = tempfile.TemporaryDirectory()
        X, y, _, _ = load_letter()
        model = KNN(k=3, predictor_type="classifier", sample_size=300,
                    dimension_reduction_type="fjlt", dimension_reduction_target=8)
        archive = model.fit(X[:300], y[:300]).model.save(
            Path(self.scratch.name) / "source.tar.gz").read_bytes()
        self.target = Path(self.scratch.name) / "model.tar.gz"
        return _fuzz.hostile_archives(archive), self.check

    def check(self, data: bytes) -> None:
        self.target.write_bytes(data)
        _fuzz.load_or_refuse(self.target)

    def __exit__(self, *exc) -> None:
        self.scratch.cleanup()


TARGETS = {"decoders": _decoders, "recordio": _recordio, "invocations": _Invocations,
           "archives": _Archives}

if __name__ == "__main__":
    sys.exit(main())
