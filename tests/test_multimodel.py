"""``gpuknn serve`` in multi-model mode: SageMaker's multi-model contract on real servers.

The models are trained by ``gpuknn train`` (a classifier, a regressor, an IVFPQ index and a
``sign``-reduced one); the multi-model server runs as ``python -m gpuknn.cli serve
--multi-model`` with two worker processes on a free loopback port, and its answers are
compared byte for byte with single-model servers of the same models. Requests are plain
HTTP from this process; racing clients are threads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from _server import ACCEPTS, INPUTS, Server, body_in, request

from gpuknn import _backend, io

HOST_HEADER = "X-Amzn-SageMaker-Target-Model"
COMMON = {"sample_size": "16000", "feature_dim": "16"}
KINDS = {
    "classifier": {"k": "5", "predictor_type": "classifier"},
    "regressor": {"k": "3", "predictor_type": "regressor"},
    "ivfpq": {"k": "10", "predictor_type": "classifier", "index_type": "faiss.IVFPQ",
              "faiss_index_ivf_nlists": "32", "faiss_index_pq_m": "4"},
    "sign": {"k": "5", "predictor_type": "classifier", "dimension_reduction_type": "sign",
             "dimension_reduction_target": "8"},
}
CSV = "text/csv"


# -- models, trained as a SageMaker training job ----------------------------------------------
def _job(root: Path, hyperparameters: dict[str, str], X: np.ndarray, y: np.ndarray) -> Path:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    config.joinpath("hyperparameters.json").write_text(json.dumps({**COMMON, **hyperparameters}))
    data = root / "input" / "data" / "train"
    data.mkdir(parents=True)
    io.write_recordio(data / "train.pbr", X, y)
    return root


@pytest.fixture(scope="module")
def trained(letter, tmp_path_factory) -> dict[str, Path]:
    """``{kind: model directory}``, each written by ``gpuknn train`` (run side by side)."""
    X, y, _, _ = letter
    base = tmp_path_factory.mktemp("jobs")
    roots = {kind: _job(base / kind, hp, X, y) for kind, hp in KINDS.items()}
    runs = {kind: subprocess.Popen([sys.executable, "-m", "gpuknn.cli", "train", "--ml-root",
                                    str(root)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            for kind, root in roots.items()}
    for kind, run in runs.items():
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, f"{kind}: {output}"
    return {kind: root / "model" for kind, root in roots.items()}


@pytest.fixture(scope="module")
def archive_dir(trained, tmp_path_factory) -> Path:
    """A directory holding the classifier as ``model.tar.gz`` (members at the top level)."""
    directory = tmp_path_factory.mktemp("archived")
    with tarfile.open(directory / "model.tar.gz", "w:gz") as archive:
        for file in sorted(trained["classifier"].iterdir()):
            archive.add(file, arcname=file.name)
    return directory


@pytest.fixture(scope="module")
def mme(tmp_path_factory):
    """A multi-model server of two worker processes, for the whole module."""
    root = tmp_path_factory.mktemp("mme")
    server = Server(["--multi-model"], root / "serve.log", workers="2",
                    env={"GPUKNN_MODEL_CACHE": str(root / "cache")}).wait_ready()
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def singles(trained, tmp_path_factory):
    """A single-model server of each model: what the multi-model answers must equal."""
    root = tmp_path_factory.mktemp("singles")
    servers = {kind: Server(["--model", str(path)], root / f"{kind}.log")
               for kind, path in trained.items()}
    for server in servers.values():
        server.wait_ready()
    yield servers
    for server in servers.values():
        assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def queries(letter) -> np.ndarray:
    """Test rows and two training rows (distance 0, ties)."""
    X_train, _, X_test, _ = letter
    return np.concatenate([X_test[:5], X_train[:2]]).astype(np.float32)


# -- requests ------------------------------------------------------------------------------------
def load(port: int, name, url, **extra) -> tuple[int, dict]:
    body = json.dumps({"model_name": name, "url": str(url) if isinstance(url, Path) else url,
                       **extra}).encode()
    status, _, payload = request(port, "POST", "/models", body,
                                 {"Content-Type": "application/json"})
    return status, json.loads(payload)


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, _, payload = request(port, method, path, body, headers)
    return status, payload


def invoke(port: int, name: str | None, body: bytes, content_type: str | None,
           accept: str | None = None) -> tuple[int, bytes]:
    """``/models/<name>/invoke``, or ``/invocations`` of a single-model server (no name)."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    path = "/invocations" if name is None else f"/models/{name}/invoke"
    return call(port, "POST", path, body, headers)


