"""Prompt options compose; answers rendered from labels read back as those labels; messy answers read sensibly."""

from __future__ import annotations

import functools
import itertools
import json
import re

import pytest
from conftest import CONF, compose_app

from vlmqc.answers import Parsed, parse_answer
from vlmqc.config import AnswerFormat, PromptConfig, to_object
from vlmqc.labels import DEFECT_NAMES, POSITIONS, DefectType
from vlmqc.prompts import instruction, render_answer

PROMPT_OPTIONS = sorted(p.stem for p in (CONF / "prompt").glob("*.yaml"))
TYPES = [t.value for t in DefectType]
TASKS = ["star", "pair", "diff", "custom"]


@functools.cache
def prompt(name: str) -> PromptConfig:
    # no primary config: the data app's schema has no prompt key, so the group is composed on its own
    return to_object(compose_app(None, [f"+prompt={name}"]).prompt, "prompt")


def row(task: str, verdict: str = "", defects=(), target: str = "", answer: str = "") -> dict:
    return {
        "id": "x",
        "task": task,
        "verdict": verdict,
        "defects": [{"position": p, "type": t} for p, t in defects],
        "target": target,
        "answer": answer,
    }


def labelled_examples() -> list[dict]:
    """Every defect type at every position, several multi-defect boards, passes, and every star position."""
    examples = [row("pair", "defective", [(pos, t)]) for t in TYPES for pos in POSITIONS]
    multi = [
        [("C5", "missing"), ("U3", "shifted")],  # given out of board order
        [("U1", "missing"), ("U2", "missing")],  # one type twice
        [("D9", "discoloured"), ("D1", "foreign_particle"), ("U9", "wrong_shape")],
        list(zip(["U1", "U5", "C1", "C9", "D5", "D9"], TYPES, strict=True)),
    ]
    for task in ("pair", "diff", "custom"):
        examples += [row(task, "pass")] + [row(task, "defective", d) for d in multi]
        examples += [
            row(task, "defective", [(pos, t)])
            for t, pos in zip(TYPES, ["U1", "C5", "D9", "U9", "D1", "C2"], strict=True)
        ]
    return examples + [row("star", target=pos) for pos in POSITIONS]


def expected(example: dict) -> Parsed:
    if example["task"] == "star":
        return Parsed(target=example["target"], ok=True)
    defects = tuple(
        sorted(((d["position"], d["type"]) for d in example["defects"]), key=lambda d: POSITIONS.index(d[0]))
    )
    return Parsed(verdict=example["verdict"], defects=defects, ok=True)


@pytest.mark.parametrize("option", PROMPT_OPTIONS)
def test_every_prompt_option_composes_and_validates(option):
    cfg = prompt(option)
    assert cfg.name == option
    for task in TASKS:
        assert instruction(cfg, task).strip()
    assert instruction(cfg, "custom") == cfg.pair


def test_prompt_options_are_the_ones_the_study_needs():
    assert {"long", "short", "ja", "json"} <= set(PROMPT_OPTIONS)


def test_long_instruction_is_the_studys():
    cfg = prompt("long")
    for phrase in (
        "two images",
        "1 to 9 across",
        "U, C, D down",
        "position by position",
        "top",
        "passed inspection",
        "bottom",
        "defective",
    ):
        assert phrase in cfg.pair
    for name in DEFECT_NAMES.values():
        assert name in cfg.pair and name in cfg.diff
    assert "red star" in cfg.star


def test_japanese_prompt_names_every_defect_in_japanese():
    cfg = prompt("ja")
    assert set(cfg.defect_names) == set(TYPES)
    assert cfg.defect_names["missing"] == "端子欠落" and cfg.defect_names["discoloured"] == "端子焦げ"
    assert "合格" in cfg.answer_pass and "不良" in cfg.answer_defective
    for text in (
        cfg.pair,
        cfg.diff,
        cfg.star,
        cfg.answer_pass,
        cfg.answer_defective.format(defects=""),
        cfg.answer_star.format(position="C5"),
        *cfg.defect_names.values(),
    ):
        assert not re.search("[A-Za-z]{2,}", text), text  # no English word: only coordinates are Latin


def test_json_prompt_asks_for_json():
    cfg = prompt("json")
    assert cfg.format == AnswerFormat.json
    assert "JSON" in cfg.pair and "JSON" in cfg.star


