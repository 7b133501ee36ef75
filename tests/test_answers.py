"""The parser read as a careful grader would, checked on generated answers (hypothesis): well-formed
ones read back as their labels; repeated ones as once; truncated ones as nothing or what the whole
said; ones that give the candidate both verdicts, or garble the two products together, as
unparseable; statements about the reference and a second language change nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_prompts import PROMPT_OPTIONS, TYPES, prompt, row

from vlmqc.answers import parse_answer
from vlmqc.labels import POSITIONS
from vlmqc.prompts import render_answer

EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True)
TEXT_OPTIONS = [o for o in PROMPT_OPTIONS if prompt(o).format.value == "text"]
SEPARATORS = st.sampled_from([" ", "\n", "  ", "\n\n", " - "])
# what models say of the reference product, in both languages: never about the candidate
REFERENCE_STATEMENTS = [
    "The top product passed.",
    "The top product passed inspection.",
    "The reference is defect-free.",
    "The top product is defective: missing terminal at U1.",
    "上の製品は合格です。",
    "上の製品は不良です：D9に異物。",
]


@st.composite
def labelled(draw, task: str | None = None) -> dict:
    """A pair, diff or custom example, pass or defective with up to four distinct positions."""
    task = task or draw(st.sampled_from(["pair", "diff", "custom"]))
    if draw(st.booleans()):
        return row(task, "pass")
    positions = draw(st.lists(st.sampled_from(POSITIONS), min_size=1, max_size=4, unique=True))
    return row(task, "defective", [(p, draw(st.sampled_from(TYPES))) for p in positions])


def expected(example: dict) -> tuple:
    defects = sorted(((d["position"], d["type"]) for d in example["defects"]), key=lambda d: POSITIONS.index(d[0]))
    return example["verdict"], tuple(defects)


def read(option: str, text: str, task: str) -> tuple:
    got = parse_answer(prompt(option), text, task)
    assert got.ok == (got.verdict is not None)
    return got.verdict, got.defects


@EXAMPLES
@given(example=labelled(), option=st.sampled_from(PROMPT_OPTIONS), sep=SEPARATORS, times=st.integers(1, 3))
def test_well_formed_and_repeated_answers_read_as_their_labels(example, option, sep, times):
    answer = sep.join([render_answer(prompt(option), example)] * times)
    assert read(option, answer, example["task"]) == expected(example)


@EXAMPLES
@given(example=labelled(), option=st.sampled_from(PROMPT_OPTIONS), cut=st.floats(0, 1))
def test_a_truncated_answer_reads_as_nothing_or_what_the_whole_says(example, option, cut):
    answer = render_answer(prompt(option), example)
    verdict, defects = read(option, answer[: int(len(answer) * cut)], example["task"])
    assert verdict in (None, example["verdict"])
    assert {p for p, _ in defects} <= {d["position"] for d in example["defects"]}


@EXAMPLES
@given(
    example=labelled(),
    options=st.tuples(st.sampled_from(PROMPT_OPTIONS), st.sampled_from(PROMPT_OPTIONS)),
    sep=SEPARATORS,
    passed_first=st.booleans(),
)
def test_an_answer_giving_the_candidate_both_verdicts_is_unparseable(example, options, sep, passed_first):
    if example["verdict"] == "pass":
        example = row(example["task"], "defective", [("C5", "missing")])
    passed = render_answer(prompt(options[0]), row(example["task"], "pass"))
    defective = render_answer(prompt(options[1]), example)
    answer = sep.join([passed, defective] if passed_first else [defective, passed])
    for option in {*options, "long"}:
        assert read(option, answer, example["task"]) == (None, ()), answer


@EXAMPLES
@given(
    example=labelled(),
    option=st.sampled_from(TEXT_OPTIONS),
    reference=st.sampled_from(REFERENCE_STATEMENTS),
    sep=SEPARATORS,
    before=st.booleans(),
)
def test_statements_about_the_reference_change_nothing(example, option, reference, sep, before):
    answer = render_answer(prompt(option), example)
    answer = sep.join([reference, answer] if before else [answer, reference])
    assert read(option, answer, example["task"]) == expected(example), answer


@EXAMPLES
@given(example=labelled(), sep=SEPARATORS, english_first=st.booleans(), reader=st.sampled_from(["long", "ja"]))
def test_the_same_answer_in_two_languages_reads_as_one(example, sep, english_first, reader):
    english, japanese = render_answer(prompt("long"), example), render_answer(prompt("ja"), example)
    answer = sep.join([english, japanese] if english_first else [japanese, english])
    assert read(reader, answer, example["task"]) == expected(example), answer


@EXAMPLES
@given(
    subject=st.sampled_from(["The bottom product", "The bottom product is", "The candidate", "下の製品は"]),
    reference=st.sampled_from(["the top product passed", "the top product is defective", "上の製品は合格です"]),
    glue=st.sampled_from(["", " ", "\n"]),
    option=st.sampled_from(TEXT_OPTIONS),
)
def test_the_two_products_garbled_together_are_unparseable(subject, reference, glue, option):
    assert read(option, subject + glue + reference, "pair") == (None, ())


@pytest.mark.parametrize(
    "answer",
    [
        "The bottom productthe top product passed",  # a tiny model's output, once read as pass
        "The bottom product passed. The bottom product is defective: missing terminal at C5.",
        "Defective. Passed.",
        "Verdict: pass. The product failed.",
        "Say whether the bottom product passed or is defective.",  # the question echoed
        "下の製品は合格です。下の製品は不良です。",
        "The top product has a missing terminal at C5.",  # a statement about the reference alone
    ],
)
def test_ambiguous_answers_are_unparseable(answer):
    for option in TEXT_OPTIONS:
        assert read(option, answer, "pair") == (None, ()), option


def test_contradicting_json_objects_are_unparseable():
    assert read("json", '{"verdict": "pass"} {"verdict": "defective"}', "pair") == (None, ())
    assert read("json", '{"position": "C5"} {"position": "U1"}', "star") == (None, ())
    assert read("json", '{"verdict": "pass"}\n{"verdict": "pass"}', "pair") == ("pass", ())


@pytest.mark.parametrize(
    "answer, verdict, defects",
    [
        ("The bottom product is defective: missing terminal in the top row at U3", "defective", (("U3", "missing"),)),
        ("The bottom product matches the top product.", "pass", ()),
        ("The inspection failed to find a defect: the product passed.", "pass", ()),
        ("Defective at C5; all other terminals passed.", "defective", (("C5", None),)),
        (
            "The top product passed; the bottom product is defective: bent terminal at D2.",
            "defective",
            (("D2", "deformed"),),
        ),
    ],
)
def test_unambiguous_statements_about_the_candidate_are_read(answer, verdict, defects):
    assert read("long", answer, "pair") == (verdict, defects)
