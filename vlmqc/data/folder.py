"""A dataset read from files in a published layout (MVTec AD, VisA, MMAD, conversation JSONL): its
examples, every one checked before anything is written, split, hashed, and turned into rows.

Each reader (vlmqc/data/mvtec.py, mmad.py, conversations.py) finds its ``Example``s and hands
them to ``source``, which raises one ``CustomDataError`` listing every problem (file and line, or
the file itself), assigns the splits and hashes every file it names by its path inside the root,
so a moved folder is the same data. The checks on an image are custom data's
(``custom._inside``): a path that stays inside the folder, a file that exists, a header under
``data.max_pixels``, pixels that decode. Rows store images as custom data does: the user's bytes
where they already are upright RGB, else PNG of the normalised image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vlmqc.data import split as splitting
from vlmqc.data.custom import MAX_REPORTED, CustomDataError, _as_stored
from vlmqc.data.synth import SPLITS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Example:
    id: str  # stable within the dataset: a path inside the root (and a question's number)
    image: Path  # the query: what the answer is about
    context: list[Path] = field(default_factory=list)  # shown before it, in order
    task: str = "custom"  # the row's task: custom (inspection or free text) or choice
    verdict: str = ""
    defects: list[dict] = field(default_factory=list)
    target: str = ""  # choice: the right letters
    answer: str = ""  # the text trained on, where the data gives its own
    question: dict = field(default_factory=dict)  # vlmqc/tasks.py
    meta: dict = field(default_factory=dict)
    group: str = ""  # examples of one group share a split (MMAD: the questions of one query)
    split: str | None = None


@dataclass
class Source:
    root: Path
    digest: str  # content hash of the index files and every image the examples name
    entries: dict[str, list[Example]]

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def chunks(self, size: int) -> dict[str, list]:
        return {s: [(self.root, es[i : i + size]) for i in range(0, len(es), size)] for s, es in self.entries.items()}


def fail_on(errors: list[str], what: str) -> None:
    """One CustomDataError listing every problem (the first MAX_REPORTED), as custom data reports them."""
    if errors:
        shown = errors[:MAX_REPORTED]
        more = f"\n  ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise CustomDataError(f"{len(errors)} problem(s) in {what}:\n  " + "\n  ".join(shown) + more)


def images_in(folder: Path) -> list[Path]:
    """The image files of a folder, by name (hidden files left out)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def source(
    root: Path,
    examples: list[Example],
    index: list[bytes],
    test_fraction: float,
    seed: int,
    what: str,
    labels: Callable[[Example], set[str]] | None = None,
) -> Source:
    """Split and hash checked examples. Examples without a split are split by group (an example is its
    own group where it has none), stratified on ``labels`` of the group's first example (default: its
    verdict, defect types and positions); a split left empty is an error naming the data."""
    if not examples:
        fail_on([f"{root}: no examples found"], what)
    labels = labels or (lambda e: splitting.label_set({"verdict": e.verdict, "defects": e.defects}))
    groups: dict[str, list[Example]] = {}
    for e in examples:
        if e.split is None:
            groups.setdefault(e.group or e.id, []).append(e)
    if groups:
        keys = list(groups)
        assigned = splitting.stratified_split([labels(groups[k][0]) for k in keys], test_fraction, seed)
        for k, s in zip(keys, assigned, strict=True):
            for e in groups[k]:
                e.split = s
    by_split = {s: [e for e in examples if e.split == s] for s in SPLITS}
    for s, members in by_split.items():
        if not members:
            fail_on(
                [
                    f"split {s!r} is empty ({len(examples)} example(s) in all, {len(groups)} split by "
                    f"data.test_fraction); add examples or change data.test_fraction"
                ],
                what,
            )
    h = hashlib.sha256()
    for blob in index:
        h.update(hashlib.sha256(blob).digest())
    seen: set[Path] = set()
    for e in examples:
        for p in (*e.context, e.image):
            if p not in seen:
                seen.add(p)
                h.update(str(p.relative_to(root)).encode())
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return Source(root, h.hexdigest(), by_split)


def rows(job) -> Iterator[dict]:
    root, examples = job
    stored: dict[Path, dict] = {}  # a reference shown beside many queries is read once a chunk

    def image(p: Path) -> dict:
        if p not in stored:
            stored[p] = _as_stored(p)
        return stored[p]

    for e in examples:
        yield {
            "id": e.id,
            "task": e.task,
            "image": image(e.image),
            "source_image": None,
            "context": [image(p) for p in e.context],
            "verdict": e.verdict,
            "defects": e.defects,
            "target": e.target,
            "shape": "",
            "answer": e.answer,
            "meta": json.dumps(
                {"file": str(e.image.relative_to(root)), "context": [str(p.relative_to(root)) for p in e.context]}
                | e.meta,
                sort_keys=True,
            ),
            "question": json.dumps(e.question, sort_keys=True) if e.question else "",
        }
