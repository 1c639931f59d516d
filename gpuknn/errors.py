"""Exception types.

Every error caused by a user (bad hyperparameters, bad data, a broken model
file) derives from :class:`ClientError`, itself a :class:`ValueError`, so that the
training container can turn it into a failure reason and the server into a 4xx
answer, while internal faults stay distinguishable.
"""

from __future__ import annotations


class GpuknnError(Exception):
    """Base class of every error raised on purpose by gpuknn."""


class ClientError(GpuknnError, ValueError):
    """A mistake in what the user supplied: parameters, data or files."""

    status_code = 400


class HyperparameterError(ClientError):
    """One or more hyperparameters are invalid.

    Attributes
    ----------
    problems : list of str
        One line per problem, each naming the hyperparameter, what is allowed
        and what was given.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        count = len(self.problems)
        header = f"{count} invalid hyperparameter{'s' if count > 1 else ''}:"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))


class DataError(ClientError):
    """Input data that cannot be used (wrong shape, NaN, too few rows...)."""


class UnsupportedMediaTypeError(ClientError):
    """A request body in a content type the server does not read (HTTP 415)."""

    status_code = 415


class NotAcceptableError(ClientError):
    """An ``Accept`` header naming no format the server writes (HTTP 406)."""

    status_code = 406


class PayloadTooLargeError(ClientError):
    """A request body over the payload limit (HTTP 413)."""

    status_code = 413


class RequestTimeoutError(ClientError):
    """A request body that did not arrive in time (HTTP 408)."""

    status_code = 408


class ModelFileError(ClientError):
    """A saved model that is missing, corrupt, truncated or of another version."""


class ModelTooLargeError(ModelFileError):
    """A saved model whose files, or whose search structure, do not fit the memory
    available. A multi-model server answers it with 507, which makes SageMaker unload
    other models and retry."""


class ModelNotLoadedError(ClientError):
    """A multi-model server was asked for a model name that it has not loaded (HTTP 404)."""

    status_code = 404


class ModelAlreadyLoadedError(ClientError):
    """A multi-model server was asked to load a name it already holds (HTTP 409)."""

    status_code = 409


class InsufficientMemoryError(GpuknnError):
    """A model that would not fit a multi-model server's memory budget (HTTP 507).

    Not a :class:`ClientError`: the model may be fine; the server is full. SageMaker
    answers 507 by unloading models it has not used lately and loading again.
    """

    status_code = 507


class DeviceError(ClientError):
    """A device was requested that this machine cannot provide."""


class NotFittedError(GpuknnError, AttributeError):
    """An estimator was queried before :meth:`KNN.fit`."""


class DependencyError(GpuknnError, ImportError):
    """An optional dependency (faiss, cupy) is needed but not installed."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class ClusterError(GpuknnError):
    """A multi-host job lost a host, the leader or its cluster, or waited for one in vain.

    Not a :class:`ClientError`: the data may be fine; a machine or the network failed.
    """


class StoppedError(GpuknnError):
    """A training job was asked to stop (SIGTERM) before it finished."""
