"""The ``gpuknn`` console script, run as a real subprocess."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

import pytest

from gpuknn import cli

SUBCOMMANDS = ("quickstart", "train", "serve", "transform", "bench")


def gpuknn(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("gpuknn")
    command = [executable] if executable else [sys.executable, "-m", "gpuknn.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_quickstart_reaches_the_reference_accuracy():
    result = gpuknn("quickstart", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "[3/3] predicted 4000 rows" in result.stdout
    accuracy = re.search(r"test accuracy: ([0-9.]+)", result.stdout)
    assert accuracy and float(accuracy.group(1)) == pytest.approx(0.9565, abs=5e-5)


@pytest.mark.parametrize("index_type", ["faiss.IVFFlat", "faiss.IVFPQ"])
def test_quickstart_with_ivf_indexes(index_type):
    result = gpuknn("quickstart", "--device", "cpu", "--k", "10", "--index-type", index_type)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.9  # exact k=10 gives 0.944; measured 0.941 (IVFFlat), 0.933 (IVFPQ)


def test_cli_errors_are_one_line_not_a_traceback():
    result = gpuknn("quickstart", "--k", "0")
    assert result.returncode == 2
    assert "gpuknn quickstart: error:" in result.stderr
    assert "'k' hyperparameter must be an integer in [1, 2048]. Got 0." in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help():
    assert gpuknn("--version").stdout.startswith("gpuknn ")
    assert "quickstart" in gpuknn("--help").stdout


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers, by name, walked from the real parser."""
    actions = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option of a parser but --help."""
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def test_top_level_help_is_plain_text_with_every_command():
    result = gpuknn("--help")
    assert result.returncode == 0, result.stderr
    assert "``" not in result.stdout  # no RST markup from a docstring
    assert re.search(r"SageMaker's\s+built-in k-NN", result.stdout)
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.MULTILINE), name  # + summary
        assert re.search(rf"^\s+gpuknn {name}\b", result.stdout, re.MULTILINE), name  # example


def test_every_subcommand_is_listed():
    assert tuple(subparsers()) == SUBCOMMANDS


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_has_a_description_an_example_and_help_for_every_option(name):
    parser = subparsers()[name]
    assert parser.description and len(parser.description.split()) >= 30, "one paragraph"
    text = parser.format_help()
    assert "``" not in text
    body = text.split("\n\n", 1)[1]  # past the usage
    assert re.search(rf"^\s+gpuknn {name}\b", body, re.MULTILINE), "an example line"
    for action in options(parser):
        assert action.help and action.help.strip(), f"{name} {action.option_strings}: no help"


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n != "bench"])  # bench: runner.py
def test_every_option_says_its_default(name):
    parser = subparsers()[name]
    formatter = parser.formatter_class(parser.prog)
    for action in options(parser):
        if action.required or action.default is False:  # required, or a flag that is off
            continue
        shown = formatter._get_help_string(action) % {"default": action.default}
        assert "default" in shown.lower(), f"{name} {action.option_strings}: {shown!r}"


def test_help_shows_defaults_and_keeps_example_line_breaks():
    result = gpuknn("transform", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "rows per search batch with split types Line and RecordIO (default: 4096)" in text
    assert "(default: application/jsonlines)" in text
    assert "\n  gpuknn transform --model model.tar.gz --input data/ --output out/ \\\n" \
           in result.stdout
    serve = " ".join(gpuknn("serve", "--help").stdout.split())
    assert "(default: 0.0.0.0)" in serve and "(default: auto)" in serve


def test_train_help_names_what_it_reads_and_writes():
    result = gpuknn("train", "--help")
    assert result.returncode == 0, result.stderr
    for path in ("input/config/hyperparameters.json", "input/config/inputdataconfig.json",
                 "input/config/resourceconfig.json", "input/data/<channel>/", "model/",
                 "output/failure", "output/data/metrics.json", "$GPUKNN_ML_ROOT", "/opt/ml"):
        assert path in result.stdout, path


def test_serve_help_names_its_routes_and_environment():
    result = gpuknn("serve", "--help")
    assert result.returncode == 0, result.stderr
    for name in ("GET /ping", "POST /invocations", "SAGEMAKER_BIND_TO_PORT",
                 "SAGEMAKER_MAX_PAYLOAD_IN_MB", "$GPUKNN_ML_ROOT"):
        assert name in " ".join(result.stdout.split()), name


def test_readme_hyperparameter_table_is_generated_from_the_table():
    from pathlib import Path

    from gpuknn.hyperparameters import markdown_table

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("<!-- hyperparameters:start -->")[1]
    section = section.split("<!-- hyperparameters:end -->")[0]
    assert section.strip() == markdown_table().strip()
