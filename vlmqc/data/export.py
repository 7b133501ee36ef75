"""A synthetic pair variant written in the field's own layouts, so other tools can use the study's
data and vlmqc's readers can be checked against it (``vlmqc data data=pair_round export=mmad``):

- ``mvtec``: an MVTec AD category, ``<name>/train/good`` (the train split's references and passed
  candidates), ``test/good``, ``test/<defect type>`` (``combined`` for a candidate with defects of
  several types, as MVTec names such images) and ``ground_truth/<type>/<id>_mask.png``;
- ``mmad``: an MMAD root, its images under ``vlmqc/<name>/`` and ``mmad.json``: every candidate a
  query with Anomaly Detection, and, where its defects are of one type (at one position),
  Defect Classification (Defect Localization) among four options; its own reference first in
  ``similar_templates``, another pair's in ``random_templates``;
- ``conversations``: ``data.jsonl``, a reference and a candidate a line, the user turn the prompt,
  the assistant turn the answer in the prompt's words, the split on every line.

The images are the boards' cell area (the printed coordinates cut off): a mask is then its cells
on an even 3 x 9 grid, which ``data=mvtec data.grid=[3,9]`` reads back as the same positions. A
mask covers the middle of each defect's cell, where the defect is drawn whatever the nuisance's
small shift. Everything is written into a temporary folder and published in one rename.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from vlmqc.config import PromptConfig
from vlmqc.data import board
from vlmqc.data.layout import images as shown
from vlmqc.data.mvtec import cell_box
from vlmqc.files import publish
from vlmqc.labels import COLUMNS, DEFECT_NAMES, PASS, POSITIONS, ROWS, DefectType, cell_index
from vlmqc.prompts import instruction, render_answer

FORMATS = ("mvtec", "mmad", "conversations")
SOURCE = "vlmqc"  # MMAD's first path segment: the source dataset
COMBINED = "combined"
MASK_SHARE = 0.5  # of a cell's side, centred: the part of a defect's cell its mask covers


def board_area(image: Image.Image) -> Image.Image:
    """The 3 x 9 cells of a board image, nothing around them."""
    geom = board.Geometry(image.width)
    x0, y0, *_ = geom.cell_box(0, 0)
    *_, x1, y1 = geom.cell_box(len(ROWS) - 1, len(COLUMNS) - 1)
    return image.crop(tuple(round(v) for v in (x0, y0, x1, y1)))


def mask_of(defects: list[dict], size: tuple[int, int]) -> Image.Image:
    """A binary mask (0 / 255) of the middle of each defect's cell on the even grid of ``size``."""
    w, h = size
    a = np.zeros((h, w), np.uint8)
    for d in defects:
        r, c = cell_index(d["position"])
        x0, y0, x1, y1 = cell_box(r, c, len(ROWS), len(COLUMNS), w, h)
        mx, my = round((x1 - x0) * (1 - MASK_SHARE) / 2), round((y1 - y0) * (1 - MASK_SHARE) / 2)
        a[y0 + my : y1 - my, x0 + mx : x1 - mx] = 255
    return Image.fromarray(a)


def pairs(dsd) -> Iterator[tuple[str, dict, Image.Image, Image.Image]]:
    """(split, row, reference, candidate) of every pair row, the images cut to their cell area."""
    for split in ("train", "test"):
        for row in dsd[split]:
            if row["task"] != "pair":
                raise ValueError(
                    f"row {row['id']!r} is a {row['task']} row: export writes pair data (pair_square, pair_round, "
                    f"pair_mixed and their options)"
                )
            reference, candidate = shown(row, "separate")
            yield split, row, board_area(reference), board_area(candidate)


def kind_of(row: dict) -> str:
    """The folder an MVTec-style tree files a candidate under: good, its defect type, or combined."""
    types = {d["type"] for d in row["defects"]}
    return "good" if row["verdict"] == PASS else (types.pop() if len(types) == 1 else COMBINED)


