"""Small trees and files in the field's published layouts, built in the test from a few generated
images: an MVTec AD category, a VisA tree with its split file, an MMAD root with its mmad.json, a
conversation JSONL. The data readers' tests and the trials on each layout use them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96  # pixels a side: a 3 x 3 grid of 32-pixel cells


def image(path: Path, grey: int = 128, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (grey, grey, grey)).save(path)
    return path


def mask(path: Path, *boxes: tuple[int, int, int, int], size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    """A binary mask (0 / 255) with the boxes (left, top, right, bottom) filled."""
    a = np.zeros((size[1], size[0]), np.uint8)
    for x0, y0, x1, y1 in boxes:
        a[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def mvtec_category(root: Path, name: str = "bottle") -> Path:
    """A category in MVTec AD's layout: three good training images, four good test images, two
    of each of two defect types with their masks."""
    cat = root / name
    for k, grey in enumerate((40, 120, 220)):
        image(cat / "train" / "good" / f"{k:03d}.png", grey)
    for k in range(4):
        image(cat / "test" / "good" / f"{k:03d}.png", 100 + k)
    # broken_large at U1 (the top-left cell); the second over C2 and C3 half and half
    image(cat / "test" / "broken_large" / "000.png", 60)
    mask(cat / "ground_truth" / "broken_large" / "000_mask.png", (4, 4, 28, 28))
    image(cat / "test" / "broken_large" / "001.png", 61)
    mask(cat / "ground_truth" / "broken_large" / "001_mask.png", (48, 40, 80, 56))
    # contamination at D3, and one whose sliver in D2 (under 5 % of the mask) is not a position
    image(cat / "test" / "contamination" / "000.png", 200)
    mask(cat / "ground_truth" / "contamination" / "000_mask.png", (70, 70, 90, 90))
    image(cat / "test" / "contamination" / "001.png", 210)
    mask(cat / "ground_truth" / "contamination" / "001_mask.png", (66, 66, 94, 94), (63, 66, 64, 70))
    return cat


def visa_tree(root: Path) -> Path:
    """VisA's layout: Data/Images/{Normal,Anomaly}, Data/Masks/Anomaly, and split_csv/1cls.csv."""
    lines = []
    for k in range(3):
        image(root / "candle" / "Data" / "Images" / "Normal" / f"{k:04d}.JPG", 90 + 40 * k)
        lines.append(["candle", "train", "normal", f"candle/Data/Images/Normal/{k:04d}.JPG", ""])
    for k in range(3, 6):
        image(root / "candle" / "Data" / "Images" / "Normal" / f"{k:04d}.JPG", 100 + k)
        lines.append(["candle", "test", "normal", f"candle/Data/Images/Normal/{k:04d}.JPG", ""])
    for k, box in enumerate([(0, 0, 20, 20), (70, 70, 96, 96), (33, 0, 63, 30)]):
        image(root / "candle" / "Data" / "Images" / "Anomaly" / f"{k:03d}.JPG", 30)
        mask(root / "candle" / "Data" / "Masks" / "Anomaly" / f"{k:03d}.png", box)
        anomaly = f"candle/Data/Images/Anomaly/{k:03d}.JPG"
        lines.append(["candle", "test", "anomaly", anomaly, f"candle/Data/Masks/Anomaly/{k:03d}.png"])
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(lines)
    return root


MMAD_SOURCES = {"MVTec-AD": "bottle", "VisA": "candle"}


def mmad_root(root: Path) -> Path:
    """An MMAD root: two sources of one category each (three good training images, two good and two
    defective test images), and its mmad.json: Anomaly Detection and Object Classification for
    every query, Defect Classification and Localization for the defective ones; every question's
    right letter varies, its templates are the training images."""
    index = {}
    for s, (source, category) in enumerate(MMAD_SOURCES.items()):
        cat = root / source / category
        goods = [image(cat / "train" / "good" / f"{k:03d}.png", 60 + 60 * k) for k in range(3)]
        templates = [str(p.relative_to(root)) for p in goods]
        for kind in ("good", "broken"):
            for k in range(2):
                query = image(cat / "test" / kind / f"{k:03d}.png", 100 + 10 * k + 50 * (kind == "broken") + s)
                defective = kind == "broken"
                conversation = [
                    {
                        "Question": "Is there any defect in the object?",
                        "Options": {"A": "Yes", "B": "No"},
                        "Answer": "A" if defective else "B",
                        "type": "Anomaly Detection",
                    },
                    {
                        "Question": "What kind of product is in the image?",
                        "Options": {"A": "Bottle", "B": "Candle", "C": "Screw"},
                        "Answer": "AB"[s],
                        "type": "Object Classification",
                        "annotation": True,  # a key the reader leaves alone
                    },
                ]
                if defective:
                    conversation += [
                        {
                            "Question": "What type of defect is present?",
                            "Options": {"A": "Crack", "B": "Scratch", "C": "Hole", "D": "Stain"},
                            "Answer": "ABCD"[k + s],
                            "type": "Defect Classification",
                        },
                        {
                            "Question": "Where is the defect?",
                            "Options": {"A": "Top left", "B": "Centre", "C": "Bottom right"},
                            "Answer": "CB"[k],
                            "type": "Defect Localization",
                        },
                    ]
                index[str(query.relative_to(root))] = {
                    "conversation": conversation,
                    "random_templates": templates,
                    "similar_templates": templates[::-1],
                    "mask_path": "",
                }
    (root / "mmad.json").write_text(json.dumps(index, indent=1))
    return root


INSPECTION_ANSWERS = [
    "The bottom product passed.",
    "The bottom product is defective: missing terminal at C5.",
    "The bottom product is defective: burnt terminal at U1; shifted terminal at D9.",
    "The bottom product passed.",
    "The bottom product is defective: foreign particle at D2.",
    "The bottom product passed.",
]


def conversation_file(folder: Path, answers: list[str] = INSPECTION_ANSWERS) -> Path:
    """A conversation JSONL: a reference and a candidate a line, the user turn asking, the answer given."""
    lines = []
    for k, answer in enumerate(answers):
        ref = image(folder / "ref" / f"{k}.png", 20 + k, size=(48, 32))
        cand = image(folder / "cand" / f"{k}.png", 200 - k, size=(48, 32))
        messages = [
            {"role": "user", "content": "<image><image>The first product passed; did the second pass?"},
            {"role": "assistant", "content": answer},
        ]
        lines.append({"images": [str(p.relative_to(folder)) for p in (ref, cand)], "messages": messages})
    file = folder / "data.jsonl"
    file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return file
