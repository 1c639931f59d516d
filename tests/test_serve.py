"""``gpuknn serve``: SageMaker's inference contract, on a real server process and socket.

The server runs as ``python -m gpuknn.cli serve`` on a free loopback port; requests are
plain HTTP from this process (``http.client``), and responses are parsed independently
(``json``, and a hand-written RecordIO/protobuf decoder). Expected values come from the
Python API (:meth:`KNNModel.answer`) on the same saved model.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import uvicorn
from _server import (
    ACCEPTS,
    INPUTS,
    RECORDIO,
    Server,
    assert_rows_equal,
    body_in,
    expected_rows,
    free_port,
    invoke,
    parse_predictions,
    request,
)

import gpuknn.io
from gpuknn import KNN, KNNModel
from gpuknn.serving import app as app_module


# -- models and servers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(letter, tmp_path_factory):
    """A letter classifier (k=5) and regressor (k=3), saved as directories."""
    X, y, _, _ = letter
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for kind, k in (("classifier", 5), ("regressor", 3)):
        estimator = KNN(k=k, predictor_type=kind, sample_size=len(X), feature_dim=X.shape[1])
        paths[kind] = estimator.fit(X, y).model.save(root / kind)
    return paths


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """A classifier server for the whole module."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    process = Server(["--model", str(models["classifier"])], log).wait_ready()
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture(scope="module")
def reference(models):
    """The same model through the Python API."""
    return {kind: KNNModel.load(path) for kind, path in models.items()}


@pytest.fixture(scope="module")
def queries(letter):
    """A few test rows, including exact duplicates of training rows (distance 0, ties)."""
    X_train, _, X_test, _ = letter
    return np.concatenate([X_test[:5], X_train[:2]]).astype(np.float32)


@pytest.mark.parametrize("input_type", INPUTS)
@pytest.mark.parametrize(("accept", "media_type", "verbose"), ACCEPTS,
                         ids=str)
def test_every_content_type_and_accept(server, reference, queries, input_type, accept,
                                       media_type, verbose):
    body, content_type = body_in(input_type, queries)
    status, headers, payload = invoke(server.port, body, content_type, accept)
    assert status == 200, payload
    assert headers["content-type"].startswith(media_type)
    want = expected_rows(reference["classifier"].answer(queries), verbose)
    assert_rows_equal(parse_predictions(payload, media_type), want,
                      ordered=media_type != RECORDIO)


def test_documented_json_shape_byte_for_byte(server, reference, queries):
    """The exact text of SageMaker's examples: key order, spacing, floats like ``25.0``."""
    body, content_type = body_in("text/csv", queries[:2])
    status, _, payload = invoke(server.port, body, content_type, "application/json")
    labels = reference["classifier"].predict(queries[:2])
    assert status == 200
    first, second = (f'{{"predicted_label": {label:.1f}}}' for label in labels)
    assert payload == f'{{"predictions": [{first}, {second}]}}'.encode()
    status, _, payload = invoke(server.port, body, content_type, "application/jsonlines")
    assert payload == f"{first}\n{second}".encode()


def test_verbose_fields_are_nearest_first_and_consistent(server, reference, queries):
    body, content_type = body_in("text/csv", queries)
    _, _, payload = invoke(server.port, body, content_type, "application/json; verbose=true")
    model = reference["classifier"]
    for row in json.loads(payload)["predictions"]:
        assert row["distances"] == sorted(row["distances"])
        assert len(row["distances"]) == len(row["labels"]) == len(row["ids"]) == model.k
        assert row["labels"] == model.labels[np.searchsorted(model.ids, row["ids"])].tolist()
        shares = dict(zip(model.classes_.tolist(), row["probabilities"], strict=True))
        assert abs(sum(row["probabilities"]) - 1) < 1e-6
        assert row["predicted_label"] == max(shares, key=lambda c: (shares[c], -c))


def test_regressor_predicts_the_mean(models, reference, queries, tmp_path):
    server = Server(["--model", str(models["regressor"])], tmp_path / "serve.log").wait_ready()
    try:
        for accept, media_type, verbose in ACCEPTS:
            body, content_type = body_in("text/csv", queries)
            status, _, payload = invoke(server.port, body, content_type, accept)
            assert status == 200
            want = expected_rows(reference["regressor"].answer(queries), verbose)
            assert_rows_equal(parse_predictions(payload, media_type), want,
                              ordered=media_type != RECORDIO)
            assert all("probabilities" not in row for row in want)
    finally:
        assert server.stop() == 0


