"""Multi-image conversations, one JSON object a line, as ms-swift, TRL (an ``images`` column) and
axolotl write them (``data=conversations data.path=<file.jsonl>``):

    {"images": ["ref/0001.png", "cand/0001.png"],
     "messages": [{"role": "user", "content": "<image><image>Did the second product pass?"},
                  {"role": "assistant", "content": "The bottom product is defective: missing terminal at C5."}]}

- ``images`` (required, at least one): paths relative to the file's folder; the last is the query,
  the ones before it are shown first (``data.layout=separate``: in order; ``stacked``: stacked,
  query at the bottom, for a family that takes one image).
- ``messages``: an optional ``system`` message, one ``user`` turn, one ``assistant`` turn. A
  content is a string, with one ``<image>`` placeholder per image, or a list of parts
  (``{"type": "image"}``, ``{"type": "text", "text": ...}``), one image part per image. The user
  turn's text (the system message's before it) is the prompt; the assistant's is the answer the
  model is trained on.
- ``split`` (optional, ``train`` or ``test``): on every line or on none; without it the lines are
  split by ``data.split_seed`` and ``data.test_fraction``.

How the answers are scored (``data.answers``): ``text``, by exact match (case, spacing and a final
stop aside); ``inspection``, read by vlmqc's inspection parser into a verdict and typed defects at
the study's positions (every answer must read so); ``choice``, the letter among the options its
user turn lists one a line (``A. yes``) (every answer must read as one); ``auto`` (the default):
choice if every line reads so, else inspection if every line does, else text.

Everything is checked before anything is written, every problem named with the file's line.
"""

from __future__ import annotations

import re
from pathlib import Path

from vlmqc import choice
from vlmqc.answers import parse_answer
from vlmqc.config import AnswerKind, ConversationsConfig, PromptConfig
from vlmqc.data import split as splitting
from vlmqc.data.custom import CustomDataError, _inside, records
from vlmqc.data.folder import Example, Source, fail_on, source
from vlmqc.data.synth import SPLITS
from vlmqc.labels import Task

KEYS = {"images", "messages", "split"}
PLACEHOLDER = "<image>"
_OPTION = re.compile(r"^\s*\(?([A-Z])[.)]\s+(\S.*?)\s*$")
# only the answer templates and defect names matter to the parser: the schema's defaults
_READER = PromptConfig(name="conversations", pair="-", diff="-", star="-")


def _text(content, where: str, role: str, errors: list[str]) -> tuple[str, int] | None:
    """A message's text and its number of images, from a string or a list of parts."""
    if isinstance(content, str):
        return content.replace(PLACEHOLDER, "").strip(), content.count(PLACEHOLDER)
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in ("image", "text") for p in content):
        texts = [p.get("text") for p in content if p["type"] == "text"]
        if all(isinstance(t, str) for t in texts):
            return "\n".join(t.strip() for t in texts).strip(), sum(p["type"] == "image" for p in content)
    errors.append(f"{where}: the {role} content must be a string or a list of image and text parts, got {content!r}")
    return None


def _turns(rec: dict, where: str, errors: list[str]) -> tuple[str, str, int] | None:
    """(prompt, answer, images named in the turns) of a line's messages."""
    messages = rec.get("messages")
    roles = (
        [m.get("role") for m in messages]
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
        else None
    )
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        errors.append(
            f"{where}: 'messages' must be an optional system message, one user turn and one assistant turn, "
            f"got roles {roles if roles is not None else messages!r}"
        )
        return None
    parts = [_text(m.get("content"), where, m["role"], errors) for m in messages]
    if any(p is None for p in parts):
        return None
    *asked, (answer, in_answer) = parts
    prompt = "\n".join(t for t, _ in asked if t)
    if not prompt:
        errors.append(f"{where}: the user turn has no text")
    if not answer:
        errors.append(f"{where}: the assistant turn has no text")
    if in_answer:
        errors.append(f"{where}: the assistant turn holds an image; images go in the user turn")
    return (prompt, answer, sum(n for _, n in asked)) if prompt and answer else None


def _options(prompt: str) -> dict[str, str]:
    """The options a user turn lists, one a line (``A. yes``), when they run A, B, ... (two at least)."""
    found = dict(m.groups() for m in map(_OPTION.match, prompt.splitlines()) if m)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(found)]
    return found if len(found) >= 2 and "".join(found) == letters else {}


