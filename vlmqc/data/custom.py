"""The user's own images: a folder with the images and a ``metadata.jsonl``.

One JSON object per line::

    {"file": "cand/0001.png", "reference": "ref/0001.png", "verdict": "defective",
     "defects": [{"position": "C5", "type": "missing"}], "split": "test"}
    {"file": "cand/0002.png", "answer": "The bottom product passed."}

- ``file`` (required): the image, relative to the folder.
- ``reference`` (optional): an image of a product that passed; with ``stack_reference`` the
  model sees the reference on top and ``file`` below, as in the synthetic pair task.
- labels: ``verdict`` (``pass`` or ``defective``) with ``defects`` (position + type), or a
  free ``answer`` text; at least one of the two.
- ``split`` (optional, ``train`` or ``test``): on every line or on none; without it the
  examples are split with stratification over verdict, defect type and position.

Everything is checked before anything is written; each problem is reported with the file and
line it comes from. Images may be in any mode Pillow opens (16-bit, float, palette, CMYK,
with transparency): the dataset stores them as 8-bit RGB, the user's bytes kept where they
already are. An image over ``data.max_pixels`` is refused at validation, from its header alone.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vlmqc.config import CustomConfig
from vlmqc.data import split as splitting
from vlmqc.data import store
from vlmqc.data.synth import SPLITS, stack
from vlmqc.labels import Verdict, cell_index

KEYS = {"file", "reference", "verdict", "defects", "answer", "split"}
MAX_REPORTED = 20


class CustomDataError(ValueError):
    """The user's folder or metadata is not usable; the message names file and line."""


@dataclass
class Entry:
    line: int
    file: Path
    reference: Path | None
    labels: dict
    split: str | None


@dataclass
class Source:
    cfg: CustomConfig
    root: Path
    digest: str  # content hash of the metadata and every image it names
    entries: dict[str, list[Entry]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def chunks(self, size: int) -> dict[str, list]:
        """Each split's entries cut into jobs for ``rows``."""
        return {
            s: [(self.cfg, self.root, es[i : i + size]) for i in range(0, len(es), size)]
            for s, es in self.entries.items()
        }


def rows(job) -> Iterator[dict]:
    cfg, root, entries = job
    for e in entries:
        yield _row(cfg, root, e)


def rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow opens, with the pixels a person would see.

    Pillow's own ``convert("RGB")`` clips 16-bit and 32-bit values at 255 (a 16-bit photo turns
    white, a 0-1 float image black) and drops alpha, showing whatever colour sits under a
    transparent pixel; here high-bit-depth values are scaled to 8 bits and transparent areas
    are laid on white, as a viewer shows them.
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        top = a.max(initial=0.0)
        if im.mode == "F" and top <= 1.0:
            a = a * 255  # floats in [0, 1]
        elif im.mode.startswith("I;16") or top > 255:
            a = a / 257  # 16-bit range onto 8 bits (65535 / 257 = 255)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def _inside(root: Path, rel, where: str, key: str, max_pixels: int, errors: list[str]) -> Path | None:
    if not isinstance(rel, str) or not rel.strip():
        errors.append(f"{where}: '{key}' must be a non-empty relative path, got {rel!r}")
        return None
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        errors.append(f"{where}: '{key}' {rel!r} points outside the folder {root}")
        return None
    if not path.is_file():
        errors.append(f"{where}: '{key}' image not found: {path}")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # data.max_pixels decides, below
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:  # from the header: nothing is decoded
                    errors.append(
                        f"{where}: '{key}' {path} is {im.width}x{im.height} = {im.width * im.height} pixels, more "
                        f"than data.max_pixels={max_pixels}"
                    )
                    return None
                im.verify()
        with Image.open(path) as im:  # verify() does not decode pixels: a truncated JPEG passes it
            rgb(im)  # decodes every pixel, through the conversion the build uses
    except Image.DecompressionBombError as e:  # not an OSError: Pillow's own ceiling, above any usable data.max_pixels
        errors.append(f"{where}: '{key}' {path} is too large to decode: {e}")
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        errors.append(f"{where}: '{key}' unreadable image {path}: {e}")
        return None
    return path


