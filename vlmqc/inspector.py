"""A trained trial as an inspector: answer new images with it, or export it as a plain checkpoint.

    from vlmqc.inspector import Inspector
    inspector = Inspector.load("outputs/runs/data=pair_round")       # a completed trial's folder
    inspector.predict(["cand.png"], references=["ref.png"])           # [{"verdict": ..., "defects": ...}]
    inspector.merge("exported/")                                     # base + adapter as one checkpoint

Everything the trial decided is read from its summary (``config``): the base model and its
processor knobs, the prompt, the data task, layout and image size, the generation length. The
adapter (or, for full fine-tuning, the model) and the processor come from the run folder, as
training saved them. An image is turned into what the model saw in training with the data code
itself: a pair stacked by the same function with the same gap (``vlmqc.data.synth.stack`` /
``vlmqc.data.custom.stack_pair``), cut again for ``data.layout=separate`` by
``vlmqc.data.layout``, the diff image computed from the pair by ``vlmqc.data.diff.concentrate``
with the trial's ``data.diff``; answers come from ``vlmqc.predict.predict`` (batched, greedy).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmqc.config import (
    DATA_SCHEMAS,
    ConfigError,
    ImageSizeConfig,
    LoraConfig,
    ModelConfig,
    PromptConfig,
    TrainerConfig,
    to_object,
)
from vlmqc.data import board, custom, diff, synth
from vlmqc.evaluation.generate import predict
from vlmqc.files import publish
from vlmqc.labels import Task
from vlmqc.models import load as load_model
from vlmqc.models import peft_warnings_off
from vlmqc.runs.lock import DIED, DIED_REASON, status_of
from vlmqc.runs.records import read_summary

ImageInput = str | os.PathLike | Image.Image


class InspectorError(ValueError):
    """A run folder that is not a completed trial, or an input it cannot answer; the message names it."""


def _schema(cls, node: dict, key: str):
    return to_object(OmegaConf.merge(OmegaConf.structured(cls), node), key)


def open_image(image: ImageInput, what: str = "image") -> Image.Image:
    """An input image as 8-bit RGB, upright (EXIF orientation applied), as custom data is read;
    an ``InspectorError`` naming the file when it cannot be read."""
    if isinstance(image, Image.Image):
        return custom.rgb(image)
    path = Path(image)
    if not path.is_file():
        raise InspectorError(f"{what} {path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return custom.rgb(ImageOps.exif_transpose(im))  # decodes every pixel: a truncated file fails here
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as e:
        raise InspectorError(f"{what} {path}: unreadable image ({e})") from None


def _name(image: ImageInput, i: int) -> str:
    return f"#{i}" if isinstance(image, Image.Image) else str(image)


@dataclass
class CompletedRun:
    """What a completed trial's folder says about itself, checked; no model loaded."""

    run_dir: Path
    weights: Path  # adapter/ (PEFT) or model/ (full fine-tuning)
    full: bool
    model: ModelConfig
    image_size: ImageSizeConfig
    prompt: PromptConfig
    data: object  # the trial's data config (StarConfig, PairConfig, DiffConfig or CustomConfig)
    trainer: TrainerConfig
    models_dir: str

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> CompletedRun:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise InspectorError(f"{run_dir}: not a folder")
        summary, problems = read_summary(run_dir / "summary.json")
        if summary is None:
            raise InspectorError(f"{run_dir}: not a trial's folder ({problems[0] if problems else 'no summary.json'})")
        if summary.status != "completed":
            status = status_of(run_dir, summary.status)  # a running record no process holds: died
            reason = (
                f": {DIED_REASON if status == DIED else summary.reason}" if status == DIED or summary.reason else ""
            )
            raise InspectorError(f"{run_dir}: the trial is not completed (status {status!r}{reason})")
        config = summary.config
        missing = [
            k
            for k in ("model", "image_size", "prompt", "data", "lora", "trainer", "paths")
            if not isinstance(config.get(k), dict)
        ]
        if missing or problems:
            raise InspectorError(
                f"{run_dir}/summary.json: unreadable trial record "
                f"({', '.join(problems) or 'no config for ' + ', '.join(missing)})"
            )
        try:
            lora = _schema(LoraConfig, config["lora"], "lora")
            task = config["data"].get("task")
            if task not in DATA_SCHEMAS:
                raise ConfigError(f"data.task: {task!r} is not one of {', '.join(DATA_SCHEMAS)}")
            trial = cls(
                run_dir=run_dir,
                weights=run_dir / ("model" if lora.full else "adapter"),
                full=lora.full,
                model=_schema(ModelConfig, config["model"], "model"),
                image_size=_schema(ImageSizeConfig, config["image_size"], "image_size"),
                prompt=_schema(PromptConfig, config["prompt"], "prompt"),
                data=_schema(DATA_SCHEMAS[task], config["data"], "data"),
                trainer=_schema(TrainerConfig, config["trainer"], "trainer"),
                models_dir=str(config["paths"].get("models_dir") or ""),
            )
        except ConfigError as e:
            raise InspectorError(f"{run_dir}/summary.json: the trial's config does not validate: {e}") from None
        if not (trial.weights / "config.json").is_file() and not (trial.weights / "adapter_config.json").is_file():
            raise InspectorError(f"{run_dir}: the completed trial has no {trial.weights.name}/ folder with its weights")
        return trial

    @property
    def task(self) -> Task:
        return Task(self.data.task)

    def row(self, candidate: ImageInput, reference: ImageInput | None = None, name: str = "") -> dict:
        """The dataset row a candidate makes for this trial, as training built its rows.

        ``reference=None`` means the candidate is shown as it is: an already stacked pair
        (reference on top, candidate below, halves of one height) for the pair and diff tasks,
        the one board of the star task, the user's own image for a custom trial. With a
        reference, the pair is stacked (and cut, for ``data.layout=separate``; made into the
        diff image, for the diff task) exactly as the data code does it.
        """
        task, data = self.task, self.data
        cand = open_image(candidate, "candidate")
        ref = open_image(reference, "reference") if reference is not None else None
        name = name or _name(candidate, 0)
        ref_name = _name(reference, 0) if not isinstance(reference, Image.Image) else f"the reference of {name}"
        row = {"id": name, "task": task.value, "source_image": None, "meta": "{}"}
        if task is Task.star:
            if ref is not None:
                raise InspectorError(
                    f"reference {ref_name}: the trial's star task shows one image, without a reference"
                )
            return {**row, "image": cand}
        if ref is not None and ref.size != cand.size:
            raise InspectorError(
                f"reference {ref_name} is {ref.width}x{ref.height} pixels, the candidate {name} "
                f"{cand.width}x{cand.height}: a pair must be of one size"
            )
        if task is Task.custom:
            if ref is None:
                return {**row, "image": cand}
            if not data.stack_reference:  # shown as training showed it: the candidate, the reference kept beside it
                return {**row, "image": cand, "source_image": ref}
            image, stack = custom.stack_pair(ref, cand)
            return {**row, "image": image, "meta": _meta(stack)}
        gap = synth.pair_gap(cand.width)
        if ref is None:  # an already stacked pair: split at the gap the pair task puts between equal halves
            top = (cand.height - gap) // 2
            if top < 1 or 2 * top + gap != cand.height:
                raise InspectorError(
                    f"candidate {name} ({cand.width}x{cand.height}) is not a stacked pair of two equal boards "
                    f"{gap} pixels apart; give its reference"
                )
            stacked, stack = cand, {"top": top, "gap": gap}
            ref, cand = (
                stacked.crop((0, 0, stacked.width, top)),
                stacked.crop((0, top + gap, stacked.width, stacked.height)),
            )
        else:
            stacked, stack = synth.stack(ref, cand, gap), {"top": ref.height, "gap": gap}
        if task is Task.diff:
            if cand.width != data.render.width:
                raise InspectorError(
                    f"candidate {name} is {cand.width} pixels wide: the diff trial's boards are "
                    f"data.render.width={data.render.width}"
                )
            return {**row, "image": diff.concentrate(ref, cand, board.Geometry(data.render.width), data.diff).image}
        return {**row, "image": stacked, "meta": _meta(stack)}

    def check(self, candidate: ImageInput, reference: ImageInput | None = None) -> None:
        """Raise the ``InspectorError`` that answering this input would raise; no model needed."""
        self.row(candidate, reference)


