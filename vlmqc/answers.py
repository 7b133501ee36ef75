"""Reading a generated answer back into labels, as a careful grader would (``parse_answer``).

``parse_answer(cfg, text, task)`` never raises on any string; what it reads is scored by
vlmqc/evaluation/scoring.py. For every prompt option, the answer ``vlmqc.prompts.render_answer``
writes is read back exactly.

How a text answer is read (``format: json`` first reads the answer's JSON objects, fenced or
not, and falls back to these rules when there is none, it is invalid, or it holds no verdict /
star position):

- Text is NFKC-normalised (full-width ``Ｃ５`` is ``C5``) and matched case-insensitively.
- Positions: a row U/C/D and a column 1-9, written ``C5``, ``c5``, ``C-5``, ``C 5``, ``C:5``,
  ``row C column 5`` or ``column 5, row C``. ``D0``, ``C10``, ``X5`` or ``CD5`` are no position.
- Verdict words: pass (pass, passed, OK, good, fine, matches, accepted, non-defective, defect-free, 合格,
  良品, 正常 ...) and defective (defective, NG, fail, reject, faulty, defect, anomaly, 不良, 不合格,
  欠陥, 異常 ...). A negation flips a word: a cue (not, no, never, without, n't, free of, zero, 0,
  failed to ...) among the four words before it, in the same clause and after the last position or
  defect name, so "not defective" and "no defects found" read pass and "did not pass" reads
  defective; so do Japanese negations after the word (不良なし, 欠陥はありません, 合格ではない) and
  "defects: none".
- Whose statement: a word is said of the product named nearest before it in its clause (top,
  reference, 上の, 基準 for the reference; bottom, candidate, 下の for the candidate), else of the
  candidate unless its clause names the reference alone. What is said of the reference is ignored,
  verdicts, positions and defect names alike, since models echo "the top product passed"; so
  "The bottom productthe top product passed" (two products garbled together) says nothing of the
  candidate and is unparseable.
- Verdict conflicts: an answer whose product statements (labelled verdicts, and strong words not
  said of a terminal, row or position named before them in their clause) give the candidate both
  verdicts is unparseable, as a careful grader would not pick one ("Passed. Defective: C5", a
  question echoed as "passed or defective"); so is a JSON answer whose objects disagree. Else the
  answer's verdict is the first labelled one ("Verdict: defective", "判定：不良"); else the first
  strong word (pass, defective, NG, fail, 合格, 不良, ...), since answers state their conclusion
  first; else defective if the answer names a defect; else the first weak word (OK, good, fine,
  defect, problem, 異常, ...) in a clause that names no position, else a strong word said of a
  part ("all other terminals passed"), else a weak word next to a position. Weak words are often
  about one terminal ("U3 is fine, but C5 is absent"), so they rank last.
- Defects (only kept when the verdict is defective): each position is given a defect name in its
  clause (clauses end at , ; 、 and / but / while, sentences at . ! ? 。 and line ends). Equal
  numbers of positions and names in a clause pair up in order ("C5 missing U3 bent"); otherwise
  each position takes the nearest name in its clause, or in its sentence when its clause has none,
  or no type. Positions in a clause that only says pass ("U3 is fine") or are negated ("not at
  U3") are not defects; negated names ("no missing terminal") are ignored. A position given both
  a type and none keeps the type.
- Defect names: the prompt's own ``defect_names``, the canonical names, the type keys and common
  synonyms (absent, empty, offset, misaligned, burned, discolored, debris, foreign object, bent, ...).
- Star: the first non-negated position in a clause naming the red star, else in a sentence naming
  it, else in a clause naming a star, else the first position.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import unicodedata
from dataclasses import dataclass, field

from vlmqc.config import AnswerFormat, PromptConfig
from vlmqc.labels import DEFECT_NAMES, DEFECT_SYNONYMS, DEFECTIVE, PASS, Task, board_order

# Bump whenever parse_answer reads any answer differently: a run's facts record the version that
# scored it, and python -m vlmqc.rescore re-parses stored answers with the current one.
PARSER_VERSION = 2  # 2: statements read by their subject; an answer giving the candidate both verdicts is unparseable
_CANONICAL = {t.value: name for t, name in DEFECT_NAMES.items()}


@dataclass(frozen=True)
class Parsed:
    """What an answer says, in label terms."""

    verdict: str | None = None  # "pass", "defective", or None when the answer gives none
    defects: tuple[
        tuple[str, str | None], ...
    ] = ()  # (position, type key or None), sorted, distinct; empty unless defective
    target: str | None = None  # star task: the position answered; choice: the letters (vlmqc/choice.py)
    ok: bool = False  # readable for its task: a target (star) or a verdict (the others)
    text: str = field(default="", compare=False, repr=False)  # the answer as given: answer-only rows are scored on it


# ASCII word boundaries: \b would count Japanese characters as word characters ("NGです", "C5に").
_A, _Z = r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])"

_POSITION = re.compile(
    rf"{_A}(?P<r>[UCD])[ \t]*[-_:‐–—−]?[ \t]*(?P<c>[1-9])(?![0-9])"
    rf"|{_A}row[ \t]*(?P<r2>[UCD]){_Z}[ \t,]*(?:and[ \t]+)?col(?:umn)?[ \t]*(?P<c2>[1-9])(?![0-9])"
    rf"|{_A}col(?:umn)?[ \t]*(?P<c3>[1-9])[ \t,]*(?:(?:in|and|of)[ \t]+)?row[ \t]*(?P<r3>[UCD]){_Z}",
    re.IGNORECASE,
)

# (pattern, polarity, strong); where two could match at one place the earlier entry wins.
_VERDICT_WORDS = (
    (rf"{_A}non[ \t-]?defective{_Z}", PASS, True),
    (rf"{_A}(?:defect|fault)[ \t-]?free{_Z}", PASS, True),
    (rf"{_A}no[ \t-]?good{_Z}", DEFECTIVE, True),
    (rf"{_A}unacceptable{_Z}", DEFECTIVE, True),
    (r"不合格", DEFECTIVE, True),
    (r"不良", DEFECTIVE, True),
    (r"欠陥品", DEFECTIVE, True),
    (r"(?<!不)合格", PASS, True),
    (r"(?<!不)良品", PASS, True),
    (rf"{_A}pass(?:ed|es|ing)?{_Z}", PASS, True),
    (rf"{_A}accept(?:ed|able)?{_Z}", PASS, True),
    (rf"{_A}defective{_Z}", DEFECTIVE, True),
    (rf"{_A}(?:ng|nok){_Z}", DEFECTIVE, True),
    (rf"{_A}fail(?:s|ed|ing|ure)?{_Z}(?![ \t]+to{_Z})", DEFECTIVE, True),  # "failed to find" is a negation
    (rf"{_A}reject(?:s|ed|ion)?{_Z}", DEFECTIVE, True),
    (rf"{_A}(?:faulty|flawed|damaged){_Z}", DEFECTIVE, True),
    (rf"{_A}(?:ok|okay|good|fine|normal|intact|flawless|identical|match(?:es|ed)?){_Z}", PASS, False),
    (r"正常|良好", PASS, False),
    (
        rf"{_A}(?:defects?|faults?|flaws?|anomal(?:y|ies|ous)|abnormal(?:ity|ities)?|problems?|issues?){_Z}",
        DEFECTIVE,
        False,
    ),
    (r"欠陥|異常|問題", DEFECTIVE, False),
)
_VERDICT = re.compile("|".join(f"(?P<v{i}>{p})" for i, (p, _, _) in enumerate(_VERDICT_WORDS)), re.IGNORECASE)

_WORD = re.compile(r"[a-z0-9']+", re.IGNORECASE)
_NEGATION = re.compile(
    r"(?<![a-z0-9'])(?:not|no|never|without|nor|neither|none|zero|0|cannot|can't|cant|isn't|isnt|aren't|arent|wasn't|wasnt|weren't|"
    r"doesn't|doesnt|don't|dont|didn't|didnt|couldn't|won't|hasn't|haven't|free of|fails? to|failed to|unable "
    r"to)(?![a-z0-9'])",
    re.IGNORECASE,
)
_NEGATION_WINDOW = 4  # words before a verdict word that a cue may stand in
_NEGATION_AFTER_JA = re.compile(
    r"\s*品?\s*[はがも]?\s*(?:なし|無し|ない|無い|ありません|ございません|見られません|見当たりません|見つかりません|ではない|ではありません|じゃない|でない|しない|しません)"
)
_NONE_AFTER = re.compile(
    r"[ \t]*(?:found|detected|observed)?[ \t]*[:=-]?[ \t]*(?:none|nothing|zero|0|n/a|nil)(?![a-z0-9])", re.IGNORECASE
)
_LABEL_BEFORE = re.compile(
    r"(?:verdict|result|conclusion|answer|judge?ment|decision|判定|結果|結論)[\s\"'*_`]*(?:[:=]|is|は)[\s\"'*_`]*(?:(?:not|no)\s+)?$",
    re.IGNORECASE,
)

_SENTENCE = r"[.!?。！？\n]"
_CLAUSE = re.compile(rf"{_SENTENCE}|[,;、]|(?<![a-z])(?:and|but|while|whereas|however)(?![a-z])", re.IGNORECASE)
# where a negation's reach ends: clauses, and also colons, brackets and "so"-like conjunctions
_SCOPE = re.compile(
    rf"{_SENTENCE}|[,;:、()\[\]{{}}]|(?<![a-z])(?:and|but|while|whereas|however|so|therefore|hence|thus|although|though|because|except)(?![a-z])",
    re.IGNORECASE,
)
_SENTENCE_RE = re.compile(_SENTENCE)
# "top" names the reference product, not a place on the board ("the top row", "top left")
_REFERENCE = re.compile(
    rf"{_A}(?:top(?![ \t-]*(?:rows?|left|right|edge|side|corner|half|part|of|terminals?){_Z})|reference){_Z}"
    r"|上の|上側|基準|参照|お手本",
    re.IGNORECASE,
)
_CANDIDATE = re.compile(rf"{_A}(?:bottom|lower|candidate){_Z}|下の|下側|対象", re.IGNORECASE)
# what a statement about one terminal or row names before its verdict word ("all other terminals passed")
_PART = re.compile(rf"{_A}(?:terminals?|rows?|columns?|positions?|pins?|others?|rest){_Z}|端子", re.IGNORECASE)
_RED = re.compile(rf"{_A}red{_Z}|赤", re.IGNORECASE)
_STAR = re.compile(rf"{_A}stars?{_Z}|星", re.IGNORECASE)

_Vocabulary = tuple[
    re.Pattern, tuple[str, ...]
]  # every defect name in one regex, and the type key of each of its groups
_JSON_TRIES = 16  # opening braces tried as the start of an object: bounds the work on brace-heavy text


def _position_of(m: re.Match) -> str:
    row = m.group("r") or m.group("r2") or m.group("r3")
    col = m.group("c") or m.group("c2") or m.group("c3")
    return f"{row.upper()}{col}"


def _normalize(text: str) -> str:
    # NFKC makes full-width Ｃ５ and ： plain; it leaves curly apostrophes, which models write in "isn’t"
    return unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'")


def _name_pattern(name: str) -> str:
    if name.isascii():
        words = re.split(r"[\s_\-]+", name.strip())
        plural = "(?:s|es)?" if words[-1][-1:].isalpha() else ""
        return _A + r"[\s_\-]+".join(re.escape(w) for w in words) + plural + _Z
    return re.escape(name)


@functools.lru_cache(maxsize=32)
def _vocabulary(prompt_names: tuple[tuple[str, str], ...]) -> _Vocabulary:
    """Built-in names and synonyms plus the prompt's own, longest first so "missing terminal" beats "missing"."""
    names: dict[str, str] = {}
    for t, synonyms in DEFECT_SYNONYMS.items():
        for name in (t.value, _CANONICAL[t.value], *synonyms):
            names[_normalize(name).lower()] = t.value
    for t, name in prompt_names:  # the prompt's (and dataset's) own names win over a synonym that equals one
        if name and name.strip():
            names[_normalize(name).strip().lower()] = t
    ordered = sorted(names, key=lambda n: (-len(n), n))
    regex = re.compile("|".join(f"(?P<n{i}>{_name_pattern(n)})" for i, n in enumerate(ordered)), re.IGNORECASE)
    return regex, tuple(names[n] for n in ordered)


