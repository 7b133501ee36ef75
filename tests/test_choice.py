"""The choice parser: the letter in every form a model writes it, the option's text, and nothing else."""

from __future__ import annotations

import pytest

from vlmqc.choice import parse_choice, parse_choices, render
from vlmqc.tasks import answer_text, parse, prompt_text

OPTIONS = {"A": "crack", "B": "scratch", "C": "Hole in the cap", "D": "no defect"}


@pytest.mark.parametrize(
    "text",
    [
        "B",
        "B.",
        "(B)",
        "[B]",
        "B)",
        "**B**",
        "Answer: B",
        "Answer: B.",
        "answer:B",
        "The answer is B",
        "The correct answer is (B).",
        "Option B",
        "B. scratch",
        "B: Scratch.",
        "(B) scratch",
        "B scratch",
        " B \n",
        "Ｂ",  # full width
        "scratch",
        "Scratch.",
        '"scratch"',
        "Answer: scratch",
    ],
)
def test_reads_the_letter_in_every_usual_form(text):
    assert parse_choice(text, OPTIONS) == "B"


def test_reads_an_options_text_of_several_words_whatever_its_case_and_spacing():
    assert parse_choice("hole  in the CAP", OPTIONS) == "C"
    assert parse_choice("C. Hole in the cap.", OPTIONS) == "C"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "A or B",
        "B. crack",  # the letter of one option with the text of another
        "B because the surface is scratched",
        "E",  # not an option
        "b",  # a lone lower-case letter is not read as an option
        "a scratch",
        "There is a scratch on the surface.",
        "Bottle",
        "scratches everywhere",
        "I cannot tell.",
    ],
)
def test_anything_else_is_unparseable(text):
    assert parse_choice(text, OPTIONS) is None


def test_several_questions_read_one_numbered_line_each_and_unnumbered_lines_in_order():
    questions = [OPTIONS, {"A": "yes", "B": "no"}, {"A": "left", "B": "right", "C": "centre"}]
    assert parse_choices("1. Answer: B.\n2. Answer: A.\n3. Answer: C.", questions) == ["B", "A", "C"]
    assert parse_choices("3. C\n1. B\n2. A", questions) == ["B", "A", "C"]
    assert parse_choices("B\nno\nleft", questions) == ["B", "B", "A"]
    # a number given twice reads nothing for it; a missing line reads nothing; one out of range is ignored
    assert parse_choices("1. B\n1. A\n2. A\n7. A", questions) == [None, "A", None]


def test_the_rendered_answer_reads_back_for_one_and_several_questions():
    assert render("C") == "C" and parse_choice(render("C"), OPTIONS) == "C"
    questions = [OPTIONS, {"A": "yes", "B": "no"}]
    assert render("D,B") == "1. Answer: D.\n2. Answer: B."
    assert parse_choices(render("D,B"), questions) == ["D", "B"]


def choice_row(target: str, *questions: dict, **more) -> dict:
    import json

    return {
        "id": "q",
        "task": "choice",
        "target": target,
        "answer": "",
        "question": json.dumps({"questions": list(questions), **more}),
    }


def test_a_choice_row_is_asked_its_own_prompt_trained_on_its_letters_and_read_by_its_options():
    from conftest import prompt_option

    cfg = prompt_option("long")
    q = {"text": "What is the defect?", "options": OPTIONS, "type": "Defect Classification"}
    row = choice_row("B", q, prompt="Look at the images. What is the defect?")
    assert prompt_text(cfg, row, 2) == "Look at the images. What is the defect?"
    assert answer_text(cfg, row) == "B"
    p = parse(cfg, "B. scratch", row)
    assert p.ok and p.target == "B"
    p = parse(cfg, "maybe", row)
    assert not p.ok and p.target == ""
    two = choice_row("B,A", q, {"text": "Is it good?", "options": {"A": "yes", "B": "no"}, "type": "Anomaly Detection"})
    p = parse(cfg, "1. B\n2. nonsense", two)
    assert not p.ok and p.target == "B,"
    # a conversation's own answer text is what it trains on
    assert answer_text(cfg, {**row, "answer": "B. scratch"}) == "B. scratch"
