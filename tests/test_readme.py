"""Every ```python block of README.md runs as written, in order, in one fresh interpreter.

The blocks share one namespace, as a reader pasting them into one session would, and run
in a temporary directory, so the files they write land there. A block whose first line is
``# requires a GPU`` is not run where no GPU is usable; the test says so in a warning.
Tracebacks point at README.md's own lines.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest

README = Path(__file__).parents[1] / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
GPU_MARK = "# requires a GPU"
TIMEOUT_S = 120

# Run in the child: exec each block with its README line numbers, stop at the first failure.
DRIVER = """
import json, sys, traceback
path, blocks = sys.argv[1], json.loads(sys.argv[2])
namespace = {"__name__": "__main__"}
for number, line, source in blocks:
    print(f"running block {number} (line {line})", file=sys.stderr, flush=True)
    code = compile("\\n" * (line - 1) + source, path, "exec")
    try:
        exec(code, namespace)
    except BaseException:
        print(f"block {number} (README.md line {line}) failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


class Block(NamedTuple):
    """One ```python block: its number (from 1), its first line in the file, its code."""

    number: int
    line: int
    source: str


def python_blocks(text: str) -> list[Block]:
    """Every ```python block of a Markdown text, in order."""
    return [Block(number, text.count("\n", 0, match.start(1)) + 1, match.group(1))
            for number, match in enumerate(FENCE.finditer(text), start=1)]


def runnable(blocks: list[Block], has_gpu: bool) -> tuple[list[Block], list[str]]:
    """The blocks to run here, and why each other one is left out."""
    kept, reasons = [], []
    for block in blocks:
        if block.source.startswith(GPU_MARK) and not has_gpu:
            reasons.append(f"README.md python block {block.number} (line {block.line}) not "
                           f"run: it is marked '{GPU_MARK}' and no GPU is usable here")
        else:
            kept.append(block)
    return kept, reasons


def run_blocks(path: Path, blocks: list[Block], cwd: Path) -> str | None:
    """Run ``blocks`` of the file ``path`` in one new interpreter; None, or what failed."""
    payload = json.dumps([list(block) for block in blocks])
    try:
        result = subprocess.run([sys.executable, "-c", DRIVER, str(path), payload], cwd=cwd,
                                capture_output=True, text=True, timeout=TIMEOUT_S,
                                check=False)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr or b""  # bytes even in text mode
        started = (stderr.decode(errors="replace") if isinstance(stderr, bytes)
                   else stderr).strip().splitlines()
        return (f"timed out after {TIMEOUT_S} s, "
                f"{started[-1] if started else 'before the first block'}")
    if result.returncode == 0:
        return None
    last = result.stderr.rfind("running block")
    return f"exit code {result.returncode}, {result.stderr[max(last, 0):][-6000:]}"


def test_readme_python_blocks_run_in_order(tmp_path):
    from gpuknn import _backend

    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    kept, reasons = runnable(blocks, _backend.has_gpu())
    for reason in reasons:
        warnings.warn(reason, stacklevel=1)
    failure = run_blocks(README, kept, tmp_path)  # TIMEOUT_S is the hang guard
    if failure:
        pytest.fail(f"README.md's python blocks, run in order: {failure}", pytrace=False)


def test_a_broken_block_fails_with_its_number_and_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n```python\nvalue = 41\n```\n\ntext\n\n"
                      "```python\nvalue += 1\nassert value == 43, f'got {value}'\n```\n")
    blocks = python_blocks(readme.read_text())
    assert [(b.number, b.line) for b in blocks] == [(1, 4), (2, 10)]
    failure = run_blocks(readme, blocks, tmp_path)
    assert failure is not None
    assert "block 2 (README.md line 10) failed" in failure
    assert "AssertionError: got 42" in failure
    assert f'File "{readme}", line 11' in failure  # the README's own line
    assert "assert value == 43" in failure  # and its code, read from the README


def test_blocks_marked_for_a_gpu_are_left_out_only_without_one():
    blocks = python_blocks("```python\nx = 1\n```\n```python\n# requires a GPU\ny = 2\n```\n")
    kept, reasons = runnable(blocks, has_gpu=False)
    assert [b.number for b in kept] == [1]
    assert len(reasons) == 1 and "block 2 (line 5) not run" in reasons[0]
    assert runnable(blocks, has_gpu=True) == (blocks, [])