def test_rendered_answers_read_as_the_study_wrote_them():
    long, ja, js = prompt("long"), prompt("ja"), prompt("json")
    board = row("pair", "defective", [("C5", "missing"), ("U3", "shifted")])
    assert (
        render_answer(long, board) == "The bottom product is defective: shifted terminal at U3; missing terminal at C5."
    )
    assert render_answer(long, row("pair", "pass")) == "The bottom product passed."
    assert render_answer(long, row("star", target="C5")) == "The red star is at C5."
    assert render_answer(ja, board) == "下の製品は不良です：U3に端子ずれ、C5に端子欠落。"
    assert render_answer(ja, row("diff", "pass")) == "下の製品は合格です。"
    assert (
        render_answer(js, board)
        == '{"verdict":"defective","defects":[{"position":"U3","type":"shifted"},{"position":"C5","type":"missing"}]}'
    )
    assert render_answer(js, row("pair", "pass")) == '{"verdict":"pass"}'
    assert render_answer(js, row("star", target="D9")) == '{"position":"D9"}'


def test_answer_only_rows_render_their_text_verbatim():
    for option in PROMPT_OPTIONS:
        assert (
            render_answer(prompt(option), row("custom", answer="Scratch on the lid, reject."))
            == "Scratch on the lid, reject."
        )


def test_a_custom_defect_type_renders_by_its_key():
    answer = render_answer(prompt("long"), row("custom", "defective", [("C5", "scratch")]))
    assert answer == "The bottom product is defective: scratch at C5."


@pytest.mark.parametrize("option", PROMPT_OPTIONS)
def test_rendered_answers_parse_back_to_their_labels(option):
    cfg = prompt(option)
    wrong = []
    for example in labelled_examples():
        answer = render_answer(cfg, example)
        got = parse_answer(cfg, answer, example["task"])
        if got != expected(example) or got.text != answer:
            wrong.append((answer, got))
    assert not wrong, f"{len(wrong)} answers read back wrong, e.g. {wrong[:3]}"


# (answer, verdict, defects): pair task, long prompt
MESSY = [
    ("PASS", "pass", ()),
    ("ok", "pass", ()),
    ("Good.", "pass", ()),
    ("Passed", "pass", ()),
    ("no defect", "pass", ()),
    ("No defects found.", "pass", ()),
    ("The bottom product is not defective.", "pass", ()),
    ("It isn't defective", "pass", ()),
    ("Defects: none", "pass", ()),
    ("There are no missing or shifted terminals; the product passed.", "pass", ()),
    ("NG", "defective", ()),
    ("FAIL", "defective", ()),
    ("Reject: debris at C5", "defective", (("C5", "foreign_particle"),)),
    ("defect", "defective", ()),
    ("It did not pass.", "defective", ()),
    ("Not OK", "defective", ()),
    ("DEFECTIVE - c5 missing", "defective", (("C5", "missing"),)),
    ("Defective: C-5 absent", "defective", (("C5", "missing"),)),
    ("defective at C 5 (bent)", "defective", (("C5", "deformed"),)),
    ("Defective. Row C column 5 is burnt.", "defective", (("C5", "discoloured"),)),
    ("Defective: column 7, row D is misaligned", "defective", (("D7", "shifted"),)),
    (
        "**Verdict:** defective\n- C5: missing terminal\n- U3: offset",
        "defective",
        (("U3", "shifted"), ("C5", "missing")),
    ),
    ("```\nThe bottom product is defective: foreign object at D1.\n```", "defective", (("D1", "foreign_particle"),)),
    (
        "The top product passed inspection; the bottom one is defective: discolored terminal at U9.",
        "defective",
        (("U9", "discoloured"),),
    ),
    ("The product failed, wrong_shape at C2", "defective", (("C2", "wrong_shape"),)),
    ("Defective: missing terminals at C5 and C6", "defective", (("C5", "missing"), ("C6", "missing"))),
    ("defective: C5 missing U3 bent", "defective", (("U3", "deformed"), ("C5", "missing"))),
    (
        "Defective. Burned terminal at D4, particle at U2.",
        "defective",
        (("U2", "foreign_particle"), ("D4", "discoloured")),
    ),
    ("U3 is fine, but C5 is absent", "defective", (("C5", "missing"),)),
    ("Verdict: FAIL. Row U looks good.", "defective", ()),
    ("Defective at C5; all other terminals passed.", "defective", (("C5", None),)),
    ("Defective. C5 has no terminal.", "defective", (("C5", "missing"),)),
    ("Defective, not shifted but deformed at C5", "defective", (("C5", "deformed"),)),
    ("Missing terminal at C5.", "defective", (("C5", "missing"),)),
    ("Defective at D0, C10 and X5.", "defective", ()),
    ("The bottom product is defective: wrong shape at C5; wrong shape at C5.", "defective", (("C5", "wrong_shape"),)),
    ("defective: a defect at C5, it is a missing terminal", "defective", (("C5", "missing"),)),
    ("", None, ()),
    ("C5", None, ()),
    ("I cannot tell.", None, ()),
]


