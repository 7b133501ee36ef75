"""Prompts: the instruction a model is given, and the answer it is trained on.

The answer text a model learns is rendered from an example's structured labels with the prompt
config's templates (``render_answer``); vlmqc/answers.py reads whatever a model generates back
into labels. For every prompt option in ``conf/prompt/``,
``parse_answer(cfg, render_answer(cfg, example), task)`` recovers the labels exactly
(tests/test_prompts.py).
"""

from __future__ import annotations

import json

from vlmqc.config import AnswerFormat, ConfigError, PromptConfig
from vlmqc.labels import DEFECT_NAMES, DEFECTIVE, PASS, Task, board_order

_CANONICAL = {t.value: name for t, name in DEFECT_NAMES.items()}


def instruction(cfg: PromptConfig, task: str, images: int = 1) -> str:
    """The instruction for a task shown as ``images`` images; the custom task shows a pair, so it
    gets the pair's, and a pair given as two images (data.layout=separate) gets ``pair_separate``."""
    task = Task(task)
    if task in (Task.pair, Task.custom):
        if images == 2 and cfg.pair_separate is None:
            raise ConfigError(
                f"prompt.pair_separate: the {cfg.name} prompt has no wording for a pair given as two images; set "
                f"it, or use data.layout=stacked"
            )
        return cfg.pair_separate if images == 2 else cfg.pair
    return getattr(cfg, task.value)


def _dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def render_answer(cfg: PromptConfig, example: dict) -> str:
    """The answer a model is trained on, rendered from the example's labels."""
    as_json = cfg.format == AnswerFormat.json
    if Task(example["task"]) is Task.star:
        target = example.get("target")
        if not target:
            raise ValueError(f"star example {example.get('id')!r} has no target")
        return _dumps({"position": target}) if as_json else cfg.answer_star.format(position=target)
    verdict = example.get("verdict") or ""
    if not verdict:
        if not example.get("answer"):
            raise ValueError(f"example {example.get('id')!r} has neither a verdict nor an answer text")
        return example["answer"]
    if verdict == PASS:
        return _dumps({"verdict": PASS}) if as_json else cfg.answer_pass
    if verdict != DEFECTIVE:
        raise ValueError(f"example {example.get('id')!r}: unknown verdict {verdict!r}")
    defects = sorted(example.get("defects") or [], key=lambda d: (*board_order(d["position"]), d["type"]))
    if as_json:
        return _dumps(
            {"verdict": DEFECTIVE, "defects": [{"position": d["position"], "type": d["type"]} for d in defects]}
        )
    items = [
        cfg.defect_item.format(
            name=cfg.defect_names.get(d["type"]) or _CANONICAL.get(d["type"], d["type"]), position=d["position"]
        )
        for d in defects
    ]
    return cfg.answer_defective.format(defects=cfg.defect_separator.join(items))
