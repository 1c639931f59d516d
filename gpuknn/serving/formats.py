"""Request bodies in, responses out: the formats of SageMaker k-NN's ``/invocations``.

Requests come as ``text/csv`` (``label_size`` 0 or 1, default 0),
``application/json``, ``application/jsonlines`` or
``application/x-recordio-protobuf`` (dense or sparse, float32, float64 or int32).
Responses go out as ``application/json`` (also for ``*/*`` and a missing
``Accept``), ``application/jsonlines`` or ``application/x-recordio-protobuf``;
``verbose=true`` as a parameter of the Accept type adds the neighbours.

Field names are SageMaker's (``predicted_label``, ``distances``, ``labels``);
gpuknn adds ``ids`` (training-row ids of the neighbours) and, for classifiers,
``probabilities`` (vote shares in the order of the model's sorted classes), both
only in verbose mode. A model trained without labels has no ``predicted_label``
and always answers with ``distances`` and ``ids``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from gpuknn import io as data_io
from gpuknn.errors import (
    ClientError,
    DataError,
    NotAcceptableError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from gpuknn.io._record import messages
from gpuknn.io.limits import InflateLimit
from gpuknn.io.recordio import frame
from gpuknn.io.text import label_column_hint
from gpuknn.model.answer import Answer
from gpuknn.model.knn_model import KNNModel

OUTPUT_TYPES = (data_io.JSON, data_io.JSONLINES, data_io.RECORDIO)
_OUTPUT_ALIASES = {"*/*": data_io.JSON, "application/*": data_io.JSON,
                   "application/jsonl": data_io.JSONLINES,
                   "application/x-jsonlines": data_io.JSONLINES,
                   "application/json-lines": data_io.JSONLINES}
_GZIP_MAGIC = b"\x1f\x8b"
_INT32_MAX = np.iinfo(np.int32).max
ENCODE_CHUNK_ROWS = 4096
# A request's rows and its answer may take this many times the payload limit in memory.
ANSWER_BUDGET_FACTOR = 8


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost the server.

    Attributes
    ----------
    max_payload_bytes : int
        The body, and the body once inflated if it is gzip.
    k : int
        Neighbours per row (the answer's width).
    n_classes : int
        Vote shares per row (0 for a regressor).
    """

    max_payload_bytes: int
    k: int
    n_classes: int = 0

    @classmethod
    def for_model(cls, model: KNNModel, max_payload_bytes: int) -> RequestLimits:
        """The limits of requests to ``model``."""
        voting = model.classes_ is not None and model.predictor_type == "classifier"
        return cls(max_payload_bytes, model.k, len(model.classes_) if voting else 0)

    @property
    def budget_bytes(self) -> int:
        """Memory for the decoded rows and their answer: ANSWER_BUDGET_FACTOR x the limit."""
        return ANSWER_BUDGET_FACTOR * self.max_payload_bytes

    def check_rows(self, n_rows: int, feature_dim: int) -> None:
        """Refuse (413) a request whose dense rows and answer would pass the budget.

        Each row costs ``4 (feature_dim + 4 k + n_classes)`` bytes: its float32 features,
        and per neighbour a distance, a label and an 8-byte id, plus its vote shares.
        A sparse body can name many rows in few bytes; this stops it before densifying.
        """
        per_row = 4 * (feature_dim + 4 * self.k + self.n_classes)
        if n_rows * per_row <= self.budget_bytes:
            return
        raise PayloadTooLargeError(
            f"the request's {n_rows} rows need about {n_rows * per_row / 2**20:.0f} MiB to "
            f"answer (4 bytes x (features + 4 k + classes) per row), over this server's "
            f"{self.budget_bytes / 2**20:.0f} MiB ({ANSWER_BUDGET_FACTOR}x the payload limit); "
            f"send at most {self.budget_bytes // per_row} rows per request")


@dataclass(frozen=True)
class OutputFormat:
    """What the client asked for in ``Accept``.

    Attributes
    ----------
    media_type : str
        One of :data:`OUTPUT_TYPES`.
    verbose : bool
        Include the neighbours (distances, labels, ids, probabilities).
    """

    media_type: str = data_io.JSON
    verbose: bool = False


def parse_accept(header: str | None) -> OutputFormat:
    """The first acceptable type of an ``Accept`` header, in order of its ``q`` values.

    Raises
    ------
    NotAcceptableError
        When no listed type is one that gpuknn writes (there is no CSV output).
    ClientError
        For a ``verbose`` parameter that is not true or false.
    """
    if header is None or not header.strip():
        return OutputFormat()
    for listed, parameters in _ranked(header):
        media_type = _OUTPUT_ALIASES.get(listed, listed)
        if media_type in OUTPUT_TYPES:
            return OutputFormat(media_type, _verbose(parameters.get("verbose", "false")))
    raise NotAcceptableError(
        f"Accept {header!r} names no format gpuknn writes; use {', '.join(OUTPUT_TYPES)} "
        "(optionally with '; verbose=true'). There is no CSV output, as in SageMaker.")


