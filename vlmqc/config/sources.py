"""The ``data`` group's schemas of the field's own data, read as it is published: MVTec AD and VisA
trees, MMAD's questions, multi-image conversation JSONL (the readers are in vlmqc/data/)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from omegaconf import MISSING

from vlmqc.config.checks import SEED_MAX, _between, _check
from vlmqc.config.data import DATA_SCHEMAS, DataConfig
from vlmqc.labels import GRID_ROWS, Task


class Pick(str, enum.Enum):
    random = "random"  # seeded by data.seed and the query's path: the same image for the same query
    similar = "similar"  # the nearest by a cheap image distance (grey 32 x 32 thumbnails; MMAD: its own list)


class MmadTurn(str, enum.Enum):
    question = "question"  # one example a question
    query = "query"  # one example a query image: all its questions in one turn, one answer line each


class AnswerKind(str, enum.Enum):
    auto = "auto"  # choice where every answer reads as one of its prompt's options, else inspection where
    # every answer reads as a verdict, else text
    text = "text"  # free text, scored by exact match
    inspection = "inspection"  # a verdict with positions and types (vlmqc/answers.py)
    choice = "choice"  # a letter among the options the user turn lists (vlmqc/choice.py)


@dataclass
class FolderConfig(DataConfig):
    """A dataset read from files: where, how its examples are split, the largest image accepted."""

    path: str = MISSING
    test_fraction: float = 0.5  # of the examples (MMAD: of the query images), stratified
    split_seed: int = 0
    # refused at validation, from the header: Pillow's own warning threshold, so the trial's decoder stays quiet
    max_pixels: int = 89_478_485

    def __post_init__(self):
        super().__post_init__()
        _check(
            0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "must be between 0 and 1 (exclusive)"
        )
        _between(self.split_seed, "split_seed", 0, SEED_MAX)
        _check(self.max_pixels >= 1, "max_pixels", self.max_pixels, "must be >= 1")


@dataclass
class MvtecConfig(FolderConfig):
    """``data.path``: one category folder (``bottle/``, holding ``train/good``, ``test/<type>``,
    ``ground_truth/<type>``) or a folder of them (``data.categories`` picks, empty: all)."""

    TASK = Task.mvtec
    task: Task = Task.mvtec
    categories: list[str] = field(default_factory=list)
    reference: Pick = Pick.random  # which training good image each query is shown beside
    grid: list[int] = field(default_factory=lambda: [3, 3])  # rows (1-3: U, C, D), columns (1-9)

    def __post_init__(self):
        super().__post_init__()
        _check(
            len(self.grid) == 2 and self.grid[0] in GRID_ROWS and 1 <= self.grid[1] <= 9,
            "grid",
            self.grid,
            "must be [rows, columns] with 1-3 rows (named U, C, D) and 1-9 columns",
        )
        _check(len(set(self.categories)) == len(self.categories), "categories", self.categories, "has duplicates")


@dataclass
class VisaConfig(MvtecConfig):
    """``data.path``: the VisA root; ``data.csv`` its split file (``object,split,label,image,mask``)."""

    TASK = Task.visa
    task: Task = Task.visa
    csv: str = "split_csv/1cls.csv"
    defect_type: str = "anomaly"  # VisA's split file names no defect type: every defect gets this one

    def __post_init__(self):
        super().__post_init__()
        _check(self.defect_type.replace("_", "").isalnum(), "defect_type", self.defect_type, "must be a word (a-z, _)")


@dataclass
class MmadConfig(FolderConfig):
    """``data.path``: the MMAD root (the query and template paths of ``data.json`` are relative to it)."""

    TASK = Task.mmad
    task: Task = Task.mmad
    json: str = "mmad.json"
    templates: Pick = Pick.random  # MMAD's random_templates or similar_templates
    shots: int = 1  # template images shown before the query
    mmad_turn: MmadTurn = MmadTurn.question

    def __post_init__(self):
        super().__post_init__()
        _between(self.shots, "shots", 0, 8)


@dataclass
class ConversationsConfig(FolderConfig):
    """``data.path``: a JSONL file, one ``{"images": [...], "messages": [...]}`` a line (ms-swift, TRL,
    axolotl); image paths relative to the file's folder."""

    TASK = Task.conversations
    task: Task = Task.conversations
    answers: AnswerKind = AnswerKind.auto


# registered with the synthetic and custom schemas: one registry of data options
DATA_SCHEMAS.update(
    {
        "mvtec": MvtecConfig,
        "visa": VisaConfig,
        "mmad": MmadConfig,
        "conversations": ConversationsConfig,
    }
)
