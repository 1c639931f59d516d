"""The SageMaker k-NN hyperparameters as one declarative table.

The table drives the Python API (:class:`gpuknn.KNN` keyword arguments), the
training container (``hyperparameters.json``, where every value is a string),
the README's hyperparameter table and every error message. Values are accepted
as Python values or in their string form (``"10"``, ``"auto"``,
``"faiss.IVFPQ"``). All problems are collected and raised together in one
:class:`~gpuknn.errors.HyperparameterError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuknn.errors import HyperparameterError

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only, as SageMaker's schema
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

PQ_M_CHOICES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
INDEX_TYPES = ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")
MAX_K = 2048
# SageMaker-internal keys found in the container's default-conf.json or sent by HPO.
# They are accepted so that existing job definitions run; only the nprobe one has an effect.
SAGEMAKER_INTERNAL_KEYS = {
    "_faiss_index_nprobe": "faiss_index_nprobe",
    "_tuning_objective_metric": None,
    "_kvstore": None,
    "_log_level": None,
    "_num_gpus": None,
    "_num_kv_servers": None,
    "_enable_profiler": None,
}


class _InvalidValueError(Exception):
    """Raised by a parser with the 'what is allowed' part of the message."""


def _parse_int(value: Any, low: int, high: int | None) -> int:
    allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    if isinstance(value, bool):
        raise _InvalidValueError(allowed)
    if isinstance(value, str):
        text = value.strip()
        if not _INTEGER_TEXT.fullmatch(text):
            raise _InvalidValueError(allowed)
        value = int(text)
    elif isinstance(value, (float, np.floating)):
        if not value.is_integer():
            raise _InvalidValueError(allowed)
        value = int(value)
    elif not isinstance(value, int) and not hasattr(value, "__index__"):
        raise _InvalidValueError(allowed)
    value = int(value)
    if value < low or (high is not None and value > high):
        raise _InvalidValueError(allowed)
    return value


def _int_parser(low: int, high: int | None = None) -> Callable[[Any], int]:
    return lambda value: _parse_int(value, low, high)


def _int_or_auto(low: int) -> Callable[[Any], int | str]:
    def parse(value: Any) -> int | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return _parse_int(value, low, None)
        except _InvalidValueError:
            raise _InvalidValueError(f'"auto" or an integer >= {low}') from None

    return parse


def _choice(options: tuple[Any, ...], why: str = "") -> Callable[[Any], Any]:
    allowed = _either(options) + (f" ({why})" if why else "")

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
        if isinstance(value, bool):
            raise _InvalidValueError(allowed)
        for option in options:
            if isinstance(option, int):
                try:
                    if _parse_int(value, option, option) == option:
                        return option
                except _InvalidValueError:
                    continue
            elif value == option:
                return option
        raise _InvalidValueError(allowed)

    return parse


def _either(options: tuple[Any, ...]) -> str:
    """Choices as a sentence reads them: ``1``, ``sign or fjlt``, ``one of 1, 2, 4``."""
    names = [str(option) for option in options]
    if len(names) <= 2:
        return " or ".join(names)
    return "one of " + ", ".join(names)


def _shown(value: Any) -> str:
    """A given value as the message quotes it: numbers bare, even as strings ("2" -> 2)."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        return value.strip()
    return repr(value)


@dataclass(frozen=True)
class Spec:
    """One row of the hyperparameter table."""

    name: str
    parse: Callable[[Any], Any]
    allowed: str
    default: Any = None
    required: bool = False
    doc: str = ""
    extension: bool = False


