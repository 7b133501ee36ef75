"""MVTec AD and VisA, read as they are published (``data=mvtec``, ``data=visa``).

    <category>/train/good/*.png                          MVTec AD: the good training images
    <category>/test/good/*.png, test/<defect_type>/*.png  the test images, by verdict and defect type
    <category>/ground_truth/<defect_type>/<name>_mask.png where each defect is
    <category>/Data/Images/{Normal,Anomaly}/, <category>/Data/Masks/Anomaly/
    split_csv/1cls.csv: object,split,label,image,mask     VisA: the images, their split and label

- Queries: every test image (VisA: every ``test`` line of the split file), each shown beside a good
  training image of its category (VisA: a ``train``, ``normal`` line), reference first. MVTec has no
  anomalous training image, so the queries themselves are split into vlmqc's train and test by
  ``data.split_seed`` (``data.test_fraction`` to test, stratified on verdict, type and position).
- The reference: ``data.reference=random`` draws one, seeded by ``data.seed`` and the query's path
  (the same image for the same query, whatever else the folder holds); ``similar`` takes the
  nearest by the mean absolute difference of grey 32 x 32 thumbnails (ties: the first by name).
- Labels: ``good`` / ``normal`` pass; otherwise defective, of the folder's defect type (VisA:
  ``data.defect_type``), at each cell of a ``data.grid`` (3 x 3 by default: rows U, C, D, columns 1-3,
  as the study names its coordinates) holding at least 5 % of the mask's pixels (a pixel above 0).
  An empty mask gives a defective verdict with no position.
- The row keeps vlmqc's inspection format: the prompt's pair instruction with the grid named
  (its question's ``grid``), and the folders' type names read back in answers (``types``).

Every problem is reported before anything is written: a missing mask, a mask of another size than
its image, no good training image for a category, an unreadable image, a path outside the folder,
a bad split-file line (file and line).
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlmqc.config import MvtecConfig, Pick, VisaConfig
from vlmqc.data.custom import CustomDataError, _inside
from vlmqc.data.folder import Example, Source, fail_on, images_in, source
from vlmqc.labels import DEFECTIVE, GRID_ROWS, PASS

MIN_SHARE = 0.05  # of a mask's pixels a cell must hold to be a defect's position
THUMB = 32  # side of the grey thumbnails data.reference=similar compares
VISA_COLUMNS = ("object", "split", "label", "image", "mask")


@dataclass
class Query:
    category: str
    image: Path
    kind: str  # "good", or the defect type
    mask: Path | None
    line: str = ""  # VisA: the split file's line that names it


def cell_box(r: int, c: int, rows: int, columns: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels (left, top, right, bottom) of grid cell (r, c) over an image: the one split the
    reader reads masks by and the exporter draws them by."""
    return c * width // columns, r * height // rows, (c + 1) * width // columns, (r + 1) * height // rows


def positions(mask: np.ndarray, rows: int, columns: int) -> list[str]:
    """The cells holding at least MIN_SHARE of the mask's pixels, row by row."""
    total = int(mask.sum())
    if total == 0:
        return []
    h, w = mask.shape
    out = []
    for r in range(rows):
        for c in range(columns):
            x0, y0, x1, y1 = cell_box(r, c, rows, columns, w, h)
            if mask[y0:y1, x0:x1].sum() >= MIN_SHARE * total:
                out.append(f"{GRID_ROWS[rows][r]}{c + 1}")
    return out


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _checked(root: Path, path: Path, where: str, key: str, max_pixels: int, errors: list[str]) -> Path | None:
    return _inside(root, _rel(path, root), where, key, max_pixels, errors)


