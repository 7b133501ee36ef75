"""MMAD's mmad.json, read as published: every question (or every query) one example, template images
first and the query last, its right letters, type, source and normal flag kept; every problem named."""

from __future__ import annotations

import json

import pytest
from layouts import mmad_root

from vlmqc.config import Layout, MmadConfig
from vlmqc.data import get_dataset, mmad
from vlmqc.data.custom import CustomDataError
from vlmqc.data.layout import images as shown
from vlmqc.tasks import answer_text, parse, prompt_text


def read(root, **cfg):
    src = mmad.read(MmadConfig(name="mmad", path=str(root), **cfg))
    return {e.id: e for es in src.entries.values() for e in es}, src


def test_every_question_is_an_example_with_its_templates_first(tmp_path):
    root = mmad_root(tmp_path / "MMAD")
    index = json.loads((root / "mmad.json").read_text())
    got, src = read(root)
    assert len(got) == sum(len(v["conversation"]) for v in index.values()) == 24
    e = got["MVTec-AD/bottle/test/broken/001.png#3"]
    assert e.task == "choice" and e.target == "B"  # Defect Classification: "ABCD"[k + s], k=1, s=0
    assert [p.name for p in e.context] == ["000.png"] and e.context[0].parent.name == "good"
    q = e.question
    assert q["source"] == "MVTec-AD" and q["normal"] is False and q["image"] == "MVTec-AD/bottle/test/broken/001.png"
    assert q["questions"] == [
        {
            "text": "What type of defect is present?",
            "options": {"A": "Crack", "B": "Scratch", "C": "Hole", "D": "Stain"},
            "type": "Defect Classification",
        }
    ]
    assert (
        "The first 1 image(s) show normal samples" in q["prompt"]
        and "The last image is the query image." in q["prompt"]
    )
    assert "Question: What type of defect is present?\nA. Crack\nB. Scratch\nC. Hole\nD. Stain" in q["prompt"]
    assert got["VisA/candle/test/good/000.png#1"].question["normal"] is True
    # a query's questions are never split between train and test
    for query in index:
        assert len({e.split for e in got.values() if e.question["image"] == query}) == 1
    assert {len(es) for es in src.entries.values()} == {12}


def test_similar_templates_more_shots_and_no_shots(tmp_path):
    root = mmad_root(tmp_path / "MMAD")
    got, _ = read(root, templates="similar", shots=2)
    assert [p.name for p in got["VisA/candle/test/good/001.png#1"].context] == ["002.png", "001.png"]
    got, _ = read(root, shots=0)
    e = got["VisA/candle/test/good/001.png#1"]
    assert e.context == [] and "template" not in e.question["prompt"]
    with pytest.raises(CustomDataError, match=r"data.shots=4 but random_templates holds 3 path\(s\)"):
        read(root, shots=4)


def test_a_query_turn_asks_all_its_questions_and_reads_one_line_each(tmp_path, cache_dir):
    from conftest import prompt_option

    root = mmad_root(tmp_path / "MMAD")
    cfg = MmadConfig(name="mmad", path=str(root), mmad_turn="query")
    dsd, _ = get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    rows = {r["id"]: r for split in dsd.values() for r in split}
    assert len(rows) == 8
    row = rows["VisA/candle/test/broken/000.png"]
    assert row["target"] == "A,B,B,C"
    prompt = prompt_option("long")
    assert "Answer each question on its own line" in prompt_text(prompt, row, 2)
    assert answer_text(prompt, row) == "1. Answer: A.\n2. Answer: B.\n3. Answer: B.\n4. Answer: C."
    p = parse(prompt, "1. A\n2. Candle\n3. Answer: B.\n4. C", row)
    assert p.ok and p.target == "A,B,B,C"
    template, query = shown(row, Layout.separate)
    assert template.getpixel((0, 0)) == (60, 60, 60) and query.getpixel((0, 0)) == (151, 151, 151)
    (stacked,) = shown(row, Layout.stacked)
    assert stacked.height == template.height + query.height + 2


def test_every_problem_of_mmad_json_is_named_by_its_query_and_question(tmp_path, cache_dir):
    root = mmad_root(tmp_path / "MMAD")
    index = json.loads((root / "mmad.json").read_text())
    first, second, third = list(index)[:3]
    index[first]["conversation"][0]["Answer"] = "E"
    index[first]["conversation"][1]["Options"] = {"A": "Bottle"}
    index[second]["random_templates"][0] = "MVTec-AD/bottle/train/good/missing.png"
    (root / third).unlink()
    index["../outside.png"] = {"conversation": index[first]["conversation"], "random_templates": []}
    (root / "mmad.json").write_text(json.dumps(index))
    with pytest.raises(CustomDataError) as err:
        get_dataset(MmadConfig(name="mmad", path=str(root)), cache_dir, num_workers=1, progress=False)
    message = str(err.value)
    file = root / "mmad.json"
    assert f"{file}: {first!r} conversation[0]: 'Answer' 'E' is not one of the options ['A', 'B']" in message
    assert f"{file}: {first!r} conversation[1]: 'Options' must map two or more letters" in message
    assert f"{file}: {second!r}: 'random_templates[0]' image not found" in message
    assert f"{file}: {third!r}: 'query' image not found" in message
    assert f"{file}: '../outside.png': data.shots=1 but random_templates holds 0 path(s)" in message
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    (root / "mmad.json").write_text("[]")
    with pytest.raises(CustomDataError, match="expected an object mapping each query image's path"):
        mmad.read(MmadConfig(name="mmad", path=str(root)))