def _ranked(header: str) -> list[tuple[str, dict[str, str]]]:
    entries = []
    for position, entry in enumerate(header.split(",")):
        media_type, *rest = (part.strip() for part in entry.split(";"))
        parameters = {}
        for item in rest:
            name, _, value = item.partition("=")
            parameters[name.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(parameters.pop("q", "1"))
        except ValueError:
            quality = 0.0
        if quality > 0:
            entries.append((-quality, position, media_type.lower(), parameters))
    return [(media_type, parameters) for _, _, media_type, parameters in sorted(entries)]


def _verbose(value: str) -> bool:
    flag = value.strip().lower()
    if flag not in ("true", "false", "1", "0", "yes", "no"):
        raise ClientError(f"Accept parameter verbose={value!r}: use verbose=true or false")
    return flag in ("true", "1", "yes")


# -- requests --------------------------------------------------------------------------------
def decode_request(body: bytes, content_type: str | None, feature_dim: int,
                   limits: RequestLimits | None = None, *,
                   where: str = "request body") -> np.ndarray:
    """The query rows of a request body, checked against the model.

    Parameters
    ----------
    body : bytes
    content_type : str or None
        The request's ``Content-Type`` header.
    feature_dim : int
        Features the model expects per row.
    limits : RequestLimits, optional
        Bounds on the inflated body and on the rows (413 beyond them).
    where : str
        Names the body in error messages (batch transform: the file).

    Returns
    -------
    ndarray of shape (n_rows, feature_dim), float32
        Every value finite.

    Raises
    ------
    UnsupportedMediaTypeError
        Missing or unknown content type (HTTP 415).
    DataError
        Empty or malformed body, wrong feature count, NaN or infinite values (HTTP 400).
    PayloadTooLargeError
        A gzip body inflating past the payload limit, or rows past the budget (HTTP 413).
    """
    kind, parameters = check_content_type(content_type)
    if not body:
        raise DataError(f"the {where} is empty; send at least one row")
    label_size = label_size_of(parameters)
    X = _fast_csv(body) if kind == data_io.CSV and label_size == 0 else None
    if X is None:
        inflate = None if limits is None else InflateLimit.for_body(limits.max_payload_bytes)
        X, _ = data_io.read(_Body(body, where), kind, label_size=label_size, inflate=inflate)
    csv_label_size = label_size if kind == data_io.CSV else None
    check_width(X.shape[1], feature_dim, where=where, csv_label_size=csv_label_size)
    if limits is not None:
        limits.check_rows(X.shape[0], feature_dim)
    return check_rows(X, feature_dim, where=where, csv_label_size=csv_label_size)


def check_content_type(header: str | None) -> tuple[str, dict[str, str]]:
    """The canonical type and parameters of a Content-Type header; 415 if unusable."""
    if header is None or not header.strip():
        raise UnsupportedMediaTypeError(
            f"the Content-Type header is required; use one of {', '.join(data_io.CONTENT_TYPES)}")
    try:
        return data_io.parse_content_type(header)
    except DataError as err:
        raise UnsupportedMediaTypeError(str(err)) from None


def label_size_of(parameters: dict[str, str]) -> int:
    """The ``label_size`` parameter of a content type: 0 (the default) or 1."""
    text = parameters.get("label_size", "0")
    if text.strip() not in ("0", "1"):
        raise DataError(f"content type parameter label_size={text!r}: use 0 or 1")
    return int(text)


class _Body(io.BytesIO):
    """A request body, named in error messages."""

    def __init__(self, body: bytes, name: str):
        super().__init__(body)
        self.name = name


def _fast_csv(body: bytes) -> np.ndarray | None:
    """numpy's C parser for well-formed CSV; None sends the body to the strict parser.

    The strict parser (:mod:`gpuknn.io.text`) names the line and column of any fault;
    this path only takes bodies it cannot misread: no gzip, and one row per line up to
    the last row (numpy skips blank lines, which the strict parser refuses unless they end
    the body).
    """
    text = body.rstrip()  # final blank lines and line ends are allowed on every path
    if body.startswith(_GZIP_MAGIC) or not text:
        return None
    try:
        rows = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float32, ndmin=2,
                          comments=None, encoding="utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if rows.shape[0] != text.count(b"\n") + 1:  # numpy skipped a blank line
        return None
    return rows if rows.size else None


def check_width(found: int, feature_dim: int, *, where: str = "request body",
                csv_label_size: int | None = None) -> None:
    """Refuse rows whose feature count is not the model's.

    Parameters
    ----------
    found : int
        Features per row in the input.
    feature_dim : int
        The width the model expects.
    where : str
        Names the input in error messages.
    csv_label_size : int, optional
        For CSV input, its label columns: a width off by one without a label column
        asks whether a label was included.
    """
    if found == feature_dim:
        return
    hint = (label_column_hint(found, feature_dim, "inference")
            if csv_label_size == 0 else "")
    raise DataError(f"{where}: rows have {found} feature{'s' if found != 1 else ''}; the "
                    f"model expects {feature_dim}.{hint}")


def check_rows(X, feature_dim: int, *, where: str = "request body",
               first_row: int = 0, csv_label_size: int | None = None) -> np.ndarray:
    """Query rows as a dense float32 array, refusing a wrong width and non-finite values.

    Parameters
    ----------
    X : ndarray or scipy.sparse matrix of shape (n_rows, n_features)
    feature_dim : int
        The width the model expects.
    where : str
        Names the input in error messages.
    first_row : int
        Index of the first row of ``X`` in that input (0-based).
    csv_label_size : int, optional
        Label columns of CSV input (see :func:`check_width`).

    Returns
    -------
    ndarray of shape (n_rows, feature_dim), float32
    """
    check_width(X.shape[1], feature_dim, where=where, csv_label_size=csv_label_size)
    if sp.issparse(X):
        X = X.toarray()
    with np.errstate(over="ignore"):
        X = np.ascontiguousarray(X, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1)) + first_row
    if bad.size:
        rows = ", ".join(str(int(r)) for r in bad[:10])
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        noun = "row" if bad.size == 1 else "rows"
        raise DataError(f"{where}: {noun} {rows}{more} (0-based) with NaN, infinite "
                        "or out-of-float32-range values")
    return X


