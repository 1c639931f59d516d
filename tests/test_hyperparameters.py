"""The hyperparameter table: Python and SageMaker string forms, defaults, every error."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gpuknn import KNN, ClientError, HyperparameterError, Hyperparameters
from gpuknn.hyperparameters import (
    PQ_M_CHOICES,
    SPECS,
    TABLE,
    auto_nlists,
    default_pq_m,
    markdown_table,
    parse,
)

REQUIRED = {"k": 10, "predictor_type": "classifier", "sample_size": 1000}
# What a SageMaker job's hyperparameters.json carries: every value a string.
REQUIRED_STRINGS = {"k": "10", "predictor_type": "classifier", "sample_size": "1000"}

# The container's logged default-conf.json (2021 image), merged under the user's values.
SAGEMAKER_DEFAULT_CONF = {
    "_kvstore": "dist_async", "_log_level": "info", "_num_gpus": "auto",
    "_num_kv_servers": "1", "_tuning_objective_metric": "", "_faiss_index_nprobe": "5",
    "epochs": "1", "feature_dim": "auto", "faiss_index_ivf_nlists": "auto",
    "index_metric": "L2", "index_type": "faiss.Flat", "mini_batch_size": "5000",
    "_enable_profiler": "false",
}

# Hyperparameters documented by SageMaker (spec section 1.1), written out independently.
SAGEMAKER_NAMES = (
    "feature_dim", "k", "predictor_type", "sample_size", "dimension_reduction_type",
    "dimension_reduction_target", "index_type", "index_metric", "faiss_index_ivf_nlists",
    "faiss_index_pq_m", "mini_batch_size",
)


def with_required(**values):
    return {**REQUIRED, **values}


def problems_of(values) -> list[str]:
    with pytest.raises(HyperparameterError) as info:
        parse(values)
    return info.value.problems


# -- accepted values: (name, Python value, SageMaker string, parsed value, extra context) ------
ACCEPTED = [
    ("k", 1, "1", 1, {}),
    ("k", 10, "10", 10, {}),
    ("k", 2048, "2048", 2048, {"sample_size": 2048}),  # k <= sample_size
    ("predictor_type", "classifier", "classifier", "classifier", {}),
    ("predictor_type", "regressor", "regressor", "regressor", {}),
    ("sample_size", 1, "1", 1, {"k": 1}),
    ("sample_size", 200_000, "200000", 200_000, {}),
    ("sample_size", 10**12, "1000000000000", 10**12, {}),
    ("feature_dim", 54, "54", 54, {}),
    ("feature_dim", "auto", "auto", "auto", {}),
    ("dimension_reduction_type", "sign", "sign", "sign",
     {"dimension_reduction_target": 8}),
    ("dimension_reduction_type", "fjlt", "fjlt", "fjlt",
     {"dimension_reduction_target": 8}),
    ("dimension_reduction_target", 8, "8", 8, {"dimension_reduction_type": "sign"}),
    ("dimension_reduction_target", 1, "1", 1, {"dimension_reduction_type": "fjlt"}),
    ("index_type", "faiss.Flat", "faiss.Flat", "faiss.Flat", {}),
    ("index_type", "faiss.IVFFlat", "faiss.IVFFlat", "faiss.IVFFlat", {}),
    ("index_type", "faiss.IVFPQ", "faiss.IVFPQ", "faiss.IVFPQ", {}),
    ("index_metric", "L2", "L2", "L2", {}),
    ("index_metric", "INNER_PRODUCT", "INNER_PRODUCT", "INNER_PRODUCT", {}),
    ("index_metric", "COSINE", "COSINE", "COSINE", {}),
    ("faiss_index_ivf_nlists", "auto", "auto", "auto", {}),
    ("faiss_index_ivf_nlists", 1, "1", 1, {}),
    ("faiss_index_ivf_nlists", 447, "447", 447, {}),
    *[("faiss_index_pq_m", m, str(m), m, {"index_type": "faiss.IVFPQ"}) for m in PQ_M_CHOICES],
    ("mini_batch_size", 1, "1", 1, {}),
    ("mini_batch_size", 5000, "5000", 5000, {}),
    ("epochs", 1, "1", 1, {}),
    ("faiss_index_nprobe", 1, "1", 1, {}),
    ("faiss_index_nprobe", 2048, "2048", 2048, {}),
    ("seed", 0, "0", 0, {}),
    ("seed", 2**32 - 1, "4294967295", 2**32 - 1, {}),
]


# One test case per value and form: the Python value, and the string hyperparameters.json holds.
ACCEPTED_BY_FORM = [
    pytest.param(name, given, expected, context, id=f"{name}-{form}-{given!r}")
    for name, python_value, string_value, expected, context in ACCEPTED
    for form, given in (("python", python_value), ("string", string_value))
]


@pytest.mark.parametrize(("name", "given", "expected", "context"), ACCEPTED_BY_FORM)
def test_every_hyperparameter_accepts_python_and_string_form(name, given, expected, context):
    hp = parse(with_required(**context, **{name: given}))
    assert getattr(hp, name) == expected
    assert type(getattr(hp, name)) is type(expected)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("k", " 10 ", 10),                      # surrounding whitespace
    ("k", "+10", 10),
    ("k", 10.0, 10),                        # an integral float
    ("k", np.int64(10), 10),                # numpy integers
    ("sample_size", np.int32(17), 17),
    ("feature_dim", "AUTO", "auto"),
    ("feature_dim", " auto ", "auto"),
    ("faiss_index_ivf_nlists", "Auto", "auto"),
    ("predictor_type", " regressor ", "regressor"),
    ("faiss_index_pq_m", " 8 ", 8),
    ("faiss_index_pq_m", 8.0, 8),
])
def test_lenient_but_unambiguous_forms(name, value, expected):
    context = {"index_type": "faiss.IVFPQ"} if name == "faiss_index_pq_m" else {}
    assert getattr(parse(with_required(**context, **{name: value})), name) == expected


def test_sagemaker_logged_hyperparameters_json():
    # From a logged training job: {'feature_dim': '54', 'predictor_type': 'classifier',
    # 'sample_size': '200000', 'k': '10'}, merged over the container's default-conf.json.
    user = {"feature_dim": "54", "predictor_type": "classifier", "sample_size": "200000",
            "k": "10"}
    hp = parse({**SAGEMAKER_DEFAULT_CONF, **user})
    assert hp == Hyperparameters(k=10, predictor_type="classifier", sample_size=200_000,
                                 feature_dim=54)


def test_sagemaker_ivfpq_string_form():
    hp = parse({**REQUIRED_STRINGS, "index_type": "faiss.IVFPQ", "faiss_index_pq_m": "8",
                "faiss_index_ivf_nlists": "auto", "index_metric": "L2"})
    assert (hp.index_type, hp.faiss_index_pq_m, hp.faiss_index_ivf_nlists) == (
        "faiss.IVFPQ", 8, "auto")


def test_defaults_are_filled():
    hp = parse(REQUIRED)
    assert hp.to_dict() == {
        "k": 10, "predictor_type": "classifier", "sample_size": 1000,
        "feature_dim": "auto", "index_type": "faiss.Flat", "index_metric": "L2",
        "faiss_index_ivf_nlists": "auto", "mini_batch_size": 5000, "epochs": 1,
        "faiss_index_nprobe": 5, "seed": 0,
    }
    assert hp.dimension_reduction_type is None
    assert hp.dimension_reduction_target is None
    assert hp.faiss_index_pq_m is None


def test_none_means_not_set():
    hp = parse(with_required(dimension_reduction_type=None, faiss_index_pq_m=None,
                             index_type=None, mini_batch_size=None))
    assert hp == parse(REQUIRED)


@pytest.mark.parametrize("spec", [s for s in TABLE if not s.required], ids=lambda s: s.name)
def test_table_defaults_match_the_dataclass(spec):
    defaults = Hyperparameters(k=1, predictor_type="classifier", sample_size=1)
    assert getattr(defaults, spec.name) == spec.default
    assert getattr(parse(REQUIRED), spec.name) == spec.default


# -- rejected values: (name, bad value, fragment of "what is allowed", extra context) --------
INT_K = "an integer in [1, 2048]"
EPOCHS = "must be 1 (k-NN makes one pass over the data)"
INT_GE1 = "an integer >= 1"
AUTO_GE1 = '"auto" or an integer >= 1'
PQ_LIST = "one of 1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96"
IVFPQ = {"index_type": "faiss.IVFPQ"}
SIGN = {"dimension_reduction_type": "sign"}
REJECTED = [
    # k: out of range, bool, non-integer floats, wrong types, bad strings
    ("k", 0, INT_K, {}),
    ("k", "0", INT_K, {}),
    ("k", -1, INT_K, {}),
    ("k", 2049, INT_K, {}),
    ("k", "2049", INT_K, {}),
    ("k", True, INT_K, {}),
    ("k", False, INT_K, {}),
    ("k", np.True_, INT_K, {}),
    ("k", 2.5, INT_K, {}),
    ("k", "2.5", INT_K, {}),
    ("k", "10.0", INT_K, {}),
    ("k", float("nan"), INT_K, {}),
    ("k", float("inf"), INT_K, {}),
    ("k", "ten", INT_K, {}),
    ("k", "", INT_K, {}),
    ("k", "1e3", INT_K, {}),
    ("k", "1_0", INT_K, {}),
    ("k", "²", INT_K, {}),                 # str.isdigit() is True, int() is not
    ("k", "+-5", INT_K, {}),               # lstrip("+-") leaves digits, int() refuses
    ("k", [10], INT_K, {}),
    ("k", {"k": 10}, INT_K, {}),
    ("k", b"10", INT_K, {}),
    ("k", 10j, INT_K, {}),
    # predictor_type
    ("predictor_type", "classify", "classifier or regressor", {}),
    ("predictor_type", "Classifier", "classifier or regressor", {}),
    ("predictor_type", "", "classifier or regressor", {}),
    ("predictor_type", 1, "classifier or regressor", {}),
    ("predictor_type", True, "classifier or regressor", {}),
    # sample_size
    ("sample_size", 0, INT_GE1, {}),
    ("sample_size", "-5", INT_GE1, {}),
    ("sample_size", True, INT_GE1, {}),
    ("sample_size", 100.5, INT_GE1, {}),
    ("sample_size", "lots", INT_GE1, {}),
    ("sample_size", [1000], INT_GE1, {}),
    # feature_dim
    ("feature_dim", 0, AUTO_GE1, {}),
    ("feature_dim", "0", AUTO_GE1, {}),
    ("feature_dim", -3, AUTO_GE1, {}),
    ("feature_dim", True, AUTO_GE1, {}),
    ("feature_dim", 54.5, AUTO_GE1, {}),
    ("feature_dim", "automatic", AUTO_GE1, {}),
    # dimension_reduction_type
    ("dimension_reduction_type", "pca", "sign or fjlt", {"dimension_reduction_target": 4}),
    ("dimension_reduction_type", "SIGN", "sign or fjlt", {"dimension_reduction_target": 4}),
    ("dimension_reduction_type", 1, "sign or fjlt", {"dimension_reduction_target": 4}),
    # dimension_reduction_target
    ("dimension_reduction_target", 0, INT_GE1, SIGN),
    ("dimension_reduction_target", "-1", INT_GE1, SIGN),
    ("dimension_reduction_target", True, INT_GE1, SIGN),
    ("dimension_reduction_target", 4.5, INT_GE1, SIGN),
    # index_type
    ("index_type", "Flat", "one of faiss.Flat, faiss.IVFFlat, faiss.IVFPQ", {}),
    ("index_type", "faiss.HNSW", "one of faiss.Flat, faiss.IVFFlat, faiss.IVFPQ", {}),
    ("index_type", "faiss.flat", "one of faiss.Flat, faiss.IVFFlat, faiss.IVFPQ", {}),
    # index_metric
    ("index_metric", "l2", "one of L2, INNER_PRODUCT, COSINE", {}),
    ("index_metric", "EUCLIDEAN", "one of L2, INNER_PRODUCT, COSINE", {}),
    ("index_metric", 2, "one of L2, INNER_PRODUCT, COSINE", {}),
    # faiss_index_ivf_nlists
    ("faiss_index_ivf_nlists", 0, AUTO_GE1, {}),
    ("faiss_index_ivf_nlists", "-1", AUTO_GE1, {}),
    ("faiss_index_ivf_nlists", True, AUTO_GE1, {}),
    ("faiss_index_ivf_nlists", 3.5, AUTO_GE1, {}),
    ("faiss_index_ivf_nlists", "sqrt", AUTO_GE1, {}),
    # faiss_index_pq_m: only the listed values
    ("faiss_index_pq_m", 5, PQ_LIST, IVFPQ),
    ("faiss_index_pq_m", "5", PQ_LIST, IVFPQ),
    ("faiss_index_pq_m", 0, PQ_LIST, IVFPQ),
    ("faiss_index_pq_m", 128, PQ_LIST, IVFPQ),
    ("faiss_index_pq_m", True, PQ_LIST, IVFPQ),
    ("faiss_index_pq_m", 8.5, PQ_LIST, IVFPQ),
    ("faiss_index_pq_m", "eight", PQ_LIST, IVFPQ),
    # mini_batch_size
    ("mini_batch_size", 0, INT_GE1, {}),
    ("mini_batch_size", "0", INT_GE1, {}),
    ("mini_batch_size", False, INT_GE1, {}),
    ("mini_batch_size", 0.5, INT_GE1, {}),
    # epochs: a single pass only
    ("epochs", 2, EPOCHS, {}),
    ("epochs", "2", EPOCHS, {}),
    ("epochs", 0, EPOCHS, {}),
    ("epochs", True, EPOCHS, {}),
    # faiss_index_nprobe (and its SageMaker-internal alias)
    ("faiss_index_nprobe", 0, INT_K, {}),
    ("faiss_index_nprobe", 2049, INT_K, {}),
    ("faiss_index_nprobe", True, INT_K, {}),
    ("_faiss_index_nprobe", "0", INT_K, {}),
    # seed
    ("seed", -1, "an integer in [0, 4294967295]", {}),
    ("seed", 2**32, "an integer in [0, 4294967295]", {}),
    ("seed", True, "an integer in [0, 4294967295]", {}),
    ("seed", 1.5, "an integer in [0, 4294967295]", {}),
]


@pytest.mark.parametrize(("name", "value", "allowed", "context"), REJECTED)
def test_every_invalid_value_is_reported(name, value, allowed, context):
    problems = problems_of(with_required(**context, **{name: value}))
    about_value = [p for p in problems if p.startswith(f"The {name!r} hyperparameter must be")]
    assert len(about_value) == 1, problems     # names the parameter
    message = about_value[0]
    assert allowed in message, message         # says what is allowed
    assert message.endswith(f"Got {shown(value)}."), message  # and what was given


def shown(value):
    """How a message quotes a given value: numbers bare, also in their string form."""
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?",
                                               value.strip()):
        return value.strip()
    return repr(value)


@pytest.mark.parametrize(("values", "named"), [
    ({"dimension_reduction_type": "pca", "dimension_reduction_target": 4},
     "dimension_reduction_type"),
    ({"dimension_reduction_type": "SIGN", "dimension_reduction_target": 4},
     "dimension_reduction_type"),
    ({"dimension_reduction_type": "sign", "dimension_reduction_target": 0},
     "dimension_reduction_target"),
    ({"dimension_reduction_type": "fjlt", "dimension_reduction_target": "4.5"},
     "dimension_reduction_target"),
    ({"index_type": "faiss.IVFQP", "faiss_index_pq_m": 8}, "index_type"),
])
def test_an_invalid_value_gives_one_problem_not_a_misleading_cross_field_one(values, named):
    # The type was given (wrongly): "'dimension_reduction_type' is not [set]", "the target is
    # required" or "index_type is 'faiss.Flat'" would send the user after the wrong mistake.
    problems = problems_of(with_required(**values))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"The {named!r} hyperparameter must be")


# -- unknown and missing names --------------------------------------------------------------
@pytest.mark.parametrize(("name", "hint"), [
    ("mini_batch_siz", "Did you mean 'mini_batch_size'?"),
    ("sample_sise", "Did you mean 'sample_size'?"),
    ("index_metrc", "Did you mean 'index_metric'?"),
    ("faiss_index_nlists", "Did you mean 'faiss_index_ivf_nlists'?"),
    ("K", None),
    ("learning_rate", None),
])
def test_unknown_name_is_refused_with_a_hint(name, hint):
    problems = problems_of(with_required(**{name: "1"}))
    assert len(problems) == 1
    message = problems[0]
    assert f"Unknown hyperparameter {name!r}" in message
    if hint is None:
        assert "Did you mean" not in message
    else:
        assert hint in message
    for known in SPECS:  # lists the known names
        assert known in message


@pytest.mark.parametrize("missing", ["k", "predictor_type", "sample_size"])
def test_each_required_hyperparameter(missing):
    values = {name: v for name, v in REQUIRED.items() if name != missing}
    problems = problems_of(values)
    assert len(problems) == 1, problems
    assert f"The {missing!r} hyperparameter is required" in problems[0]
    assert SPECS[missing].allowed.replace(" | ", " or ") in problems[0]


@pytest.mark.parametrize("values", [{}, {"k": None, "predictor_type": None,
                                         "sample_size": None}])
def test_all_required_missing_are_listed(values):
    problems = problems_of(values)
    assert len(problems) == 3
    for name in ("k", "predictor_type", "sample_size"):
        assert sum(repr(name) in p and "required" in p for p in problems) == 1


def test_an_invalid_required_value_is_not_also_reported_missing():
    problems = problems_of(with_required(k="zero"))
    assert len(problems) == 1
    assert "required" not in problems[0]


# -- cross-field rules -----------------------------------------------------------------------
@pytest.mark.parametrize(("values", "fragments"), [
    ({"dimension_reduction_type": "sign"},
     ["'dimension_reduction_target' is required", "'sign'"]),
    ({"dimension_reduction_type": "fjlt", "feature_dim": 64},
     ["'dimension_reduction_target' is required", "'fjlt'"]),
    ({"dimension_reduction_target": 8},
     ["'dimension_reduction_target' is set", "'dimension_reduction_type' is not"]),
    ({"dimension_reduction_target": "8", "feature_dim": "64"},
     ["'dimension_reduction_target' is set", "'dimension_reduction_type' is not"]),
    ({"dimension_reduction_type": "sign", "dimension_reduction_target": 10, "feature_dim": 10},
     ["'dimension_reduction_target' must be smaller than 'feature_dim' (10)", "Got 10"]),
    ({"dimension_reduction_type": "fjlt", "dimension_reduction_target": "11",
      "feature_dim": "10"},
     ["'dimension_reduction_target' must be smaller than 'feature_dim' (10)", "Got 11"]),
    ({"faiss_index_pq_m": 8},
     ["'faiss_index_pq_m' applies only to index_type faiss.IVFPQ", "'faiss.Flat'"]),
    ({"faiss_index_pq_m": "8", "index_type": "faiss.IVFFlat"},
     ["'faiss_index_pq_m' applies only to index_type faiss.IVFPQ", "'faiss.IVFFlat'"]),
    ({"faiss_index_pq_m": 8, "index_type": "faiss.Flat"},
     ["'faiss_index_pq_m' applies only to index_type faiss.IVFPQ", "'faiss.Flat'"]),
])
def test_cross_field_rules(values, fragments):
    problems = problems_of(with_required(**values))
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], problems[0]


@pytest.mark.parametrize("values", [
    {"dimension_reduction_type": "sign", "dimension_reduction_target": 9, "feature_dim": 10},
    {"dimension_reduction_type": "fjlt", "dimension_reduction_target": 500},  # feature_dim auto
    {"faiss_index_pq_m": 8, "index_type": "faiss.IVFPQ"},
    {"faiss_index_pq_m": "96", "index_type": "faiss.IVFPQ", "dimension_reduction_type": "sign",
     "dimension_reduction_target": "100", "feature_dim": "784"},
])
def test_consistent_combinations_pass(values):
    parse(with_required(**values))


# -- every problem in one error --------------------------------------------------------------
def test_all_mistakes_are_reported_together():
    values = {
        "k": "0",                             # out of range
        "predictor_type": "classify",         # unknown choice
        "sample_size": True,                  # bool for an int
        "mini_batch_size": 2.5,               # non-integral float
        "faiss_index_pq_m": 5,                # not an allowed value
        "epochs": 2,                          # a single pass only
        "mini_batch_siz": "10",               # unknown name
        "dimension_reduction_type": "sign",   # without a target
    }
    with pytest.raises(HyperparameterError) as info:
        parse(values)
    problems = info.value.problems
    assert len(problems) == 8, problems
    expectations = [
        ("'k'", "[1, 2048]", "Got 0."),
        ("'predictor_type'", "must be classifier or regressor", "Got 'classify'"),
        ("'sample_size'", ">= 1", "Got True"),
        ("'mini_batch_size'", ">= 1", "Got 2.5"),
        ("'faiss_index_pq_m'", "one of 1, 2, 3, 4, 8", "Got 5"),
        ("'epochs'", "must be 1 (k-NN makes one pass over the data)", "Got 2."),
        ("'mini_batch_siz'", "Did you mean 'mini_batch_size'?", "Unknown"),
        ("'dimension_reduction_target' is required", "'sign'", "set"),
    ]
    for fragments in expectations:
        matching = [p for p in problems if all(f in p for f in fragments)]
        assert len(matching) == 1, (fragments, problems)
    text = str(info.value)
    assert text.startswith("8 invalid hyperparameters:")
    assert all(f"  - {p}" in text for p in problems)


def test_one_problem_is_worded_in_the_singular():
    with pytest.raises(HyperparameterError, match=r"^1 invalid hyperparameter:\n  - "):
        parse(with_required(k=0))


def test_several_mistakes_with_an_unparsable_digit_string_still_collected():
    # "²" passes str.isdigit() but not int(): it must be one more collected problem,
    # not a bare ValueError that hides the other problems.
    with pytest.raises(HyperparameterError) as info:
        parse(with_required(k="²", epochs=2))
    assert len(info.value.problems) == 2


def test_error_classes():
    with pytest.raises(HyperparameterError) as info:
        parse({})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ClientError)
    assert info.value.status_code == 400
    with pytest.raises(ValueError, match="required"):
        parse({})


# -- SageMaker internal keys -----------------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), [
    ("_tuning_objective_metric", "test:accuracy"),
    ("_tuning_objective_metric", ""),
    ("_kvstore", "dist_async"),
    ("_log_level", "info"),
    ("_num_gpus", "auto"),
    ("_num_kv_servers", "1"),
    ("_enable_profiler", "false"),
])
def test_internal_keys_are_accepted_and_ignored(key, value):
    assert parse(with_required(**{key: value})) == parse(REQUIRED)


@pytest.mark.parametrize(("value", "expected"), [("5", 5), ("7", 7), (32, 32)])
def test_internal_nprobe_alias(value, expected):
    hp = parse(with_required(_faiss_index_nprobe=value))
    assert hp.faiss_index_nprobe == expected
    assert "_faiss_index_nprobe" not in hp.to_dict()


def test_whole_default_conf_is_accepted():
    hp = parse({**SAGEMAKER_DEFAULT_CONF, **REQUIRED_STRINGS})
    assert hp == parse(REQUIRED)


# -- round trip, helpers ---------------------------------------------------------------------
ROUND_TRIP = [
    REQUIRED,
    REQUIRED_STRINGS,
    with_required(feature_dim=54, index_type="faiss.IVFPQ", faiss_index_pq_m=8,
                  faiss_index_ivf_nlists=100, faiss_index_nprobe=17, seed=123),
    with_required(predictor_type="regressor", dimension_reduction_type="fjlt",
                  dimension_reduction_target=16, index_metric="COSINE",
                  index_type="faiss.IVFFlat", mini_batch_size=7),
    with_required(dimension_reduction_type="sign", dimension_reduction_target="3",
                  feature_dim="auto", index_metric="INNER_PRODUCT", seed=2**32 - 1),
]


@pytest.mark.parametrize("values", ROUND_TRIP)
def test_to_strings_round_trips_through_parse(values):
    hp = parse(values)
    strings = hp.to_strings()
    assert all(isinstance(v, str) for v in strings.values())
    assert all(v != "None" for v in strings.values())
    assert parse(strings) == hp
    assert parse(hp.to_dict()) == hp


def test_to_strings_is_the_hyperparameters_json_form():
    hp = parse(with_required(index_type="faiss.IVFPQ", faiss_index_pq_m=8))
    strings = hp.to_strings()
    assert strings["k"] == "10"
    assert strings["feature_dim"] == "auto"
    assert strings["index_type"] == "faiss.IVFPQ"
    assert strings["faiss_index_pq_m"] == "8"
    assert "dimension_reduction_type" not in strings


def test_replace_validates_again():
    hp = parse(REQUIRED)
    assert hp.replace(k="20").k == 20
    assert hp.replace(predictor_type="regressor").predictor_type == "regressor"
    with pytest.raises(HyperparameterError):
        hp.replace(k=0)
    with pytest.raises(HyperparameterError):
        hp.replace(faiss_index_pq_m=8)  # still faiss.Flat


@pytest.mark.parametrize(("n_points", "expected"), [
    (0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (100, 10), (1500, 39), (200_000, 447),
    (10**6, 1000),
])
def test_auto_nlists(n_points, expected):
    assert auto_nlists(n_points) == expected


@pytest.mark.parametrize(("dim", "expected"), [
    (1, 1), (4, 1), (7, 1), (8, 2), (12, 3), (16, 4), (32, 8), (54, 12), (64, 16),
    (100, 24), (128, 32), (256, 64), (384, 96), (784, 96), (4096, 96),
])
def test_default_pq_m(dim, expected):
    assert default_pq_m(dim) == expected
    assert expected in PQ_M_CHOICES


def test_markdown_table_lists_every_name():
    table = markdown_table()
    lines = table.splitlines()
    assert lines[0].startswith("| name |")
    assert len(lines) == 2 + len(TABLE)
    for spec in TABLE:
        rows = [line for line in lines if line.startswith(f"| `{spec.name}`")]
        assert len(rows) == 1, spec.name
        assert ("(gpuknn)" in rows[0]) == spec.extension
        assert (" | yes | " in rows[0]) == spec.required
    for name in SAGEMAKER_NAMES:
        assert f"`{name}`" in table
        assert not SPECS[name].extension


# -- the estimator's constructor -------------------------------------------------------------
def test_knn_accepts_the_string_form():
    est = KNN(device="cpu", **REQUIRED_STRINGS, index_type="faiss.IVFPQ",
              faiss_index_pq_m="8", _faiss_index_nprobe="9", _kvstore="dist_async")
    assert est.hyperparameters == parse({**REQUIRED, "index_type": "faiss.IVFPQ",
                                         "faiss_index_pq_m": 8, "faiss_index_nprobe": 9})


@pytest.mark.parametrize(("values", "count"), [
    ({}, 3),
    (with_required(k=0), 1),
    (with_required(k=2049, predictor_type="vote"), 2),
    (with_required(mini_batch_siz=10), 1),
    (with_required(faiss_index_pq_m=5), 1),
    (with_required(faiss_index_pq_m=8), 1),
    (with_required(dimension_reduction_target=4), 1),
])
def test_knn_constructor_raises_the_same_errors(values, count):
    with pytest.raises(HyperparameterError) as from_parse:
        parse(values)
    with pytest.raises(HyperparameterError) as from_knn:
        KNN(device="cpu", **values)
    assert from_knn.value.problems == from_parse.value.problems
    assert len(from_knn.value.problems) == count