def _segment(bounds: list[int], i: int) -> int:
    """Index of the segment (sentence, clause, scope) holding text index i, given the boundaries' ends."""
    return bisect.bisect_right(bounds, i)


class _Reader:
    """One normalised answer text, with what was found in it and where."""

    def __init__(self, text: str, vocab: _Vocabulary):
        self.t = text
        self.sentences = [m.end() for m in _SENTENCE_RE.finditer(text)]
        self.clauses = [m.end() for m in _CLAUSE.finditer(text)]
        self.scopes = [m.end() for m in _SCOPE.finditer(text)]
        self.positions = [(m.start(), m.end(), _position_of(m)) for m in _POSITION.finditer(text)]
        names_re, types = vocab
        self.names = [(m.start(), m.end(), types[int(m.lastgroup[1:])]) for m in names_re.finditer(text)]
        self.anchor_ends = sorted(e for _, e, _ in self.positions + self.names)
        mentions = [(m.start(), True) for m in _REFERENCE.finditer(text)]
        self.products = sorted(mentions + [(m.start(), False) for m in _CANDIDATE.finditer(text)])
        self.reference_only = {self.clause(i) for i, _ in mentions} - {
            self.clause(m.start()) for m in _CANDIDATE.finditer(text)
        }
        self.parts = [m.start() for m in _PART.finditer(text)] + [p[0] for p in self.positions]
        self.parts.sort()

    def clause(self, i: int) -> int:
        return _segment(self.clauses, i)

    def sentence(self, i: int) -> int:
        return _segment(self.sentences, i)

    def negated(self, start: int, end: int, after_none: bool = False) -> bool:
        k = _segment(self.scopes, start)
        a = bisect.bisect_right(self.anchor_ends, start)
        scope_start = max(self.scopes[k - 1] if k else 0, self.anchor_ends[a - 1] if a else 0, start - 120)
        words = _WORD.findall(self.t, scope_start, start)[-_NEGATION_WINDOW:]
        if _NEGATION.search(" ".join(words)) or _NEGATION_AFTER_JA.match(self.t, end):
            return True
        return after_none and bool(_NONE_AFTER.match(self.t, end))

    def clauses_matching(self, regex: re.Pattern, sentences: bool = False) -> set[int]:
        where = self.sentence if sentences else self.clause
        return {where(m.start()) for m in regex.finditer(self.t)}

    def about_reference(self, i: int) -> bool:
        """Whether what is said at text index i is said of the reference: the nearest product named
        before it in its clause is the reference ("the bottom productthe top product passed" is
        about the top one), or, where its clause names none before it, the clause names only the
        reference ("passed, like the top one")."""
        clause = self.clause(i)
        k = bisect.bisect_left(self.products, (i,))
        if k and self.clause(self.products[k - 1][0]) == clause:
            return self.products[k - 1][1]
        return clause in self.reference_only

    def local(self, i: int) -> bool:
        """Whether a verdict word at i is said of a part: a terminal, row or position named before
        it in its clause ("U3 is fine", "all other terminals passed")."""
        k = bisect.bisect_left(self.parts, i)
        return bool(k) and self.clause(self.parts[k - 1]) == self.clause(i)

    def verdict(self, names: list[tuple[int, int, str]]) -> tuple[str | None, set[int], set[int]]:
        """The answer's verdict, the clauses that say pass and the clauses that say defective.

        None when the product statements (labelled or strong words not said of a part) give the
        candidate both verdicts: a careful grader would not pick one."""
        about_a_position = {self.clause(p[0]) for p in self.positions}
        labelled, strong, weak, weak_local, local = [], [], [], [], []
        says = {PASS: set(), DEFECTIVE: set()}
        for m in _VERDICT.finditer(self.t):
            if self.about_reference(m.start()):
                continue
            clause = self.clause(m.start())
            _, polarity, is_strong = _VERDICT_WORDS[int(m.lastgroup[1:])]
            if self.negated(m.start(), m.end(), after_none=polarity == DEFECTIVE):
                polarity = PASS if polarity == DEFECTIVE else DEFECTIVE
            says[polarity].add(clause)
            if _LABEL_BEFORE.search(self.t, max(0, m.start() - 48), m.start()):
                labelled.append(polarity)
            elif is_strong and self.local(m.start()):
                local.append(polarity)
                continue
            (strong if is_strong else weak_local if clause in about_a_position else weak).append(polarity)
        if len(set(labelled + strong)) > 1:
            return None, says[PASS], says[DEFECTIVE]
        named = [DEFECTIVE] if names else []
        for found in (labelled, strong, named, weak, local, weak_local):
            if found:
                return found[0], says[PASS], says[DEFECTIVE]
        return None, says[PASS], says[DEFECTIVE]

    def defects(self, names: list[tuple[int, int, str]], pass_clauses: set[int]) -> list[tuple[str, str | None]]:
        by_clause: dict[int, list] = {}
        for p in self.positions:
            clause = self.clause(p[0])
            if clause not in pass_clauses and not self.negated(p[0], p[1]):
                by_clause.setdefault(clause, []).append(p)
        names_in_clause: dict[int, list] = {}
        names_in_sentence: dict[int, list] = {}
        for n in names:
            names_in_clause.setdefault(self.clause(n[0]), []).append(n)
            names_in_sentence.setdefault(self.sentence(n[0]), []).append(n)
        found = []
        for clause, positions in by_clause.items():
            local = names_in_clause.get(clause, [])
            if local and len(local) == len(positions):
                found += [(p[2], n[2]) for p, n in zip(positions, local, strict=True)]
                continue
            candidates = local or names_in_sentence.get(self.sentence(positions[0][0]), [])
            found += [(p[2], _nearest(p, candidates)) for p in positions]
        return found

    def star(self) -> str | None:
        positions = [p for p in self.positions if not self.negated(p[0], p[1])]
        red, star = self.clauses_matching(_RED), self.clauses_matching(_STAR)
        red_s, star_s = self.clauses_matching(_RED, sentences=True), self.clauses_matching(_STAR, sentences=True)
        tiers = (
            lambda p: self.clause(p[0]) in red & star,
            lambda p: self.sentence(p[0]) in red_s & star_s,
            lambda p: self.clause(p[0]) in star,
            lambda p: True,
        )
        for tier in tiers:
            for p in positions:
                if tier(p):
                    return p[2]
        return None