def error_of(payload: bytes) -> str:
    return json.loads(payload)["error"]


def assert_healthy(server: Server) -> None:
    assert call(server.port, "GET", "/ping")[0] == 200, server.output()
    assert server.process.poll() is None


# -- the contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_answers_equal_a_single_model_server_byte_for_byte(mme, singles, trained, queries,
                                                          kind):
    """Every content type and Accept type, through /models/<name>/invoke and through
    /invocations with the target-model header."""
    name = f"same-{kind}"
    assert load(mme.port, name, trained[kind]) == (200, {"modelName": name,
                                                         "modelUrl": str(trained[kind])})
    for input_type in INPUTS:
        body, content_type = body_in(input_type, queries)
        for accept, _, _ in ACCEPTS:
            want = invoke(singles[kind].port, None, body, content_type, accept)
            assert want[0] == 200, want
            assert invoke(mme.port, name, body, content_type, accept) == want, \
                (input_type, accept)
        headers = {"Content-Type": content_type, HOST_HEADER: name}
        assert call(mme.port, "POST", "/invocations", body, headers) == \
            invoke(singles[kind].port, None, body, content_type)
    assert call(mme.port, "DELETE", f"/models/{name}")[0] == 200


@pytest.mark.parametrize("case", ["bad csv", "no content type", "unsupported type",
                                  "not acceptable", "too large", "wrong width", "NaN"])
def test_errors_equal_a_single_model_server(mme, singles, trained, case):
    """Bad invocations get the status and message a single-model server gives."""
    bodies = {"bad csv": (b"1,2,x", CSV, None), "no content type": (b"1", None, None),
              "unsupported type": (b"1", "image/png", None),
              "not acceptable": (b",".join([b"1"] * 16), CSV, "text/html"),
              "too large": (b"1" * (7 << 20), CSV, None),
              "wrong width": (b"1,2,3", CSV, None),
              "NaN": (b",".join([b"nan"] * 16), CSV, None)}
    body, content_type, accept = bodies[case]
    name = "errors"
    if call(mme.port, "GET", f"/models/{name}")[0] == 404:
        assert load(mme.port, name, trained["classifier"])[0] == 200
    if case == "too large":  # declared, not sent: the server answers before reading it
        want = _declared_only(singles["classifier"].port, "/invocations", len(body))
        got = _declared_only(mme.port, f"/models/{name}/invoke", len(body))
    else:
        want = invoke(singles["classifier"].port, None, body, content_type, accept)
        got = invoke(mme.port, name, body, content_type, accept)
    assert 400 <= want[0] < 500
    assert got == want
    assert_healthy(mme)