def _as_choice(prompt: str, answer: str) -> dict | None:
    options = _options(prompt)
    letter = choice.parse_choice(answer, options) if options else None
    return {"target": letter, "options": options} if letter else None


def _as_inspection(answer: str) -> dict | None:
    p = parse_answer(_READER, answer, Task.custom.value)
    if not p.ok or any(t is None for _, t in p.defects):
        return None
    return {"verdict": p.verdict, "defects": [{"position": pos, "type": t} for pos, t in p.defects]}


def _kind(cfg: ConversationsConfig, lines: list[tuple[str, str, str]], errors: list[str]) -> AnswerKind:
    """What the answers are scored as; with a kind asked for, every line that does not read so is named."""
    readers = {AnswerKind.choice: lambda p, a: _as_choice(p, a), AnswerKind.inspection: lambda p, a: _as_inspection(a)}
    asked = AnswerKind(cfg.answers)
    if asked is AnswerKind.auto:
        for kind in (AnswerKind.choice, AnswerKind.inspection):
            if all(readers[kind](p, a) for _, p, a in lines):
                return kind
        return AnswerKind.text
    if asked in readers:
        for where, p, a in lines:
            if not readers[asked](p, a):
                what = (
                    "a letter among the options its user turn lists"
                    if asked is AnswerKind.choice
                    else ("a verdict, each defect at a position with a type")
                )
                errors.append(f"{where}: data.answers={asked.value}: the answer does not read as {what}: {a!r}")
    return asked


def read(cfg: ConversationsConfig) -> Source:
    """Validate the file and every image it names; raise CustomDataError listing every problem."""
    file = Path(cfg.path).expanduser()
    if not file.is_file():
        raise CustomDataError(f"data.path={cfg.path!r}: file not found")
    file = file.resolve()
    root, raw = file.parent, file.read_bytes()
    try:
        text = raw.decode("utf-8-sig").split("\n")  # on \n only: JSON strings may hold U+2028
    except UnicodeDecodeError as e:
        raise CustomDataError(f"{file}: not UTF-8 text ({e})") from None
    errors: list[str] = []
    found = []
    for lineno, where, rec in records(file, text, KEYS, errors):
        images = rec.get("images")
        if not isinstance(images, list) or not images:
            errors.append(f"{where}: 'images' must be a non-empty list of paths, got {images!r}")
            continue
        paths = [_inside(root, rel, where, f"images[{k}]", cfg.max_pixels, errors) for k, rel in enumerate(images)]
        turns = _turns(rec, where, errors)
        if turns and turns[2] != len(images):
            errors.append(f"{where}: {len(images)} image(s) in 'images' but {turns[2]} in the user turn")
            continue
        if rec.get("split") is not None and rec["split"] not in SPLITS:
            errors.append(f"{where}: unknown split {rec['split']!r} (expected train or test)")
        if turns and all(paths):
            found.append((lineno, where, paths, turns, rec.get("split")))
    if not errors and found and len({s is None for *_, s in found}) > 1:
        errors.append(f"{file}: 'split' is given on some lines but not all: give it on every line or on none")
    kind = _kind(cfg, [(where, p, a) for _, where, _, (p, a, _), _ in found], errors)
    fail_on(errors, f"conversations {file}")
    examples = []
    for lineno, _, paths, (prompt, answer, _), split in found:
        e = Example(
            id=f"{paths[-1].relative_to(root)}#{lineno}",
            image=paths[-1],
            context=paths[:-1],
            answer=answer,
            question={"prompt": prompt},
            meta={"line": lineno},
            split=split,
        )
        if kind is AnswerKind.choice:
            read_ = _as_choice(prompt, answer)
            e.task, e.target = Task.choice.value, read_["target"]
            e.question["questions"] = [{"text": prompt, "options": read_["options"], "type": ""}]
        elif kind is AnswerKind.inspection:
            labels = _as_inspection(answer)
            e.verdict, e.defects = labels["verdict"], labels["defects"]
        examples.append(e)
    return source(root, examples, [raw], cfg.test_fraction, cfg.split_seed, f"conversations {file}", _labels)


def _labels(e: Example) -> set[str]:
    if e.target:
        return {f"choice={e.target}"}
    return splitting.label_set({"verdict": e.verdict, "defects": e.defects})