def _nearest(position: tuple[int, int, str], names: list[tuple[int, int, str]]) -> str | None:
    """The type of the name closest to a position (names sorted by start, not overlapping it)."""
    if not names:
        return None
    # bisect on the tuples themselves: a list of the starts would cost len(names) per position
    i = bisect.bisect_left(names, (position[0],))
    around = names[max(0, i - 1) : i + 1]
    return min(around, key=lambda n: max(n[0] - position[1], position[0] - n[1]))[2]


def _finish(verdict: str | None, defects: list[tuple[str, str | None]]) -> tuple[str | None, tuple]:
    """Keep defects only on a defective verdict; a position with a type drops its untyped mention."""
    if verdict != DEFECTIVE:
        return verdict, ()
    typed = {p for p, t in defects if t is not None}
    kept = {(p, t) for p, t in defects if t is not None or p not in typed}
    return verdict, tuple(sorted(kept, key=lambda d: (*board_order(d[0]), d[1] or "")))


def _read_text(text: str, task: Task, vocab: _Vocabulary) -> tuple[str | None, tuple, str | None]:
    r = _Reader(text, vocab)
    if task is Task.star:
        return None, (), r.star()
    # what is said of the reference names none of the candidate's defects
    r.positions = [p for p in r.positions if not r.about_reference(p[0])]
    names = [n for n in r.names if not r.negated(n[0], n[1]) and not r.about_reference(n[0])]
    verdict, pass_clauses, defective_clauses = r.verdict(names)
    # a clause that says pass and names no defect ("U3 is fine") holds no defect position
    cleared = pass_clauses - defective_clauses - {r.clause(n[0]) for n in names}
    return (*_finish(verdict, r.defects(names, cleared)), None)


