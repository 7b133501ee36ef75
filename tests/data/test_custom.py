"""The user's own images: every problem in the folder is reported with file, line and value;
a valid folder loads with its labels, its bytes and a stratified split, and is cached."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from vlmqc.config import CustomConfig
from vlmqc.data import custom, get_dataset, store
from vlmqc.data.custom import CustomDataError
from vlmqc.data.split import label_set

META = "metadata.jsonl"
SIZE = (64, 48)  # width, height of every candidate image


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = SIZE, fmt: str = "PNG") -> bytes:
    """A small, real image file; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def jsonl(*lines: dict | str, end: str = "\n") -> str:
    """One line per argument: a dict as JSON (non-ASCII left unescaped), a str verbatim."""
    return "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + end for line in lines)


def write_meta(folder: Path, *lines: dict | str) -> Path:
    """``metadata.jsonl`` in the folder, written line by line."""
    meta = folder / META
    with meta.open("w", encoding="utf-8", newline="") as f:
        for line in lines:
            f.write(jsonl(line))
    return meta


def config(folder: Path, **overrides) -> CustomConfig:
    return CustomConfig(name="custom", path=str(folder), **overrides)


def load(folder: Path, cache: Path, **overrides) -> tuple[datasets.DatasetDict, Path]:
    return get_dataset(config(folder, **overrides), cache_dir=cache, num_workers=1, progress=False)


def error(folder: Path, **overrides) -> str:
    """The message of the CustomDataError that reading the folder raises."""
    with pytest.raises(CustomDataError) as err:
        custom.read(config(folder, **overrides))
    return str(err.value)


def problems(folder: Path, *lines: dict | str) -> str:
    """The message of the CustomDataError that reading these metadata lines raises."""
    write_meta(folder, *lines)
    return error(folder)


def passed(file: str, **more) -> dict:
    return {"file": file, "verdict": "pass", **more}


def defective(file: str, *defects: tuple[str, str], **more) -> dict:
    return {"file": file, "verdict": "defective", "defects": [{"position": p, "type": t} for p, t in defects], **more}


def by_id(dsd: datasets.DatasetDict) -> dict[str, dict]:
    return {row["id"]: row for split in dsd.values() for row in split}