TABLE: tuple[Spec, ...] = (
    Spec("feature_dim", _int_or_auto(1), '"auto" or integer >= 1', "auto",
         doc="Number of features; \"auto\" takes it from the data, an integer must match it."),
    Spec("k", _int_parser(1, MAX_K), f"integer in [1, {MAX_K}]", required=True,
         doc="Number of nearest neighbours; may be edited in the saved model's JSON."),
    Spec("predictor_type", _choice(("classifier", "regressor")), "classifier | regressor",
         required=True, doc="Majority vote of the neighbours' labels, or their mean."),
    Spec("sample_size", _int_parser(1), "integer >= 1", required=True,
         doc="Rows kept by uniform reservoir sampling; larger than the data keeps all rows."),
    Spec("dimension_reduction_type", _choice(("sign", "fjlt")), "sign | fjlt",
         doc="Random-sign projection or fast Johnson-Lindenstrauss transform; none if unset."),
    Spec("dimension_reduction_target", _int_parser(1), "integer in [1, feature_dim)",
         doc="Dimension after reduction; required if and only if a type is set."),
    Spec("index_type", _choice(INDEX_TYPES), " | ".join(INDEX_TYPES), "faiss.Flat",
         doc="Exact search, inverted file, or inverted file with product quantisation."),
    Spec("index_metric", _choice(("L2", "INNER_PRODUCT", "COSINE")),
         "L2 | INNER_PRODUCT | COSINE", "L2", doc="Similarity used for the search."),
    Spec("faiss_index_ivf_nlists", _int_or_auto(1), '"auto" or integer >= 1', "auto",
         doc="IVF lists; \"auto\" is round(sqrt(number of sampled rows))."),
    Spec("faiss_index_pq_m", _choice(PQ_M_CHOICES), ", ".join(map(str, PQ_M_CHOICES)),
         doc="PQ sub-vectors (IVFPQ only); the dimension is padded or the reduction target "
             "raised to a multiple. Default: the largest allowed value <= dimension / 4."),
    Spec("mini_batch_size", _int_parser(1), "integer >= 1", 5000,
         doc="Rows per batch when streaming training data and scoring."),
    Spec("epochs", _choice((1,), why="k-NN makes one pass over the data"), "1", 1,
         doc="k-NN makes a single pass over the data."),
    Spec("faiss_index_nprobe", _int_parser(1, MAX_K), f"integer in [1, {MAX_K}]", 5,
         extension=True, doc="IVF lists probed per query (SageMaker's internal default, 5)."),
    Spec("seed", _int_parser(0, 2**32 - 1), "integer in [0, 4294967295]", 0, extension=True,
         doc="Seed of the sampler and the projections; equal seeds give equal models."),
)
SPECS: dict[str, Spec] = {spec.name: spec for spec in TABLE}