def _json_objects(text: str) -> list[tuple[dict, int, int]]:
    """The JSON objects of an answer, outermost only, in order (an answer may repeat itself), each
    with its start and end."""
    decoder, found, end = json.JSONDecoder(), [], 0
    for k, m in enumerate(re.finditer(r"\{", text)):
        if k == _JSON_TRIES:
            break
        if m.start() < end:  # inside an object already read
            continue
        try:
            obj, end = decoder.raw_decode(text, m.start())
        except (ValueError, RecursionError):  # RecursionError: deeply nested brackets
            continue
        if isinstance(obj, dict):
            found.append((obj, m.start(), end))
    return found


def _first_position(value) -> str | None:
    m = _POSITION.search(value) if isinstance(value, str) else None
    return _position_of(m) if m else None


def _read_json(obj: dict, task: Task, vocab: _Vocabulary) -> tuple[str | None, tuple, str | None] | None:
    """Labels from a JSON answer; None when it holds no verdict (or star position) to go by."""
    fields = {k.strip().lower(): v for k, v in obj.items()}
    if task is Task.star:
        target = _first_position(fields.get("position")) or _first_position(fields.get("target"))
        return (None, (), target) if target else None
    value = fields.get("verdict")
    verdict = _read_text(value, Task.pair, vocab)[0] if isinstance(value, str) else None
    raw = fields.get("defects")
    items = raw if isinstance(raw, list) else [raw]
    defects = []
    for item in items:
        if isinstance(item, dict):
            d = {k.strip().lower(): v for k, v in item.items()}
            position, kind = _first_position(d.get("position")), d.get("type")
            m = vocab[0].search(kind) if isinstance(kind, str) else None
            if position:
                defects.append((position, vocab[1][int(m.lastgroup[1:])] if m else None))
        elif isinstance(item, str):
            r = _Reader(item, vocab)
            defects += r.defects(r.names, set())
    if verdict is None and any(t for _, t in defects):
        verdict = DEFECTIVE
    return (*_finish(verdict, defects), None) if verdict else None


