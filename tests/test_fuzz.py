"""Property-based fuzzing of every decoder, of ``/invocations`` on a real server, and of the
model reader (targets in ``tests/_fuzz.py``).

The run here is bounded (derandomised, so CI is repeatable, about 40 s in all);
``bench/fuzz.py`` runs the same targets longer with random seeds and saves any failing
input to ``tests/data/fuzz/``, which :func:`test_saved_failures_stay_fixed` replays.
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from _fuzz import (  # noqa: E402 - after the skip
    FEATURES,
    LIMITS,
    REGRESSIONS,
    check_refusal,
    decode_or_refuse,
    hostile_archives,
    hostile_bodies,
    load_or_refuse,
    mutated,
    record_runs,
    recordio_paths_agree,
    valid_bodies,
)
from _server import Server  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gpuknn import KNN, KNNModel  # noqa: E402
from gpuknn.io import records  # noqa: E402

BOUNDED = settings(deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def bounded(examples: int) -> settings:
    """The suite's settings with ``examples`` cases."""
    return settings(BOUNDED, max_examples=examples)


@bounded(1500)
@given(hostile_bodies())
def test_decoders_decode_or_refuse_cleanly(case):
    body, content_type = case
    decode_or_refuse(body, content_type)


@bounded(200)
@given(valid_bodies())
def test_valid_bodies_always_decode(case):
    """The generator's bodies before mutation: every one decodes (the fuzzing starts from
    inputs that reach deep into the decoders, not only from rejects)."""
    body, content_type = case
    rows = decode_or_refuse(body, content_type)
    assert rows is not None and rows.shape[0] >= 1


@bounded(300)
@given(record_runs())
def test_recordio_run_decoder_and_protobuf_agree(payloads):
    recordio_paths_agree(payloads)


@bounded(500)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=4))
def test_protobuf_record_decoder_refuses_random_bytes_cleanly(payloads):
    try:
        decoded = records.decode_payloads(payloads, [f"record {i}" for i in range(len(payloads))])
    except Exception as error:
        check_refusal(error)
        return
    assert decoded.features.shape[0] == len(payloads)


# -- /invocations on a real server -------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_model(letter, tmp_path_factory):
    X, y, _, _ = letter
    model = KNN(k=LIMITS.k, predictor_type="classifier", sample_size=2000, feature_dim=FEATURES)
    return model.fit(X[:2000], y[:2000]).model.save(tmp_path_factory.mktemp("fuzz") / "model")


@pytest.fixture(scope="module")
def fuzz_server(fuzz_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz-serve") / "serve.log"
    server = Server(["--model", str(fuzz_model), "--max-payload-mb", "1"], log).wait_ready()
    yield server
    assert server.process.poll() is None, "the worker died"
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()
    assert "internal error" not in server.output()


def test_invocations_answer_or_refuse_every_hostile_body(fuzz_server, fuzz_model):
    reference = KNNModel.load(fuzz_model)
    connection = http.client.HTTPConnection("127.0.0.1", fuzz_server.port, timeout=60)
    statuses: dict[int, int] = {}

    @bounded(400)
    @given(hostile_bodies())
    def check(case):
        body, content_type = case
        status, answer = _post(connection, body, content_type)
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (200, 400, 413, 415), (status, answer[:300])
        expected = decode_or_refuse(body, content_type)
        if status != 200:
            assert expected is None, "the server refused what the decoder accepts"
            check_refusal_message(json.loads(answer)["error"])
            return
        assert expected is not None
        got = [row["predicted_label"] for row in json.loads(answer)["predictions"]]
        np.testing.assert_array_equal(got, reference.predict(expected))

    try:
        check()
    finally:
        connection.close()
    assert fuzz_server.process.poll() is None
    # Both outcomes were exercised. Most mutated bodies are refused; the accepted share of
    # 400 draws varies with Hypothesis's engine (7 to 20+ in runs of the same seed, as its
    # generation adapts to timing), so the floor for answers is low.
    assert statuses.get(200, 0) >= 5 and statuses.get(400, 0) >= 20, statuses


def _post(connection: http.client.HTTPConnection, body: bytes, content_type: str):
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.read()
    except (http.client.HTTPException, OSError):
        connection.close()  # a 413 closes the connection; reconnect and send it once more
        connection.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.read()


def check_refusal_message(message: str) -> None:
    assert 0 < len(message) <= 600 and "Traceback" not in message


# -- the model reader --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_archive(letter, tmp_path_factory) -> bytes:
    X, y, _, _ = letter
    model = KNN(k=3, predictor_type="classifier", sample_size=300,
                dimension_reduction_type="fjlt", dimension_reduction_target=8)
    path = model.fit(X[:300], y[:300]).model.save(tmp_path_factory.mktemp("a") / "m.tar.gz")
    return path.read_bytes()


def test_model_archives_load_or_are_refused(model_archive):
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "model.tar.gz"

        @bounded(250)
        @given(hostile_archives(model_archive))
        def check(data):
            target.write_bytes(data)
            cache = Path(scratch) / ".gpuknn-models"
            shutil.rmtree(cache, ignore_errors=True)
            loaded = load_or_refuse(target)
            # Only an archive that loads leaves something: its one unpacked copy, whole.
            written = sorted(p.name for p in Path(scratch).iterdir())
            if not loaded:
                assert written == ["model.tar.gz"]
                return
            assert written == [".gpuknn-models", "model.tar.gz"]
            (copy,) = cache.iterdir()
            assert copy.name.startswith("model.tar.gz.") and (copy / "model_algo-1.json").is_file()

        check()


def test_model_directories_load_or_are_refused(model_archive, tmp_path_factory):
    source = tmp_path_factory.mktemp("src") / "model"
    KNNModel.load(_written(model_archive, source.with_suffix(".tar.gz"))).save(source)
    names = sorted(p.name for p in source.iterdir())

    @bounded(200)
    @given(st.sampled_from(names), st.data())
    def check(name, data):
        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / "model"
            target.mkdir()
            for other in names:
                (target / other).write_bytes((source / other).read_bytes())
            (target / name).write_bytes(data.draw(mutated((source / name).read_bytes())))
            load_or_refuse(target)

    check()


def _written(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


# -- saved failures ----------------------------------------------------------------------------
def saved_cases() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.bin")) if REGRESSIONS.is_dir() else []


@pytest.mark.parametrize("case", saved_cases(), ids=lambda path: path.name)
def test_saved_failures_stay_fixed(case: Path, tmp_path):
    """Inputs that once broke a property (saved by ``bench/fuzz.py``), replayed as they were.

    A case named ``<target>--<content type>--<hash>.bin``: ``body`` cases go through the
    decoders, ``archive`` cases through the model reader.
    """
    target, kind, _ = case.name.split("--")
    data = case.read_bytes()
    if target == "body":
        decode_or_refuse(data, kind.replace("+", "/"))
    elif target == "archive":
        load_or_refuse(_written(data, tmp_path / "model.tar.gz"))
    else:
        raise AssertionError(f"unknown fuzz target {target!r} in {case.name}")