# -- responses -------------------------------------------------------------------------------
def encode_response(answer: Answer, output: OutputFormat) -> bytes:
    """Serialise an answer in the requested format.

    Parameters
    ----------
    answer : Answer
        From :meth:`gpuknn.KNNModel.answer`, one row per query.
    output : OutputFormat

    Returns
    -------
    bytes
        JSON ``{"predictions": [...]}``, JSON Lines (one object per line, no final
        newline, as batch transform assembles by line) or RecordIO-protobuf (one
        Record per row, the values under ``label``).
    """
    if output.media_type == data_io.RECORDIO:
        return b"".join(_records(answer, output.verbose))
    separator = b"\n" if output.media_type == data_io.JSONLINES else b", "
    # Rows are formatted a chunk at a time: the text temporaries stay a chunk's size.
    chunks = [separator.join(row.encode() for row in _json_rows(
        answer.rows(slice(start, start + ENCODE_CHUNK_ROWS)), output.verbose))
        for start in range(0, len(answer.distances), ENCODE_CHUNK_ROWS)]
    rows = separator.join(chunks)
    if output.media_type == data_io.JSONLINES:
        return rows
    return b'{"predictions": [' + rows + b"]}"


def _fields(answer: Answer, verbose: bool) -> dict[str, np.ndarray]:
    """Per-row arrays to write, in SageMaker's order, gpuknn's additions last."""
    fields = {}
    if answer.predicted_label is not None:
        fields["predicted_label"] = answer.predicted_label
    if verbose or answer.predicted_label is None:
        fields["distances"] = answer.distances
        if answer.labels is not None:
            fields["labels"] = answer.labels
        fields["ids"] = answer.ids
        if answer.probabilities is not None:
            fields["probabilities"] = answer.probabilities
    return fields


def _json_rows(answer: Answer, verbose: bool) -> list[str]:
    """One JSON object per row, numbers in their shortest float32 form (``0.4``, not
    ``0.4000000059604645``), which reads back as the exact float32 value."""
    texts = {name: values.astype(str) for name, values in _fields(answer, verbose).items()}
    rows = []
    for row in range(len(answer.distances)):
        parts = []
        for name, text in texts.items():
            value = text[row]
            body = value if text.ndim == 1 else "[" + ", ".join(value) + "]"
            parts.append(f'"{name}": {body}')
        rows.append("{" + ", ".join(parts) + "}")
    return rows


def _records(answer: Answer, verbose: bool):
    record_type = messages().Record
    fields = _fields(answer, verbose)
    for row in range(len(answer.distances)):
        record = record_type()
        for name, values in fields.items():
            value = values[row]
            tensor = record.label[name]
            if name == "ids":
                target = tensor.int32_tensor if value.max() <= _INT32_MAX else \
                    tensor.float64_tensor
            else:
                target = tensor.float32_tensor
            target.values.extend(np.atleast_1d(value).tolist())
        # Map entries sorted by key: without it, their order is the hash table's, which
        # differs from process to process (and so between a server's workers).
        yield frame(record.SerializeToString(deterministic=True))
