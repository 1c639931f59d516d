"""The memory of a real ``gpuknn serve``, and the helpers that start one, wait for it and
talk to it over HTTP.

- :func:`server_memory`: the proportional set size (PSS) summed over the whole process
  tree of a real ``gpuknn serve``, for 1 and 2 workers, once every worker has loaded the
  model and a request was answered.
- :func:`free_port`, :func:`wait_ready`, :func:`http_request`, :func:`touch`: a free
  loopback port, a server ready on it, one request on a fresh connection, and a few
  ``text/csv`` requests that must all answer 200.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.procmem import process_memory, process_tree, stop_server

SERVE_WORKERS = (1, 2)
SERVER_START_TIMEOUT_S = 900.0


# -- server memory -----------------------------------------------------------------------------
def server_memory(model_dir: str | Path, dim: int, *,
                  workers: Sequence[int] = SERVE_WORKERS, log_dir: str | Path | None = None,
                  start_timeout_s: float = SERVER_START_TIMEOUT_S) -> dict[str, Any]:
    """PSS and RSS of a real ``gpuknn serve`` over a model, for each worker count.

    Each server is ``python -m gpuknn.cli serve --model DIR --workers N --device cpu`` on
    a free loopback port. Once /ping answers 200 and every worker has logged that its
    application started (each loads the model first), it answers ``2 * N`` text/csv
    requests of 4 rows; then PSS and RSS are read from ``/proc/<pid>/smaps_rollup`` of the
    server and every descendant, and the server is stopped (SIGTERM, then SIGKILL), also
    on failure.

    Parameters
    ----------
    model_dir : path
        A saved model (directory or archive).
    dim : int
        Its feature dimension (the width of the request rows).
    workers : sequence of int
        Worker counts, one server each, one after the other.
    log_dir : path, optional
        Where each server's output goes (``serve-<N>.log``); a temporary folder if None.

    Returns
    -------
    dict
        ``runs``: per worker count (as a string), ``pss_bytes``, ``rss_bytes`` and the
        ``processes`` (pid, command, pss and rss bytes); ``pss_ratio`` and ``rss_ratio``:
        the largest worker count's sum over the smallest's.
    """
    with contextlib.ExitStack() as stack:
        folder = Path(log_dir) if log_dir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="gpuknn-serve-")))
        folder.mkdir(parents=True, exist_ok=True)
        runs = {str(count): _serve_and_measure(Path(model_dir), dim, count,
                                               folder / f"serve-{count}.log", start_timeout_s)
                for count in workers}
    result: dict[str, Any] = {"model_dir": str(model_dir), "runs": runs}
    if len(runs) > 1:
        low, high = runs[str(min(workers))], runs[str(max(workers))]
        result.update(pss_ratio=high["pss_bytes"] / low["pss_bytes"],
                      rss_ratio=high["rss_bytes"] / low["rss_bytes"])
    return result


def _serve_and_measure(model_dir: Path, dim: int, workers: int, log: Path,
                       timeout_s: float) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "gpuknn.cli", "serve", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--device", "cpu"]
    with open(log, "wb") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_ready(server, port, workers, log, timeout_s)
        touch(port, dim, requests=2 * workers)
        time.sleep(0.5)
        processes = [process_memory(pid) for pid in process_tree(server.pid)]
    finally:
        stop_server(server)
    return {"workers": workers, "processes": processes,
            "pss_bytes": sum(p["pss_bytes"] for p in processes),
            "rss_bytes": sum(p["rss_bytes"] for p in processes), "log": str(log)}


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(server: subprocess.Popen, port: int, workers: int, log: Path,
                timeout_s: float) -> None:
    """Until /ping answers 200 and every worker logged "Application startup complete"
    (with several workers, each loads the model before it starts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gpuknn serve exited with {server.returncode}:\n"
                               f"{_tail(log)}")
        started = _tail(log, 1 << 20).count("Application startup complete")
        if started >= workers and _ping(port) == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"gpuknn serve not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def _ping(port: int) -> int | None:
    try:
        return http_request(port, "GET", "/ping", timeout=2)[0]
    except OSError:
        return None


def http_request(port: int, method: str, path: str, body: bytes | None = None, *,
             headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def touch(port: int, dim: int, *, requests: int) -> None:
    """Send text/csv requests of 4 rows, each on a new connection; each must answer 200."""
    rows = np.random.default_rng(0).random((4, dim)).astype(np.float32)
    body = "\n".join(",".join(f"{value:.4f}" for value in row) for row in rows).encode()
    for _ in range(requests):
        status, answer = http_request(port, "POST", "/invocations", body,
                                  headers={"Content-Type": "text/csv",
                                           "Accept": "application/json"})
        if status != 200:
            raise RuntimeError(f"/invocations answered {status}: {answer[:300]!r}")


def _tail(path: Path, size: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode(errors="replace")
