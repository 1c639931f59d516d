"""Messages that point at the fix (issue 13): one blank-line rule on every CSV path, text
read as RecordIO, the CSV label column, the ml root's paths, training logs, and the
wording of hyperparameters, k and row numbers.

Training jobs run in-process through :func:`gpuknn.train.main` (the subprocess contract
is ``tests/test_train.py``'s); their log is read with ``caplog``.
"""

from __future__ import annotations

import gzip
import io as pyio
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from gpuknn import KNN, DataError, HyperparameterError, KNNModel, train
from gpuknn import io as data_io
from gpuknn.serving import formats, transform

CSV = "text/csv"
JSONLINES = "application/jsonlines"
ROWS = b"1,0.5,0.25,2\n0,1.5,0.75,3\n1,2.5,1.25,4\n"  # label first, then 3 features


class _Named(pyio.BytesIO):
    name = "data.csv"


def csv_rows(n: int, d: int, seed: int = 0) -> bytes:
    """``n`` CSV rows: a 0/1 label, then ``d`` features."""
    rng = np.random.default_rng(seed)
    table = np.column_stack([rng.integers(0, 2, n), rng.random((n, d))])
    return "".join(",".join(f"{v:g}" for v in row) + "\n" for row in table).encode()


@pytest.fixture(scope="module")
def model() -> KNNModel:
    """A classifier over 3 features (from ROWS-like data)."""
    X, y = data_io.read(_Named(csv_rows(40, 3)), CSV)
    return KNN(k=3, predictor_type="classifier", sample_size=100, device="cpu").fit(
        X, y).fitted_model


# -- 1. one blank-line rule on every path --------------------------------------------------------
TRAILING = [b"\n", b"\n\n", b"\n\n\n", b"\r\n", b"\r\n\r\n", b"\n  \n"]
INSIDE = [(b"\n" + ROWS, 1), (ROWS[:13] + b"\n" + ROWS[13:], 2),
          (ROWS[:13] + b"   \n" + ROWS[13:], 2), (ROWS + b"\n" + ROWS + b"\n\n", 4)]
TRAILING_IDS = ["one", "two", "three", "crlf", "two-crlf", "spaces"]
INSIDE_IDS = ["first", "between", "spaces-between", "between-and-at-the-end"]


def every_path(text: bytes, tmp_path: Path, model: KNNModel) -> dict[str, int]:
    """Rows read from ``text`` (label first) by each path, or the DataError raised."""
    unlabelled = b"\n".join(line.split(b",", 1)[-1] for line in text.split(b"\n"))
    file = tmp_path / "data.csv"
    file.write_bytes(text)
    query_file = tmp_path / "queries" / "q.csv"
    query_file.parent.mkdir(exist_ok=True)
    query_file.write_bytes(unlabelled)
    paths = {
        "io.read": lambda: data_io.read(file, CSV)[0].shape[0],
        "io.iter_batches": lambda: sum(X.shape[0] for X, _ in data_io.iter_batches(
            file, CSV, batch_size=1)),
        "KNN.fit": lambda: KNN(k=1, predictor_type="classifier", sample_size=100,
                               device="cpu").fit(file, content_type=CSV).fitted_model.rows_seen,
        "invocations (fast path)": lambda: formats.decode_request(unlabelled, CSV, 3).shape[0],
        "invocations (strict path)": lambda: formats.decode_request(
            text, "text/csv; label_size=1", 3).shape[0],
        "transform (Line)": lambda: _transform(model, query_file, tmp_path / "out1", "Line"),
        "transform (None)": lambda: _transform(model, query_file, tmp_path / "out2", "None"),
    }
    outcome = {}
    for name, run in paths.items():
        try:
            outcome[name] = run()
        except DataError as err:
            outcome[name] = str(err)
    return outcome


def _transform(model: KNNModel, source: Path, output: Path, split: str) -> int:
    job = transform.TransformJob(source, output, CSV, split_type=split)
    return transform.run(model, job, progress=False).rows