# -- bad requests ------------------------------------------------------------------------------
def _corrupt_recordio() -> bytes:
    buffer = io.BytesIO()
    gpuknn.io.write_recordio(buffer, np.ones((2, 16), np.float32))
    data = bytearray(buffer.getvalue())
    data[-5] ^= 0xFF  # inside the second record's payload
    return bytes(data[:-2])


ROW = ",".join(["1"] * 16).encode()
BAD_REQUESTS = {
    "no content type": (ROW, None, None, 415, "Content-Type header is required"),
    "unknown content type": (ROW, "text/plain", None, 415, "not supported"),
    "csv accept": (ROW, "text/csv", "text/csv", 406, "no CSV output"),
    "bad verbose": (ROW, "text/csv", "application/json; verbose=maybe", 400, "verbose"),
    "empty body": (b"", "text/csv", None, 400, "empty"),
    "not a number": (ROW + b"\n1,2,x" + b",1" * 13, "text/csv", None, 400,
                     "line 2, column 3: 'x' is not a number"),
    "ragged csv": (ROW + b"\n1,2", "text/csv", None, 400, "line 2"),
    "wrong feature count": (b"1,2,3", "text/csv", None, 400,
                            "rows have 3 features; the model expects 16"),
    "nan": (ROW + b"\n" + b"nan," * 15 + b"1", "text/csv", None, 400, "row 1"),
    "infinity": (b"inf," + b"1," * 14 + b"1", "text/csv", None, 400, "infinite"),
    "float32 overflow": (b"1e300," + b"1," * 14 + b"1", "text/csv", None, 400,
                         "out-of-float32-range"),
    "bad label_size": (ROW, "text/csv; label_size=2", None, 400, "label_size"),
    "malformed json": (b'{"instances": [', "application/json", None, 400, "invalid JSON"),
    "json without instances": (b'{"rows": []}', "application/json", None, 400, "instances"),
    "bad jsonlines": (b'{"features": [1]}\nnot json', "application/jsonlines", None, 400,
                      "line 2"),
    "corrupt recordio": (_corrupt_recordio(), RECORDIO, None, 400, "byte"),
    "not recordio": (b"hello world, not a record", RECORDIO, None, 400, "byte offset 0"),
    "invalid utf-8": (b"\xff\xfe1,2", "text/csv", None, 400, "UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_clear_error_and_the_server_stays_healthy(server, queries, case):
    body, content_type, accept, status, fragment = BAD_REQUESTS[case]
    got_status, headers, payload = invoke(server.port, body, content_type, accept)
    assert got_status == status, payload
    assert headers["content-type"] == "application/json"
    error = json.loads(payload)["error"]
    assert fragment in error
    assert "Traceback" not in error and len(error) < 1000
    assert_healthy(server, queries)


def assert_healthy(server, queries) -> None:
    assert request(server.port, "GET", "/ping")[0] == 200
    body, content_type = body_in("text/csv", queries[:1])
    assert invoke(server.port, body, content_type)[0] == 200


def test_body_over_the_payload_limit_gets_413(models, queries, tmp_path):
    server = Server(["--model", str(models["classifier"]), "--max-payload-mb", "0.01"],
                    tmp_path / "serve.log").wait_ready()
    try:
        big = b"\n".join([ROW] * 400)  # 12.8 kB > 10.5 kB
        status, _, payload = invoke(server.port, big, "text/csv")
        assert status == 413 and "0.01 MB payload limit" in json.loads(payload)["error"]
        assert_healthy(server, queries)
    finally:
        assert server.stop() == 0


def test_unknown_route_and_method(server, queries):
    assert request(server.port, "GET", "/nope")[0] == 404
    assert request(server.port, "GET", "/invocations")[0] == 405
    assert_healthy(server, queries)


def test_client_disconnecting_mid_body_does_not_hurt(server, queries):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                     b"Content-Length: 100000\r\n\r\n1,2,3")
    assert_healthy(server, queries)


# -- concurrency, batching, shutdown -----------------------------------------------------------
def test_64_concurrent_clients(server, reference, letter):
    """64 clients x 50 requests of 1-4 rows: no errors, every answer equals the Python API."""
    X_test = letter[2].astype(np.float32)
    model = reference["classifier"]
    errors: list[str] = []

    def client(number: int) -> None:
        rng = np.random.default_rng(number)
        for _ in range(50):
            rows = X_test[rng.choice(len(X_test), size=rng.integers(1, 5))]
            body, content_type = body_in("text/csv", rows)
            try:
                status, _, payload = invoke(server.port, body, content_type,
                                            "application/json; verbose=true")
                assert status == 200, payload
                assert_rows_equal(parse_predictions(payload, "application/json"),
                                  expected_rows(model.answer(rows), True))
            except Exception as err:  # collected and reported below
                errors.append(f"client {number}: {err!r}")

    before = json.loads(request(server.port, "GET", "/model")[2])
    threads = [threading.Thread(target=client, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    after = json.loads(request(server.port, "GET", "/model")[2])
    searches = after["batches"] - before["batches"]
    # 3,200 requests: coalescing must have merged some (one search each would be 3,200).
    assert searches < 3200, searches


def test_sigterm_finishes_the_request_in_flight(models, letter, tmp_path):
    """A large request is being searched when SIGTERM arrives: it is answered in full, the
    server then refuses new connections and exits 0."""
    server = Server(["--model", str(models["classifier"])], tmp_path / "serve.log").wait_ready()
    X = np.tile(letter[2].astype(np.float32), (3, 1))  # 12,000 rows: a search of a few 100 ms
    body, content_type = body_in("text/csv", X)
    result = {}

    def send() -> None:
        result["response"] = invoke(server.port, body, content_type)

    sender = threading.Thread(target=send)
    sender.start()
    in_search = 0
    while in_search < len(X) and sender.is_alive():  # until the server says it searches them
        in_search = json.loads(request(server.port, "GET", "/model")[2])["rows_in_search"]
    assert in_search == len(X), "the request was answered before it was seen in search"
    server.process.send_signal(signal.SIGTERM)
    sender.join(timeout=60)
    assert server.process.wait(timeout=30) == 0, server.output()
    status, _, payload = result["response"]
    assert status == 200
    predicted = [row["predicted_label"] for row in json.loads(payload)["predictions"]]
    np.testing.assert_array_equal(predicted, KNNModel.load(models["classifier"]).predict(X))
    with pytest.raises(OSError):
        request(server.port, "GET", "/ping", timeout=2)


def test_sigterm_under_load_loses_no_answered_request(models, reference, letter, tmp_path):
    """Clients keep sending while the server is stopped: every response that comes back is
    a complete, correct 200; the only failures are refused or closed connections."""
    server = Server(["--model", str(models["classifier"])], tmp_path / "serve.log").wait_ready()
    X_test = letter[2].astype(np.float32)
    answered, refused, wrong = [], [], []
    stop = threading.Event()

    def client(number: int) -> None:
        rng = np.random.default_rng(number)
        while not stop.is_set():
            rows = X_test[rng.choice(len(X_test), size=8)]
            body, content_type = body_in("text/csv", rows)
            try:
                status, _, payload = invoke(server.port, body, content_type)
            except OSError:
                refused.append(number)
                time.sleep(0.01)
                continue
            got = [row["predicted_label"] for row in json.loads(payload)["predictions"]]
            (answered if status == 200 and got == reference["classifier"].predict(rows).tolist()
             else wrong).append(status)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    stop.set()
    for thread in threads:
        thread.join()
    assert code == 0, server.output()
    assert wrong == []
    assert len(answered) > 50


def test_a_failed_warm_up_is_a_load_failure(models, monkeypatch):
    """In-process: loading includes the warm-up search, so its failure stops the server."""
    def out_of_memory(self, X):
        raise MemoryError("out of device memory")

    monkeypatch.setattr(KNNModel, "answer", out_of_memory)
    reasons = []
    app = app_module.create_app(app_module.ServeSettings(
        str(models["classifier"]), load_in_background=False), on_load_failure=reasons.append)

    async def start_and_stop():
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(start_and_stop())
    assert len(reasons) == 1 and "out of device memory" in reasons[0]


def test_ping_is_503_until_the_model_is_loaded(models, monkeypatch):
    """In-process: the model load is held back, so the socket answers /ping with 503 first."""
    release = threading.Event()
    real_load = app_module._load

    def held_load(settings):
        release.wait(timeout=30)
        return real_load(settings)

    monkeypatch.setattr(app_module, "_load", held_load)
    port = free_port()
    config = uvicorn.Config(app_module.create_app(app_module.ServeSettings(
        str(models["classifier"]))), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        status, _, payload = request(port, "GET", "/ping")
        assert (status, payload) == (503, b"")
        status, _, payload = invoke(port, ROW, "text/csv")
        assert status == 503 and "still loading" in json.loads(payload)["error"]
        release.set()
        deadline = time.monotonic() + 30
        while request(port, "GET", "/ping")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert request(port, "GET", "/ping")[2] == b""
        assert invoke(port, ROW, "text/csv")[0] == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)


# -- container settings ------------------------------------------------------------------------
def test_ml_root_bind_port_and_execution_parameters(models, tmp_path, queries):
    """``serve`` with the model under ``<ml root>/model``, SAGEMAKER_BIND_TO_PORT, and
    batch transform's ``/execution-parameters``."""
    ml_root = tmp_path / "ml"
    KNNModel.load(models["classifier"]).save(ml_root / "model")
    port = free_port()
    env = {"GPUKNN_ML_ROOT": str(ml_root), "SAGEMAKER_BIND_TO_PORT": str(port),
           "SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}
    server = Server(["--host", "127.0.0.1"], tmp_path / "serve.log", env=env, port=port)
    server.wait_ready()
    try:
        status, _, payload = request(port, "GET", "/execution-parameters")
        parameters = json.loads(payload)
        assert status == 200
        assert parameters["BatchStrategy"] == "MULTI_RECORD"
        assert parameters["MaxPayloadInMB"] == 20
        assert 1 <= parameters["MaxConcurrentTransforms"] <= 100 // 20
        assert_healthy(server, queries)
    finally:
        assert server.stop() == 0


def test_execution_parameters_only_for_batch(server):
    assert request(server.port, "GET", "/execution-parameters")[0] == 404


def test_model_info(server, reference):
    status, _, payload = request(server.port, "GET", "/model")
    info = json.loads(payload)
    model = reference["classifier"]
    assert status == 200
    assert (info["k"], info["feature_dim"], info["n_indexed"]) == (5, 16, model.n_indexed)
    assert info["classes"] == model.classes_.tolist()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_model_stops_the_server_with_a_reason(tmp_path, workers):
    server = Server(["--model", str(tmp_path / "nowhere")], tmp_path / "serve.log",
                    workers=workers)
    assert server.process.wait(timeout=60) == 1
    assert "no such model directory" in server.output()


def test_workers_auto_is_the_default(models, tmp_path, queries):
    """One worker per usable core on the CPU (memory permitting)."""
    server = Server(["--model", str(models["classifier"])], tmp_path / "serve.log",
                    workers=None).wait_ready()
    try:
        cores = len(os.sched_getaffinity(0))
        expected = "1 worker process" if cores == 1 else f"{cores} worker processes"
        assert f"with {expected}" in server.output()
        assert_healthy(server, queries)
    finally:
        assert server.stop() == 0


def test_several_workers_share_an_ivf_index(letter, tmp_path, queries):
    X, y, _, _ = letter
    path = KNN(k=5, predictor_type="classifier", sample_size=len(X), feature_dim=16,
               index_type="faiss.IVFFlat", faiss_index_nprobe=64).fit(X, y).model.save(
        tmp_path / "ivf")
    faiss = pytest.importorskip("faiss")
    loaded = KNNModel.load(path)
    ivf = faiss.downcast_index(loaded.index.index)
    # memory-mapped, so that workers share the lists through the page cache
    assert type(faiss.downcast_InvertedLists(ivf.invlists)).__name__ == "OnDiskInvertedLists"
    server = Server(["--model", str(path), "--workers", "2"], tmp_path / "serve.log")
    server.wait_ready()
    try:
        want = KNNModel.load(path).predict(queries).tolist()
        for _ in range(10):
            body, content_type = body_in("text/csv", queries)
            status, _, payload = invoke(server.port, body, content_type)
            assert status == 200
            assert [r["predicted_label"] for r in json.loads(payload)["predictions"]] == want
    finally:
        assert server.stop() == 0


# -- the official client -----------------------------------------------------------------------
SDK_CLIENT = """
import json, sys
import numpy as np
import sagemaker.local.local_session as local_session
from sagemaker.amazon.knn import KNNPredictor
from sagemaker.local import LocalSession

# The SDK asks `docker` where a local endpoint lives; the server here is on loopback, and
# docker may not be installed.
local_session.get_docker_host = lambda: "127.0.0.1"

port, rows = int(sys.argv[1]), np.array(json.loads(sys.argv[2]))
session = LocalSession()
session.config = {"local": {"local_code": True, "serving_port": port}}
predictor = KNNPredictor("gpuknn-test", sagemaker_session=session)
records = predictor.predict(rows)  # float64 RecordIO in, RecordIO out
print(json.dumps([r.label["predicted_label"].float32_tensor.values[0] for r in records]))
"""


def test_sdk_knn_predictor_round_trip(server, reference, queries, sdk_python):
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run([sdk_python, "-c", SDK_CLIENT, str(server.port),
                             json.dumps(queries.astype(float).tolist())],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got == reference["classifier"].predict(queries).tolist()


def test_cli_help_lists_serve_and_transform():
    result = subprocess.run([sys.executable, "-m", "gpuknn.cli", "--help"], capture_output=True,
                            text=True, check=True)
    assert "serve" in result.stdout and "transform" in result.stdout
