"""The ``gpuknn`` console script, run as a real subprocess."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest


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


def test_readme_hyperparameter_table_is_generated_from_the_table():
    from pathlib import Path

    from gpuknn.hyperparameters import markdown_table

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("<!-- hyperparameters:start -->")[1]
    section = section.split("<!-- hyperparameters:end -->")[0]
    assert section.strip() == markdown_table().strip()