def _save(image: Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return str(path)


def write_mvtec(dsd, out: Path, name: str) -> None:
    cat = out / name
    for split, row, reference, candidate in pairs(dsd):
        if split == "train":  # defect-free images only, as MVTec's training set
            _save(reference, cat / "train" / "good" / f"{row['id']}-reference.png")
            if row["verdict"] == PASS:
                _save(candidate, cat / "train" / "good" / f"{row['id']}.png")
            continue
        kind = kind_of(row)
        _save(candidate, cat / "test" / kind / f"{row['id']}.png")
        if kind != "good":
            _save(mask_of(row["defects"], candidate.size), cat / "ground_truth" / kind / f"{row['id']}_mask.png")


def _options(right: str, pool: list[str], rng: random.Random, names: dict[str, str]) -> tuple[dict, str]:
    """Four options (or the pool's size) holding ``right``, shuffled; and the right one's letter."""
    picked = [right, *rng.sample([p for p in pool if p != right], min(3, len(pool) - 1))]
    rng.shuffle(picked)
    letters = "ABCD"[: len(picked)]
    return {k: names.get(v, v) for k, v in zip(letters, picked, strict=True)}, letters[picked.index(right)]


def questions(row: dict, rng: random.Random) -> list[dict]:
    """MMAD's questions about one candidate: Anomaly Detection, and, where one answer is right,
    Defect Classification and Defect Localization."""
    defective = row["verdict"] != PASS
    out = [
        {
            "Question": "Is there any defect in the object?",
            "Options": {"A": "Yes", "B": "No"},
            "Answer": "A" if defective else "B",
            "type": "Anomaly Detection",
        }
    ]
    types, places = {d["type"] for d in row["defects"]}, {d["position"] for d in row["defects"]}
    if defective and len(types) == 1:
        names = {t.value: DEFECT_NAMES[t] for t in DefectType}
        options, answer = _options(types.pop(), [t.value for t in DefectType], rng, names)
        out.append(
            {
                "Question": "What type of defect is present?",
                "Options": options,
                "Answer": answer,
                "type": "Defect Classification",
            }
        )
    if defective and len(places) == 1:
        options, answer = _options(places.pop(), list(POSITIONS), rng, {})
        out.append(
            {
                "Question": "At which grid cell is the defect (rows U, C, D; columns 1-9)?",
                "Options": options,
                "Answer": answer,
                "type": "Defect Localization",
            }
        )
    return out


def write_mmad(dsd, out: Path, name: str, seed: int = 0) -> None:
    folder = out / SOURCE / name
    queries = []  # (query, its reference, questions, split): the images are written as they come
    for split, row, reference, candidate in pairs(dsd):
        ref = _save(reference, folder / "train" / "good" / f"{row['id']}-reference.png")
        kind = "good" if row["verdict"] == PASS else "defective"  # MMAD: "good" in the path is a normal query
        query = _save(candidate, folder / "test" / kind / f"{row['id']}.png")
        queries.append((query, ref, questions(row, random.Random(f"{seed}:{row['id']}")), split))
    references = [ref for _, ref, _, _ in queries]
    index = {}
    for k, (query, ref, asked, split) in enumerate(queries):
        others = references[:k] + references[k + 1 :] or [ref]
        index[str(Path(query).relative_to(out))] = {
            "conversation": asked,
            "similar_templates": [str(Path(ref).relative_to(out))],
            "random_templates": [str(Path(random.Random(f"{seed}:{k}").choice(others)).relative_to(out))],
            "mask_path": "",
            "split": split,  # vlmqc's split of the pair; MMAD's readers leave the key alone
        }
    (out / "mmad.json").write_text(json.dumps(index, indent=1))


def write_conversations(dsd, out: Path, prompt: PromptConfig) -> None:
    lines = []
    for split, row, reference, candidate in pairs(dsd):
        ref = _save(reference, out / "images" / f"{row['id']}-reference.png")
        cand = _save(candidate, out / "images" / f"{row['id']}.png")
        asked = instruction(prompt, "pair", images=2)
        lines.append(
            {
                "images": [str(Path(p).relative_to(out)) for p in (ref, cand)],
                "messages": [
                    {"role": "user", "content": "<image><image>" + asked},
                    {"role": "assistant", "content": render_answer(prompt, row)},
                ],
                "split": split,
            }
        )
    (out / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def export(dsd, fmt: str, out: Path, name: str, prompt: PromptConfig, seed: int = 0) -> Path:
    """Write the dataset ``dsd`` (train and test) in ``fmt`` to the new folder ``out``; returns
    what a reader takes as its ``data.path`` (the category folder, the root, or the JSONL file)."""
    if fmt not in FORMATS:
        raise ValueError(f"export={fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: export writes a new folder")

    def write(tmp: Path) -> None:
        if fmt == "mvtec":
            write_mvtec(dsd, tmp, name)
        elif fmt == "mmad":
            write_mmad(dsd, tmp, name, seed)
        else:
            write_conversations(dsd, tmp, prompt)

    publish(out, write)
    return {"mvtec": out / name, "mmad": out, "conversations": out / "data.jsonl"}[fmt]
