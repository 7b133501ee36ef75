"""Checking a record's fields at the door, and the notes that name what could not be used.

A bad field is left out and noted with its file, line and field; whoever reads it goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

NONFINITE = ("nan", "inf", "-inf")  # how vlmqc.track writes a non-finite metric
NOTES_PER_FILE = 5  # a file of garbage says so in a few lines, not in thousands


class Notes:
    """What the page says it could not use, one line each: general ones first, then by file and line."""

    def __init__(self):
        self.lines: list[str] = []
        self._found: list[tuple[Path, int, str]] = []
        self._per_file: dict[Path, int] = {}

    def add(self, text: str) -> None:
        self.lines.append(text)

    def bad(self, path: Path, line: int | None, what: str) -> None:
        n = self._per_file[path] = self._per_file.get(path, 0) + 1
        if n <= NOTES_PER_FILE:
            self._found.append((path, line or 0, f"{path}{f':{line}' if line else ''}: {what}"))

    def close(self) -> None:
        """The file notes after the general ones, in file order, and how many of a file's were not listed."""
        files = list(self._per_file)
        self.lines += [text for _, _, text in sorted(self._found, key=lambda f: (files.index(f[0]), f[1]))]
        self.lines += [f"{path}: {n - NOTES_PER_FILE} more problem(s) not listed." for path, n in self._per_file.items() if n > NOTES_PER_FILE]
        self._found, self._per_file = [], {}


def brief(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:59] + "…"


@dataclass
class Where:
    """A place in a record (file, line), for checking the fields read from it."""

    path: Path
    notes: Notes
    line: int | None = None
    problems: int = 0

    def bad(self, name: str, value, expected: str, then: str = "left out") -> None:
        self.problems += 1
        self.notes.bad(self.path, self.line, f"{name} is {brief(value)}, not {expected}; {then}.")

    def get(self, obj: dict, name: str, ok, expected: str, label: str | None = None, required: bool = False, then: str = "left out"):
        """``obj[name]`` if it passes ``ok`` (or is missing or null, unless required); else None, and a note."""
        value = obj.get(name)
        if value is None and not required or value is not None and ok(value):
            return value
        self.bad(label or name, value, expected, then)
        return None


def is_str(v) -> bool:
    return isinstance(v, str)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_bool(v) -> bool:
    return isinstance(v, bool)


def is_dict(v) -> bool:
    return isinstance(v, dict)


def is_strs(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def metric_value(v) -> float | None:
    """A metric as a float: a number, or the string vlmqc.track writes for a non-finite one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return float(v) if v in NONFINITE else None


def is_metric(v) -> bool:
    return metric_value(v) is not None