def _labels(cfg: CustomConfig, rec: dict, where: str, errors: list[str]) -> dict:
    labels = {"verdict": "", "defects": [], "answer": ""}
    verdict, defects, answer = rec.get("verdict"), rec.get("defects"), rec.get("answer")
    if verdict is None and answer is None:
        errors.append(f"{where}: needs labels ('verdict', with 'defects' when defective) or an 'answer' text")
        return labels
    if answer is not None:
        if not isinstance(answer, str) or not answer.strip():
            errors.append(f"{where}: 'answer' must be a non-empty string, got {answer!r}")
        else:
            labels["answer"] = answer.strip()
    if verdict is not None:
        allowed = [v.value for v in Verdict]
        if verdict not in allowed:
            errors.append(f"{where}: unknown verdict {verdict!r} (expected one of {', '.join(allowed)})")
        else:
            labels["verdict"] = verdict
    if defects is not None:
        if not isinstance(defects, list):
            errors.append(f"{where}: 'defects' must be a list of {{'position': ..., 'type': ...}}, got {defects!r}")
            return labels
        if defects and verdict != Verdict.defective.value:
            errors.append(f"{where}: 'defects' given but verdict is {verdict!r}, not 'defective'")
        seen = set()
        for j, d in enumerate(defects):
            if not isinstance(d, dict) or set(d) != {"position", "type"}:
                errors.append(f"{where}: defects[{j}] must be an object with exactly 'position' and 'type', got {d!r}")
                continue
            try:
                r, c = cell_index(d["position"], tuple(cfg.rows), cfg.columns)
            except ValueError as e:
                errors.append(f"{where}: defects[{j}]: {e}")
                continue
            if d["type"] not in cfg.defect_types:
                errors.append(
                    f"{where}: defects[{j}]: unknown defect type {d['type']!r} (allowed, from data.defect_types: "
                    f"{', '.join(cfg.defect_types)})"
                )
                continue
            pos = f"{cfg.rows[r]}{c + 1}"
            if pos in seen:
                errors.append(f"{where}: defects[{j}]: position {pos} is listed twice")
            seen.add(pos)
            labels["defects"].append({"position": pos, "type": d["type"]})
    return labels


def records(path: Path, lines: list[str], keys: set[str], errors: list[str]) -> Iterator[tuple[int, str, dict]]:
    """``(line number, "file:line", record)`` for each line of a metadata file that is a JSON object
    with only ``keys``; every other non-blank line is reported in ``errors``, with its line.
    The one reader of metadata lines: custom data's, and ``python -m vlmqc.predict``'s."""
    for lineno, text in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            errors.append(f"{where}: malformed JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            continue
        unknown = sorted(set(rec) - keys)
        if unknown:
            errors.append(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(keys))})"
            )
            continue
        yield lineno, where, rec


