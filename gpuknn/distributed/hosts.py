"""Multi-host ``gpuknn train``: SageMaker's ``instance_count > 1`` on a Ray cluster.

Every host runs ``gpuknn train`` with the same ``resourceconfig.json``. The leader (the
first of ``hosts``) starts a Ray head; every other host waits until the leader's port
answers, then joins it with a resource that names it (``gpuknn_host_<rank>``). The leader
runs one sampling task pinned to each host, which reads that host's part of the
``train`` channel (:mod:`gpuknn.distributed.parts`) from that host's disk and sends back
only its reservoir sample. The leader merges the samples, builds and saves the model,
scores the ``test`` channel, and tells each other host how the job ended by writing
``output/.gpuknn-job.json`` there (a task pinned to it). The other hosts exit 0 with
``model/`` empty, or write the leader's reason to ``output/failure`` and exit 1.

Settings, from the environment (a SageMaker estimator's ``environment=``), read by
:mod:`gpuknn.distributed.settings`:

- ``GPUKNN_RAY_PORT``: the head's port (default 6379).
- ``GPUKNN_HOST_TIMEOUT_S``: how long a host waits for the others to appear, and how
  long a host keeps going without its leader (default 300).
- ``GPUKNN_HOST_ADDRESSES``: ``algo-1=10.0.0.5,algo-2=10.0.0.6``, addresses for host
  names that the network does not resolve (tests map them to loopback addresses); by
  default each name is resolved by DNS, as on SageMaker's network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuknn.distributed import parts as parts_
from gpuknn.distributed.cluster import RayNode, require_ray
from gpuknn.distributed.fitting import merge_parts, sample_parts
from gpuknn.distributed.settings import TIMEOUT_VARIABLE, ClusterSettings
from gpuknn.environment import ROOT_VARIABLE, Channel, TrainingEnvironment, resolve_root
from gpuknn.errors import ClientError, ClusterError, DataError, GpuknnError, StoppedError
from gpuknn.hyperparameters import Hyperparameters
from gpuknn.model.knn_model import KNNModel

logger = logging.getLogger("gpuknn.train")
STATUS_FILE = ".gpuknn-job.json"
POLL_SECONDS = 0.5
Finish = Callable[[KNNModel, float], dict[str, float]]


class _Stop:
    """SIGTERM while this host takes part in a cluster job.

    Ray replaces the SIGTERM handler when it connects and resets it when it shuts down,
    and an exception raised by a handler inside Ray's own waits comes out garbled. So the
    handler only sets a flag, re-installed after each of those calls, and the waiting
    loops call :meth:`check` to raise :class:`StoppedError` from Python. Once this host's
    part is done (:attr:`done`), a SIGTERM is only logged: SageMaker local mode stops
    every container as soon as one has exited, and the job has succeeded by then.
    """

    def __init__(self) -> None:
        self.requested = False
        self.done = False
        self.previous = signal.getsignal(signal.SIGTERM)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.done:
            logger.info("SIGTERM after this host's part of the job was done: ignored")
        else:
            self.requested = True

    def check(self) -> None:
        """Raise :class:`StoppedError` if a SIGTERM came before the job was done."""
        if self.requested and not self.done:
            raise StoppedError("SIGTERM")


def train(env: TrainingEnvironment, hp: Hyperparameters, device: str, finish: Finish,
          ) -> dict[str, float]:
    """Run this host's side of a multi-host training job.

    Parameters
    ----------
    env : TrainingEnvironment
        With several ``hosts``.
    hp : Hyperparameters
    device : {"cpu", "gpu"}
        Where the leader builds the index.
    finish : callable
        ``finish(model, seconds)`` saves and scores the model on the leader and returns
        the metrics.

    Returns
    -------
    dict
        The metrics on the leader; empty on the other hosts.

    Raises
    ------
    ClusterError
        A host was lost or never came, or the leader failed (with its reason).
    """
    if env.current_host not in env.hosts:
        raise ClientError(f"resourceconfig.json: current_host {env.current_host!r} is not "
                          f"among its hosts {list(env.hosts)}")
    settings = ClusterSettings.from_environ()
    _set_authentication()
    stop = _Stop()
    stop.install()
    try:
        if env.current_host == env.hosts[0]:
            return _lead(env, hp, device, finish, settings, stop=stop)
        _follow(env, settings, stop)
        return {}
    finally:
        if not stop.done:
            stop.restore()  # a job that succeeded keeps ignoring SIGTERM to the end


def _node_environment(env: TrainingEnvironment, settings: ClusterSettings) -> dict[str, str]:
    """The ml root for the node's tasks; a node gives up on a lost head after the timeout."""
    return {ROOT_VARIABLE: str(env.root.absolute()),
            "RAY_gcs_rpc_server_reconnect_timeout_s": str(int(settings.timeout_s))}


