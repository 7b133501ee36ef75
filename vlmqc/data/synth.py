"""The synthetic tasks: plan every example's labels, then render each one from its own seed.

Planning is cheap and sequential; rendering is independent per example, so it runs in worker
processes and the bytes do not depend on how many there are.

Each split gets its own balanced design, which makes the split stratified by construction:
verdicts follow the defect rate exactly, and defect types, positions and terminal shapes are
dealt from shuffled decks, so every value appears equally often (within one) in train and in
test. The test split does not depend on the train size, so growing the training set leaves
the test examples (and the ids that inference samples are logged for) unchanged.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
from PIL import Image, ImageDraw

from vlmqc.config import DiffConfig, PairConfig, StarConfig, SynthConfig
from vlmqc.data import board, diff, nuisance, store
from vlmqc.labels import POSITIONS, DefectType, Shape, Task, Verdict, cell_index

SPLITS = ("train", "test")
_PLAN, _RENDER = 0, 1  # random streams: one for the design of a split, one per rendered example
DISTRACTORS = (
    ("star", (40, 84, 222)),
    ("star", (40, 168, 64)),
    ("star", (240, 240, 240)),
    ("circle", board.STAR_RED),
    ("triangle", board.STAR_RED),
    ("diamond", board.STAR_RED),
)


def split_size(cfg: SynthConfig, split: str) -> int:
    return cfg.train_size if split == "train" else cfg.test_size


def _rng(cfg: SynthConfig, split: str, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS.index(split), stream, index])


class _Deck:
    """Deals values in shuffled rounds, so that counts stay balanced within one."""

    def __init__(self, rng: np.random.Generator, values):
        self.rng, self.values, self.cards = rng, list(values), []

    def deal(self, k: int = 1) -> list:
        """k distinct values: the next ones in the deck, skipping repeats (kept for later)."""
        hand = []
        i = 0
        while len(hand) < k:
            if i >= len(self.cards):
                self.cards += [self.values[j] for j in self.rng.permutation(len(self.values))]
            if self.cards[i] not in hand:
                hand.append(self.cards.pop(i))
            else:
                i += 1
        return hand


def plan(cfg: SynthConfig, split: str) -> list[dict]:
    """Every example's labels and product choices for one split (no pixels yet)."""
    n = split_size(cfg, split)
    rng = _rng(cfg, split, _PLAN)
    shapes = _Deck(rng, [s.value for s in cfg.terminal_shapes])
    looks = _Deck(rng, range(len(board.LOOKS)))
    specs = [{"split": split, "index": i, "shape": shapes.deal()[0], "look": looks.deal()[0]} for i in range(n)]
    positions = _Deck(rng, POSITIONS)
    if isinstance(cfg, StarConfig):
        for s in specs:
            s["target"] = positions.deal()[0]
            s["distractors"] = int(rng.integers(cfg.distractors.min, cfg.distractors.max + 1))
        return specs
    n_defective = round(cfg.defect_rate * n)
    defective = np.zeros(n, dtype=bool)
    defective[rng.permutation(n)[:n_defective]] = True
    types = _Deck(rng, [t.value for t in cfg.defect_types])
    for s, is_defective in zip(specs, defective, strict=True):
        s["verdict"] = Verdict.defective.value if is_defective else Verdict.passed.value
        s["defects"] = []
        if is_defective:
            k = int(rng.integers(cfg.defects_per_candidate.min, cfg.defects_per_candidate.max + 1))
            s["defects"] = [{"position": p, "type": types.deal()[0]} for p in positions.deal(k)]
    return specs


def defect_params(kind: DefectType, rng: np.random.Generator) -> dict:
    """The random details of one defect, in cell units; each keeps the defect inside its cell."""
    if kind == DefectType.shifted:
        direction = rng.integers(8) * math.pi / 4
        r = rng.uniform(0.17, 0.21)
        return {"dx": r * math.cos(direction), "dy": r * math.sin(direction)}
    if kind == DefectType.discoloured:
        return {"burn": rng.uniform(0.72, 0.9)}
    if kind == DefectType.deformed:
        squash = [1.32, 0.6] if rng.random() < 0.5 else [0.6, 1.32]
        return {"squash": squash, "skew": rng.uniform(0.12, 0.22) * rng.choice([-1, 1])}
    if kind == DefectType.foreign_particle:
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.26)
        return {
            "x": r * math.cos(a),
            "y": r * math.sin(a),
            "fibre": bool(rng.random() < 0.4),
            "angle": rng.uniform(0, math.pi),
            "radii": rng.uniform(0.7, 1.3, size=6).tolist(),
            "colour": [240, 238, 230] if rng.random() < 0.7 else [16, 16, 20],
        }
    return {}


@functools.lru_cache(maxsize=32)
def _clean_board(width: int, scale: int, look: int, shape: Shape) -> Image.Image:
    """A defect-free board at drawing scale; renders start from a copy of it."""
    geom = board.Geometry(width)
    img, draw = board.new_canvas(geom, board.LOOKS[look], scale)
    for row in range(3):
        for col in range(9):
            board.draw_cell(draw, geom, scale, row, col, shape, board.LOOKS[look], None)
    return img


@functools.lru_cache(maxsize=32)
def _clean_board_reduced(width: int, scale: int, look: int, shape: Shape) -> Image.Image:
    """The clean board at output size: every reference, and every candidate that passes, starts
    here. Shared, so never drawn on: the pose and the lighting return new images."""
    img = _clean_board(width, scale, look, shape)
    return img.reduce(scale) if scale > 1 else img