@pytest.mark.parametrize("end", TRAILING, ids=TRAILING_IDS)
def test_blank_lines_at_the_end_are_ignored_on_every_path(tmp_path, model, end):
    outcome = every_path(ROWS.rstrip(b"\n") + end, tmp_path, model)
    assert outcome == dict.fromkeys(outcome, 3)


@pytest.mark.parametrize(("text", "line"), INSIDE, ids=INSIDE_IDS)
def test_a_blank_line_before_or_between_rows_is_an_empty_line_on_every_path(
        tmp_path, model, text, line):
    outcome = every_path(text, tmp_path, model)
    for path, result in outcome.items():
        assert isinstance(result, str), (path, result)
        assert f"line {line}: empty line" in result, (path, result)
        assert "remove it" in result and "not a number" not in result, (path, result)


def test_a_training_job_accepts_a_file_ending_in_an_extra_newline(tmp_path, caplog):
    root = _job(tmp_path, {"k": "1", "predictor_type": "classifier", "sample_size": "100"})
    (_data(root) / "train.csv").write_bytes(csv_rows(50, 3) + b"\n")
    assert _run(root, caplog) == 0, _failure(root)


def test_a_training_job_names_an_empty_line_between_rows(tmp_path, caplog):
    root = _job(tmp_path, {"k": "1", "predictor_type": "classifier", "sample_size": "100"})
    rows = csv_rows(50, 3)
    (_data(root) / "train.csv").write_bytes(rows + b"\n" + rows)
    assert _run(root, caplog) == 1
    assert "train.csv: line 51: empty line" in _failure(root)


def test_blank_lines_across_block_boundaries(tmp_path, monkeypatch):
    """Blank lines held back at the end of one block meet the next block's rows."""
    monkeypatch.setattr(data_io.text, "BLOCK_BYTES", 16)
    rows = csv_rows(30, 3)
    path = tmp_path / "b.csv"
    path.write_bytes(rows + b"\n" * 40)
    assert data_io.read(path, CSV)[0].shape == (30, 3)
    path.write_bytes(rows + b"\n" * 40 + rows)
    with pytest.raises(DataError, match=r"b\.csv: line 31: empty line"):
        data_io.read(path, CSV)


@pytest.mark.parametrize("text", [b'\n{"features": [1, 2]}\n\n{"features": [3, 4]}\n\n',
                                  b'{"features": [1, 2]}\r\n  \r\n{"features": [3, 4]}'])
def test_json_lines_skips_blank_lines_anywhere(text):
    X, _ = data_io.read(pyio.BytesIO(text), JSONLINES)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(formats.decode_request(text, JSONLINES, 2), X)


# -- 2. text read as RecordIO --------------------------------------------------------------------
def _says_text_and_the_setting(message: str) -> None:
    assert "found text" in message and "'1,0.5,0.25,2" in message, message
    assert '"ContentType": "text/csv"' in message and "inputdataconfig.json" in message
    assert 'content_type="text/csv"' in message


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_csv_read_with_the_default_content_type_says_it_is_text(tmp_path, compress):
    path = tmp_path / ("train.csv.gz" if compress else "train.csv")
    path.write_bytes(gzip.compress(ROWS) if compress else ROWS)
    with pytest.raises(DataError) as info:
        KNN(k=1, predictor_type="classifier", sample_size=10).fit(path)
    _says_text_and_the_setting(str(info.value))