def _set_authentication() -> None:
    """Token authentication when the hosts share a token, else none (logged).

    A token can only work when every host has the same one: ``$RAY_AUTH_TOKEN`` (or
    ``$RAY_AUTH_TOKEN_PATH``) set alike on all hosts, e.g. by the estimator's
    ``environment=``. Without one the cluster runs unauthenticated, and the job's private
    network (SageMaker's, or a compose network) is its only boundary.
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ["RAY_AUTH_MODE"] = "token"
        logger.info("Ray cluster: token authentication ($RAY_AUTH_TOKEN)")
        return
    os.environ["RAY_AUTH_MODE"] = "disabled"
    logger.info("Ray cluster: no authentication token ($RAY_AUTH_TOKEN unset); the hosts' "
                "private network is the boundary")


def _node_log(env: TrainingEnvironment) -> str:
    return str(Path(tempfile.gettempdir()) / f"gpuknn-ray-{env.current_host}.log")


# ---------------------------------------------------------------- the leader


def _lead(env: TrainingEnvironment, hp: Hyperparameters, device: str, finish: Finish,
          settings: ClusterSettings, *, stop: _Stop) -> dict[str, float]:
    ray = require_ray()  # before starting a node that would need it too
    ip = settings.address_of(env.current_host)
    address = f"{ip}:{settings.port}"
    logger.info("Leader of %d hosts: starting a Ray head at %s", len(env.hosts), address)
    node = RayNode.head(ip, settings.port, {_resource(0): 1.0}, _node_log(env),
                        _node_environment(env, settings))
    outcome: dict[str, str] = {"state": "failed", "reason": "the leader stopped"}
    try:
        _connect(ray, address, node, settings, stop)
        _wait_for_hosts(ray, env.hosts, address, settings, stop)
        started = time.perf_counter()
        model = _sample_and_build(ray, env, hp, device, stop)
        stop.check()
        metrics = finish(model, time.perf_counter() - started)
        stop.check()
        stop.done = True
        outcome = {"state": "done"}
        return metrics
    except StoppedError:
        outcome["reason"] = f"the leader {env.current_host} was stopped (SIGTERM)"
        raise
    except GpuknnError as err:
        outcome["reason"] = str(err)
        raise
    except BaseException as err:
        outcome["reason"] = f"internal error on the leader {env.current_host} ({err!r})"
        raise
    finally:
        with contextlib.suppress(Exception):
            if ray.is_initialized():
                _tell_hosts(ray, env.hosts, outcome, settings)
                ray.shutdown()
        stop.install()  # ray.shutdown() resets SIGTERM to its default
        node.stop()


def _resource(rank: int) -> str:
    return f"gpuknn_host_{rank}"


def _connect(ray: Any, address: str, node: RayNode, settings: ClusterSettings,
             stop: _Stop) -> None:
    def connected() -> bool:
        if node.exit_code() is not None:
            raise ClusterError(f"the Ray head at {address} exited with code "
                               f"{node.exit_code()}; its log: {node.log_path}")
        if not _port_open(address):
            return False
        try:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        except ConnectionError:
            return False
        stop.install()  # ray.init installs its own SIGTERM handler
        return True

    _poll_until(connected, settings, stop, lambda: (
        f"the Ray head at {address} did not start within {settings.timeout_s:g} s "
        f"(${TIMEOUT_VARIABLE}); its log: {node.log_path}"))


def _wait_for_hosts(ray: Any, hosts: tuple[str, ...], address: str,
                    settings: ClusterSettings, stop: _Stop) -> None:
    def missing() -> list[str]:
        present = ray.cluster_resources()
        return [host for rank, host in enumerate(hosts) if _resource(rank) not in present]

    _poll_until(lambda: not missing(), settings, stop, lambda: (
        f"waited {settings.timeout_s:g} s (${TIMEOUT_VARIABLE}) for host(s) "
        f"{', '.join(missing())} to join the Ray cluster at {address}; no model was built"))
    logger.info("All %d hosts joined the Ray cluster at %s", len(hosts), address)


def _poll_until(ready: Callable[[], bool], settings: ClusterSettings, stop: _Stop,
                timeout_message: Callable[[], str]) -> None:
    """Call ``ready`` every :data:`POLL_SECONDS` until it is true; a SIGTERM raises
    :class:`StoppedError`, and the timeout a :class:`ClusterError` with the message."""
    deadline = time.monotonic() + settings.timeout_s
    while True:
        stop.check()
        if ready():
            return
        if time.monotonic() > deadline:
            raise ClusterError(timeout_message())
        time.sleep(POLL_SECONDS)


def _sample_and_build(ray: Any, env: TrainingEnvironment, hp: Hyperparameters,
                      device: str, stop: _Stop) -> KNNModel:
    from gpuknn.model.build import build_model  # noqa: PLC0415 - imports faiss

    channel = env.channels["train"]
    hosts = len(env.hosts)
    parts = [parts_.Part(rank, hosts, channel.name, _distribution(channel), channel=True)
             for rank in range(hosts)]
    cpus = _cpus_per_host(ray, hosts)
    samples = sample_parts(ray, parts, list(env.hosts), content_type=channel.content_type,
                           hyperparameters=hp.to_strings(),
                           placement=lambda part: {"resources": {_resource(part.rank): 0.001},
                                                   "num_cpus": cpus[part.rank]},
                           check_stop=stop.check)
    if _distribution(channel) == parts_.REPLICATED:
        _check_same_files(samples, channel)
    merged = merge_parts(samples, hp.sample_size, hp.seed)
    if merged.labels is None:
        raise DataError(f"the {channel.name!r} channel has no labels on any host "
                        "(label[\"values\"] in RecordIO records, the first column of CSV)")
    return build_model(merged.features, merged.labels, merged.ids, hp, device=device,
                       rows_seen=merged.rows_seen)


def _cpus_per_host(ray: Any, hosts: int) -> list[float]:
    """Each host's CPUs: its sampling task takes them all (one task per host)."""
    cpus = [1.0] * hosts
    for node in ray.nodes():
        resources = node.get("Resources", {})
        for rank in range(hosts):
            if node.get("Alive") and _resource(rank) in resources:
                cpus[rank] = max(1.0, float(resources.get("CPU", 1.0)))
    return cpus


