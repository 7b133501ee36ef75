"""The notes that name what the page could not use: general ones first, then by file and line.

The problems themselves are vlmqc.records' readers', written the one way records writes them
(``<file>[:<line>]: <field>: <what>``); a bad field is left out and the rest of the trial is read.
"""

from __future__ import annotations

import re
from pathlib import Path

NOTES_PER_FILE = 5  # a file of garbage says so in a few lines, not in thousands


class Notes:
    def __init__(self):
        self.lines: list[str] = []
        self._by_file: dict[str, list[str]] = {}

    def add(self, text: str) -> None:
        self.lines.append(text)

    def extend(self, path: Path, problems: list[str]) -> None:
        """Problems with the file ``path``, each beginning with the path (and its line)."""
        if problems:
            self._by_file.setdefault(str(path), []).extend(problems)

    def close(self) -> None:
        """The file notes after the general ones, in file order then line order, and how many of a file's were not
        listed."""
        for path, found in self._by_file.items():
            line = re.compile(re.escape(path) + r":(\d+): ")
            found = sorted(found, key=lambda p: int(m.group(1)) if (m := line.match(p)) else 0)
            self.lines += found[:NOTES_PER_FILE]
            if len(found) > NOTES_PER_FILE:
                self.lines.append(f"{path}: {len(found) - NOTES_PER_FILE} more problem(s) not listed.")
        self._by_file = {}
