"""CSV decoding (JSON and JSON Lines: :mod:`gpuknn.io.instances`).

CSV has no header, is UTF-8, and holds numbers only. The first ``label_size``
columns are labels. It is read in line-aligned blocks: each block is checked for
UTF-8 and for one column count on every line (vectorised), then parsed by pandas'
C parser. Only when that fails is the block scanned in Python, to name the line
and column of the bad cell.

Blank lines (empty, or only spaces, tabs and ``\\r``) follow one rule on every path
(:func:`gpuknn.io.iter_batches`, ``gpuknn train``, ``/invocations`` and
``gpuknn transform``): at the end of a file or body they are ignored, so one or
several final newlines (``\\n`` or ``\\r\\n``) are fine; anywhere else, before the
first row or between rows, a CSV blank line is an error naming it ("line 5: empty
line"), as it usually means a broken export. JSON Lines skips blank lines anywhere,
as SageMaker's JSON Lines convention does.

Lines are numbered from 1, as editors show them; rows of arrays are 0-based indices,
written "row 5 (0-based)".
"""

from __future__ import annotations

import io
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gpuknn._backend import usable_cores
from gpuknn.errors import DataError
from gpuknn.io.limits import MAX_LINE_BYTES
from gpuknn.io.sources import Stream

BLOCK_BYTES = 8 << 20
Rows = tuple[Any, np.ndarray | None, int]  # features, labels, number of the first line


def iter_csv(stream: Stream, *, label_size: int) -> Iterator[Rows]:
    """Yield ``(features, labels, first_line)`` per block of a CSV stream (lines are 1-based).

    Blocks are read in order and parsed on one thread per core (pandas' parser releases
    the GIL); at most two blocks per thread are in flight, and results come in order.
    """
    if label_size not in (0, 1):
        raise DataError(f"label_size must be 0 or 1 for k-NN (one label per row); got "
                        f"{label_size}")
    blocks = _line_blocks(stream)
    first = next(blocks, None)
    if first is None:
        return
    features, labels, line = _parse_block(first[0], stream.name, first[1], label_size, None)
    yield features, labels, line
    n_cols = features.shape[1] + label_size
    workers = usable_cores()
    with ThreadPoolExecutor(workers) as pool:
        in_flight: deque = deque()
        try:
            for block, line in blocks:
                in_flight.append(pool.submit(_parse_block, block, stream.name, line,
                                             label_size, n_cols))
                if len(in_flight) > 2 * workers:
                    yield in_flight.popleft().result()
        except DataError:
            for future in in_flight:  # a fault in an earlier block is the one to report
                future.result()
            raise
        while in_flight:
            yield in_flight.popleft().result()


def _line_blocks(stream: Stream) -> Iterator[tuple[bytes, int]]:
    """``(block, number of its first line)`` for blocks of whole lines of about BLOCK_BYTES.

    Every block ends with a row: blank lines after a block's last row are held back
    (as the number of the first of them) until the data shows whether they end the file,
    where they are dropped, or come before another row, where they are an error.
    """
    carry = b""
    line = 1
    blank_from: int | None = None  # first line of held-back blank lines
    while chunk := stream.read(BLOCK_BYTES):
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            check_line_length(len(data), stream.name, line)
            carry = data
            continue
        block, carry = data[:cut], data[cut:]
        rows_end = _rows_end(block)
        if rows_end:
            if blank_from is not None:
                raise empty_line(stream.name, blank_from)
            yield block[:rows_end], line
            if rows_end < len(block):
                blank_from = line + block.count(b"\n", 0, rows_end)
        elif blank_from is None:
            blank_from = line
        line += block.count(b"\n")
    if carry.strip():
        if blank_from is not None:
            raise empty_line(stream.name, blank_from)
        yield carry, line


def _rows_end(block: bytes) -> int:
    """The offset just past the last line of ``block`` (which ends with a line end) that
    holds more than whitespace; 0 when every line is blank."""
    last = block.rfind(b"\n", 0, len(block) - 1) + 1
    if block[last:].strip():
        return len(block)  # the common case: the block ends with a row
    text_end = len(block.rstrip())
    return block.index(b"\n", text_end) + 1 if text_end else 0


def empty_line(name: str, line: int) -> DataError:
    """The error for a blank CSV line before the first row or between rows."""
    return DataError(f"{name}: line {line}: empty line (every line must hold a row; remove "
                     "it). Blank lines are allowed only at the end of CSV data")


def check_line_length(length: int, name: str, line: int) -> None:
    """Refuse a line longer than :data:`~gpuknn.io.limits.MAX_LINE_BYTES` (CSV and JSON
    Lines alike), naming it."""
    if length > MAX_LINE_BYTES:
        raise DataError(f"{name}: line {line}: longer than {MAX_LINE_BYTES >> 20} MiB with no "
                        "line end; one line holds one row")