@pytest.mark.parametrize("answer, verdict, defects", MESSY)
def test_messy_answers(answer, verdict, defects):
    got = parse_answer(prompt("long"), answer, "pair")
    assert (got.verdict, got.defects, got.target, got.ok) == (verdict, defects, None, verdict is not None)


JAPANESE = [
    ("合格", "pass", ()),
    ("良品です。", "pass", ()),
    ("不良なし", "pass", ()),
    ("欠陥はありません。", "pass", ()),
    ("不良ではありません", "pass", ()),
    ("不合格", "defective", ()),
    ("合格ではありません。", "defective", ()),
    ("不良品です。Ｃ５に異物。", "defective", (("C5", "foreign_particle"),)),
    ("判定：不良\nU3：端子ずれ\nC5：端子欠落", "defective", (("U3", "shifted"), ("C5", "missing"))),
    ("上の製品は合格です。下の製品は不良です：D9に端子焦げ。", "defective", (("D9", "discoloured"),)),
    ("下の製品は不良です：C5に変形。", "defective", (("C5", "deformed"),)),
]


@pytest.mark.parametrize("answer, verdict, defects", JAPANESE)
def test_japanese_answers(answer, verdict, defects):
    got = parse_answer(prompt("ja"), answer, "pair")
    assert (got.verdict, got.defects, got.ok) == (verdict, defects, True)


@pytest.mark.parametrize(
    "answer, target",
    [
        ("The red star is at C5.", "C5"),
        ("c-5", "C5"),
        ("Row D, column 2", "D2"),
        ("The blue star is at U3; the red star is at C5.", "C5"),
        ("The red star is not at U3 but at C5", "C5"),
        ("赤い星はＤ９にあります。", "D9"),
        ('{"position": "U7"}', "U7"),
        ("It is at C10.", None),
        ("Somewhere near the middle.", None),
    ],
)
def test_star_answers(answer, target):
    for option in ("long", "json"):
        got = parse_answer(prompt(option), answer, "star")
        assert (got.verdict, got.defects, got.target, got.ok) == (None, (), target, target is not None)


# (answer, verdict, defects): pair task, json prompt
JSON_ANSWERS = [
    ('{"verdict": "pass"}', "pass", ()),
    (
        '```json\n{"verdict": "defective", "defects": [{"position": "c5", "type": "missing"}]}\n```',
        "defective",
        (("C5", "missing"),),
    ),
    (
        'Here you go: {"Verdict": "NG", "Defects": [{"position": "D-9", "type": "burnt terminal"}]} Hope it helps.',
        "defective",
        (("D9", "discoloured"),),
    ),
    ('{"verdict": "defective", "defects": "C5"}', "defective", (("C5", None),)),
    (
        '{"verdict": "defective", "defects": ["C5 missing", 3, null, {"type": "bent"}]}',
        "defective",
        (("C5", "missing"),),
    ),
    ('{"verdict": "defective", "defects": [{"position": 5, "type": ["missing"]}]}', "defective", ()),
    ('{"defects": [{"position": "U2", "type": "shifted"}]}', "defective", (("U2", "shifted"),)),
    ('{"verdict": "pass", "defects": [{"position": "U2", "type": "shifted"}]}', "pass", ()),
    # invalid JSON: the text is read instead
    ('{"verdict": "defective", "defects": [{"position": "C5", "type": "missing"}', "defective", (("C5", "missing"),)),
    ("{verdict: defective, defects: [C5 missing]}", "defective", (("C5", "missing"),)),
    # a valid object with no verdict: the text is read instead
    ('{"answer": {"verdict": "defective"}} the bottom one is defective', "defective", ()),
    ("The bottom product passed.", "pass", ()),
    ('{"verdict": 3}', None, ()),
    ("[1, 2, 3]", None, ()),
    ('{"a": {"b": {}}}', None, ()),
]


