"""A synthetic pair variant exported in each of the field's layouts with ``vlmqc data ... export=``
(a real subprocess), then read back by vlmqc's own readers of those layouts: the same labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_app, run_app

from vlmqc.config import ConversationsConfig, MmadConfig, MvtecConfig, to_object
from vlmqc.data import conversations as conversations_reader
from vlmqc.data import get_dataset
from vlmqc.data import mmad as mmad_reader
from vlmqc.data import mvtec as mvtec_reader
from vlmqc.data.export import COMBINED
from vlmqc.labels import DEFECT_NAMES, DefectType

DATA = ["data=pair_mixed", "data.train_size=12", "data.test_size=12", "num_workers=1", "baseline=false"]


def exported(tmp_path: Path, fmt: str) -> tuple[Path, dict[str, dict]]:
    """The export's path to read (as the command prints it) and the original rows by id."""
    out = tmp_path / "export"
    done = run_app(tmp_path, "vlmqc.data", *DATA, f"export={fmt}", f"export_dir={out}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    read_as = Path(done.stdout.split("data.path=")[-1].strip().rstrip(")"))
    data = to_object(compose_app("data_app", DATA).data, "data")
    # the dataset the command drew, from its cache
    dsd, _ = get_dataset(data, tmp_path / "cache" / "datasets", num_workers=1, progress=False)
    rows = {r["id"]: {"split": split, **r} for split in ("train", "test") for r in dsd[split]}
    assert {r["verdict"] for r in rows.values()} == {"pass", "defective"}
    return read_as, rows


def labels(verdict: str, defects: list[dict]) -> tuple[str, list[tuple[str, str]]]:
    return verdict, sorted((d["position"], d["type"]) for d in defects)


@pytest.mark.slow  # a dataset drawn and exported by a real process
def test_conversations_read_back_with_the_same_labels_and_splits(tmp_path):
    path, rows = exported(tmp_path, "conversations")
    source = conversations_reader.read(ConversationsConfig(name="conversations", path=str(path)))
    got = {Path(e.image).stem: e for es in source.entries.values() for e in es}
    assert set(got) == set(rows)
    for rid, row in rows.items():
        e = got[rid]
        assert labels(e.verdict, e.defects) == labels(row["verdict"], row["defects"]), rid
        assert e.split == row["split"] and len(e.context) == 1 and Path(e.context[0]).stem == f"{rid}-reference"
    line = json.loads(path.read_text().splitlines()[0])
    assert line["messages"][0]["content"].startswith("<image><image>")


@pytest.mark.slow  # a dataset drawn and exported by a real process
def test_an_mvtec_tree_reads_back_with_the_same_verdicts_types_and_positions(tmp_path):
    path, rows = exported(tmp_path, "mvtec")
    assert path.name == "pair_mixed" and (path / "train" / "good").is_dir()
    # the test split's candidates are the queries; the train split gave the good training images
    source = mvtec_reader.read(MvtecConfig(name="mvtec", path=str(path), grid=[3, 9]))
    got = {Path(e.image).stem: e for es in source.entries.values() for e in es}
    test = {rid: r for rid, r in rows.items() if r["split"] == "test"}
    assert set(got) == set(test)
    combined = 0
    for rid, row in test.items():
        e = got[rid]
        types = {d["type"] for d in row["defects"]}
        if len(types) > 1:  # MVTec files an image with several defect types under one folder
            combined += 1
            assert e.verdict == "defective" and {d["type"] for d in e.defects} == {COMBINED}, rid
            assert sorted(d["position"] for d in e.defects) == sorted(d["position"] for d in row["defects"]), rid
        else:
            assert labels(e.verdict, e.defects) == labels(row["verdict"], row["defects"]), rid
    assert any(r["defects"] for r in test.values())
    goods = {p.stem for p in (path / "train" / "good").iterdir()}
    train = [rid for rid, r in rows.items() if r["split"] == "train"]
    assert {f"{rid}-reference" for rid in train} <= goods
    assert goods - {f"{rid}-reference" for rid in train} == {rid for rid in train if rows[rid]["verdict"] == "pass"}
    assert combined < len(test)


@pytest.mark.slow  # a dataset drawn and exported by a real process
def test_an_mmad_root_reads_back_with_every_question_answered_by_the_labels(tmp_path):
    path, rows = exported(tmp_path, "mmad")
    source = mmad_reader.read(MmadConfig(name="mmad", path=str(path), templates="similar"))
    examples = [e for es in source.entries.values() for e in es]
    by_type: dict[str, int] = {}
    for e in examples:
        rid = Path(e.question["image"]).stem
        row = rows[rid]
        assert e.split == row["split"], rid
        assert e.question["normal"] is (row["verdict"] == "pass") and e.question["source"] == "vlmqc"
        assert [Path(p).stem for p in e.context] == [f"{rid}-reference"]  # its own reference (similar)
        (q,) = e.question["questions"]
        said = q["options"][e.target]
        by_type[q["type"]] = by_type.get(q["type"], 0) + 1
        if q["type"] == "Anomaly Detection":
            assert said == ("Yes" if row["verdict"] == "defective" else "No"), rid
        elif q["type"] == "Defect Classification":
            (kind,) = {d["type"] for d in row["defects"]}
            assert said == DEFECT_NAMES[DefectType(kind)], rid
        else:
            assert q["type"] == "Defect Localization"
            (place,) = {d["position"] for d in row["defects"]}
            assert said == place, rid
    assert by_type["Anomaly Detection"] == len(rows)
    assert by_type.get("Defect Classification") and by_type.get("Defect Localization")


# the refusals at the door (an unknown layout, data that is not pairs): tests/test_config.py's CONFIG_ERRORS