def _distribution(channel: Channel) -> str:
    return parts_.SHARDED if channel.distribution == parts_.SHARDED else parts_.REPLICATED


def _check_same_files(samples: list[Any], channel: Channel) -> None:
    """FullyReplicated hosts must see the same files, or their parts would not tile."""
    first = samples[0]
    for other in samples[1:]:
        if other.files != first.files:
            raise DataError(f"the {channel.name!r} channel is FullyReplicated but "
                            f"{other.name} sees {len(other.files)} file(s) and {first.name} "
                            f"sees {len(first.files)}, or their names or sizes differ; every "
                            "host must see the same files")


def _tell_hosts(ray: Any, hosts: tuple[str, ...], outcome: dict[str, str],
                settings: ClusterSettings) -> None:
    """Write the job's outcome on every other host that is still there (bounded wait)."""
    alive = ray.cluster_resources()
    task = ray.remote(write_status)
    refs = [task.options(resources={_resource(rank): 0.001}, num_cpus=0,
                         max_retries=0).remote(outcome)
            for rank in range(1, len(hosts)) if _resource(rank) in alive]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=min(60.0, settings.timeout_s))


def write_status(outcome: dict[str, str]) -> None:
    """Write ``outcome`` to this host's ``output/`` (runs on that host, as a Ray task)."""
    path = resolve_root() / "output" / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(outcome))
    os.replace(staging, path)


# ---------------------------------------------------------------- the other hosts


def _follow(env: TrainingEnvironment, settings: ClusterSettings, stop: _Stop) -> None:
    env.model_dir.mkdir(parents=True, exist_ok=True)  # left empty: the leader's is the model
    status = env.output_dir / STATUS_FILE
    status.unlink(missing_ok=True)
    leader = env.hosts[0]
    address = f"{settings.address_of(leader)}:{settings.port}"
    _wait_for_port(address, leader, settings, stop)
    rank = env.hosts.index(env.current_host)
    logger.info("Host %s joins the leader %s at %s", env.current_host, leader, address)
    node = RayNode.worker(address, settings.address_of(env.current_host),
                          {_resource(rank): 1.0}, _node_log(env),
                          _node_environment(env, settings))
    try:
        outcome = _await_outcome(status, node, leader, address, stop)
        stop.done = outcome.get("state") == "done"
    finally:
        node.stop()
        status.unlink(missing_ok=True)
    if outcome.get("state") != "done":
        raise ClusterError(f"the leader {leader} failed the job: "
                           f"{outcome.get('reason', 'no reason given')}")
    logger.info("The leader %s finished the job; its model is the job's model", leader)


def _wait_for_port(address: str, leader: str, settings: ClusterSettings, stop: _Stop) -> None:
    _poll_until(lambda: _port_open(address), settings, stop, lambda: (
        f"waited {settings.timeout_s:g} s (${TIMEOUT_VARIABLE}) for the leader {leader} to "
        f"start its Ray head at {address}; no model was built"))


def _await_outcome(status: Path, node: RayNode, leader: str, address: str,
                   stop: _Stop) -> dict[str, str]:
    while not status.exists():
        stop.check()
        if node.exit_code() is not None:
            raise ClusterError(f"lost the leader {leader}: this host's Ray node, joined to "
                               f"{address}, exited (code {node.exit_code()}) before the "
                               "leader said how the job ended; no model was built")
        time.sleep(POLL_SECONDS)
    return json.loads(status.read_text())


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, int(port))) == 0
