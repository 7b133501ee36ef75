"""``vlmqc predict``: answer new images with a completed trial (vlmqc/inspector.py), or export it.

    vlmqc predict <run folder> cand.png --reference ref.png          # one candidate
    vlmqc predict <run folder> images/ --reference ref.png            # every image of a folder
    vlmqc predict <run folder> data/metadata.jsonl --out preds.jsonl  # custom-data metadata: a reference per row,
        labels scored
    vlmqc predict <run folder> --merge exported/                      # base + adapter as one plain checkpoint

One JSON line per image in ``--out`` (default predictions.jsonl), written at the end, atomically;
with labels in the metadata, the trial's metrics are printed and written beside it
(``<out>.metrics.json``). Every input is checked before the model loads. Exit status 2 on bad
input (a folder that is not a completed trial, an unreadable image, a reference of another size,
a metadata line without an image), naming it; nothing is written then. The local page is
``vlmqc serve``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METADATA_KEYS = {
    "file",
    "reference",
    "verdict",
    "defects",
    "answer",
    "split",
    "target",
}  # custom data's, and a star row's target


class InputError(ValueError):
    """A command-line input that cannot be answered; the message names the file (and line)."""


def _images(folder: Path, exclude: set[Path]) -> list[Path]:
    from PIL import Image

    suffixes = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".") and p.resolve() not in exclude
    )
    if not found:
        raise InputError(f"{folder}: no images in this folder")
    return found


def _metadata(path: Path, task: str, reference: Path | None) -> list[dict]:
    """The rows of a custom-data metadata.jsonl: image, reference (its own, else ``--reference``)
    and labels (``None`` where the line gives none). Every problem is reported, with its line."""
    from vlmqc.config import CustomConfig
    from vlmqc.data.custom import _labels, records
    from vlmqc.labels import POSITIONS

    root, rows, errors = path.parent, [], []
    cfg = CustomConfig(name="predict", path=str(root))
    # utf-8-sig and \n alone, as custom data reads its metadata
    for _, where, rec in records(
        path, path.read_text(encoding="utf-8-sig", errors="replace").split("\n"), METADATA_KEYS, errors
    ):
        if not isinstance(rec.get("file"), str) or not rec["file"].strip():
            errors.append(f"{where}: no image: 'file' must name the image, relative to {root}")
            continue
        labels = None
        if task == "star" and rec.get("target") is not None:
            if rec["target"] not in POSITIONS:
                errors.append(f"{where}: unknown target {rec['target']!r} (a position such as C5)")
            labels = {"verdict": "", "defects": [], "answer": "", "target": rec["target"]}
        elif rec.get("verdict") is not None or rec.get("answer") is not None:
            labels = {**_labels(cfg, rec, where, errors), "target": ""}
        ref = rec.get("reference")
        rows.append(
            {
                "image": root / rec["file"],
                "reference": root / ref if isinstance(ref, str) and ref else reference,
                "labels": labels,
                "where": where,
            }
        )
    if errors:
        raise InputError("\n  ".join([f"{len(errors)} problem(s) in {path}:", *errors]))
    if not rows:
        raise InputError(f"{path}: no images (the file has no JSON lines)")
    return rows


def _inputs(source: Path, reference: Path | None, task: str) -> list[dict]:
    if source.is_dir():
        return [
            {"image": p, "reference": reference, "labels": None, "where": str(p)}
            for p in _images(source, {reference.resolve()} if reference else set())
        ]
    if source.suffix == ".jsonl":
        if not source.is_file():
            raise InputError(f"{source}: metadata file not found")
        return _metadata(source, task, reference)
    return [{"image": source, "reference": reference, "labels": None, "where": str(source)}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlmqc predict", description="Answer images with a completed trial, or export it as one checkpoint."
    )
    parser.add_argument("run", type=Path, help="the trial's run folder (outputs/runs/<name>)")
    parser.add_argument(
        "input", type=Path, nargs="?", help="an image, a folder of images, or a custom-data metadata.jsonl"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="the passed product every candidate is compared with (a metadata row's own reference wins)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("predictions.jsonl"),
        help="one JSON line per image (default: predictions.jsonl)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="images per generation batch (default: the trial's trainer.eval_batch_size)"
    )
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--merge",
        type=Path,
        metavar="DIR",
        help="save base + adapter merged, with the processor, as a plain checkpoint in DIR",
    )
    args = parser.parse_args(argv)
    if args.input is None and args.merge is None:
        parser.error("give an input to answer, --merge DIR, or both")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be >= 1")

    from tqdm import tqdm

    from vlmqc.answers import Parsed
    from vlmqc.evaluation.scoring import score
    from vlmqc.files import write_atomic, write_json
    from vlmqc.inspector import CompletedRun, Inspector, InspectorError

    try:
        trial = CompletedRun.read(args.run)  # before anything loads: a folder that is not a completed trial
        if args.reference is not None and not args.reference.is_file():
            raise InputError(f"reference {args.reference}: file not found")
        if args.input is not None and not args.input.exists():
            raise InputError(f"{args.input}: not found")
        if args.merge is not None and args.merge.exists() and (not args.merge.is_dir() or any(args.merge.iterdir())):
            raise InputError(
                f"--merge {args.merge}: already exists and is not an empty folder; the merged checkpoint needs a "
                f"new one"
            )
        if args.out.is_dir():
            raise InputError(f"--out {args.out}: is a folder; name the predictions file")
        items = _inputs(args.input, args.reference, trial.task.value) if args.input is not None else []
        # every input is checked before the model loads: a bad image is named in a second, not after the load
        for item in tqdm(items, desc="checking", unit="image", file=sys.stderr, disable=len(items) < 2):
            try:
                trial.check(item["image"], item["reference"])
            except InspectorError as e:
                raise InputError(f"{item['where']}: {e}" if item["where"] != str(item["image"]) else str(e)) from None
        inspector = Inspector.load(args.run, args.device)
    except (InspectorError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.merge is not None:
        try:
            print(f"merged checkpoint: {inspector.merge(args.merge)}", file=sys.stderr)
        except InspectorError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not items:
        return 0
    with tqdm(total=len(items), desc="predicting", unit="image", file=sys.stderr) as bar:
        answers = inspector.predict(
            [i["image"] for i in items],
            [i["reference"] for i in items],
            args.batch_size,
            ids=[str(i["image"]) for i in items],
            on_batch=bar.update,
        )
    rows = []
    for item, a in zip(items, answers, strict=True):
        row = {
            "image": str(item["image"]),
            "reference": str(item["reference"]) if item["reference"] else None,
            **{k: v for k, v in a.items() if k != "id"},
        }
        if item["labels"] is not None:
            row["labels"] = item["labels"]
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    print(f"{len(rows)} prediction(s): {args.out}", file=sys.stderr)
    labelled = [(item, a) for item, a in zip(items, answers, strict=True) if item["labels"] is not None]
    if labelled:
        task = trial.task.value
        examples = [{"id": str(item["image"]), "task": task, **item["labels"]} for item, _ in labelled]
        parsed = [
            Parsed(
                verdict=a["verdict"],
                defects=tuple((d["position"], d["type"]) for d in a["defects"]),
                target=a["target"],
                ok=a["parsed"],
                text=a["answer"],
            )
            for _, a in labelled
        ]
        metrics = {f"eval/{k}": v for k, v in score(examples, parsed).items()}
        path = args.out.with_name(args.out.stem + ".metrics.json")
        write_json(path, {"run": str(args.run), "rows": len(labelled), "metrics": metrics})
        for k, v in metrics.items():
            print(f"{k} = {v:.4f}")
        print(f"metrics of {len(labelled)} labelled row(s): {path}", file=sys.stderr)
    return 0