def _declared_only(port: int, path: str, length: int) -> tuple[int, bytes]:
    """(status, body) of a request that declares a body of ``length`` bytes and sends none."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {CSV}\r\n"
                           f"Content-Length: {length}\r\n\r\n".encode())
        return _read_response(connection)


@pytest.mark.parametrize("where", ["directory holding it", "the archive itself"])
def test_a_model_archive_loads(mme, singles, archive_dir, queries, where):
    url = archive_dir if where == "directory holding it" else archive_dir / "model.tar.gz"
    name = f"archive-{where.split()[0]}"
    assert load(mme.port, name, url)[0] == 200
    body, content_type = body_in(CSV, queries)
    accept = "application/json; verbose=true"
    assert invoke(mme.port, name, body, content_type, accept) == \
        invoke(singles["classifier"].port, None, body, content_type, accept)
    assert call(mme.port, "DELETE", f"/models/{name}")[0] == 200


def test_get_delete_and_invoke_of_names_not_loaded(mme, trained):
    name = "short-lived"
    assert load(mme.port, name, trained["regressor"])[0] == 200
    described = {"modelName": name, "modelUrl": str(trained["regressor"])}
    status, payload = call(mme.port, "GET", f"/models/{name}")
    assert (status, json.loads(payload)) == (200, described)
    status, payload = call(mme.port, "DELETE", f"/models/{name}")
    assert (status, json.loads(payload)) == (200, described)
    for method, path in (("GET", f"/models/{name}"), ("DELETE", f"/models/{name}"),
                         ("POST", f"/models/{name}/invoke")):
        status, payload = call(mme.port, method, path, b"1", {"Content-Type": CSV})
        assert status == 404 and name in error_of(payload), (method, path)
    status, payload = call(mme.port, "POST", "/invocations", b"1",
                           {"Content-Type": CSV, HOST_HEADER: name})
    assert status == 404 and "not loaded" in error_of(payload)
    assert name not in [m["modelName"] for m in list_all(mme.port)]


def test_invocations_without_the_target_model_header(mme):
    status, payload = call(mme.port, "POST", "/invocations", b"1", {"Content-Type": CSV})
    assert status == 400 and HOST_HEADER in error_of(payload)


def list_all(port: int, **params: str) -> list[dict]:
    """Every model of ``GET /models``, following ``nextPageToken`` page by page."""
    models, token = [], None
    for _ in range(1000):
        query = dict(params, **({"next_page_token": token} if token else {}))
        path = "/models" + ("?" + "&".join(f"{k}={v}" for k, v in query.items())
                            if query else "")
        status, payload = call(port, "GET", path)
        assert status == 200, payload
        page = json.loads(payload)
        assert set(page) <= {"models", "nextPageToken"}
        if "page_size" in params:
            assert len(page["models"]) <= int(params["page_size"])
        models += page["models"]
        token = page.get("nextPageToken")
        if token is None:
            return models
    raise AssertionError("GET /models never ended")


def test_listing_pages_through_every_model(mme, trained):
    names = [f"page-{i}" for i in range(5)]
    for name in names:
        assert load(mme.port, name, trained["classifier"])[0] == 200
    whole = list_all(mme.port)
    for size in ("1", "2", "5"):
        assert list_all(mme.port, page_size=size) == whole
    assert list_all(mme.port, limit="2") == whole  # multi-model-server's name for it
    assert [m["modelName"] for m in whole] == sorted(m["modelName"] for m in whole)
    assert {"modelName": "page-3", "modelUrl": str(trained["classifier"])} in whole
    for bad in ("page_size=0", "page_size=1001", "page_size=x", "next_page_token=%21%21"):
        status, payload = call(mme.port, "GET", f"/models?{bad}")
        assert status == 400, bad
        assert ("page_size" in error_of(payload)) or ("next_page_token" in error_of(payload))
    for name in names:
        assert call(mme.port, "DELETE", f"/models/{name}")[0] == 200


def test_two_loads_of_one_name_give_one_200(mme, trained):
    """16 clients load one name at once (across both workers): one 200, fifteen 409."""
    name = "contested"
    barrier = threading.Barrier(16)

    def contend(_):
        barrier.wait()
        return load(mme.port, name, trained["classifier"])[0]

    with ThreadPoolExecutor(16) as pool:
        statuses = sorted(pool.map(contend, range(16)))
    assert statuses == [200] + [409] * 15
    status, body = load(mme.port, name, trained["regressor"])
    assert status == 409 and "already loaded" in body["error"]
    assert call(mme.port, "DELETE", f"/models/{name}")[0] == 200


def test_every_worker_answers_a_model_loaded_through_one(mme, singles, trained, queries):
    """Fresh connections go to either worker: all answer, and all list the same models."""
    name = "everywhere"
    assert load(mme.port, name, trained["sign"])[0] == 200
    body, content_type = body_in(CSV, queries)
    want = invoke(singles["sign"].port, None, body, content_type)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: invoke(mme.port, name, body, content_type),
                                range(40)))
        listings = list(pool.map(lambda _: call(mme.port, "GET", "/models"), range(20)))
    assert all(answer == want for answer in answers)
    assert len(set(listings)) == 1 and listings[0][0] == 200
    assert call(mme.port, "DELETE", f"/models/{name}")[0] == 200


def test_a_name_loaded_again_never_answers_with_the_old_model(mme, singles, trained, queries):
    """Load a name, unload it, load it with another model: from the second load's 200 on,
    every worker answers with the new model (a worker still holding the old copy must
    not use it)."""
    name = "rebound"
    body, content_type = body_in(CSV, queries)
    for kind in ("classifier", "regressor", "sign", "classifier"):
        assert load(mme.port, name, trained[kind])[0] == 200
        want = invoke(singles[kind].port, None, body, content_type)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: invoke(mme.port, name, body, content_type),
                                    range(24)))
        assert all(answer == want for answer in answers), kind
        assert call(mme.port, "DELETE", f"/models/{name}")[0] == 200


def test_an_unload_waits_for_the_request_using_the_model(mme, singles, trained, queries):
    """A request whose body is still to come holds the model: an unload issued meanwhile
    takes effect for new requests at once, and the request is still answered in full.

    The request asks for ``100 Continue``, which the server sends when the handler starts
    reading the body, that is once it holds the model."""
    name = "in-use"
    assert load(mme.port, name, trained["classifier"])[0] == 200
    body, content_type = body_in(CSV, queries)
    want = invoke(singles["classifier"].port, None, body, content_type)
    with socket.create_connection(("127.0.0.1", mme.port), timeout=60) as held:
        held.sendall(f"POST /models/{name}/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     f"{content_type}\r\nContent-Length: {len(body)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert _read_head(held).startswith(b"HTTP/1.1 100")
        with ThreadPoolExecutor(1) as pool:
            unloading = pool.submit(call, mme.port, "DELETE", f"/models/{name}")
            while call(mme.port, "GET", f"/models/{name}")[0] != 404:  # the unload has begun
                pass
            assert invoke(mme.port, name, body, content_type)[0] == 404
            held.sendall(body)
            response = _read_response(held)
            assert unloading.result(timeout=60)[0] == 200
    assert response == want


def _read_head(connection: socket.socket) -> bytes:
    """One response's status line and headers (read a byte at a time: nothing more)."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        data += connection.recv(1)
    return data