def parse_answer(cfg: PromptConfig, text: str, task: str, types: tuple[str, ...] = ()) -> Parsed:
    """Read a model's answer back into labels; tolerant of messy text, never raises on a string.
    ``types``: a dataset's own defect types (an MVTec folder's ``broken_large``), each its own name,
    read before the built-in synonyms (``contamination`` stays itself)."""
    task = Task(task)
    normal = _normalize(text)
    vocab = _vocabulary(tuple(sorted(cfg.defect_names.items())) + tuple((t, t) for t in types))
    found = None
    if cfg.format == AnswerFormat.json:
        objects = _json_objects(normal)
        readings = [r for obj, _, _ in objects if (r := _read_json(obj, task, vocab)) is not None]
        if readings:  # the words around the objects count too: "{"verdict": "pass"} It is defective."
            around = "\n".join(
                normal[a:b]
                for a, b in zip([0] + [e for *_, e in objects], [s for _, s, _ in objects] + [None], strict=True)
            )
            words = _read_text(around, task, vocab)
            readings += [words] if words[0] or words[2] else []
        # readings that disagree (a verdict, or a star position, each) leave nothing a grader could pick
        if len({(v, t) for v, _, t in readings}) > 1:
            return Parsed(text=text)
        found = readings[0] if readings else None
    verdict, defects, target = found or _read_text(normal, task, vocab)
    ok = target is not None if task is Task.star else verdict is not None
    return Parsed(verdict=verdict, defects=defects, target=target, ok=ok, text=text)