class Inspector:
    """A completed trial, loaded: ``predict`` answers images, ``merge`` exports the model."""

    def __init__(self, trial: CompletedRun, model, processor, family, device: str):
        self.trial, self.model, self.processor, self.family, self.device = trial, model, processor, family, device

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str = "auto") -> Inspector:
        """The trial's model on ``device`` (``auto``: the GPU when there is one): the base model
        through its family with the trial's image size, then the adapter, with the processor saved
        beside it; or the fully fine-tuned model with its processor. ``InspectorError`` when the
        folder is not a completed trial."""
        trial = CompletedRun.read(run_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise InspectorError(f"device {device!r}: no CUDA device is visible")
        layout = trial.data.layout
        if trial.full:
            model, processor, family, _ = load_model(
                replace(trial.model, path=str(trial.weights)), trial.image_size, trial.models_dir, device, layout
            )
        else:
            from peft import PeftModel

            base, _, family, _ = load_model(trial.model, trial.image_size, trial.models_dir, device, layout)
            processor = family.load_processor(
                str(trial.weights), trial.model.trust_remote_code
            )  # the trial's own, as saved
            if trial.image_size.size is not None:
                family.set_image_size(processor, base, trial.image_size.size)
            with peft_warnings_off():
                model = PeftModel.from_pretrained(base, str(trial.weights))
        model.to(device).eval()
        return cls(trial, model, processor, family, device)

    # ------------------------------------------------------------------------------ inputs

    def row(self, candidate: ImageInput, reference: ImageInput | None = None, name: str = "") -> dict:
        """The dataset row a candidate makes for this trial (``CompletedRun.row``)."""
        return self.trial.row(candidate, reference, name)

    def check(self, candidate: ImageInput, reference: ImageInput | None = None) -> None:
        """Raise the ``InspectorError`` that ``predict`` would raise for this input, without a model call."""
        self.trial.row(candidate, reference)

    # ------------------------------------------------------------------------------ answers

    def predict(
        self,
        candidates: Sequence[ImageInput],
        references: Sequence[ImageInput | None] | ImageInput | None = None,
        batch_size: int | None = None,
        ids: Sequence[str] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """One answer per candidate, in order: ``id``, ``verdict`` ("pass", "defective" or None),
        ``defects`` ([{"position", "type"}]), ``target`` (star task), ``answer`` (the generated
        text), ``parsed`` (whether the parser could read it) and ``seconds`` (the candidate's share
        of its batch's time, preparing the images included).

        ``references``: one per candidate (``None`` for one shown as it is, see ``row``), or one
        image for all. ``batch_size``: the trial's ``trainer.eval_batch_size`` by default, so the
        batches (and their padding) are the trial's own. ``on_batch(n)`` after each batch.
        """
        if references is None or isinstance(references, (str, os.PathLike, Image.Image)):
            references = [references] * len(candidates)
        if len(references) != len(candidates):
            raise InspectorError(f"{len(candidates)} candidates but {len(references)} references")
        ids = list(ids) if ids is not None else [_name(c, i) for i, c in enumerate(candidates)]
        batch_size = batch_size or self.trial.trainer.eval_batch_size
        t, layout = self.trial.trainer, self.trial.data.layout
        out = []
        for start in range(0, len(candidates), batch_size):
            began = time.perf_counter()
            rows = [
                self.row(c, r, i)
                for c, r, i in zip(
                    candidates[start : start + batch_size],
                    references[start : start + batch_size],
                    ids[start : start + batch_size],
                    strict=True,
                )
            ]
            answers = predict(
                self.model,
                self.processor,
                self.family,
                self.trial.prompt,
                rows,
                len(rows),
                t.max_new_tokens,
                layout,
                progress=False,
            )
            seconds = (time.perf_counter() - began) / len(rows)
            for a in answers:
                p = a["parsed"]
                out.append(
                    {
                        "id": a["id"],
                        "verdict": p.verdict,
                        "defects": [{"position": pos, "type": typ} for pos, typ in p.defects],
                        "target": p.target,
                        "answer": a["text"],
                        "parsed": p.ok,
                        "seconds": round(seconds, 4),
                    }
                )
            if on_batch is not None:
                on_batch(len(rows))
        return out

    # ------------------------------------------------------------------------------ export

    def merge(self, out_dir: str | os.PathLike) -> Path:
        """The adapter merged into the base model (PEFT's ``merge_and_unload``) and saved with the
        processor as a plain checkpoint that ``from_pretrained`` loads without PEFT. Written to a
        temporary folder beside ``out_dir`` and renamed into place: a reader never sees half of it.
        An existing non-empty ``out_dir`` is refused. Afterwards this inspector answers with the
        merged model (the same answers)."""
        out = Path(out_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InspectorError(
                f"{out}: already exists and is not an empty folder; the merged checkpoint needs a new one"
            )
        if not self.trial.full:
            self.model = self.model.merge_and_unload()

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)

        publish(out, write, done=lambda path: False)  # an empty folder there is replaced (checked above)
        return out


def _meta(stack: dict) -> str:
    return json.dumps({"stack": stack}, sort_keys=True)