@dataclass(frozen=True)
class Hyperparameters:
    """Validated hyperparameters, with defaults filled in. Build with :func:`parse`."""

    k: int
    predictor_type: str
    sample_size: int
    feature_dim: int | str = "auto"
    dimension_reduction_type: str | None = None
    dimension_reduction_target: int | None = None
    index_type: str = "faiss.Flat"
    index_metric: str = "L2"
    faiss_index_ivf_nlists: int | str = "auto"
    faiss_index_pq_m: int | None = None
    mini_batch_size: int = 5000
    epochs: int = 1
    faiss_index_nprobe: int = 5
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """All values as a JSON-ready dict (unset optional values are omitted)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_strings(self) -> dict[str, str]:
        """The ``hyperparameters.json`` form: every value a string."""
        return {k: str(v) for k, v in self.to_dict().items()}

    def replace(self, **changes: Any) -> Hyperparameters:
        """A copy with ``changes`` applied and validated again."""
        return parse({**self.to_dict(), **changes})


def parse(values: Mapping[str, Any]) -> Hyperparameters:
    """Validate hyperparameters given as Python values or SageMaker strings.

    Parameters
    ----------
    values : mapping of str to object
        Hyperparameter names to values. ``None`` means "not set".

    Returns
    -------
    Hyperparameters

    Raises
    ------
    HyperparameterError
        Listing every unknown name, bad value and broken cross-field rule.
    """
    problems: list[str] = []
    parsed: dict[str, Any] = {}
    given: set[str] = set()
    for raw_name, value in values.items():
        name = _canonical_name(raw_name, problems)
        if name is None or value is None:
            continue
        given.add(name)
        spec = SPECS[name]
        try:
            parsed[name] = spec.parse(value)
        except _InvalidValueError as err:
            problems.append(f"The {raw_name!r} hyperparameter must be {err}. "
                            f"Got {_shown(value)}.")
    for spec in TABLE:
        if spec.required and spec.name not in given:
            allowed = spec.allowed.replace(" | ", " or ")
            problems.append(f"The {spec.name!r} hyperparameter is required ({allowed}).")
    invalid = given - parsed.keys()
    problems.extend(_cross_field_problems(parsed, invalid))
    if problems:
        raise HyperparameterError(problems)
    return Hyperparameters(**parsed)


def _canonical_name(name: str, problems: list[str]) -> str | None:
    if name in SPECS:
        return name
    if name in SAGEMAKER_INTERNAL_KEYS:
        return SAGEMAKER_INTERNAL_KEYS[name]
    import difflib  # noqa: PLC0415 - only needed to word an error

    close = difflib.get_close_matches(name, list(SPECS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    problems.append(
        f"Unknown hyperparameter {name!r}.{hint} Known: {', '.join(SPECS)}."
    )
    return None


def _cross_field_problems(hp: dict[str, Any], invalid: set[str]) -> list[str]:
    """Rules between hyperparameters; a rule is skipped when one of its values is invalid."""
    problems = []
    reduction, target = hp.get("dimension_reduction_type"), hp.get("dimension_reduction_target")
    reduction_ok = not invalid & {"dimension_reduction_type", "dimension_reduction_target"}
    if reduction_ok and reduction and target is None:
        problems.append("'dimension_reduction_target' is required when "
                        f"'dimension_reduction_type' is set (got type {reduction!r}).")
    if reduction_ok and target is not None and not reduction:
        problems.append("'dimension_reduction_target' is set but 'dimension_reduction_type' "
                        "is not: set the type to sign or fjlt, or remove the target.")
    feature_dim = hp.get("feature_dim", "auto")
    if target is not None and feature_dim != "auto" and target >= feature_dim:
        problems.append(f"'dimension_reduction_target' must be smaller than 'feature_dim' "
                        f"({feature_dim}). Got {target}.")
    k, sample_size = hp.get("k"), hp.get("sample_size")
    if k is not None and sample_size is not None and k > sample_size:
        problems.append(f"'k' ({k}) must not exceed 'sample_size' ({sample_size}): the index "
                        "holds at most sample_size rows, so a query cannot have more neighbours. "
                        "Lower k or raise sample_size.")
    index_type = hp.get("index_type", "faiss.Flat")
    if (hp.get("faiss_index_pq_m") is not None and "index_type" not in invalid
            and index_type != "faiss.IVFPQ"):
        problems.append("'faiss_index_pq_m' applies only to index_type faiss.IVFPQ "
                        f"(index_type is {index_type!r}).")
    return problems


def auto_nlists(n_points: int) -> int:
    """``faiss_index_ivf_nlists="auto"``: round(sqrt(n_points)), at least 1."""
    return max(1, round(math.sqrt(n_points)))


def default_pq_m(dim: int) -> int:
    """Default ``faiss_index_pq_m``: the largest allowed value not above ``dim / 4``."""
    return max(m for m in PQ_M_CHOICES if m <= max(1, dim // 4))


def markdown_table() -> str:
    """The hyperparameter table in Markdown, as printed in the README."""
    lines = ["| name | required | allowed | default | meaning |", "|---|---|---|---|---|"]
    for spec in TABLE:
        default = "" if spec.default is None else f"`{spec.default}`"
        name = f"`{spec.name}`" + (" (gpuknn)" if spec.extension else "")
        allowed = spec.allowed.replace("|", "\\|")
        lines.append(f"| {name} | {'yes' if spec.required else 'no'} | {allowed} "
                     f"| {default} | {spec.doc} |")
    return "\n".join(lines)
