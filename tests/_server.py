"""Run ``gpuknn serve`` as a real process on a free loopback port, and talk HTTP to it."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _wire import decode_record, frames

import gpuknn.io

START_TIMEOUT = 90
RECORDIO = "application/x-recordio-protobuf"
OUTPUT_TYPES = ("application/json", "application/jsonlines", RECORDIO)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60):
    """(status, headers, body) of one request on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def invoke(port: int, body: bytes, content_type: str | None, accept: str | None = None):
    headers = {} if content_type is None else {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    return request(port, "POST", "/invocations", body, headers)


class Server:
    """``python -m gpuknn.cli serve ...`` in a subprocess; its output goes to ``log``."""

    def __init__(self, args: list[str], log: Path, *, env: dict[str, str] | None = None,
                 port: int | None = None, workers: str | None = "1"):
        self.port = free_port() if port is None else port
        self.log = log
        command = [sys.executable, "-m", "gpuknn.cli", "serve", *args]
        if workers is not None and "--workers" not in args:
            command += ["--workers", workers]  # one process: its counters are the server's
        if port is None and "--port" not in args:
            command += ["--port", str(self.port), "--host", "127.0.0.1"]
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n"
                                     f"{self.output()}")
            try:
                if request(self.port, "GET", "/ping", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {START_TIMEOUT} s:\n{self.output()}")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def parse_predictions(body: bytes, media_type: str) -> list[dict[str, list]]:
    """Rows of a response as {field: list of values}, whatever the format."""
    if media_type == "application/x-recordio-protobuf":
        rows = []
        for _, payload in frames(body):
            record = decode_record(payload)
            assert record["features"] == {}, "SageMaker's responses carry no features"
            rows.append({name: list(values) for name, (_, values, _, _) in
                         record["label"].items()})
        return rows
    if media_type == "application/jsonlines":
        lines = body.decode().split("\n")
        return [_as_lists(json.loads(line)) for line in lines]
    document = json.loads(body)
    assert list(document) == ["predictions"]
    return [_as_lists(row) for row in document["predictions"]]


def _as_lists(row: dict) -> dict[str, list]:
    return {name: value if isinstance(value, list) else [value] for name, value in row.items()}


def expected_rows(answer, verbose: bool) -> list[dict[str, np.ndarray]]:
    """What the documented shapes say a response holds for ``answer``."""
    rows = []
    for i in range(len(answer.distances)):
        row = {}
        if answer.predicted_label is not None:
            row["predicted_label"] = answer.predicted_label[i : i + 1]
        if verbose or answer.predicted_label is None:
            row["distances"] = answer.distances[i]
            if answer.labels is not None:
                row["labels"] = answer.labels[i]
            row["ids"] = answer.ids[i]
            if answer.probabilities is not None:
                row["probabilities"] = answer.probabilities[i]
        rows.append(row)
    return rows


def assert_rows_equal(got: list[dict[str, list]], want: list[dict[str, np.ndarray]], *,
                      ordered: bool = True) -> None:
    """Same fields (in the same order unless ``ordered`` is False, as protobuf maps have
    none), values equal as float32 (ids exactly)."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        same = list(g) == list(w) if ordered else sorted(g) == sorted(w)
        assert same, f"row {i}: fields {list(g)} != {list(w)}"
        for name, values in w.items():
            if name == "ids":
                np.testing.assert_array_equal(np.asarray(g[name], np.int64), values,
                                              err_msg=f"row {i} {name}")
            else:
                np.testing.assert_array_equal(np.asarray(g[name], np.float32),
                                              np.asarray(values, np.float32),
                                              err_msg=f"row {i} {name}")


# -- bodies in every content type --------------------------------------------------------------
def body_in(content_type: str, X: np.ndarray) -> tuple[bytes, str]:
    """``X`` as a client would send it: (body, Content-Type header)."""
    if content_type == "text/csv":
        return "\n".join(",".join(f"{v:g}" for v in row) for row in X).encode(), "text/csv"
    if content_type == "text/csv;label_size=1":
        lines = [",".join(["7", *(f"{v:g}" for v in row)]) for row in X]
        return "\n".join(lines).encode(), content_type
    if content_type == "application/json":
        instances = [{"features": row.tolist()} if i % 2 else
                     {"data": {"features": {"values": row.tolist()}}} for i, row in enumerate(X)]
        return json.dumps({"instances": instances}).encode(), content_type
    if content_type == "application/json;sparse":
        rows = [{"data": {"features": {"keys": np.flatnonzero(row).tolist(),
                                       "shape": [X.shape[1]],
                                       "values": row[row != 0].tolist()}}} for row in X]
        return json.dumps({"instances": rows}).encode(), "application/json"
    if content_type == "application/jsonlines":
        return "\n".join(json.dumps({"features": row.tolist()}) for row in X).encode(), \
            content_type
    buffer = io.BytesIO()
    kind = content_type.split(";")[1]
    data = sp.csr_matrix(X) if kind == "sparse" else X.astype(kind)
    gpuknn.io.write_recordio(buffer, data)
    return buffer.getvalue(), RECORDIO


INPUTS = ("text/csv", "text/csv;label_size=1", "application/json", "application/json;sparse",
          "application/jsonlines", f"{RECORDIO};float32", f"{RECORDIO};float64",
          f"{RECORDIO};int32", f"{RECORDIO};sparse")
ACCEPTS = [(None, "application/json", False), ("*/*", "application/json", False)] + [
    (f"{media}; verbose=true" if verbose else media, media, verbose)
    for media in OUTPUT_TYPES for verbose in (False, True)]