def render_board(
    cfg: SynthConfig, look: int, shape: Shape, rng, defects: dict | None = None, marks=()
) -> tuple[Image.Image, nuisance.Draw]:
    """One board photo: terminals, defects, marks, then pose, lighting, blur, noise, coordinates."""
    geom, scale, colours = board.Geometry(cfg.render.width), cfg.render.supersample, board.LOOKS[look]
    if defects or marks:
        img = _clean_board(cfg.render.width, scale, look, shape).copy()
        draw = ImageDraw.Draw(img)
        for (row, col), defect in (defects or {}).items():
            # a cell's drawing never leaves its box, so clearing the box and redrawing it gives
            # the same pixels as drawing the defective board from scratch
            draw.rectangle([v * scale for v in geom.cell_box(row, col)], fill=colours.board)
            board.draw_cell(draw, geom, scale, row, col, shape, colours, defect)
        for kind, colour, (row, col), (jx, jy), angle in marks:
            cx, cy = geom.cell_center(row, col)
            c = geom.cell
            board.draw_mark(draw, (cx + jx * c) * scale, (cy + jy * c) * scale, c * scale, kind, colour, angle)
        img = img.reduce(scale) if scale > 1 else img
    else:
        img = _clean_board_reduced(cfg.render.width, scale, look, shape)
    d = nuisance.draw(cfg.nuisance, rng, geom.cell)
    img = nuisance.pose(img, d, 1, colours.background)  # reduced above
    img = nuisance.photometric(img, d, rng)
    board.draw_coordinates(img, geom)
    return img, d


def stack(top: Image.Image, bottom: Image.Image, gap: int) -> Image.Image:
    """Reference on top, candidate below, with a dark band between them."""
    out = Image.new("RGB", (top.width, top.height + gap + bottom.height), (40, 40, 40))
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height + gap))
    return out


def pair_gap(width: int) -> int:
    return max(2, round(0.12 * board.Geometry(width).cell))


def _row(spec: dict, task: Task, image: Image.Image, meta: dict, **labels) -> dict:
    row = {
        "id": f"{spec['split']}-{spec['index']:05d}",
        "task": task.value,
        "image": store.encode(image),
        "source_image": None,
        "context": [],
        "verdict": "",
        "defects": [],
        "target": "",
        "shape": spec["shape"],
        "answer": "",
        "meta": json.dumps(meta, sort_keys=True),
        "question": "",
    }
    row.update(labels)
    return row


def render_star(cfg: StarConfig, spec: dict) -> dict:
    rng = _rng(cfg, spec["split"], _RENDER, spec["index"])
    target = cell_index(spec["target"])
    others = [p for p in POSITIONS if p != spec["target"]]
    picked = rng.choice(len(others), size=spec["distractors"], replace=False)
    marks = [("star", board.STAR_RED, target, tuple(rng.uniform(-0.08, 0.08, 2)), rng.uniform(-0.3, 0.3))]
    for j in picked:
        kind, colour = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        marks.append((kind, colour, cell_index(others[j]), tuple(rng.uniform(-0.08, 0.08, 2)), rng.uniform(-0.5, 0.5)))
    img, d = render_board(cfg, spec["look"], Shape(spec["shape"]), rng, marks=marks)
    meta = {"look": spec["look"], "nuisance": d.as_dict(), "distractors": [others[j] for j in picked]}
    return _row(spec, Task.star, img, meta, target=spec["target"])


def render_pair(cfg: PairConfig, spec: dict) -> dict:
    """The pair image; for the diff task, also the image derived from its two halves."""
    rng = _rng(cfg, spec["split"], _RENDER, spec["index"])
    look, shape = spec["look"], Shape(spec["shape"])
    params = {
        cell_index(d["position"]): {"type": d["type"], **defect_params(DefectType(d["type"]), rng)}
        for d in spec["defects"]
    }
    reference, d_ref = render_board(cfg, look, shape, rng)
    candidate, d_cand = render_board(cfg, look, shape, rng, defects=params)
    gap = pair_gap(cfg.render.width)
    pair = stack(reference, candidate, gap)
    meta = {
        "look": spec["look"],
        "stack": {"top": reference.height, "gap": gap},  # where data.layout=separate splits the pair
        "nuisance": {"reference": d_ref.as_dict(), "candidate": d_cand.as_dict()},
        "defects": {
            d["position"]: {k: v for k, v in params[cell_index(d["position"])].items() if k != "type"}
            for d in spec["defects"]
        },
    }
    labels = {"verdict": spec["verdict"], "defects": spec["defects"]}
    if isinstance(cfg, DiffConfig):
        result = diff.concentrate(reference, candidate, board.Geometry(cfg.render.width), cfg.diff)
        meta["diff"] = result.meta()
        row = _row(spec, Task.diff, result.image, meta, **labels)
        row["source_image"] = store.encode(pair) if cfg.diff.keep_source else None
        return row
    return _row(spec, Task.pair, pair, meta, **labels)


def render(cfg: SynthConfig, spec: dict) -> dict:
    return render_star(cfg, spec) if isinstance(cfg, StarConfig) else render_pair(cfg, spec)


def chunks(cfg: SynthConfig, split: str, size: int) -> list[tuple[SynthConfig, list[dict]]]:
    """The split's plan cut into rendering jobs of ``size`` examples."""
    specs = plan(cfg, split)
    return [(cfg, specs[i : i + size]) for i in range(0, len(specs), size)]


def rows(job: tuple[SynthConfig, list[dict]]):
    cfg, specs = job
    for spec in specs:
        yield render(cfg, spec)
