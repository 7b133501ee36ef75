"""The ``prompt`` group's schema: the words of a trial."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from omegaconf import MISSING

from vlmqc.config.checks import _check
from vlmqc.labels import DefectType


class AnswerFormat(str, enum.Enum):
    text = "text"  # free text, parsed tolerantly
    json = "json"  # a JSON object: {"verdict": ..., "defects": [{"position": ..., "type": ...}]} or {"position": ...}


@dataclass
class PromptConfig:
    """The words of a trial: what the model is asked, and how a correct answer reads.

    Templates are Python format strings. The answer text a model is trained on is rendered
    from an example's structured labels with these templates (see vlmqc/prompts.py).
    """

    name: str = MISSING
    pair: str = MISSING  # instruction for a reference/candidate pair (and the custom task)
    # the same, the pair given as two images (data.layout=separate); optional so that the prompt of a
    # run recorded before layouts existed still loads (rescore, predict), required by that layout
    pair_separate: str | None = None
    diff: str = MISSING  # instruction for the concentrated-anomaly image
    star: str = MISSING  # instruction for the star task
    format: AnswerFormat = AnswerFormat.text
    answer_pass: str = "The bottom product passed."
    answer_defective: str = "The bottom product is defective: {defects}."  # {defects}: the items joined
    defect_item: str = "{name} at {position}"  # {name}: the defect's name below, {position}: e.g. C5
    defect_separator: str = "; "
    answer_star: str = "The red star is at {position}."
    # canonical defect type -> the name this prompt uses; a missing type uses the canonical English name
    defect_names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        _check(
            self.pair_separate is None or bool(self.pair_separate.strip()),
            "pair_separate",
            self.pair_separate,
            "must not be empty (or null)",
        )
        for key in ("pair", "diff", "star", "answer_pass", "answer_star"):
            _check(bool(getattr(self, key).strip()), key, getattr(self, key), "must not be empty")
        unknown = sorted(set(self.defect_names) - {t.value for t in DefectType})
        _check(
            not unknown,
            "defect_names",
            unknown,
            f"unknown defect type(s); known: {', '.join(t.value for t in DefectType)}",
        )
        _check(
            "{defects}" in self.answer_defective, "answer_defective", self.answer_defective, "must contain {defects}"
        )
        _check("{position}" in self.answer_star, "answer_star", self.answer_star, "must contain {position}")
        _check("{position}" in self.defect_item, "defect_item", self.defect_item, "must contain {position}")
        # formatted once here with sample values, as vlmqc/prompts.py formats them for every answer
        for key, values in (
            ("answer_defective", {"defects": "missing terminal at C5"}),
            ("defect_item", {"name": "missing terminal", "position": "C5"}),
            ("answer_star", {"position": "C5"}),
        ):
            try:
                getattr(self, key).format(**values)
            except (KeyError, IndexError, ValueError, AttributeError) as e:
                _check(
                    False,
                    key,
                    getattr(self, key),
                    f"does not format with {', '.join('{' + v + '}' for v in values)} alone ({type(e).__name__}: "
                    f"{e}); write a literal brace as {{{{ or }}}}",
                )