def _read_response(connection: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length."""
    lines = _read_head(connection).decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines
                  if line.lower().startswith("content-length"))
    rest = b""
    while len(rest) < length:
        rest += connection.recv(65536)
    return int(lines[0].split()[1]), rest


# -- hostile management requests -----------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_places(trained, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    crowded = root / "crowded"
    crowded.mkdir()
    for i in range(10_000):
        (crowded / f"entry-{i:05d}.bin").touch()
    two = root / "two-archives"
    two.mkdir()
    (two / "a.tar.gz").write_bytes(b"x")
    (two / "b.tar.gz").write_bytes(b"x")
    corrupt = root / "corrupt"
    shutil.copytree(trained["classifier"], corrupt)
    labels = corrupt / "model_algo-1.labels"
    data = bytearray(labels.read_bytes())
    data[100] ^= 0xFF
    labels.write_bytes(bytes(data))
    forged = root / "forged"
    shutil.copytree(trained["classifier"], forged)
    meta = json.loads((forged / "model_algo-1.json").read_text())
    meta["index"]["ntotal"] = 10 ** 9
    (forged / "model_algo-1.json").write_text(json.dumps(meta))
    escaping = root / "escaping.tar.gz"
    with tarfile.open(escaping, "w:gz") as archive:
        member = tarfile.TarInfo("../escaped")
        archive.addfile(member)
    text = root / "notes.txt"
    text.write_text("not a model")
    return {"crowded": crowded, "two": two, "corrupt": corrupt, "forged": forged,
            "escaping": escaping, "text": text, "root": root}


HOSTILE = {
    # case: (body, status, words the error must hold)
    "not JSON": (b"{", 400, ["not JSON"]),
    "a JSON array": (b"[1, 2]", 400, ["JSON object"]),
    "not UTF-8": (b"\xff\xfe", 400, ["not JSON"]),
    "no url": ({"model_name": "x"}, 400, ["'url'"]),
    "no name": ({"url": "/x"}, 400, ["'model_name'"]),
    "name a number": ({"model_name": 5, "url": "/x"}, 400, ["model_name", "int"]),
    "url null": ({"model_name": "x", "url": None}, 400, ["url must be"]),
    "name with a slash": ({"model_name": "a/b", "url": "{trained}"}, 400, ["'/'"]),
    "name ..": ({"model_name": "..", "url": "{trained}"}, 400, ["'..'"]),
    "name with NUL": ({"model_name": "a\0b", "url": "{trained}"}, 400, ["model_name"]),
    "empty name": ({"model_name": "", "url": "{trained}"}, 400, ["model_name"]),
    "10 kB name": ({"model_name": "n" * 10_240, "url": "{trained}"}, 400, ["10240"]),
    "url with NUL": ({"model_name": "x", "url": "/tmp/a\0b"}, 400, ["NUL"]),
    "nothing at url": ({"model_name": "x", "url": "{root}/absent"}, 404, ["{root}/absent"]),
    "url a file": ({"model_name": "x", "url": "{text}"}, 400, ["{text}", "not a model"]),
    "10,000 entries": ({"model_name": "x", "url": "{crowded}"}, 400,
                       ["{crowded}", "holds no gpuknn model"]),
    "two archives": ({"model_name": "x", "url": "{two}"}, 400, ["{two}", "2 .tar.gz"]),
    "corrupt file": ({"model_name": "x", "url": "{corrupt}"}, 400,
                     ["model_algo-1.labels", "checksum"]),
    "forged metadata": ({"model_name": "x", "url": "{forged}"}, 400, ["{forged}"]),
    "escaping archive": ({"model_name": "x", "url": "{escaping}"}, 400, ["../escaped"]),
    "huge body": (b"{" + b" " * (70 << 10) + b"}", 413, ["KiB"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_load_requests_get_a_clear_error(mme, trained, hostile_places, case):
    body, status, words = HOSTILE[case]
    places = {**{key: str(path) for key, path in hostile_places.items()},
              "trained": str(trained["classifier"])}
    if isinstance(body, dict):
        body = json.dumps({key: value.format(**places) if isinstance(value, str) else value
                           for key, value in body.items()}).encode()
    got, payload = call(mme.port, "POST", "/models", body, {"Content-Type": "application/json"})
    assert got == status, payload
    message = error_of(payload)
    for word in words:
        assert word.format(**places) in message, message
    assert not (hostile_places["root"].parent / "escaped").exists()
    assert_healthy(mme)
    assert all(m["modelName"] != "x" for m in list_all(mme.port))


@pytest.mark.parametrize("path", ["/models/" + "n" * 10_240, "/models/%2E%2E",
                                  "/models/a%2Fb", "/models/..%2F..%2Fetc",
                                  "/models/%00"])
def test_path_like_names_in_requests_are_not_found(mme, path):
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/invoke")):
        status, _ = call(mme.port, method, path + suffix, b"1", {"Content-Type": CSV})
        assert status == 404, (method, path)
    assert_healthy(mme)


# -- racing clients -------------------------------------------------------------------------------
def test_racing_loads_unloads_and_invokes(mme, singles, trained, queries):
    """16 clients load, unload and invoke four names at random for a while. Loads answer
    200 or 409, unloads 200 or 404, invokes 200 or 404; no 500, and every answered invoke
    is the answer of the model that name is loaded with."""
    names = {f"race-{kind}": kind for kind in KINDS}
    body, content_type = body_in(CSV, queries)
    expected = {name: invoke(singles[kind].port, None, body, content_type)
                for name, kind in names.items()}
    allowed = {"load": {200, 409}, "unload": {200, 404}, "invoke": {200, 404}}

    def client(seed: int) -> list[str]:
        rng, problems = random.Random(seed), []
        for _ in range(30):
            name = rng.choice(list(names))
            action = rng.choice(["load", "unload", "invoke", "invoke"])
            if action == "load":
                status, got = load(mme.port, name, trained[names[name]])[0], None
            elif action == "unload":
                status, got = call(mme.port, "DELETE", f"/models/{name}")[0], None
            else:
                status, got = invoke(mme.port, name, body, content_type)
            if status not in allowed[action]:
                problems.append(f"{action} {name}: {status}")
            elif action == "invoke" and status == 200 and (status, got) != expected[name]:
                problems.append(f"{name} answered by another model: {got[:200]!r}")
        return problems

    with ThreadPoolExecutor(16) as pool:
        problems = [p for found in pool.map(client, range(16)) for p in found]
    assert problems == []
    for name in names:
        call(mme.port, "DELETE", f"/models/{name}")
    assert_healthy(mme)
    assert "Traceback" not in mme.output()


# -- the memory budget -----------------------------------------------------------------------------
def test_507_past_the_budget_then_200_once_a_model_is_unloaded(trained, tmp_path):
    """SageMaker's mode variable starts the server empty; a model past the budget gets 507
    and a log line with the numbers; unloading another makes room."""
    files = sum(f.stat().st_size for f in trained["classifier"].iterdir())
    budget_mb = 1.6 * files / 2**20  # one model (and its private memory) fits, two do not
    server = Server([], tmp_path / "serve.log", workers="2",
                    env={"SAGEMAKER_MULTI_MODEL": "true",
                         "GPUKNN_MAX_MODELS_MB": f"{budget_mb:.3f}",
                         "GPUKNN_ML_ROOT": str(tmp_path / "no-ml-root")}).wait_ready()
    try:
        assert call(server.port, "GET", "/models") == (200, b'{"models":[]}')
        assert load(server.port, "first", trained["classifier"])[0] == 200
        status, body = load(server.port, "second", trained["sign"])
        assert status == 507 and "budget" in body["error"], body
        assert [m["modelName"] for m in list_all(server.port)] == ["first"]
        assert call(server.port, "DELETE", "/models/first")[0] == 200
        assert load(server.port, "second", trained["sign"])[0] == 200
        status, body = load(server.port, "third", trained["classifier"])
        assert status == 507
    finally:
        assert server.stop() == 0, server.output()
    log = server.output()
    assert "507" in log and f"{budget_mb:.1f} MiB budget" in log, log
    assert "loaded model 'first'" in log and "unloaded model 'first'" in log


def test_cli_refuses_conflicting_or_bad_settings(tmp_path):
    def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gpuknn.cli", "serve", *args],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, **env})

    both = serve("--multi-model", "--model", str(tmp_path))
    assert both.returncode == 2 and "--model" in both.stderr
    bad = serve("--multi-model", GPUKNN_MAX_MODELS_MB="lots")
    assert bad.returncode == 2 and "GPUKNN_MAX_MODELS_MB" in bad.stderr
    flag = serve("--multi-model", "--max-models-mb", "0")
    assert flag.returncode == 2 and "positive" in flag.stderr
    if not _backend.has_gpu():
        gpu = serve("--multi-model", "--device", "gpu")
        assert gpu.returncode == 2 and "no GPU is usable" in gpu.stderr
        assert "Traceback" not in gpu.stderr


# -- the SageMaker SDK ----------------------------------------------------------------------------
SDK_CLIENT = """
import json, sys
from sagemaker.local import LocalSagemakerRuntimeClient
port, name, body = int(sys.argv[1]), sys.argv[2], sys.argv[3]
client = LocalSagemakerRuntimeClient(config={"local": {"serving_port": port}})
response = client.invoke_endpoint(Body=body, EndpointName="gpuknn-mme", ContentType="text/csv",
                                  Accept="application/json", TargetModel=name)
print(response["Body"].read().decode())
"""


def test_sdk_local_mode_invokes_a_target_model(mme, singles, trained, queries, sdk_python):
    """The SDK's local-mode runtime client sends X-Amzn-SageMaker-Target-Model."""
    name = "sdk-target"
    assert load(mme.port, name, trained["regressor"])[0] == 200
    body, content_type = body_in(CSV, queries)
    env = {**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run([sdk_python, "-c", SDK_CLIENT, str(mme.port), name, body.decode()],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = result.stdout.strip().splitlines()[-1].encode()
    assert got == invoke(singles["regressor"].port, None, body, content_type)[1]
    assert call(mme.port, "DELETE", f"/models/{name}")[0] == 200