def read(cfg: CustomConfig) -> Source:
    """Validate the folder and its metadata; raise CustomDataError listing every problem."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise CustomDataError(f"data.path={cfg.path!r}: folder not found")
    root = root.resolve()
    meta = root / cfg.metadata
    if not meta.resolve().is_relative_to(root):  # through '..', an absolute path or a symlink
        raise CustomDataError(
            f"data.metadata={cfg.metadata!r}: {meta.resolve()} is outside the folder data.path={str(root)!r}"
        )
    if not meta.is_file():
        raise CustomDataError(f"{meta}: metadata file not found (data.metadata={cfg.metadata!r})")
    raw = meta.read_bytes()
    errors: list[str] = []
    entries: list[Entry] = []
    seen_files: dict[Path, int] = {}
    try:
        # utf-8-sig: editors on Windows save a BOM; split on \n only, since splitlines() also
        # breaks at U+2028, U+2029 and U+0085, which JSON allows unescaped inside strings
        lines = raw.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as e:
        raise CustomDataError(f"{meta}: not UTF-8 text ({e})") from None
    for lineno, where, rec in records(meta, lines, KEYS, errors):
        if "file" not in rec:
            errors.append(f"{where}: missing required key 'file'")
            continue
        file = _inside(root, rec["file"], where, "file", cfg.max_pixels, errors)
        reference = (
            _inside(root, rec["reference"], where, "reference", cfg.max_pixels, errors)
            if rec.get("reference") is not None
            else None
        )
        if file is not None and reference is not None and cfg.stack_reference:
            _stack_fits(reference, file, where, cfg.max_pixels, errors)
        labels = _labels(cfg, rec, where, errors)
        split = rec.get("split")
        if split is not None and split not in SPLITS:
            errors.append(f"{where}: unknown split {split!r} (expected train or test)")
        if file is not None:
            if file in seen_files:
                errors.append(f"{where}: {rec['file']!r} is already listed on line {seen_files[file]}")
            seen_files[file] = lineno
            entries.append(Entry(lineno, file, reference, labels, split))
    if not errors and not entries:
        errors.append(f"{meta}: no examples (the file has no JSON lines)")
    with_split = [e for e in entries if e.split is not None]
    if not errors and with_split and len(with_split) != len(entries):
        first = next(e for e in entries if e.split is None)
        errors.append(
            f"{meta}:{first.line}: 'split' is given on some lines but not this one: give it on every line or on none"
        )
    if errors:
        shown = errors[:MAX_REPORTED]
        more = f"\n  ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise CustomDataError(f"{len(errors)} problem(s) in custom data {root}:\n  " + "\n  ".join(shown) + more)

    if not with_split:
        assigned = splitting.stratified_split(
            [splitting.label_set(e.labels) for e in entries], cfg.test_fraction, cfg.seed
        )
        for e, s in zip(entries, assigned, strict=True):
            e.split = s
    by_split = {s: [e for e in entries if e.split == s] for s in SPLITS}
    for s, members in by_split.items():
        if not members:
            raise CustomDataError(
                f"{meta}: split {s!r} is empty ({len(entries)} example(s) in all); add examples or change 'split' "
                f"/ data.test_fraction"
            )

    h = hashlib.sha256(raw)
    for e in entries:
        for p in (e.file, e.reference):
            if p is not None:
                h.update(str(p.relative_to(root)).encode())
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return Source(cfg, root, h.hexdigest(), by_split)


def _as_stored(path: Path) -> dict:
    """The user's bytes, not re-encoded, where they already decode to upright RGB; otherwise
    PNG of the normalised image: decoders ignore the EXIF orientation (the model would see the
    photo on its side), and every reader after this one may assume RGB."""
    with Image.open(path) as im:
        as_is = (
            im.mode == "RGB" and "transparency" not in im.info and im.getexif().get(ExifTags.Base.Orientation, 1) == 1
        )
    return {"bytes": path.read_bytes(), "path": None} if as_is else store.encode(_open(path), "PNG")


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return rgb(ImageOps.exif_transpose(im))


def stacked_layout(reference: tuple[int, int], candidate: tuple[int, int]) -> tuple[int, int, int]:
    """The stacked pair's geometry from the two sizes (width, height): the reference's height once
    scaled to the candidate's width, the gap, and the whole image's height."""
    top = max(1, round(reference[1] * candidate[0] / reference[0]))
    gap = max(2, candidate[0] // 100)
    return top, gap, top + gap + candidate[1]


def stack_pair(reference: Image.Image, candidate: Image.Image) -> tuple[Image.Image, dict]:
    """The reference (scaled to the candidate's width) on top of the candidate, and where the
    pair splits (``{"top", "gap"}``): how a custom row with a reference is shown, in training
    and in ``vlmqc.inspector``."""
    top, gap, _ = stacked_layout(reference.size, candidate.size)
    ref = reference.resize((candidate.width, top), Image.BICUBIC)
    return stack(ref, candidate, gap=gap), {"top": ref.height, "gap": gap}


def _upright_size(path: Path) -> tuple[int, int]:
    """An image's size as it is shown (EXIF orientation applied), from its header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            turned = im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            return (im.height, im.width) if turned else im.size


def _stack_fits(reference: Path, file: Path, where: str, max_pixels: int, errors: list[str]) -> None:
    """The stacked pair is bounded by data.max_pixels as each image is: a thin reference scaled to a
    wide candidate's width can make it far larger than either."""
    candidate = _upright_size(file)
    _, _, height = stacked_layout(_upright_size(reference), candidate)
    if candidate[0] * height > max_pixels:
        errors.append(
            f"{where}: the pair stacked for the model (the reference scaled to {candidate[0]} pixels wide, on top of "
            f"the candidate) is {candidate[0]}x{height} = {candidate[0] * height} pixels, more than "
            f"data.max_pixels={max_pixels}; give a reference of the candidate's proportions, or set "
            f"data.stack_reference=false"
        )


def _row(cfg: CustomConfig, root: Path, e: Entry) -> dict:
    rel = str(e.file.relative_to(root))
    source = None
    meta = {"file": rel, "line": e.line, "reference": str(e.reference.relative_to(root)) if e.reference else None}
    if e.reference is not None and cfg.stack_reference:
        pair, meta["stack"] = stack_pair(
            _open(e.reference), _open(e.file)
        )  # where data.layout=separate splits the pair
        image = store.encode(pair, "PNG")  # WebP stops at 16383 pixels
    else:
        image = _as_stored(e.file)
        if e.reference is not None:
            source = _as_stored(e.reference)
    return {
        "id": rel,
        "task": "custom",
        "image": image,
        "source_image": source,
        "context": [],
        "verdict": e.labels["verdict"],
        "defects": e.labels["defects"],
        "target": "",
        "shape": "",
        "answer": e.labels["answer"],
        "meta": json.dumps(meta, sort_keys=True),
        "question": "",
    }