def _mask(root: Path, query: Query, max_pixels: int, errors: list[str]) -> np.ndarray | None:
    """The mask as booleans, or None (with a problem) where it is missing, unreadable or of another size."""
    where = query.line or _rel(query.image, root)
    if query.mask is None or _checked(root, query.mask, where, "mask", max_pixels, errors) is None:
        if query.mask is None:
            errors.append(f"{where}: defective ({query.kind}) but its line gives no mask")
        return None
    with Image.open(query.mask) as m, Image.open(query.image) as im:
        if m.size != im.size:
            errors.append(
                f"{where}: its mask {_rel(query.mask, root)} is {m.width}x{m.height}, the image {im.width}x{im.height}"
            )
            return None
        return np.asarray(m.convert("L")) > 0


def _thumb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float32)


def _references(cfg: MvtecConfig, root: Path, queries: list[Query], goods: dict[str, list[Path]]) -> list[Path]:
    """Each query's reference among its category's good training images (sorted by path)."""
    if Pick(cfg.reference) is Pick.random:
        return [random.Random(f"{cfg.seed}:{_rel(q.image, root)}").choice(goods[q.category]) for q in queries]
    thumbs = {p: _thumb(p) for ps in goods.values() for p in ps}
    out = []
    for q in queries:
        mine = _thumb(q.image)
        out.append(min(goods[q.category], key=lambda p: float(np.abs(thumbs[p] - mine).mean())))
    return out


def _examples(
    cfg: MvtecConfig, root: Path, queries: list[Query], goods: dict[str, list[Path]], errors: list[str]
) -> list[Example]:
    """Every query checked, with its labels and reference; problems go to ``errors``."""
    for category, paths in goods.items():
        kept = [p for p in paths if _checked(root, p, _rel(p, root), "reference", cfg.max_pixels, errors)]
        if not paths:
            errors.append(f"{category}: no good training image to show beside its queries")
        goods[category] = kept
    rows_, columns = cfg.grid
    types = sorted({q.kind for q in queries if q.kind != "good"})
    found = []
    for q in queries:
        where = q.line or _rel(q.image, root)
        if _checked(root, q.image, where, "image", cfg.max_pixels, errors) is None:
            continue
        verdict, defects = PASS, []
        if q.kind != "good":
            mask = _mask(root, q, cfg.max_pixels, errors)
            if mask is None:
                continue
            verdict = DEFECTIVE
            defects = [{"position": p, "type": q.kind} for p in positions(mask, rows_, columns)]
        meta = {"category": q.category, "mask": _rel(q.mask, root) if q.mask else None}
        found.append((q, verdict, defects, meta))
    if errors or not all(goods.values()):
        return []
    references = _references(cfg, root, [q for q, *_ in found], goods)
    return [
        Example(
            id=_rel(q.image, root),
            image=q.image,
            context=[ref],
            verdict=verdict,
            defects=defects,
            question={"grid": [rows_, columns], "types": types},
            meta={**meta, "reference": _rel(ref, root)},
        )
        for (q, verdict, defects, meta), ref in zip(found, references, strict=True)
    ]


