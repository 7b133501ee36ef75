"""Multiple-choice questions: the question as a model reads it, its answer, and the answer read back.

A choice row (task ``choice``) asks one question with lettered options, or several about one
image in one turn (MMAD's ``data.mmad_turn=query``, answered one numbered line each). Its right
letters are its ``target`` (``B``; ``B,A,C`` for several questions), and the answer a model is
trained on is written from them (``render``) unless the row brings its own text.

``parse_choice(text, options)`` reads one answer:

- the letter, alone or marked: ``B``, ``B.``, ``(B)``, ``[B]``, ``B)``, ``**B**``, ``Answer: B``,
  ``Answer: B.``, ``The answer is B``, ``Option B``;
- the letter with its own option's text: ``B. scratch``, ``B: scratch``, ``(B) scratch``;
- the option's text alone: ``scratch`` (case, spacing, quotes and a final full stop aside).

Anything else is unparseable (None), which the scorer counts wrong: two letters (``A or B``), a
letter that is not an option, a letter with text other than its option's (``B. crack`` where B is
scratch, ``B because ...``), prose around an option. Letters are upper-case: a lone ``a`` is an
article, not option A.
"""

from __future__ import annotations

import re
import unicodedata

# version of the reading rules, recorded with the inspection parser's (vlmqc/answers.py PARSER_VERSION)
CHOICE_PARSER_VERSION = 1

_LABEL = re.compile(
    r"^(?:the\s+)?(?:correct\s+|final\s+|right\s+)?(?:answer|option|choice)s?(?:\s+is)?\s*[:：=]?\s*", re.IGNORECASE
)
_LETTER = re.compile(r"^(?:\((?P<a>[A-Z])\)|\[(?P<b>[A-Z])\]|(?P<c>[A-Z])(?:\)|(?=[.:：\s]|$)))")
_NUMBER = re.compile(r"^\s*(?:question\s*)?(?P<n>\d{1,3})\s*[.)：:]\s*", re.IGNORECASE)
_WRAP = "*_`\"'“”‘’ \t\r\n"


def _canon(text: str) -> str:
    """Text as compared with an option: Unicode form, case, spacing, wrapping quotes and a final stop aside."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split()).strip(_WRAP)
    return text.rstrip(".。!！ ").strip(_WRAP)


def parse_choice(text: str, options: dict[str, str]) -> str | None:
    """The letter an answer gives among ``options`` (letter -> option text), or None when it gives
    none, or more than one, or one that is not an option. Never raises on a string."""
    t = unicodedata.normalize("NFKC", text).strip().strip(_WRAP)
    if not t:
        return None
    unlabelled = _LABEL.sub("", t, count=1).strip(_WRAP) or t
    m = _LETTER.match(unlabelled)
    if m:
        letter = m["a"] or m["b"] or m["c"]
        rest = _canon(unlabelled[m.end() :].lstrip(".:：)-– \t"))
        if letter not in options:
            return None
        return letter if not rest or rest == _canon(options[letter]) else None
    said = _canon(unlabelled)
    found = [k for k, v in options.items() if _canon(v) == said]
    return found[0] if len(found) == 1 else None


def parse_choices(text: str, questions: list[dict[str, str]]) -> list[str | None]:
    """One letter (or None) per question of a turn that asks several: one answer a line,
    numbered (``1. Answer: B.``) or in order. A number given twice or out of range reads nothing."""
    if len(questions) == 1:
        return [parse_choice(text, questions[0])]
    out: list[str | None] = [None] * len(questions)
    seen: set[int] = set()
    lines = [line for line in text.splitlines() if line.strip()]
    for k, line in enumerate(lines):
        m = _NUMBER.match(line)
        i = int(m["n"]) - 1 if m else k
        if i in seen or not 0 <= i < len(questions):
            if 0 <= i < len(questions):
                out[i] = None
            continue
        seen.add(i)
        out[i] = parse_choice(line[m.end() :] if m else line, questions[i])
    return out


def join(letters: list[str | None]) -> str:
    """Letters as a row's ``target`` keeps them: ``B``, or ``B,A,C``; an unread one is empty."""
    return ",".join(letter or "" for letter in letters)


def split(target: str | None) -> list[str]:
    return (target or "").split(",")


def question_text(text: str, options: dict[str, str]) -> str:
    """One question as MMAD's evaluation writes it: ``Question: ...`` and one ``A. option`` a line."""
    return f"Question: {text}\n" + "".join(f"{k}. {v}\n" for k, v in options.items())


def render(target: str) -> str:
    """The answer a model is trained on: the letter (``B``), or for several questions one
    ``n. Answer: X.`` line each, as MMAD asks its list of questions to be answered."""
    letters = split(target)
    if len(letters) == 1:
        return letters[0]
    return "\n".join(f"{i}. Answer: {letter}." for i, letter in enumerate(letters, 1))
