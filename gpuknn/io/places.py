"""Where each decoded row came from, for error messages that a user can act on.

A decoded block carries one of these beside its rows, so that a bad row is named by
its record and byte offset, or its line, within its file, not by a global row number.
Lines are numbered from 1, as editors show them; records and instances are 0-based
indices, and say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RecordRun:
    """Equal-length RecordIO records: record ``first + i`` at ``offset + i * stride``."""

    first: int
    offset: int
    stride: int

    def describe(self, row: int) -> str:
        return (f"record {self.first + row} (0-based; byte offset "
                f"{self.offset + row * self.stride})")


@dataclass(frozen=True)
class Records:
    """RecordIO records numbered from ``first``, each at its own byte offset."""

    first: int
    offsets: Sequence[int]

    def describe(self, row: int) -> str:
        return f"record {self.first + row} (0-based; byte offset {self.offsets[row]})"


@dataclass(frozen=True)
class Lines:
    """Text lines (1-based): consecutive from ``first``, or listed in ``numbers``."""

    first: int
    numbers: Sequence[int] | None = None

    def describe(self, row: int) -> str:
        return f"line {self.first + row if self.numbers is None else self.numbers[row]}"


@dataclass(frozen=True)
class Instances:
    """The instances of one JSON document, numbered from 0."""

    def describe(self, row: int) -> str:
        return f"instance {row} (0-based)"


Place = RecordRun | Records | Lines | Instances
