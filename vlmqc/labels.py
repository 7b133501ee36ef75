"""The vocabulary of inspection labels: grid positions, verdicts, defect types.

Every example carries structured labels (a verdict and a list of position + defect type, or
the star's position); the answer *text* a model is trained on is rendered from them later by
the prompt config, so nothing here fixes the wording.

A board has 3 rows of 9 terminals. Coordinates printed on the image read 1-9 across and
U, C, D down, so a position is written row letter + column number: ``C5``.
"""

from __future__ import annotations

import enum
import re

ROWS = ("U", "C", "D")
COLUMNS = tuple(range(1, 10))
POSITIONS = tuple(f"{r}{c}" for r in ROWS for c in COLUMNS)
_POSITION_RE = re.compile(r"^([A-Z]+)(\d+)$")


class Task(str, enum.Enum):
    star = "star"  # one board, answer the red star's position
    pair = "pair"  # reference on top, candidate below: passed or defective, where, what
    diff = "diff"  # the pair turned into one image that concentrates the difference
    custom = "custom"  # the user's own images
    mvtec = "mvtec"  # an MVTec AD tree: test images against a good training image (vlmqc/data/mvtec.py)
    visa = "visa"  # a VisA tree, read from its split CSV (vlmqc/data/mvtec.py)
    mmad = "mmad"  # MMAD's multiple-choice questions (vlmqc/data/mmad.py)
    conversations = "conversations"  # multi-image conversation JSONL (vlmqc/data/conversations.py)
    choice = "choice"  # a row that asks a multiple-choice question (vlmqc/choice.py): a row's task, no dataset's


class Shape(str, enum.Enum):
    square = "square"
    round = "round"


class Verdict(str, enum.Enum):
    passed = "pass"
    defective = "defective"


PASS, DEFECTIVE = Verdict.passed.value, Verdict.defective.value  # as a record or an answer writes them


class DefectType(str, enum.Enum):
    missing = "missing"
    shifted = "shifted"
    wrong_shape = "wrong_shape"
    discoloured = "discoloured"
    foreign_particle = "foreign_particle"
    deformed = "deformed"


# Canonical human names, the ones a prompt renders into an answer and a parser maps back.
DEFECT_NAMES = {
    DefectType.missing: "missing terminal",
    DefectType.shifted: "shifted terminal",
    DefectType.wrong_shape: "wrong shape",
    DefectType.discoloured: "burnt terminal",
    DefectType.foreign_particle: "foreign particle",
    DefectType.deformed: "deformed terminal",
}


def position(row: int, col: int) -> str:
    """Grid indices (0-based row, 0-based column) to the printed coordinate, e.g. (1, 4) -> C5."""
    return f"{ROWS[row]}{COLUMNS[col]}"


# the rows of a grid laid over a real image (data.grid of data=mvtec / visa), named as the study
# names the board's: U (up), C (centre), D (down); fewer rows keep the names of their places
GRID_ROWS = {1: ("C",), 2: ("U", "D"), 3: ROWS}


def grid_positions(rows: int, columns: int) -> tuple[str, ...]:
    """The positions of a ``rows`` x ``columns`` grid, row by row: ``U1 .. D3`` for 3 x 3."""
    return tuple(f"{r}{c}" for r in GRID_ROWS[rows] for c in range(1, columns + 1))


def cell_index(pos: str, rows=ROWS, n_columns: int = len(COLUMNS)) -> tuple[int, int]:
    """The printed coordinate to 0-based (row, column); raises ValueError naming the value."""
    m = _POSITION_RE.match(pos.strip().upper()) if isinstance(pos, str) else None
    if not m or m.group(1) not in rows or not 1 <= int(m.group(2)) <= n_columns:
        raise ValueError(
            f"invalid position {pos!r}: expected a row in {'/'.join(rows)} followed by a column 1-{n_columns}, e.g. C5"
        )
    return rows.index(m.group(1)), int(m.group(2)) - 1


def describe(example: dict) -> str:
    """A one-line, human-readable summary of an example's labels (for reports, not for training)."""
    if example.get("target"):
        return f"star at {example['target']}"
    if example.get("verdict") == Verdict.defective.value:
        names = {t.value: name for t, name in DEFECT_NAMES.items()}
        parts = [f"{d['position']} {names.get(d['type'], d['type'])}" for d in example["defects"]]
        return "DEFECTIVE: " + ", ".join(parts) if parts else "DEFECTIVE"
    if example.get("verdict") == Verdict.passed.value:
        return "pass"
    return (example.get("answer") or "").strip()[:80]


_ORDER = {p: i for i, p in enumerate(POSITIONS)}


def board_order(position: str) -> tuple[int, str]:
    """A sort key: the board's order (U1..U9, C1..D9), then a custom grid's other positions, alphabetically."""
    return _ORDER.get(position, len(_ORDER)), position


# the words answers use for each defect type besides its name (vlmqc/answers.py reads them)
DEFECT_SYNONYMS = {
    DefectType.missing: ("missing", "absent", "empty", "no terminal", "not present", "lacking", "欠落", "欠品"),
    DefectType.shifted: (
        "shifted",
        "shift",
        "offset",
        "misaligned",
        "misalignment",
        "displaced",
        "misplaced",
        "out of position",
        "moved",
        "ずれ",
        "位置ずれ",
    ),
    DefectType.wrong_shape: (
        "wrong shape",
        "wrongly shaped",
        "incorrect shape",
        "different shape",
        "shape mismatch",
        "wrong terminal shape",
        "形状違い",
        "形状不良",
    ),
    DefectType.discoloured: (
        "burnt",
        "burned",
        "burn",
        "burn mark",
        "scorched",
        "charred",
        "blackened",
        "discoloured",
        "discolored",
        "discolouration",
        "discoloration",
        "焦げ",
        "変色",
    ),
    DefectType.foreign_particle: (
        "foreign particle",
        "foreign object",
        "foreign matter",
        "foreign material",
        "foreign body",
        "particle",
        "debris",
        "contamination",
        "contaminant",
        "dust",
        "異物",
    ),
    DefectType.deformed: ("deformed", "deformation", "bent", "warped", "distorted", "crushed", "変形", "曲がり"),
}
