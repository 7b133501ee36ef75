"""MMAD's multiple-choice questions, read from its ``mmad.json`` (``data=mmad data.path=<MMAD root>``).

    {"MVTec-AD/bottle/test/broken_large/000.png": {
        "conversation": [{"Question": "Is there any defect in the object?", "Options": {"A": "Yes", "B": "No"},
                          "Answer": "A", "type": "Anomaly Detection"}, ...],
        "similar_templates": ["MVTec-AD/bottle/train/good/001.png", ...],
        "random_templates": ["MVTec-AD/bottle/train/good/042.png", ...],
        "mask_path": "..."}, ...}

Every path is relative to the MMAD root. Each query is shown after ``data.shots`` template images
(MMAD's ``random_templates`` or ``similar_templates``, ``data.templates``), its first ones, then
the query, as MMAD's evaluation shows them ("The last image is the query image"): in the family's
multi-image format (``data.layout=separate``), or stacked, query at the bottom, for a family that
takes one image. ``data.mmad_turn=question`` makes every question one example; ``query`` asks all
of a query's questions in one turn, answered one numbered line each (``1. Answer: B.``). The right
letters are the row's ``target``; the question's type, the source dataset (the path's first
segment) and whether the query is normal (its path holds ``good``) are kept for MMAD's table
(vlmqc/evaluation/choice.py).

MMAD is a benchmark, with no training split: its queries are split into train and test by
``data.split_seed`` (``data.test_fraction`` of them to test, stratified by source and normal or
not), every question of a query on the same side. Keys of an entry or a question other than the
ones read are left alone (the published file carries more). Every problem is named by its query
(and question) before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmqc import choice
from vlmqc.config import MmadConfig, MmadTurn, Pick
from vlmqc.data.custom import CustomDataError, _inside
from vlmqc.data.folder import Example, Source, fail_on, source
from vlmqc.labels import Task

NORMAL_FLAG = "good"  # MMAD: a query whose path holds it is a normal (defect-free) product

INSTRUCTION = (
    "You are an industrial inspector who checks products by images. Judge whether there is a defect in the "
    "query image and answer the questions about it with the letter of the right option."
)


def prompt(shots: int, questions: list[dict]) -> str:
    """What the model is asked: the inspector's instruction, what the images are, the question(s)."""
    seen = (
        f"The first {shots} image(s) show normal samples, templates to compare with. " if shots else ""
    ) + "The last image is the query image."
    asked = "".join(choice.question_text(q["text"], q["options"]) for q in questions)
    if len(questions) == 1:
        return f"{INSTRUCTION}\n{seen}\nAnswer with the option's letter.\n{asked}".rstrip("\n")
    return (
        f"{INSTRUCTION}\n{seen}\nAnswer each question on its own line, as '1. Answer: B.'.\n"
        f"Following is the question list:\n{asked}"
    ).rstrip("\n")


def _question(q, where: str, errors: list[str]) -> dict | None:
    """One question of a conversation, checked: its text, options, right letter and type."""
    if not isinstance(q, dict):
        errors.append(f"{where}: expected an object with Question, Options, Answer and type, got {q!r}")
        return None
    text, options, answer, kind = q.get("Question"), q.get("Options"), q.get("Answer"), q.get("type")
    if not isinstance(text, str) or not text.strip():
        errors.append(f"{where}: 'Question' must be a non-empty string, got {text!r}")
    elif not (
        isinstance(options, dict)
        and len(options) >= 2
        and all(isinstance(k, str) and len(k) == 1 and k.isupper() and isinstance(v, str) for k, v in options.items())
    ):
        errors.append(f"{where}: 'Options' must map two or more letters (A, B, ...) to texts, got {options!r}")
    elif answer not in options:
        errors.append(f"{where}: 'Answer' {answer!r} is not one of the options {sorted(options)}")
    elif not isinstance(kind, str) or not kind.strip():
        errors.append(f"{where}: 'type' must name the question's type, got {kind!r}")
    else:
        return {"text": text.strip(), "options": dict(options), "type": kind.strip(), "answer": answer}
    return None


def _entry(cfg: MmadConfig, root: Path, query: str, entry, where: str, errors: list[str]) -> list[Example]:
    if not isinstance(entry, dict) or not isinstance(entry.get("conversation"), list) or not entry["conversation"]:
        errors.append(f"{where}: expected an object with a non-empty 'conversation' list")
        return []
    image = _inside(root, query, where, "query", cfg.max_pixels, errors)
    key = f"{Pick(cfg.templates).value}_templates"
    templates = entry.get(key) or []
    if not isinstance(templates, list) or len(templates) < cfg.shots:
        errors.append(f"{where}: data.shots={cfg.shots} but {key} holds {len(templates)} path(s)")
        return []
    context = [
        _inside(root, t, where, f"{key}[{k}]", cfg.max_pixels, errors) for k, t in enumerate(templates[: cfg.shots])
    ]
    asked = [_question(q, f"{where} conversation[{k}]", errors) for k, q in enumerate(entry["conversation"])]
    if image is None or not all(context) or not all(asked):
        return []
    facts = {"source": query.split("/")[0], "normal": NORMAL_FLAG in query, "image": query}
    split = entry.get("split")
    if split is not None and split not in ("train", "test"):
        errors.append(f"{where}: unknown split {split!r} (expected train or test)")
        return []
    group = [[q] for q in asked] if MmadTurn(cfg.mmad_turn) is MmadTurn.question else [asked]
    out = []
    for k, questions in enumerate(group, 1):
        shown = [{k_: v for k_, v in q.items() if k_ != "answer"} for q in questions]
        out.append(
            Example(
                id=f"{query}#{k}" if len(group) > 1 else query,
                image=image,
                context=list(context),
                task=Task.choice.value,
                target=choice.join([q["answer"] for q in questions]),
                question={"prompt": prompt(cfg.shots, shown), "questions": shown, **facts},
                meta={"templates": [str(p.relative_to(root)) for p in context]},
                group=query,
                # an entry's own split (vlmqc's export writes one; MMAD's file has none: split by data.split_seed)
                split=split,
            )
        )
    return out


def read(cfg: MmadConfig) -> Source:
    """Validate mmad.json and every image it names; raise CustomDataError listing every problem."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise CustomDataError(f"data.path={cfg.path!r}: folder not found")
    root = root.resolve()
    file = root / cfg.json
    if not file.resolve().is_relative_to(root):
        raise CustomDataError(f"data.json={cfg.json!r}: {file.resolve()} is outside the folder data.path={str(root)!r}")
    if not file.is_file():
        raise CustomDataError(f"{file}: MMAD's question file not found (data.json={cfg.json!r})")
    raw = file.read_bytes()
    try:
        index = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CustomDataError(f"{file}: not a JSON file ({e})") from None
    if not isinstance(index, dict):
        raise CustomDataError(f"{file}: expected an object mapping each query image's path to its questions")
    errors: list[str] = []
    examples = [
        e for query, entry in index.items() for e in _entry(cfg, root, query, entry, f"{file}: {query!r}", errors)
    ]
    fail_on(errors, f"MMAD data {root}")
    return source(
        root,
        examples,
        [raw],
        cfg.test_fraction,
        cfg.split_seed,
        f"MMAD data {root}",
        # one stratum a source's normal and one its anomalous queries: both in each split of every
        # source, so that Anomaly Detection's mean of the two accuracies exists on the test split
        lambda e: {f"source={e.question['source']} normal={e.question['normal']}"},
    )