def _parse_block(block: bytes, name: str, line: int, label_size: int, n_cols: int | None):
    _check_utf8(block, name, line)
    counts, first_empty = _fields_per_line(block)
    n_cols = n_cols or int(counts[0])
    bad = np.flatnonzero(counts != n_cols)
    faults = [index for index in (*bad[:1].tolist(), first_empty) if index is not None]
    if faults:
        blank = _first_blank_line(block, min(faults))
        if blank is not None:
            raise empty_line(name, line + blank)
        raise DataError(f"{name}: line {line + bad[0]}: {counts[bad[0]]} columns; earlier lines "
                        f"have {n_cols}")
    if n_cols <= label_size:
        raise DataError(f"{name}: line {line}: {n_cols} column(s) leave no features after "
                        f"{label_size} label column(s)")
    try:
        import pandas as pd  # noqa: PLC0415 - loaded only for CSV

        # beyond float32: infinite, refused by row later
        with np.errstate(over="ignore", invalid="ignore"):
            table = pd.read_csv(io.BytesIO(block), header=None, dtype=np.float32, engine="c",
                                na_filter=False, skip_blank_lines=False).to_numpy(np.float32)
    except (ValueError, TypeError):
        _locate_bad_cell(block, name, line)
    labels = table[:, 0].copy() if label_size else None
    return np.ascontiguousarray(table[:, label_size:]), labels, line


def _check_utf8(block: bytes, name: str, line: int) -> None:
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as err:
        where = line + block.count(b"\n", 0, err.start)
        raise DataError(f"{name}: line {where}: invalid UTF-8 (byte {block[err.start]:#04x})"
                        ) from None


def _first_blank_line(block: bytes, last: int) -> int | None:
    """Index of the first blank line (only whitespace) among lines ``0..last`` of a block."""
    for index, text in enumerate(block.split(b"\n", last + 1)[: last + 1]):
        if not text.strip():
            return index
    return None


def _fields_per_line(block: bytes) -> tuple[np.ndarray, int | None]:
    """Columns of every line of a block (vectorised), and the index of its first empty line
    (nothing, or only ``\\r``), if any."""
    raw = np.frombuffer(block.rstrip(b"\r\n"), dtype=np.uint8)
    if raw.size == 0:
        return np.ones(1, dtype=np.int64), 0
    newlines = np.flatnonzero(raw == ord("\n"))
    commas = np.flatnonzero(raw == ord(","))
    ends = np.concatenate([newlines, [raw.size]])
    starts = np.concatenate([[0], newlines + 1])
    empty = np.flatnonzero(ends - starts <= (raw[np.maximum(ends - 1, 0)] == ord("\r")))
    # commas before each line end, minus commas before its start
    counts = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    return counts, int(empty[0]) if empty.size else None


_LABEL_HINTS = {
    ("train", -1): "was the label column left out? CSV training rows carry the label first, "
                   "then the features",
    ("train", 1): "does every row hold a second label or an id? CSV training rows carry one "
                  "label first, then the features",
    ("test", -1): "was the label column left out? Test rows, like training rows, carry the "
                  "label first, then the features",
    ("test", 1): "did the training CSV lack its label column (its first feature then became "
                 "the label)? Training and test rows both carry the label first",
    ("inference", 1): "do the rows include the label? Inference rows carry the features only "
                      "(or declare a first label column: text/csv;label_size=1)",
    ("inference", -1): "inference rows carry every feature and no label; was a feature "
                       "column dropped along with the label?",
}


def label_column_hint(found: int, expected: int, role: str) -> str:
    """A sentence for a CSV width off by exactly the label column, else ``""``.

    Parameters
    ----------
    found : int
        Features per row in the data (after any label column).
    expected : int
        Features the model or ``feature_dim`` expects.
    role : {"train", "test", "inference"}
        Training and test CSV rows start with their label; inference rows do not.

    Returns
    -------
    str
        ``" One column short: ..."`` or ``" One column more: ..."``, to append to a message.
    """
    hint = _LABEL_HINTS.get((role, found - expected))
    if hint is None:
        return ""
    end = "" if hint.endswith("?") else "."
    return f" One column {'short' if found < expected else 'more'}: {hint}{end}"


NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


def _locate_bad_cell(block: bytes, name: str, line: int) -> None:
    """Raise a DataError naming the first cell that is not a plain decimal number."""
    for offset, text in enumerate(block.decode("utf-8").splitlines()):
        if not text.strip():
            raise empty_line(name, line + offset)
        for column, cell in enumerate(text.split(","), start=1):
            if not NUMBER.fullmatch(cell):
                raise DataError(f"{name}: line {line + offset}, column {column}: {cell.strip()!r}"
                                " is not a number")
    last = line + block.count(b"\n")
    raise DataError(f"{name}: lines {line} to {last}: could not be read as numbers")
