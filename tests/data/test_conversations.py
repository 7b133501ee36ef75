"""Multi-image conversation JSONL (ms-swift, TRL, axolotl): any number of images a line, the user
turn the prompt, the assistant turn the answer, scored as text, inspection or choice; every bad line named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmqc.config import ConversationsConfig, Layout
from vlmqc.data import conversations, get_dataset
from vlmqc.data.custom import CustomDataError
from vlmqc.data.layout import images as shown
from vlmqc.tasks import answer_task, answer_text, parse, prompt_text


def image(path: Path, grey: int = 128) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (grey, grey, grey)).save(path)
    return str(path.relative_to(path.parents[1]))


def line(images: list[str], user, assistant, **more) -> dict:
    return {
        "images": images,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        **more,
    }


def write(folder: Path, *lines: dict | str) -> Path:
    file = folder / "data.jsonl"
    file.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return file


def pairs(folder: Path, answers: list[str], prompt: str = "<image><image>Did the second product pass?") -> Path:
    lines = []
    for k, answer in enumerate(answers):
        ref, cand = image(folder / "ref" / f"{k}.png", 20 + k), image(folder / "cand" / f"{k}.png", 200 - k)
        lines.append(line([ref, cand], prompt, answer))
    return write(folder, *lines)


def read(file: Path, **cfg):
    return conversations.read(ConversationsConfig(name="conversations", path=str(file), **cfg))


def examples(source) -> dict[str, object]:
    return {e.id: e for es in source.entries.values() for e in es}


INSPECTION = [
    "The bottom product passed.",
    "The bottom product is defective: missing terminal at C5.",
    "The bottom product is defective: burnt terminal at U1; shifted terminal at D9.",
    "The bottom product passed.",
]


def test_inspection_answers_are_read_into_labels_and_trained_on_as_written(tmp_path, cache_dir):
    file = pairs(tmp_path, INSPECTION)
    got = examples(read(file))
    e = got["cand/2.png#3"]
    assert e.verdict == "defective" and e.defects == [
        {"position": "U1", "type": "discoloured"},
        {"position": "D9", "type": "shifted"},
    ]
    assert e.question == {"prompt": "Did the second product pass?"} and e.context[0].name == "2.png"
    dsd, _ = get_dataset(
        ConversationsConfig(name="conversations", path=str(file)), cache_dir, num_workers=1, progress=False
    )
    assert len(dsd["train"]) == len(dsd["test"]) == 2
    row = next(r for split in dsd.values() for r in split if r["id"] == "cand/1.png#2")
    from conftest import prompt_option

    cfg = prompt_option("short")
    assert answer_task(row) == "inspection" and prompt_text(cfg, row, 2) == "Did the second product pass?"
    assert answer_text(cfg, row) == INSPECTION[1]  # the file's own words, not the prompt's rendering
    assert parse(cfg, "defective: C5 missing", row).defects == (("C5", "missing"),)
    ref, cand = shown(row, Layout.separate)
    assert ref.getpixel((0, 0)) == (21, 21, 21) and cand.getpixel((0, 0)) == (199, 199, 199)


def test_choice_answers_are_letters_among_the_options_the_user_turn_lists(tmp_path):
    prompt = "<image><image>Is there a defect?\nA. Yes\nB. No\n"
    file = pairs(tmp_path, ["A", "B. No", "Answer: A.", "No"], prompt)
    got = examples(read(file))
    assert [got[f"cand/{k}.png#{k + 1}"].target for k in range(4)] == ["A", "B", "A", "B"]
    e = got["cand/0.png#1"]
    assert e.task == "choice" and e.question["questions"] == [
        {"text": "Is there a defect?\nA. Yes\nB. No", "options": {"A": "Yes", "B": "No"}, "type": ""}
    ]


def test_free_text_and_any_number_of_images_in_list_or_string_content(tmp_path):
    imgs = [image(tmp_path / "im" / f"{k}.png", 10 * k) for k in range(3)]
    file = write(
        tmp_path,
        line(imgs, "<image><image><image>Which one differs?", "The third."),
        {
            "images": imgs[:1],
            "messages": [
                {"role": "system", "content": "You inspect parts."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A grey square."}]},
            ],
        },
        line(imgs[1:], "<image>Compare <image>", "Same."),
    )
    got = examples(read(file))
    assert all(e.task == "custom" and not e.verdict for e in got.values())
    three = got["im/2.png#1"]
    assert len(three.context) == 2 and three.answer == "The third."
    assert (
        got["im/0.png#2"].question == {"prompt": "You inspect parts.\nDescribe it."} and got["im/0.png#2"].context == []
    )


def test_every_bad_line_is_named(tmp_path, cache_dir):
    ok = image(tmp_path / "im" / "a.png")
    file = write(
        tmp_path,
        "{not json",
        line([ok], "<image>?", "yes", extra=1),
        line([ok, ok], "<image>?", "yes"),
        line(["missing.png"], "<image>?", "yes"),
        line(["../outside.png"], "<image>?", "yes"),
        {"images": [ok], "messages": [{"role": "assistant", "content": "yes"}]},
        line([ok], "<image>?", ""),
        line([], "?", "yes"),
        line([ok], "<image>?", "yes", split="valid"),
    )
    with pytest.raises(CustomDataError) as err:
        get_dataset(ConversationsConfig(name="conversations", path=str(file)), cache_dir, num_workers=1, progress=False)
    message = str(err.value)
    for n, what in [
        (1, "malformed JSON"),
        (2, "unknown key(s) 'extra'"),
        (3, "2 image(s) in 'images' but 1 in the user turn"),
        (4, "'images[0]' image not found"),
        (5, "'images[0]' '../outside.png' points outside the folder"),
        (6, "'messages' must be an optional system message, one user turn and one assistant turn"),
        (7, "the assistant turn has no text"),
        (8, "'images' must be a non-empty list of paths"),
        (9, "unknown split 'valid'"),
    ]:
        assert f"{file}:{n}: {what}" in message, what
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_a_kind_asked_for_names_every_answer_that_does_not_read_so(tmp_path):
    file = pairs(tmp_path, ["The bottom product passed.", "I cannot tell from these images", "Defective at C5"])
    assert all(e.task == "custom" and not e.verdict for e in examples(read(file)).values())  # auto: text
    with pytest.raises(CustomDataError) as err:
        read(file, answers="inspection")
    message = str(err.value)
    assert "2 problem(s)" in message and f"{file}:3: data.answers=inspection" in message  # no type at C5
    assert f"{file}:2: data.answers=inspection: the answer does not read as a verdict" in message
    with pytest.raises(CustomDataError, match=r":1: data.answers=choice: the answer does not read as a letter"):
        read(file, answers="choice")
    kept = read(file, answers="text")
    assert {e.answer for es in kept.entries.values() for e in es} == {
        "The bottom product passed.",
        "I cannot tell from these images",
        "Defective at C5",
    }


def test_a_split_is_on_every_line_or_none(tmp_path):
    a, b = image(tmp_path / "im" / "a.png"), image(tmp_path / "im" / "b.png")
    file = write(tmp_path, line([a], "<image>?", "x", split="train"), line([b], "<image>?", "y", split="test"))
    got = read(file)
    assert [e.id for e in got.entries["test"]] == ["im/b.png#2"]
    file = write(tmp_path, line([a], "<image>?", "x", split="train"), line([b], "<image>?", "y"))
    with pytest.raises(CustomDataError, match="'split' is given on some lines but not all"):
        read(file)
