"""The ``data`` group's schemas: the synthetic tasks (star, pair, diff) and the user's own images."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import ClassVar

from omegaconf import MISSING

from vlmqc.config.checks import SEED_MAX, IntRange, _between, _check
from vlmqc.labels import ROWS, DefectType, Shape, Task


@dataclass
class RenderConfig:
    width: int = 448  # pixel width of one board image; a pair stacks two boards
    supersample: int = 2  # drawn at this multiple, then reduced: smooth edges, sub-pixel shifts

    def __post_init__(self):
        _check(
            160 <= self.width <= 4096,
            "render.width",
            self.width,
            "must be between 160 (coordinates must stay legible) and 4096 pixels",
        )
        _check(self.supersample in (1, 2, 3, 4), "render.supersample", self.supersample, "must be 1, 2, 3 or 4")


@dataclass
class NuisanceConfig:
    """Variation that is not a defect, drawn independently for reference and candidate."""

    strength: float = 1.0  # multiplies every amplitude below; 0 gives clean, pixel-aligned renders
    brightness: float = 0.12  # max relative change of overall brightness
    contrast: float = 0.12  # max relative change of contrast
    gradient: float = 0.10  # max relative illumination slope across the board
    shift: float = 0.08  # max board shift, as a fraction of a cell
    rotation: float = 1.5  # max board rotation, degrees
    noise: float = 4.0  # sensor noise standard deviation, 8-bit levels
    blur: float = 0.8  # max Gaussian blur sigma, pixels

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _between(getattr(self, f.name), f"nuisance.{f.name}", 0)
        for key in ("brightness", "contrast", "gradient"):  # a relative change of 100% turns the board black
            _check(
                getattr(self, key) * self.strength < 1,
                f"nuisance.{key}",
                getattr(self, key),
                "times strength must be < 1",
            )
        _check(
            self.noise * self.strength <= 64,
            "nuisance.noise",
            self.noise,
            "times strength must be <= 64 levels (beyond it the board drowns in noise)",
        )
        _check(
            self.blur * self.strength <= 8,
            "nuisance.blur",
            self.blur,
            "times strength must be <= 8 pixels (beyond it terminals merge)",
        )
        _check(
            self.shift * self.strength <= 0.15,
            "nuisance.shift",
            self.shift,
            "times strength must be <= 0.15 cell (a board shifted further puts terminals under the wrong coordinate)",
        )
        _check(
            self.rotation * self.strength <= 3,
            "nuisance.rotation",
            self.rotation,
            "times strength must be <= 3 degrees",
        )


class DiffMode(str, enum.Enum):
    overlay = "overlay"  # the aligned candidate, dimmed except where it differs from the reference
    heatmap = "heatmap"  # the difference alone as a heat map
    cells = "cells"  # one deviation score per cell, drawn as a 3 x 9 map


@dataclass
class DiffImageConfig:
    mode: DiffMode = DiffMode.overlay
    smoothing: float = 1.5  # Gaussian sigma (pixels) applied to the difference, suppresses sensor noise
    scale: float = 40.0  # smoothed difference (8-bit levels) shown at full intensity
    keep_source: bool = True  # store the raw pair beside the derived image

    def __post_init__(self):
        _between(self.smoothing, "diff.smoothing", 0)
        _between(self.scale, "diff.scale", 0, low_open=True)


class Layout(str, enum.Enum):
    stacked = "stacked"  # the pair as one image: reference on top, candidate below (the study's)
    separate = "separate"  # two images in one user turn: reference first, then candidate


@dataclass
class DataConfig:
    TASK: ClassVar[Task]
    name: str = MISSING
    task: Task = MISSING
    seed: int = 0
    layout: Layout = Layout.stacked  # how a pair is shown to the model; not part of the stored data

    def __post_init__(self):
        _check(self.task == self.TASK, "task", self.task.value, f"must be {self.TASK.value!r} for this kind of dataset")
        _check(
            self.layout is Layout.stacked or self.TASK not in (Task.star, Task.diff),
            "layout",
            self.layout.value,
            f"must be stacked: the {self.TASK.value} task shows one image by construction",
        )
        _between(self.seed, "seed", 0, SEED_MAX)


SPLIT_MAX = 1_000_000  # examples in a split: each is drawn and cached on disk (tens of KB a pair)


@dataclass
class SynthConfig(DataConfig):
    train_size: int = 500
    test_size: int = 300
    terminal_shapes: list[Shape] = field(default_factory=lambda: [Shape.square])
    render: RenderConfig = field(default_factory=RenderConfig)
    nuisance: NuisanceConfig = field(default_factory=NuisanceConfig)

    def __post_init__(self):
        super().__post_init__()
        for key in ("train_size", "test_size"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
            _check(
                getattr(self, key) <= SPLIT_MAX,
                key,
                getattr(self, key),
                f"must be <= {SPLIT_MAX:,}: every example is drawn and kept in the dataset cache on disk",
            )
        _check(len(self.terminal_shapes) > 0, "terminal_shapes", self.terminal_shapes, "must name at least one shape")
        _check(
            len(set(self.terminal_shapes)) == len(self.terminal_shapes),
            "terminal_shapes",
            self.terminal_shapes,
            "has duplicates",
        )


@dataclass
class StarConfig(SynthConfig):
    TASK = Task.star
    task: Task = Task.star
    distractors: IntRange = field(default_factory=lambda: IntRange(2, 6))  # other marks, each in its own cell

    def __post_init__(self):
        super().__post_init__()
        self.distractors.check("distractors", 0)
        _check(self.distractors.max <= 20, "distractors.max", self.distractors.max, "must be <= 20 (26 cells are free)")


@dataclass
class PairConfig(SynthConfig):
    TASK = Task.pair
    task: Task = Task.pair
    defect_rate: float = 0.5  # fraction of candidates that are defective
    defect_types: list[DefectType] = field(default_factory=lambda: list(DefectType))
    defects_per_candidate: IntRange = field(default_factory=IntRange)

    def __post_init__(self):
        super().__post_init__()
        _check(
            0.0 <= self.defect_rate <= 1.0, "defect_rate", self.defect_rate, "must be between 0 and 1"
        )  # nan fails too
        _check(len(self.defect_types) > 0, "defect_types", self.defect_types, "must name at least one defect type")
        _check(
            len(set(self.defect_types)) == len(self.defect_types), "defect_types", self.defect_types, "has duplicates"
        )
        self.defects_per_candidate.check("defects_per_candidate", 1)
        _check(
            self.defects_per_candidate.max <= 27,
            "defects_per_candidate.max",
            self.defects_per_candidate.max,
            "must be <= 27 (the board has 27 cells)",
        )


@dataclass
class DiffConfig(PairConfig):
    TASK = Task.diff
    task: Task = Task.diff
    diff: DiffImageConfig = field(default_factory=DiffImageConfig)


@dataclass
class CustomConfig(DataConfig):
    TASK = Task.custom
    task: Task = Task.custom
    path: str = MISSING  # folder with the images and the metadata file
    metadata: str = "metadata.jsonl"  # one JSON object per line, relative to path
    test_fraction: float = 0.375  # used when metadata.jsonl names no split (0.375 = 300 of 800)
    stack_reference: bool = True  # a row with a reference: the model sees reference on top, image below
    defect_types: list[str] = field(default_factory=lambda: [t.value for t in DefectType])
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    columns: int = 9
    # refused at validation, from the header: Pillow's own warning threshold, so the trial's decoder stays quiet
    max_pixels: int = 89_478_485

    def __post_init__(self):
        super().__post_init__()
        _check(self.max_pixels >= 1, "max_pixels", self.max_pixels, "must be >= 1")
        _check(
            0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "must be between 0 and 1 (exclusive)"
        )
        _check(len(self.defect_types) > 0, "defect_types", self.defect_types, "must name at least one defect type")
        _check(
            len(self.rows) > 0 and all(r.isalpha() and r.isupper() for r in self.rows),
            "rows",
            self.rows,
            "must be upper-case letters",
        )
        _between(self.columns, "columns", 1, 99)  # positions are written <row><column>


DATA_SCHEMAS = {
    "star": StarConfig,
    "pair": PairConfig,
    "diff": DiffConfig,
    "custom": CustomConfig,
}