def raw_bytes(dsd: datasets.DatasetDict, column: str = "image") -> dict[str, bytes | None]:
    """Stored bytes of an image column by id, without decoding."""
    out = {}
    for split in dsd.values():
        for row in split.cast_column(column, datasets.Image(decode=False)):
            out[row["id"]] = row[column]["bytes"] if row[column] else None
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with three readable images: a.png, b.png, c.jpg."""
    root = (tmp_path / "images").resolve()
    write_image(root / "a.png", (200, 30, 30))
    write_image(root / "b.png", (30, 200, 30))
    write_image(root / "c.jpg", (30, 30, 200), fmt="JPEG")
    return root


# ---------------------------------------------------------------- the folder and the metadata file


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-folder"
    msg = error(missing)
    assert str(missing) in msg and "folder not found" in msg


def test_missing_metadata_file_is_named(folder):
    msg = error(folder)
    assert str(folder / META) in msg and "metadata file not found" in msg


def test_metadata_without_any_line_is_refused(folder):
    msg = problems(folder, "", "   ")
    assert str(folder / META) in msg and "no examples" in msg


def test_malformed_json_names_the_line(folder):
    msg = problems(folder, passed("a.png"), '{"file": "a.png", ')
    assert f"{folder / META}:2:" in msg and "malformed JSON" in msg
    assert ":1:" not in msg


def test_a_line_that_is_not_an_object_is_refused(folder):
    msg = problems(folder, passed("a.png"), '["b.png", "pass"]')
    assert f"{META}:2:" in msg and "expected a JSON object, got list" in msg


def test_blank_lines_do_not_shift_line_numbers(folder):
    msg = problems(folder, passed("a.png"), "", "", {"file": "b.png", "verdict": "broken"})
    assert f"{META}:4:" in msg and "'broken'" in msg


def test_line_separator_inside_an_answer_text_does_not_split_the_line(folder):
    # JSON allows U+2028, U+2029 and U+0085 unescaped in strings; only \n ends a JSON line
    text = "terminal C5\u2028looks burnt\x85see photo"
    write_meta(folder, {"file": "a.png", "answer": text, "split": "train"}, passed("b.png", split="test"))
    source = custom.read(config(folder))
    assert [e.labels["answer"] for e in source.entries["train"]] == [text]
    assert [e.line for e in source.entries["test"]] == [2]


def test_windows_line_endings_are_accepted(folder):
    (folder / META).write_bytes(
        jsonl(passed("a.png", split="train"), {"file": "b.png", "verdict": "broken"}, end="\r\n").encode()
    )
    msg = error(folder)
    assert f"{META}:2:" in msg and "'broken'" in msg and "1 problem(s)" in msg


def test_byte_order_mark_is_accepted(folder):
    # editors on Windows often save UTF-8 with a BOM
    (folder / META).write_bytes(
        b"\xef\xbb\xbf" + jsonl(passed("a.png", split="train"), passed("b.png", split="test")).encode()
    )
    source = custom.read(config(folder))
    assert source.size == 2


def test_metadata_that_is_not_utf8_is_refused(folder):
    (folder / META).write_bytes(b'{"file": "a.png", "answer": "caf\xe9"}\n')  # Latin-1, not UTF-8
    msg = error(folder)
    assert str(folder / META) in msg and "not UTF-8" in msg


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "line, value, rule",
    [
        ({"file": "b.png", "verdict": "broken"}, "'broken'", "unknown verdict"),
        (defective("b.png", ("C5", "scratch")), "'scratch'", "unknown defect type"),
        (defective("b.png", ("Z5", "missing")), "'Z5'", "invalid position"),
        (defective("b.png", ("C10", "missing")), "'C10'", "invalid position"),
        (passed("b.png", split="validation"), "'validation'", "unknown split"),
        ({"file": "b.png", "answer": "   "}, "'   '", "'answer' must be a non-empty string"),
    ],
    ids=["verdict", "defect-type", "row", "column", "split", "empty-answer"],
)
def test_unknown_label_value_names_line_and_value(folder, line, value, rule):
    msg = problems(folder, passed("a.png"), line)
    assert f"{folder / META}:2:" in msg
    assert value in msg and rule in msg
    assert "1 problem(s)" in msg


def test_defect_types_come_from_the_config(folder):
    write_meta(
        folder,
        defective("a.png", ("C5", "missing"), split="train"),
        defective("b.png", ("D1", "scratch"), split="test"),
    )
    msg = error(folder, defect_types=["scratch"])
    assert f"{META}:1:" in msg and "unknown defect type 'missing'" in msg
    source = custom.read(config(folder, defect_types=["scratch", "missing"]))
    assert source.entries["test"][0].labels["defects"] == [{"position": "D1", "type": "scratch"}]


def test_defects_on_a_passed_product_are_refused(folder):
    msg = problems(folder, {"file": "a.png", "verdict": "pass", "defects": [{"position": "C5", "type": "missing"}]})
    assert f"{META}:1:" in msg and "'defects' given but verdict is 'pass'" in msg


def test_same_position_listed_twice_is_refused(folder):
    msg = problems(folder, defective("a.png", ("C5", "missing"), ("c5", "shifted")))
    assert f"{META}:1:" in msg and "position C5 is listed twice" in msg


def test_malformed_defect_entry_is_refused(folder):
    msg = problems(folder, {"file": "a.png", "verdict": "defective", "defects": [{"where": "C5", "type": "missing"}]})
    assert f"{META}:1:" in msg and "defects[0]" in msg and "'where'" in msg


def test_line_without_verdict_or_answer_is_refused(folder):
    msg = problems(folder, passed("a.png"), {"file": "b.png"})
    assert f"{folder / META}:2:" in msg and "needs labels" in msg


def test_unknown_key_is_named(folder):
    msg = problems(folder, passed("a.png"), {"file": "b.png", "verdikt": "pass"})
    assert f"{folder / META}:2:" in msg and "unknown key(s) 'verdikt'" in msg


def test_line_without_file_is_refused(folder):
    msg = problems(folder, {"verdict": "pass"})
    assert f"{META}:1:" in msg and "missing required key 'file'" in msg


# ---------------------------------------------------------------- image files


def test_missing_image_is_named(folder):
    msg = problems(folder, passed("a.png"), passed("cand/nothere.png"))
    assert f"{folder / META}:2:" in msg and "image not found" in msg and str(folder / "cand" / "nothere.png") in msg


def test_missing_reference_is_named(folder):
    msg = problems(folder, passed("a.png", reference="ref/nothere.png"))
    assert f"{META}:1:" in msg and "'reference' image not found" in msg and "nothere.png" in msg


def test_unreadable_image_is_named(folder):
    (folder / "bad.png").write_bytes(b"this is a text file, not a picture\n")
    msg = problems(folder, passed("a.png"), passed("bad.png"))
    assert f"{folder / META}:2:" in msg and "unreadable image" in msg and str(folder / "bad.png") in msg


def test_truncated_jpeg_is_named(folder):
    # an interrupted copy: the header is intact, the pixel data stops early
    noise = Image.effect_noise(SIZE, 64).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, format="JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 3 // 4])
    msg = problems(folder, passed("a.png"), passed("cut.jpg"))
    assert f"{folder / META}:2:" in msg and "unreadable image" in msg and "cut.jpg" in msg


def test_relative_path_escaping_the_folder_is_refused_even_if_the_file_exists(folder):
    write_image(folder.parent / "outside.png", (0, 0, 0))
    msg = problems(folder, passed("a.png"), passed("../outside.png"))
    assert f"{folder / META}:2:" in msg and "'../outside.png'" in msg and "points outside the folder" in msg


def test_absolute_path_outside_the_folder_is_refused(folder):
    outside = folder.parent / "outside.png"
    write_image(outside, (0, 0, 0))
    msg = problems(folder, passed("a.png", reference=str(outside)))
    assert f"{folder / META}:1:" in msg and repr(str(outside)) in msg and "points outside the folder" in msg


def test_symlink_to_outside_the_folder_is_refused(folder):
    outside = folder.parent / "outside.png"
    write_image(outside, (0, 0, 0))
    (folder / "link.png").symlink_to(outside)
    msg = problems(folder, passed("link.png"))
    assert "'link.png'" in msg and "points outside the folder" in msg


def test_metadata_file_outside_the_folder_is_refused(folder):
    outside = folder.parent / "elsewhere.jsonl"
    outside.write_text(jsonl(passed("a.png", split="train"), passed("b.png", split="test")))
    (folder / "linked.jsonl").symlink_to(outside)
    for metadata in ("../elsewhere.jsonl", str(outside), "linked.jsonl"):
        msg = error(folder, metadata=metadata)
        assert f"data.metadata={metadata!r}" in msg and "outside the folder" in msg, metadata
    (folder / "inside.jsonl").write_text(outside.read_text())
    (folder / "sub").mkdir()
    assert custom.read(config(folder, metadata="sub/../inside.jsonl")).size == 2  # '..' that stays inside is fine


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 1-bit pixels, with no pixel data: what a
    decompression bomb or a corrupt file shows before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "width, height, message",
    [
        (
            10_000,
            10_000,
            "10000x10000 = 100000000 pixels, more than data.max_pixels=89478485",
        ),  # over ours, under Pillow's ceiling
        (20_000, 20_000, "too large to decode"),  # over Pillow's ceiling: its DecompressionBombError, not an OSError
    ],
    ids=["over-max_pixels", "over-pillows-ceiling"],
)
def test_image_claiming_more_pixels_than_the_limit_is_a_validation_error(folder, width, height, message):
    (folder / "huge.png").write_bytes(png_header(width, height))
    msg = problems(folder, passed("a.png"), passed("huge.png"))
    assert f"{folder / META}:2:" in msg and str(folder / "huge.png") in msg and message in msg


def test_the_pixel_limit_is_configurable(folder):
    write_meta(folder, passed("a.png", split="train"), passed("b.png", split="test"))
    pixels = SIZE[0] * SIZE[1]
    msg = error(folder, max_pixels=pixels - 1)
    assert f"{META}:1:" in msg and f"{META}:2:" in msg and f"more than data.max_pixels={pixels - 1}" in msg
    assert custom.read(config(folder, max_pixels=pixels)).size == 2


def test_a_stacked_pair_is_bounded_by_the_pixel_limit_as_each_image_is(folder):
    """A 1x500 reference above a 500x500 candidate: each image is small, but the reference scaled to
    the candidate's width is 500x250000, and the stack 125 megapixels. Refused at validation, naming
    the line; the same pair shown as two images (no stack) is not."""
    write_image(folder / "thin.png", (0, 0, 0), size=(1, 500))
    write_image(folder / "wide.png", (0, 0, 0), size=(500, 500))
    write_image(folder / "ok-ref.png", (0, 0, 0), size=(500, 400))
    lines = (
        passed("wide.png", reference="thin.png", split="train"),
        passed("a.png", reference="ok-ref.png", split="test"),
    )
    msg = problems(folder, *lines)
    assert f"{folder / META}:1: the pair stacked for the model" in msg
    assert "is 500x250505 = 125252500 pixels, more than data.max_pixels=89478485" in msg
    assert f"{META}:2:" not in msg  # a reference of the candidate's proportions stacks within the limit
    assert custom.read(config(folder, stack_reference=False)).size == 2


def test_same_image_listed_twice_is_refused(folder):
    msg = problems(folder, passed("a.png"), passed("b.png"), passed("./a.png"))
    assert f"{folder / META}:3:" in msg and "'./a.png' is already listed on line 1" in msg


# ---------------------------------------------------------------- splits and reporting


def test_split_on_some_lines_only_is_refused(folder):
    msg = problems(folder, passed("a.png", split="train"), passed("b.png"), passed("c.jpg", split="test"))
    assert f"{folder / META}:2:" in msg and "'split' is given on some lines but not this one" in msg


def test_empty_test_split_is_named(folder):
    msg = problems(folder, passed("a.png", split="train"), passed("b.png", split="train"))
    assert str(folder / META) in msg and "split 'test' is empty" in msg


def test_too_few_examples_to_fill_both_splits(folder):
    msg = problems(folder, passed("a.png"))
    assert "is empty" in msg and "1 example(s) in all" in msg


def test_every_problem_is_reported_at_once(folder):
    msg = problems(
        folder,
        passed("a.png"),
        {"file": "b.png", "verdict": "broken"},
        passed("c.jpg"),
        defective("missing.png", ("C5", "missing")),
        '{"file": ',
    )
    assert "3 problem(s)" in msg
    for line in (2, 4, 5):
        assert f"{folder / META}:{line}:" in msg
    for line in (1, 3):
        assert f"{folder / META}:{line}:" not in msg


def test_long_reports_are_cut_with_a_count(folder):
    msg = problems(folder, *(passed(f"missing{i}.png") for i in range(custom.MAX_REPORTED + 5)))
    assert f"{custom.MAX_REPORTED + 5} problem(s)" in msg and "... and 5 more" in msg
    assert msg.count("image not found") == custom.MAX_REPORTED


def test_failed_read_writes_nothing(folder, tmp_path):
    cache = tmp_path / "cache"
    write_meta(folder, passed("a.png"), {"file": "b.png", "verdict": "broken"})
    with pytest.raises(CustomDataError):
        load(folder, cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_failed_build_leaves_no_dataset_folder(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    write_meta(folder, passed("a.png", split="train"), passed("b.png", split="test"))

    def broken_row(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(custom, "_row", broken_row)
    with pytest.raises(RuntimeError, match="disk full"):
        load(folder, cache)
    assert not cache.exists() or not any(cache.iterdir())


# ---------------------------------------------------------------- a valid folder


@pytest.fixture
def valid(tmp_path: Path) -> dict:
    """Candidates with structured labels, answer-only rows and one with a larger reference."""
    root = (tmp_path / "inspection").resolve()
    files = {
        "cand/0001.png": write_image(root / "cand/0001.png", (250, 250, 250)),
        "cand/0002.png": write_image(root / "cand/0002.png", (120, 120, 120)),
        "cand/0003.jpg": write_image(root / "cand/0003.jpg", (90, 60, 30), fmt="JPEG"),
        "cand/0004.png": write_image(root / "cand/0004.png", (60, 90, 30)),
        "cand/0005.png": write_image(root / "cand/0005.png", (30, 60, 90)),
        "ref/0001.png": write_image(root / "ref/0001.png", (0, 0, 0), size=(128, 80)),
    }
    lines = [
        defective("cand/0001.png", ("c5", "missing"), reference="ref/0001.png", split="test"),
        passed("cand/0002.png", split="train"),
        {"file": "cand/0003.jpg", "answer": "  The bottom product passed.  ", "split": "train"},
        defective("cand/0004.png", ("U1", "shifted"), ("D9", "foreign_particle"), answer="Two defects.", split="train"),
        {"file": "cand/0005.png", "answer": "Defective: C5 burnt terminal.", "split": "test"},
    ]
    write_meta(root, *lines)
    return {"root": root, "files": files, "cache": tmp_path / "cache"}


def test_valid_folder_loads_both_splits_with_ids_and_labels(valid):
    dsd, path = load(valid["root"], valid["cache"])
    assert path.parent == valid["cache"] and path.name.startswith("custom-")
    assert set(dsd) == {"train", "test"}
    assert sorted(dsd["train"]["id"]) == ["cand/0002.png", "cand/0003.jpg", "cand/0004.png"]
    assert sorted(dsd["test"]["id"]) == ["cand/0001.png", "cand/0005.png"]
    rows = by_id(dsd)
    assert rows["cand/0001.png"]["verdict"] == "defective"
    assert rows["cand/0001.png"]["defects"] == [{"position": "C5", "type": "missing"}]  # normalised to upper case
    assert rows["cand/0001.png"]["answer"] == ""
    assert rows["cand/0002.png"]["verdict"] == "pass" and rows["cand/0002.png"]["defects"] == []
    assert rows["cand/0003.jpg"]["verdict"] == "" and rows["cand/0003.jpg"]["answer"] == "The bottom product passed."
    assert rows["cand/0004.png"]["defects"] == [
        {"position": "U1", "type": "shifted"},
        {"position": "D9", "type": "foreign_particle"},
    ]
    assert rows["cand/0004.png"]["answer"] == "Two defects."
    assert rows["cand/0005.png"]["verdict"] == "" and rows["cand/0005.png"]["answer"] == "Defective: C5 burnt terminal."
    assert all(r["task"] == "custom" for r in rows.values())
    meta = json.loads(rows["cand/0001.png"]["meta"])
    # the reference (128 x 80) stacked above the candidate at the candidate's width, 2 pixels apart:
    # where data.layout=separate cuts the pair again
    assert meta == {
        "file": "cand/0001.png",
        "line": 1,
        "reference": "ref/0001.png",
        "stack": {"top": 80 * SIZE[0] // 128, "gap": 2},
    }


def test_reference_is_stacked_on_top_of_the_candidate(valid):
    dsd, _ = load(valid["root"], valid["cache"])
    image = by_id(dsd)["cand/0001.png"]["image"].convert("RGB")
    width, height = SIZE
    assert image.width == width and image.height > height
    ref_height = 80 * width // 128  # the 128 x 80 reference scaled to the candidate's width
    assert image.height == ref_height + max(2, width // 100) + height
    assert image.getpixel((width // 2, ref_height // 2)) == (0, 0, 0)  # reference on top
    assert image.getpixel((width // 2, image.height - height // 2)) == (250, 250, 250)  # candidate below


def test_rows_without_a_stacked_reference_keep_the_users_bytes(valid):
    dsd, _ = load(valid["root"], valid["cache"])
    stored = raw_bytes(dsd)
    for rel in ("cand/0002.png", "cand/0003.jpg", "cand/0004.png", "cand/0005.png"):
        assert stored[rel] == valid["files"][rel], rel
    assert stored["cand/0001.png"] != valid["files"]["cand/0001.png"]  # re-encoded after stacking
    assert all(b is None for b in raw_bytes(dsd, "source_image").values())


def test_without_stacking_the_reference_is_kept_beside_the_image(valid):
    dsd, _ = load(valid["root"], valid["cache"], stack_reference=False)
    assert raw_bytes(dsd)["cand/0001.png"] == valid["files"]["cand/0001.png"]
    sources = raw_bytes(dsd, "source_image")
    assert sources["cand/0001.png"] == valid["files"]["ref/0001.png"]
    assert sources["cand/0002.png"] is None


def test_second_request_loads_the_cache_and_new_bytes_give_a_new_one(valid, monkeypatch):
    first, path = load(valid["root"], valid["cache"])
    info = (path / store.INFO).read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    with monkeypatch.context() as m:
        m.setattr(store, "build", lambda *a, **k: pytest.fail("rebuilt a cached dataset"))
        again, same = load(valid["root"], valid["cache"])
    assert same == path
    assert (path / store.INFO).read_bytes() == info
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == stamps
    assert by_id(again).keys() == by_id(first).keys()

    write_image(valid["root"] / "cand/0002.png", (121, 120, 120))  # one image changes
    changed, other = load(valid["root"], valid["cache"])
    assert other != path and other.parent == path.parent
    assert (path / store.INFO).read_bytes() == info  # the old dataset is left as it was
    assert by_id(changed)["cand/0002.png"]["image"].getpixel((0, 0)) == (121, 120, 120)


# ---------------------------------------------------------------- the split when none is given


TYPES = ["missing", "shifted", "wrong_shape", "discoloured"]
POSITIONS = ["U1", "C5", "D9", "U4", "C7"]


@pytest.fixture
def unsplit(tmp_path: Path) -> Path:
    """64 examples, no split: passes, defectives with one or two defects, answer-only rows."""
    root = (tmp_path / "many").resolve()
    lines = []
    for i in range(64):
        write_image(root / f"{i:03d}.png", (i, 2 * i, 3 * i), size=(8, 8))
        file = f"{i:03d}.png"
        if i % 8 == 7:
            lines.append({"file": file, "answer": f"example {i}"})
        elif i % 3 == 0:
            lines.append(passed(file))
        else:
            defects = [(POSITIONS[i % 5], TYPES[i % 4])]
            if i % 4 == 1:
                defects.append((POSITIONS[(i + 2) % 5], TYPES[(i + 1) % 4]))
            lines.append(defective(file, *defects))
    write_meta(root, *lines)
    return root


def assignment(folder: Path, **overrides) -> dict[str, str]:
    source = custom.read(config(folder, **overrides))
    return {str(e.file.relative_to(folder)): split for split, entries in source.entries.items() for e in entries}


def test_stratified_split_gives_every_label_its_share(unsplit):
    source = custom.read(config(unsplit, test_fraction=0.375))
    totals, tests = Counter(), Counter()
    for split, entries in source.entries.items():
        for e in entries:
            labels = label_set(e.labels)
            totals.update(labels)
            if split == "test":
                tests.update(labels)
    assert {"verdict=pass", "verdict=defective", "answer-only"} <= set(totals)
    assert {f"type={t}" for t in TYPES} <= set(totals) and {f"position={p}" for p in POSITIONS} <= set(totals)
    for label, total in totals.items():
        assert abs(tests[label] - 0.375 * total) <= 1, (label, tests[label], total)
    assert abs(len(source.entries["test"]) - 0.375 * source.size) <= 1


def test_stratified_split_is_deterministic_for_a_seed(unsplit):
    first = assignment(unsplit, seed=3)
    assert assignment(unsplit, seed=3) == first
    assert len(first) == 64
    assert assignment(unsplit, seed=4) != first


def test_a_moved_folder_is_the_same_cached_dataset(tmp_path):
    for name in ("first", "second"):
        folder = tmp_path / name
        write_image(folder / "a.png", (200, 10, 10))
        write_image(folder / "b.png", (10, 200, 10))
        write_meta(
            folder,
            {"file": "a.png", "verdict": "pass", "split": "train"},
            {"file": "b.png", "verdict": "pass", "split": "test"},
        )
    _, first = load(tmp_path / "first", tmp_path / "cache")
    _, second = load(tmp_path / "second", tmp_path / "cache")
    assert first == second


def test_a_photo_with_an_exif_rotation_is_stored_upright(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    img = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(folder / "rotated.jpg", format="JPEG", exif=exif)
    write_image(folder / "plain.png", (10, 200, 10))
    write_meta(
        folder,
        {"file": "rotated.jpg", "verdict": "pass", "split": "train"},
        {"file": "plain.png", "verdict": "pass", "split": "test"},
    )
    dsd, _ = load(folder, tmp_path / "cache")
    assert dsd["train"][0]["image"].size == (20, 60)
    raw = dsd["test"].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    assert raw == (folder / "plain.png").read_bytes()


# ---------------------------------------------------------------- any mode Pillow opens, stored as RGB


def sixteen_bit_png(path: Path) -> None:
    a = np.full((SIZE[1], SIZE[0]), 65535, dtype=np.uint16)
    a[:, : SIZE[0] // 2] = 0x8080  # 32896 = 128 * 257
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"  # a real 16-bit grey PNG, as Pillow opens it


def palette_png_with_transparency(path: Path) -> None:
    im = Image.new("P", SIZE, 1)
    im.putpalette([0, 0, 0, 200, 30, 30])
    im.paste(0, (0, 0, SIZE[0] // 2, SIZE[1]))
    im.save(path, transparency=0)  # index 0, black in the palette, is transparent
    with Image.open(path) as back:
        assert back.mode == "P" and back.info["transparency"] == 0


def cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", SIZE, (0, 255, 255, 0)).save(path, format="JPEG", quality=95)  # red ink
    with Image.open(path) as im:
        assert im.mode == "CMYK"


def save_mode(mode: str, left, right, fmt: str = "PNG"):
    def write(path: Path) -> None:
        im = Image.new(mode, SIZE, right)
        im.paste(left, (0, 0, SIZE[0] // 2, SIZE[1]))
        im.save(path, format=fmt)
        with Image.open(path) as back:
            assert back.mode == mode

    return write


@pytest.mark.parametrize(
    "write, name, left, right",
    [
        (sixteen_bit_png, "grey16.png", (128, 128, 128), (255, 255, 255)),  # convert("RGB") would clip both to white
        (
            palette_png_with_transparency,
            "palette.png",
            (255, 255, 255),
            (200, 30, 30),
        ),  # transparent on white, not black
        (cmyk_jpeg, "cmyk.jpg", (255, 0, 0), (255, 0, 0)),
        (save_mode("RGBA", (0, 0, 0, 0), (30, 200, 30, 255)), "rgba.png", (255, 255, 255), (30, 200, 30)),
        (save_mode("LA", (0, 0), (100, 255)), "la.png", (255, 255, 255), (100, 100, 100)),
        (
            save_mode("I", 1000, 65535, "TIFF"),
            "int32.tif",
            (4, 4, 4),
            (255, 255, 255),
        ),  # 16-bit values in a 32-bit image
        (save_mode("F", 0.5, 1.0, "TIFF"), "float.tif", (128, 128, 128), (255, 255, 255)),  # convert("RGB") gives black
        (save_mode("1", 0, 1), "bilevel.png", (0, 0, 0), (255, 255, 255)),
        (save_mode("L", 40, 220), "grey.png", (40, 40, 40), (220, 220, 220)),
    ],
    ids=["I;16-png", "P-transparency", "CMYK-jpeg", "RGBA", "LA", "I-tiff", "F-tiff", "1", "L"],
)
@pytest.mark.parametrize("stack_reference", [False, True], ids=["alone", "stacked"])
def test_every_mode_pillow_opens_is_stored_as_the_rgb_a_person_sees(
    tmp_path, write, name, left, right, stack_reference
):
    folder = (tmp_path / "modes").resolve()
    folder.mkdir()
    write(folder / name)
    write_image(folder / "ref.png", (0, 0, 255))
    write_image(folder / "plain.png", (10, 200, 10))
    write_meta(folder, passed(name, reference="ref.png", split="train"), passed("plain.png", split="test"))
    dsd, _ = load(folder, tmp_path / "cache", stack_reference=stack_reference)
    image = dsd["train"][0]["image"]
    assert image.mode == "RGB" and image.width == SIZE[0]
    y = image.height - SIZE[1] // 2  # the candidate is at the bottom when stacked
    tolerance = 3 if name.endswith(".jpg") else 0  # JPEG is lossy
    for x, want in ((SIZE[0] // 4, left), (3 * SIZE[0] // 4, right)):
        got = image.getpixel((x, y))
        assert all(abs(g - w) <= tolerance for g, w in zip(got, want, strict=True)), (x, got, want)