def test_text_shorter_than_a_record_header_says_it_is_text(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_bytes(b"1,2\n")
    with pytest.raises(DataError, match="found text"):
        data_io.read(path)


def test_binary_garbage_keeps_the_magic_number_message(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError) as info:
        data_io.read(path)
    assert "magic number 0xCED7230A" in str(info.value)
    assert "found text" not in str(info.value)


def test_a_job_without_a_content_type_reading_csv_names_the_setting(tmp_path, caplog):
    root = _job(tmp_path, {"k": "1", "predictor_type": "classifier", "sample_size": "10"},
                channels={"train": {"TrainingInputMode": "File"}})
    (_data(root) / "train.csv").write_bytes(ROWS)
    assert _run(root, caplog) == 1
    _says_text_and_the_setting(_failure(root))


# -- 3. the CSV label column -------------------------------------------------------------------
def test_fit_logs_the_label_column_and_feature_count(tmp_path, caplog):
    path = tmp_path / "train.csv"
    path.write_bytes(csv_rows(20, 16))
    with caplog.at_level(logging.INFO, logger="gpuknn"):
        KNN(k=1, predictor_type="classifier", sample_size=100, device="cpu").fit(
            path, content_type=CSV)
    assert "train.csv: CSV: column 1 is the label, 16 features per row" in caplog.text


def test_a_training_job_logs_the_label_column_and_feature_count(tmp_path, caplog):
    root = _job(tmp_path, {"k": "1", "predictor_type": "classifier", "sample_size": "100"})
    (_data(root) / "train.csv").write_bytes(csv_rows(20, 16))
    assert _run(root, caplog) == 0, _failure(root)
    assert "CSV: column 1 is the label, 16 features per row" in caplog.text


def test_feature_dim_equal_to_the_csv_columns_asks_about_the_label(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(csv_rows(20, 16))
    with pytest.raises(HyperparameterError) as info:
        KNN(k=1, predictor_type="classifier", sample_size=100, feature_dim=17,
            device="cpu").fit(path, content_type=CSV)
    message = str(info.value)
    assert "'feature_dim' is 17 but" in message and "16 features per row" in message
    assert "One column short: was the label column left out?" in message


def test_a_test_channel_without_its_label_asks_about_the_label(tmp_path, caplog):
    root = _job(tmp_path, {"k": "1", "predictor_type": "classifier", "sample_size": "100"},
                channels={"train": {"ContentType": CSV}, "test": {"ContentType": CSV}})
    (_data(root) / "train.csv").write_bytes(csv_rows(20, 4))
    unlabelled = b"".join(line.split(b",", 1)[1] + b"\n"
                          for line in csv_rows(5, 4).splitlines())
    (_data(root, "test") / "test.csv").write_bytes(unlabelled)
    assert _run(root, caplog) == 1
    failure = _failure(root)
    assert "test records have 3 features; the model was trained on 4" in failure
    assert "was the label column left out?" in failure


@pytest.mark.parametrize(("body", "question"), [
    (b"1,0.5,0.25,2\n", "One column more: do the rows include the label?"),
    (b"0.5,0.25\n", "One column short: inference rows carry every feature and no label"),
])
def test_a_request_one_column_off_asks_about_the_label(model, body, question):
    with pytest.raises(DataError) as info:
        formats.decode_request(body, CSV, model.feature_dim)
    assert question in str(info.value)


def test_a_width_off_by_more_than_one_has_no_label_question(model):
    with pytest.raises(DataError) as info:
        formats.decode_request(b"1,2,3,4,5\n", CSV, model.feature_dim)
    assert "rows have 5 features; the model expects 3." == str(info.value).split(": ", 1)[1]


def test_transform_one_column_more_asks_about_the_label(model, tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(ROWS)
    with pytest.raises(DataError, match="do the rows include the label"):
        _transform(model, source, tmp_path / "out", "Line")


# -- 4. paths ----------------------------------------------------------------------------------
def test_a_mistyped_ml_root_is_named_and_nothing_is_created(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.ERROR):
        assert train.main("nope") == 1
    assert not (tmp_path / "nope").exists()
    assert f"{Path.cwd() / 'nope'}: the ml root does not exist" in caplog.text
    assert "'train' channel" not in caplog.text


def test_a_missing_hyperparameters_file_is_named(tmp_path, caplog):
    root = _job(tmp_path, {})
    (root / "input" / "config" / "hyperparameters.json").unlink()
    (_data(root) / "train.csv").write_bytes(ROWS)
    assert _run(root, caplog) == 1
    failure = _failure(root)
    assert "hyperparameters.json: no such file" in failure
    assert "invalid hyperparameters" not in failure


# -- 5. training logs --------------------------------------------------------------------------
def test_a_user_mistake_is_logged_once_without_a_traceback(tmp_path, caplog):
    root = _job(tmp_path, {"k": "ten", "predictor_type": "classifier", "sample_size": "10"})
    (_data(root) / "train.csv").write_bytes(ROWS)
    assert _run(root, caplog) == 1
    assert caplog.text.count("'k' hyperparameter must be") == 1, caplog.text
    assert "Traceback" not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)


def test_an_internal_error_logs_its_traceback_but_not_in_the_failure_file(
        tmp_path, caplog, monkeypatch):
    def broken(env, *, gpus=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train, "train", broken)
    root = _job(tmp_path, {"k": "1", "predictor_type": "classifier", "sample_size": "10"})
    assert _run(root, caplog) == 1
    assert "Traceback" in caplog.text and "RuntimeError: a bug" in caplog.text
    failure = _failure(root)
    assert "Internal error (RuntimeError: a bug)" in failure and "Traceback" not in failure


# -- 6. hyperparameters, k, rows ---------------------------------------------------------------
def test_epochs_reads_naturally():
    with pytest.raises(HyperparameterError) as info:
        KNN(k=1, predictor_type="classifier", sample_size=10, epochs="2")
    assert info.value.problems == [
        "The 'epochs' hyperparameter must be 1 (k-NN makes one pass over the data). Got 2."]


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("predictor_type", "classify", "must be classifier or regressor. Got 'classify'."),
    ("index_metric", "l1", "must be one of L2, INNER_PRODUCT, COSINE. Got 'l1'."),
    ("k", "0", "must be an integer in [1, 2048]. Got 0."),
])
def test_choices_and_values_read_naturally(name, value, expected):
    values = {"k": 1, "predictor_type": "classifier", "sample_size": 10, name: value}
    with pytest.raises(HyperparameterError) as info:
        KNN(**values)
    assert info.value.problems == [f"The {name!r} hyperparameter {expected}"]


