"""Ray, imported lazily: connecting to a cluster, and running one node of it.

This is the only module of gpuknn that imports Ray, and only inside functions, so
``import gpuknn`` never needs it; the other distributed modules get it from here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from gpuknn.errors import DependencyError

logger = logging.getLogger("gpuknn.distributed")
LOCAL = "local"
# Ray's own settings for every process it starts here: no usage reports (these machines
# may reach no network), and no dashboard.
RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`DependencyError` that says how to install it."""
    try:
        import ray  # noqa: PLC0415 - optional, imported where the distributed code runs
    except ImportError as err:
        raise DependencyError(f"Ray is needed for distributed training and transform "
                              f"({err}): pip install \"gpuknn[ray]\"") from None
    return ray


@contextlib.contextmanager
def connected(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to a Ray cluster for the duration of a ``with`` block.

    Parameters
    ----------
    address : str, optional
        ``host:port`` of a running cluster's head, ``"auto"`` (``$RAY_ADDRESS`` or the
        cluster started on this machine), or None / ``"local"`` for a local cluster that
        lives as long as the block.
    num_cpus : int, optional
        CPUs of a local cluster (default: all of this machine's).

    Yields
    ------
    module
        ``ray``, connected. A connection the caller made before (``ray.init``) is used
        as it is and left open.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.update({k: v for k, v in RAY_ENVIRONMENT.items() if k not in os.environ})
    if address in (None, LOCAL):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class RayNode:
    """One Ray node of this machine, run by ``ray start --block`` in a child process.

    Stopping the child stops the node's processes (raylet, object store, and the GCS of
    a head); nothing else of Ray's on the machine is touched (unlike ``ray stop``).
    """

    def __init__(self, arguments: list[str], environment: dict[str, str], log: str):
        self.arguments = arguments
        self.log_path = log
        self._log = open(log, "ab")  # closed in stop()
        command = [sys.executable, "-c", "from ray.scripts.scripts import main; main()",
                   "start", "--block", "--disable-usage-stats", *arguments]
        self.process = subprocess.Popen(command, env={**os.environ, **RAY_ENVIRONMENT,
                                                      **environment},
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)

    @classmethod
    def head(cls, ip: str, port: int, resources: dict[str, float], log: str,
             environment: dict[str, str] | None = None) -> RayNode:
        """A head node: the cluster's GCS on ``ip:port``."""
        return cls(["--head", f"--node-ip-address={ip}", f"--port={port}",
                    "--include-dashboard=false", f"--resources={json.dumps(resources)}",
                    *_agent_port(resources)], environment or {}, log)

    @classmethod
    def worker(cls, head_address: str, ip: str, resources: dict[str, float], log: str,
               environment: dict[str, str] | None = None) -> RayNode:
        """A node that joins the cluster whose head is at ``head_address``."""
        return cls([f"--address={head_address}", f"--node-ip-address={ip}",
                    f"--resources={json.dumps(resources)}", *_agent_port(resources)],
                   environment or {}, log)

    def exit_code(self) -> int | None:
        """None while the node runs, else the exit code of ``ray start``."""
        return self.process.poll()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node and wait for ``ray start`` to clean up (then kill it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _agent_port(resources: dict[str, float]) -> list[str]:
    """A dashboard-agent port of the node's own, so that two nodes can share a machine."""
    rank = sum(int(name.rsplit("_", 1)[-1]) for name in resources if name.startswith(
        "gpuknn_host_"))
    return [f"--dashboard-agent-listen-port={52365 + rank}"]
