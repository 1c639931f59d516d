"""The SageMaker training container's view of ``/opt/ml``, as one frozen snapshot.

Built by :meth:`TrainingEnvironment.from_root` from the files SageMaker writes before
``docker run <image> train``: ``input/config/hyperparameters.json`` (every value a
string), ``inputdataconfig.json`` (per channel: ``ContentType``, ``TrainingInputMode``,
``S3DistributionType``) and ``resourceconfig.json`` (``current_host``, ``hosts``). Nothing
here reads the environment or the disk at import time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuknn.errors import ClientError

DEFAULT_ROOT = "/opt/ml"
ROOT_VARIABLE = "GPUKNN_ML_ROOT"
INPUT_MODES = ("File", "FastFile", "Pipe")
DEFAULT_CONTENT_TYPE = "application/x-recordio-protobuf"


@dataclass(frozen=True)
class Channel:
    """One input channel of a training job."""

    name: str
    content_type: str = DEFAULT_CONTENT_TYPE
    input_mode: str = "File"
    distribution: str = "FullyReplicated"

    def source(self, root: Path) -> Path:
        """Where the channel's data is: a directory (File, FastFile) or a FIFO (Pipe, epoch 0)."""
        data = root / "input" / "data"
        return data / f"{self.name}_0" if self.input_mode == "Pipe" else data / self.name


@dataclass(frozen=True)
class TrainingEnvironment:
    """Paths and configuration of one training job."""

    root: Path
    hyperparameters: dict[str, str] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)
    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)

    @classmethod
    def from_root(cls, root: str | Path | None = None) -> TrainingEnvironment:
        """Read the configuration under ``root`` (default: ``$GPUKNN_ML_ROOT`` or /opt/ml).

        Raises
        ------
        ClientError
            When the root is not a directory, or naming the configuration file that is
            missing (``hyperparameters.json``), unreadable or malformed.
        """
        given = root
        root = resolve_root(root)
        if not root.is_dir():
            state = "is not a directory" if root.exists() else "does not exist"
            raise ClientError(f"{root.absolute()}: the ml root {state} ({_origin(given)}); "
                              "it must be the directory that holds input/config/ and "
                              "input/data/")
        config = root / "input" / "config"
        if not (config / "hyperparameters.json").is_file():
            raise ClientError(f"{config / 'hyperparameters.json'}: no such file; a training "
                              "job's hyperparameters (k, predictor_type and sample_size at "
                              "least) go there as a JSON object of strings")
        hyperparameters = _read_json(config / "hyperparameters.json", default={})
        if not isinstance(hyperparameters, dict):
            raise ClientError(f"{config / 'hyperparameters.json'}: must be a JSON object")
        resources = _read_json(config / "resourceconfig.json", default={})
        host = str(resources.get("current_host", "algo-1"))
        hosts = tuple(str(h) for h in resources.get("hosts", [host]))
        return cls(root=root, hyperparameters={str(k): v for k, v in hyperparameters.items()},
                   channels=_channels(config / "inputdataconfig.json", root),
                   current_host=host, hosts=hosts)

    @property
    def model_dir(self) -> Path:
        """``model/``: SageMaker tars its content into model.tar.gz."""
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        """``output/``: holds ``failure`` and ``data/``."""
        return self.root / "output"

    @property
    def failure_file(self) -> Path:
        """``output/failure``: its first 1024 characters become the job's FailureReason."""
        return self.output_dir / "failure"

    @property
    def metrics_file(self) -> Path:
        """``output/data/metrics.json``: the test scores."""
        return self.output_dir / "data" / "metrics.json"


def resolve_root(root: str | Path | None = None) -> Path:
    """The ml root: ``root`` if given, else ``$GPUKNN_ML_ROOT``, else /opt/ml."""
    return Path(root or os.environ.get(ROOT_VARIABLE) or DEFAULT_ROOT)


def _origin(root: str | Path | None) -> str:
    """Where the ml root came from, as :func:`resolve_root` chose it."""
    if root:
        return "given by --ml-root"
    if os.environ.get(ROOT_VARIABLE):
        return f"from ${ROOT_VARIABLE}"
    return f"the default; give another with --ml-root or ${ROOT_VARIABLE}"


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClientError(f"{path}: not valid JSON ({err})") from None


def _channels(path: Path, root: Path) -> dict[str, Channel]:
    """Channels from inputdataconfig.json, or, without that file, the data directories."""
    config = _read_json(path, default=None)
    if config is None:
        data = root / "input" / "data"
        names = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
        return {name: Channel(name) for name in names if not name.startswith(".")}
    if not isinstance(config, dict):
        raise ClientError(f"{path}: must be a JSON object of channels")
    channels = {}
    for name, settings in config.items():
        if not isinstance(settings, dict):
            raise ClientError(f"{path}: channel {name!r} must be a JSON object")
        mode = settings.get("TrainingInputMode", "File")
        if mode not in INPUT_MODES:
            raise ClientError(f"{path}: channel {name!r} has TrainingInputMode {mode!r}; "
                              f"allowed: {', '.join(INPUT_MODES)}")
        channels[name] = Channel(name, settings.get("ContentType") or DEFAULT_CONTENT_TYPE,
                                 mode, settings.get("S3DistributionType", "FullyReplicated"))
    return channels