def _resolved(path: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CustomDataError(f"data.path={path!r}: folder not found")
    return root.resolve()


def _mvtec_queries(cfg: MvtecConfig, root: Path, errors: list[str]) -> tuple[Path, list[Query], dict[str, list[Path]]]:
    """The categories' queries and good training images; ``data.path`` one category or a folder of them."""
    if (root / "test").is_dir():
        base, categories = root.parent, [root]
        if cfg.categories and cfg.categories != [root.name]:
            errors.append(f"data.categories={cfg.categories}: data.path={str(root)!r} is the one category {root.name}")
    else:
        base, found = root, {p.name: p for p in sorted(root.iterdir()) if (p / "test").is_dir()}
        missing = [c for c in cfg.categories if c not in found]
        if missing:
            errors.append(f"data.categories: {missing} not found in {root} (categories there: {sorted(found)})")
        categories = [found[c] for c in (cfg.categories or sorted(found)) if c in found]
        if not found:
            errors.append(f"{root}: neither a category folder (with test/) nor a folder of them")
    queries, goods = [], {}
    for folder in categories:
        goods[folder.name] = images_in(folder / "train" / "good")
        for kind_dir in sorted(p for p in (folder / "test").iterdir() if p.is_dir()):
            for image in images_in(kind_dir):
                kind = kind_dir.name
                mask = folder / "ground_truth" / kind / f"{image.stem}_mask.png" if kind != "good" else None
                queries.append(Query(folder.name, image, kind, mask))
    return base, queries, goods


def read_mvtec(cfg: MvtecConfig) -> Source:
    root = _resolved(cfg.path)
    errors: list[str] = []
    base, queries, goods = _mvtec_queries(cfg, root, errors)
    examples = _examples(cfg, base, queries, goods, errors)
    fail_on(errors, f"MVTec data {root}")
    masks = [q.mask for q in queries if q.mask is not None]
    index = [_rel(m, base).encode() + m.read_bytes() for m in masks]
    return source(base, examples, index, cfg.test_fraction, cfg.split_seed, f"MVTec data {root}")


def _visa_lines(cfg: VisaConfig, root: Path) -> tuple[bytes, list[tuple[str, dict]]]:
    table = root / cfg.csv
    if not table.resolve().is_relative_to(root):
        raise CustomDataError(f"data.csv={cfg.csv!r}: {table.resolve()} is outside the folder data.path={str(root)!r}")
    if not table.is_file():
        raise CustomDataError(f"{table}: split file not found (data.csv={cfg.csv!r})")
    raw = table.read_bytes()
    try:
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        header = reader.fieldnames or []
        lines = [(f"{table}:{n}", line) for n, line in enumerate(reader, 2)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise CustomDataError(f"{table}: not a UTF-8 CSV file ({e})") from None
    missing = [c for c in VISA_COLUMNS if c not in header]
    if missing:
        raise CustomDataError(f"{table}: missing column(s) {missing} (its header: {header})")
    return raw, lines


def read_visa(cfg: VisaConfig) -> Source:
    root = _resolved(cfg.path)
    errors: list[str] = []
    raw, lines = _visa_lines(cfg, root)
    objects = sorted({line["object"] for _, line in lines})
    missing = [c for c in cfg.categories if c not in objects]
    if missing:
        errors.append(f"data.categories: {missing} not in {cfg.csv} (objects there: {objects})")
    queries, goods = [], {o: [] for o in (cfg.categories or objects) if o in objects}
    for where, line in lines:
        if line["object"] not in goods:
            continue
        split, label = line["split"].strip(), line["label"].strip()
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            errors.append(f"{where}: split must be train or test and label normal or anomaly, got {split!r}, {label!r}")
            continue
        image = (root / line["image"].strip()).resolve()
        if not image.is_relative_to(root):
            errors.append(f"{where}: 'image' {line['image']!r} points outside the folder {root}")
            continue
        if split == "train":
            if label == "normal":
                goods[line["object"]].append(image)
            continue
        mask = (root / line["mask"].strip()).resolve() if label == "anomaly" and line["mask"].strip() else None
        if mask is not None and not mask.is_relative_to(root):
            errors.append(f"{where}: 'mask' {line['mask']!r} points outside the folder {root}")
            continue
        kind = "good" if label == "normal" else cfg.defect_type
        queries.append(Query(line["object"], image, kind, mask, where))
    goods = {o: sorted(ps) for o, ps in goods.items()}
    examples = _examples(cfg, root, queries, goods, errors)
    fail_on(errors, f"VisA data {root}")
    index = [raw] + [_rel(q.mask, root).encode() + q.mask.read_bytes() for q in queries if q.mask is not None]
    return source(root, examples, index, cfg.test_fraction, cfg.split_seed, f"VisA data {root}")


def read(cfg: MvtecConfig) -> Source:
    return read_visa(cfg) if isinstance(cfg, VisaConfig) else read_mvtec(cfg)
