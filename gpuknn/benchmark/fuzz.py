"""Long fuzzing runs of gpuknn's parsers with fresh random seeds (``bench/fuzz.py``).

The targets' strategies and properties live with the tests (``tests/_fuzz.py``, shared
with ``tests/test_fuzz.py``); the caller passes that module in as ``helpers``, and for the
``invocations`` target a function that starts a real server (``tests/_server.py``), so
that this package never imports from ``tests/``.

- :func:`fuzz`: rounds of Hypothesis examples, each under a new random seed, until the
  time is up; a failing input (shrunk by Hypothesis) is saved by :func:`save` where the
  test suite replays it (:func:`regression_file` names it);
- :func:`targets`: each target as a context manager giving ``(strategy, check)``;
- :func:`report_line`: one target's cases per second and outcome, as printed.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROUND_EXAMPLES = 200
TARGET_NAMES = ("archives", "decoders", "invocations", "recordio")
ALLOWED_STATUSES = (200, 400, 413, 415)


def fuzz(name: str, strategy: Any, check: Callable[[Any], Any], seconds: float,
         helpers: ModuleType) -> tuple[int, float, Path | None]:
    """Rounds of examples until ``seconds`` pass.

    Returns
    -------
    tuple
        Cases run, seconds spent, and the saved failing input (None when none failed).
    """
    from hypothesis import HealthCheck, given, seed, settings  # noqa: PLC0415 - tests' tool

    state: dict[str, Any] = {"cases": 0, "last": None}

    def recorded(case: Any) -> None:
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
            return (state["cases"], time.monotonic() - started,
                    save(name, state["last"], helpers))
    return state["cases"], time.monotonic() - started, None


def regression_file(name: str, case: Any, frame: Callable[[bytes], bytes]) -> tuple[str, bytes]:
    """The file name and bytes under which a target's failing ``case`` is replayed.

    Names are ``<target>--<content type, "/" as "+">--<12 hex of sha256>.bin``: a body
    for ``decoders`` and ``invocations``, RecordIO records (framed with ``frame``) for
    ``recordio``, ``archive--model--...`` for ``archives``.
    """
    if name == "archives":
        data, target, kind = case, "archive", "model"
    elif name == "recordio":
        data = b"".join(frame(payload) for payload in case)
        target, kind = "body", "application+x-recordio-protobuf"
    else:
        data, content_type = case
        target, kind = "body", content_type.replace("/", "+")
    return f"{target}--{kind}--{hashlib.sha256(data).hexdigest()[:12]}.bin", data


def save(name: str, case: Any, helpers: ModuleType) -> Path:
    """Write the shrunk failing input to ``helpers.REGRESSIONS``, where the suite replays it."""
    filename, data = regression_file(name, case, helpers.frame)
    helpers.REGRESSIONS.mkdir(parents=True, exist_ok=True)
    path = helpers.REGRESSIONS / filename
    path.write_bytes(data)
    return path


def report_line(name: str, cases: int, seconds: float, saved: Path | None) -> str:
    """``name  cases in seconds = rate cases/s: outcome``, as ``bench/fuzz.py`` prints it."""
    rate = cases / max(seconds, 1e-9)
    status = f"FAILED, saved {saved}" if saved else "no failure"
    return f"{name:12s} {cases:8d} cases in {seconds:6.1f} s = {rate:8.1f} cases/s: {status}"


# -- the targets: context managers giving (strategy, check) --------------------------------
class _Target:
    """A target that needs nothing set up: a fixed ``(strategy, check)``."""

    def __init__(self, strategy: Any, check: Callable[[Any], Any]):
        self.pair = (strategy, check)

    def __enter__(self) -> tuple[Any, Callable[[Any], Any]]:
        return self.pair

    def __exit__(self, *exc: object) -> None:
        return None


class _Invocations:
    """A real server on a small letter model; the check posts each body to it."""

    def __init__(self, helpers: ModuleType, start_server: Callable[[list[str], Path], Any]):
        self.helpers, self.start_server = helpers, start_server

    def __enter__(self) -> tuple[Any, Callable[[Any], None]]:
        from gpuknn import KNN  # noqa: PLC0415 - a target's own import
        from gpuknn.datasets import load_letter  # noqa: PLC0415

        self.scratch = tempfile.TemporaryDirectory()
        X, y, _, _ = load_letter()
        path = KNN(k=self.helpers.LIMITS.k, predictor_type="classifier", sample_size=2000).fit(
            X[:2000], y[:2000]).model.save(Path(self.scratch.name) / "model")
        self.server = self.start_server(["--model", str(path), "--max-payload-mb", "1"],
                                        Path(self.scratch.name) / "serve.log").wait_ready()
        return self.helpers.hostile_bodies(), self.check

    def check(self, case: tuple[bytes, str]) -> None:
        """One body over HTTP: answered or refused as the decoders say, the worker alive."""
        body, content_type = case
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        try:
            connection.request("POST", "/invocations", body, {"Content-Type": content_type})
            response = connection.getresponse()
            status, answer = response.status, response.read()
        finally:
            connection.close()
        assert status in ALLOWED_STATUSES, (status, answer[:300])
        assert self.server.process.poll() is None, "the worker died"
        expected = self.helpers.decode_or_refuse(body, content_type)
        assert (status == 200) == (expected is not None), (status, answer[:300])

    def __exit__(self, *exc: object) -> None:
        try:
            assert self.server.stop() == 0
            assert "Traceback" not in self.server.output(), self.server.output()[-3000:]
        finally:
            self.scratch.cleanup()


class _Archives:
    """Hostile archives made from a real model with a reduction."""

    def __init__(self, helpers: ModuleType):
        self.helpers = helpers

    def __enter__(self) -> tuple[Any, Callable[[bytes], None]]:
        from gpuknn import KNN  # noqa: PLC0415 - a target's own import
        from gpuknn.datasets import load_letter  # noqa: PLC0415

        self.scratch = tempfile.TemporaryDirectory()
        X, y, _, _ = load_letter()
        model = KNN(k=3, predictor_type="classifier", sample_size=300,
                    dimension_reduction_type="fjlt", dimension_reduction_target=8)
        archive = model.fit(X[:300], y[:300]).model.save(
            Path(self.scratch.name) / "source.tar.gz").read_bytes()
        self.target = Path(self.scratch.name) / "model.tar.gz"
        return self.helpers.hostile_archives(archive), self.check

    def check(self, data: bytes) -> None:
        """Write the archive and load it: it loads or is refused with ModelFileError."""
        self.target.write_bytes(data)
        self.helpers.load_or_refuse(self.target)

    def __exit__(self, *exc: object) -> None:
        self.scratch.cleanup()


def targets(helpers: ModuleType,
            start_server: Callable[[list[str], Path], Any]) -> dict[str, Callable[[], Any]]:
    """Each target of :data:`TARGET_NAMES` as a factory of a ``(strategy, check)`` context.

    Parameters
    ----------
    helpers : module
        ``tests/_fuzz.py``: the strategies, properties, ``LIMITS``, ``frame`` and
        ``REGRESSIONS``.
    start_server : callable
        ``start_server(args, log)``: an unstarted server (``tests/_server.Server``) with
        ``wait_ready``, ``port``, ``process``, ``stop`` and ``output``.
    """
    return {"archives": lambda: _Archives(helpers),
            "decoders": lambda: _Target(helpers.hostile_bodies(),
                                        lambda case: helpers.decode_or_refuse(*case)),
            "invocations": lambda: _Invocations(helpers, start_server),
            "recordio": lambda: _Target(helpers.record_runs(), helpers.recordio_paths_agree)}