def test_k_above_sample_size_is_refused_before_any_data_is_read():
    with pytest.raises(HyperparameterError, match=r"'k' \(50\) must not exceed 'sample_size' "
                                                  r"\(20\)"):
        KNN(k=50, predictor_type="classifier", sample_size=20)


def test_k_above_the_rows_of_the_data_says_how_many_rows_there_are(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(csv_rows(20, 3))
    with pytest.raises(DataError, match="k=50 but the training data has only 20 rows"):
        KNN(k=50, predictor_type="classifier", sample_size=100, device="cpu").fit(
            path, content_type=CSV)


def test_rows_are_0_based_and_say_so_lines_are_1_based(model, tmp_path):
    with pytest.raises(DataError, match=r"request body: row 1 \(0-based\) with NaN"):
        formats.check_rows(np.array([[1, 2, 3], [np.nan, 0, 0]], np.float32), 3)
    with pytest.raises(DataError, match=r"instance 1 \(0-based\): features must be a list"):
        data_io.read(pyio.BytesIO(b'{"instances": [{"features": [1]}, {"features": [1, "x"]}]}'),
                     "application/json")
    path = tmp_path / "bad.csv"
    path.write_bytes(b"1,2,3\n1,x,3\n")
    with pytest.raises(DataError, match=r"bad.csv: line 2, column 2: 'x' is not a number"):
        data_io.read(path, CSV)


# -- helpers -----------------------------------------------------------------------------------
def _job(tmp_path: Path, hyperparameters: dict[str, str],
         channels: dict[str, dict[str, str]] | None = None) -> Path:
    root = tmp_path / "ml"
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channels = {"train": {"ContentType": CSV}} if channels is None else channels
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    return root


def _data(root: Path, channel: str = "train") -> Path:
    path = root / "input" / "data" / channel
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(root: Path, caplog: pytest.LogCaptureFixture) -> int:
    with caplog.at_level(logging.INFO):
        return train.main(root)


def _failure(root: Path) -> str:
    path = root / "output" / "failure"
    return path.read_text() if path.exists() else ""

