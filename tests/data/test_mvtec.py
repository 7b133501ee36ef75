"""MVTec AD and VisA trees, in their published layouts, read as queries beside a good reference, with
the verdict, type and grid positions of their folders, split files and masks; every problem named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from layouts import SIZE, image, mask, mvtec_category, visa_tree

from vlmqc.config import Layout, MvtecConfig, VisaConfig
from vlmqc.data import get_dataset, mvtec
from vlmqc.data.custom import CustomDataError
from vlmqc.data.layout import images as shown
from vlmqc.tasks import answer_text, parse, prompt_text

TRUTH = {
    "bottle/test/good/000.png": [],
    "bottle/test/good/001.png": [],
    "bottle/test/good/002.png": [],
    "bottle/test/good/003.png": [],
    "bottle/test/broken_large/000.png": [("U1", "broken_large")],
    "bottle/test/broken_large/001.png": [("C2", "broken_large"), ("C3", "broken_large")],
    "bottle/test/contamination/000.png": [("D3", "contamination")],
    "bottle/test/contamination/001.png": [("D3", "contamination")],
}


def rows(dsd) -> dict[str, dict]:
    return {r["id"]: r for split in dsd.values() for r in split}


def test_every_test_image_is_a_query_with_the_folders_labels_beside_a_good_reference(tmp_path, cache_dir):
    cat = mvtec_category(tmp_path / "mvtec")
    cfg = MvtecConfig(name="mvtec", path=str(cat))
    dsd, path = get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    got = rows(dsd)
    assert set(got) == set(TRUTH)
    for rid, defects in TRUTH.items():
        r = got[rid]
        assert r["task"] == "custom" and r["verdict"] == ("defective" if defects else "pass"), rid
        assert [(d["position"], d["type"]) for d in r["defects"]] == defects, rid
        meta = json.loads(r["meta"])
        assert meta["reference"].startswith("bottle/train/good/") and len(r["context"]) == 1
        assert meta["mask"] == (rid.replace("test", "ground_truth").replace(".png", "_mask.png") if defects else None)
    assert len(dsd["train"]) == len(dsd["test"]) == 4  # data.test_fraction=0.5 of the eight queries
    assert {r["verdict"] for r in dsd["test"]} == {"pass", "defective"}
    # the reference shown first (separate), or stacked on top of the query (one image)
    r = got["bottle/test/contamination/000.png"]
    ref, query = shown(r, Layout.separate)
    assert query.getpixel((0, 0)) == (200, 200, 200) and ref.size == (SIZE, SIZE)
    (one,) = shown(r, Layout.stacked)
    assert one.size == (SIZE, 2 * SIZE + 2) and one.getpixel((0, SIZE + 2)) == (200, 200, 200)
    # the same folder reads the same, from the cache
    again, again_path = get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    first = "bottle/test/good/000.png"
    assert again_path == path and rows(again)[first]["meta"] == got[first]["meta"]


def test_the_prompt_names_the_grid_and_answers_read_the_folders_types(tmp_path, cache_dir):
    from conftest import prompt_option

    cat = mvtec_category(tmp_path / "mvtec")
    dsd, _ = get_dataset(MvtecConfig(name="mvtec", path=str(cat)), cache_dir, num_workers=1, progress=False)
    r = rows(dsd)["bottle/test/broken_large/001.png"]
    cfg = prompt_option("long")
    assert "3 row(s) named U, C, D" in prompt_text(cfg, r, 1) and "numbered 1-3" in prompt_text(cfg, r, 1)
    answer = answer_text(cfg, r)
    assert "broken_large at C2" in answer
    p = parse(cfg, answer, r)
    assert p.verdict == "defective" and p.defects == (("C2", "broken_large"), ("C3", "broken_large"))
    # "contamination" is the folder's type here, not the built-in foreign_particle it would otherwise read as
    p = parse(cfg, "Defective: contamination at D3.", rows(dsd)["bottle/test/contamination/000.png"])
    assert p.defects == (("D3", "contamination"),)


def test_similar_takes_the_nearest_good_image_and_random_is_seeded_by_the_query(tmp_path, cache_dir):
    cat = mvtec_category(tmp_path / "mvtec")
    similar = mvtec.read(MvtecConfig(name="mvtec", path=str(cat), reference="similar"))
    refs = {e.id: e.meta["reference"] for es in similar.entries.values() for e in es}
    assert refs["bottle/test/contamination/001.png"] == "bottle/train/good/002.png"  # grey 210: nearest 220
    assert refs["bottle/test/broken_large/000.png"] == "bottle/train/good/000.png"  # 60: nearest 40
    assert refs["bottle/test/good/003.png"] == "bottle/train/good/001.png"  # 103: nearest 120

    def drawn(seed: int) -> dict[str, str]:
        src = mvtec.read(MvtecConfig(name="mvtec", path=str(cat), seed=seed))
        return {e.id: e.meta["reference"] for es in src.entries.values() for e in es}

    before = drawn(0)
    assert drawn(0) == before and drawn(1) != before
    # a new query elsewhere in the folder does not change the reference drawn for the others
    image(cat / "test" / "good" / "004.png")
    after = drawn(0)
    assert len(after) == 9 and {k: after[k] for k in before} == before


def test_positions_are_the_cells_holding_five_percent_of_the_mask_on_any_grid():
    a = np.zeros((60, 90), bool)
    a[0:20, 0:10] = True  # 200 pixels in the top-left cell of a 3 x 3 grid
    a[25:35, 40:58] = True  # 180 in the centre
    a[59, 89] = True  # one pixel in the bottom right: under 5 %
    assert mvtec.positions(a, 3, 3) == ["U1", "C2"]
    assert mvtec.positions(a, 1, 2) == ["C1", "C2"]
    assert mvtec.positions(a, 2, 9) == ["U1", "U5", "U6", "D5", "D6"]  # rows U and D: 30 pixels each
    assert mvtec.positions(np.zeros((4, 4), bool), 3, 3) == []


def test_every_problem_of_a_tree_is_named_before_anything_is_written(tmp_path, cache_dir):
    cat = mvtec_category(tmp_path / "mvtec")
    (cat / "ground_truth" / "broken_large" / "000_mask.png").unlink()
    mask(cat / "ground_truth" / "contamination" / "000_mask.png", (0, 0, 4, 4), size=(50, 50))
    (cat / "test" / "good" / "002.png").write_bytes(b"not a png")
    with pytest.raises(CustomDataError) as err:
        get_dataset(MvtecConfig(name="mvtec", path=str(cat)), cache_dir, num_workers=1, progress=False)
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "bottle/test/broken_large/000.png: 'mask' image not found" in message
    assert "contamination/000.png: its mask bottle/ground_truth/contamination/000_mask.png is 50x50" in message
    assert "bottle/test/good/002.png: 'image' unreadable image" in message
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    empty = tmp_path / "empty" / "screw"
    image(empty / "test" / "good" / "000.png")
    with pytest.raises(CustomDataError, match="screw: no good training image"):
        mvtec.read(MvtecConfig(name="mvtec", path=str(empty)))


def test_a_folder_of_categories_reads_the_ones_named(tmp_path):
    root = tmp_path / "mvtec"
    mvtec_category(root, "bottle")
    mvtec_category(root, "screw")
    both = mvtec.read(MvtecConfig(name="mvtec", path=str(root), test_fraction=0.25))
    assert {e.id.split("/")[0] for es in both.entries.values() for e in es} == {"bottle", "screw"}
    one = mvtec.read(MvtecConfig(name="mvtec", path=str(root), categories=["screw"]))
    assert {e.id.split("/")[0] for es in one.entries.values() for e in es} == {"screw"}
    with pytest.raises(CustomDataError, match=r"data.categories: \['cable'\] not found"):
        mvtec.read(MvtecConfig(name="mvtec", path=str(root), categories=["cable"]))


def test_visa_reads_its_split_file(tmp_path, cache_dir):
    root = visa_tree(tmp_path / "VisA")
    dsd, _ = get_dataset(VisaConfig(name="visa", path=str(root)), cache_dir, num_workers=1, progress=False)
    got = rows(dsd)
    references = {json.loads(r["meta"])["reference"] for r in got.values()}
    assert len(got) == 6 and references <= {f"candle/Data/Images/Normal/{k:04d}.JPG" for k in range(3)}
    assert [d["position"] for d in got["candle/Data/Images/Anomaly/000.JPG"]["defects"]] == ["U1"]
    assert [d["position"] for d in got["candle/Data/Images/Anomaly/001.JPG"]["defects"]] == ["D3"]
    assert got["candle/Data/Images/Anomaly/002.JPG"]["defects"] == [{"position": "U2", "type": "anomaly"}]
    assert got["candle/Data/Images/Normal/0004.JPG"]["verdict"] == "pass"


def test_a_bad_split_file_line_is_named_by_its_line(tmp_path):
    root = visa_tree(tmp_path / "VisA")
    table = root / "split_csv" / "1cls.csv"
    text = table.read_text().splitlines()
    text[5] = "candle,valid,normal,candle/Data/Images/Normal/0004.JPG,"
    text[7] = "candle,test,anomaly,../outside.JPG,candle/Data/Masks/Anomaly/001.png"
    text.append("candle,test,anomaly,candle/Data/Images/Anomaly/002.JPG,")
    table.write_text("\n".join(text) + "\n")
    with pytest.raises(CustomDataError) as err:
        mvtec.read(VisaConfig(name="visa", path=str(root)))
    message = str(err.value)
    assert f"{table}:6: split must be train or test" in message
    assert f"{table}:8: 'image' '../outside.JPG' points outside the folder" in message
    assert f"{table}:11: defective (anomaly) but its line gives no mask" in message
    table.write_text("object,split,image\n")
    with pytest.raises(CustomDataError, match=r"missing column\(s\) \['label', 'mask'\]"):
        mvtec.read(VisaConfig(name="visa", path=str(root)))