@pytest.mark.parametrize("answer, verdict, defects", JSON_ANSWERS)
def test_json_answers(answer, verdict, defects):
    got = parse_answer(prompt("json"), answer, "pair")
    assert (got.verdict, got.defects, got.ok) == (verdict, defects, verdict is not None)


def test_prompt_defect_names_are_read_in_any_option():
    assert parse_answer(prompt("ja"), "不良：C5に端子変形", "pair").defects == (("C5", "deformed"),)
    assert parse_answer(prompt("long"), "不良：C5に端子変形", "pair").defects == (("C5", "deformed"),)


ADVERSARIAL = [
    "",
    " \n\t ",
    "!!!???...,,,;;;:::",
    "{" * 10_000,
    "[" * 20_000,
    '{"a":' * 5_000,
    '{"a":' + "[" * 5_000 + "]" * 5_000 + "}",
    "}{" * 1_000,
    "[1, 2, 3]",
    "42",
    "null",
    '"defective"',
    '{"verdict": ["pass"], "defects": {"C5": "missing"}, "position": 7}',
    '{"verdict": null, "defects": [1, null, [], {"position": {"x": 1}, "type": 2}], "target": []}',
    '{"verdict": "defective", "defects": [{"position": "C5", "type": "missing", "position": "U1"}]}',
    "\x00\x01\ud800\ufffd",
    "ﷺ" * 1_000,
    "C5 " * 10_000,
    "not no never " * 2_000 + "defective",
    "missing terminal at C5, " * 4_000,
    "1" * 5_000,
    '{"n": ' + "1" * 5_000 + "}",
]


@pytest.mark.slow  # 22 texts of up to 20,000 characters, each parsed for every task
@pytest.mark.parametrize("option", PROMPT_OPTIONS)
def test_parse_never_raises_on_adversarial_text(option):
    cfg = prompt(option)
    for text, task in itertools.product(ADVERSARIAL, TASKS):
        got = parse_answer(cfg, text, task)
        assert got.ok == (got.target is not None if task == "star" else got.verdict is not None)


def test_huge_answers_are_read():
    text = "The bottom product is defective: " + "; ".join(f"missing terminal at {p}" for p in POSITIONS) * 1_000
    got = parse_answer(prompt("long"), text, "pair")
    assert got.verdict == "defective" and got.defects == tuple((p, "missing") for p in POSITIONS)


@pytest.mark.slow  # 400 generated texts
def test_parse_never_raises_on_arbitrary_text():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    # fragments that reach the parser's corners (JSON, negations, positions, both languages) more often than random
    # text does
    fragments = st.sampled_from(
        [
            "C5",
            "c-5",
            "row",
            "column",
            " ",
            ",",
            ";",
            ".",
            "\n",
            "{",
            "}",
            "[",
            "]",
            '"',
            ":",
            "verdict",
            "defects",
            "position",
            "type",
            "not",
            "no",
            "pass",
            "defective",
            "missing",
            "bent",
            "top",
            "red star",
            "不良",
            "合格",
            "なし",
            "、",
            "端子欠落",
            "```",
        ]
    )
    texts = st.one_of(
        st.text(),
        st.lists(fragments, max_size=40).map("".join),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=5) | fragments,
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | fragments, inner, max_size=4)
            ),
        ).map(json.dumps),
    )

    @hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
    @hypothesis.given(text=texts, task=st.sampled_from(TASKS), option=st.sampled_from(PROMPT_OPTIONS))
    def check(text, task, option):
        got = parse_answer(prompt(option), text, task)
        assert got.verdict in (None, "pass", "defective")
        assert got.target is None or got.target in POSITIONS
        assert all(p in POSITIONS and (t is None or t in TYPES) for p, t in got.defects)
        assert list(got.defects) == sorted(set(got.defects), key=lambda d: (POSITIONS.index(d[0]), d[1] or ""))
        assert not got.defects or got.verdict == "defective"
        assert got.ok == (got.target is not None if task == "star" else got.verdict is not None)

    check()
