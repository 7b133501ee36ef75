"""The synthetic tasks: determinism, the cache, and labels that agree with the pixels."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections import Counter

import datasets
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

from vlmqc.config import DiffConfig, DiffImageConfig, DiffMode, IntRange, NuisanceConfig, PairConfig, StarConfig
from vlmqc.data import board, diff, get_dataset, store, synth
from vlmqc.labels import POSITIONS, DefectType, Shape, cell_index

SMALL = {"train_size": 24, "test_size": 18}
CLEAN = NuisanceConfig(strength=0.0)


def raw_images(ds: datasets.Dataset, column: str = "image") -> list[bytes]:
    return [r[column]["bytes"] for r in ds.cast_column(column, datasets.Image(decode=False))]


def halves(pair: Image.Image, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference and candidate boards, cut from a stacked pair image."""
    geom = board.Geometry(width)
    gap = synth.pair_gap(width)
    ref = pair.crop((0, 0, width, geom.height))
    cand = pair.crop((0, geom.height + gap, width, 2 * geom.height + gap))
    return np.asarray(ref, dtype=np.int16), np.asarray(cand, dtype=np.int16)


def changed_cells(ref: np.ndarray, cand: np.ndarray, geom: board.Geometry) -> set[str]:
    """Cells where any pixel differs; also asserts nothing outside the cells differs."""
    differs = np.abs(ref - cand).max(axis=-1) > 0
    cells = set()
    inside = np.zeros_like(differs)
    for pos in POSITIONS:
        r, c = cell_index(pos)
        x0, y0, x1, y1 = (int(round(v)) for v in geom.cell_box(r, c))
        inside[y0:y1, x0:x1] = True
        if differs[y0:y1, x0:x1].any():
            cells.add(pos)
    assert not (differs & ~inside).any(), "pixels differ outside every cell"
    return cells


# ---------------------------------------------------------------- determinism and the cache


def test_same_config_gives_byte_identical_images_whatever_the_worker_count(tmp_path):
    cfg = PairConfig(name="pair_mixed", terminal_shapes=[Shape.square, Shape.round], **SMALL)
    one, _ = get_dataset(cfg, tmp_path / "a", num_workers=1, progress=False)
    two, _ = get_dataset(cfg, tmp_path / "b", num_workers=2, progress=False)
    for split in ("train", "test"):
        assert raw_images(one[split]) == raw_images(two[split])
        assert (
            one[split].remove_columns(["image", "source_image"]).to_list()
            == two[split].remove_columns(["image", "source_image"]).to_list()
        )
    other, _ = get_dataset(dataclasses.replace(cfg, seed=1), tmp_path / "c", num_workers=1, progress=False)
    assert raw_images(other["test"]) != raw_images(one["test"])


def test_images_are_stored_losslessly():
    cfg = PairConfig(name="p", **SMALL)
    spec = synth.plan(cfg, "test")[0]
    rendered = synth.render_board(cfg, spec["look"], Shape.square, np.random.default_rng(0))[0]
    stored = Image.open(io.BytesIO(store.encode(rendered)["bytes"]))
    assert np.array_equal(np.asarray(rendered), np.asarray(stored.convert("RGB")))


def test_second_request_loads_the_cache_without_rendering(cache_dir, monkeypatch):
    cfg = StarConfig(name="star", **SMALL)
    first, path = get_dataset(cfg, cache_dir, num_workers=1, progress=False)

    def boom(*a, **k):
        raise AssertionError("rendered again instead of loading the cache")

    monkeypatch.setattr(synth, "render", boom)
    again, path2 = get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    assert path2 == path
    assert raw_images(again["test"]) == raw_images(first["test"])
    assert list(again) == ["train", "test"]
    assert store.read_info(path)["config"]["train_size"] == SMALL["train_size"]


def test_cache_key_follows_the_content_not_the_location(tmp_path):
    cfg = PairConfig(name="p", **SMALL)
    assert store.cache_key(cfg) == store.cache_key(PairConfig(name="p", **SMALL))
    assert store.cache_key(cfg) != store.cache_key(dataclasses.replace(cfg, defect_rate=0.3))
    assert store.cache_key(cfg) != store.cache_key(dataclasses.replace(cfg, nuisance=NuisanceConfig(noise=2.0)))
    a = store.cache_path(tmp_path / "x", cfg.name, store.cache_key(cfg))
    b = store.cache_path(tmp_path / "y", cfg.name, store.cache_key(cfg))
    assert a.name == b.name


def test_interrupted_generation_leaves_nothing_half_written(cache_dir, monkeypatch):
    cfg = StarConfig(name="star", **SMALL)
    real = synth.render
    calls = {"n": 0}

    def dies_midway(c, spec):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(c, spec)

    monkeypatch.setattr(synth, "render", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    assert list(cache_dir.iterdir()) == []  # neither a dataset nor a temporary folder
    monkeypatch.setattr(synth, "render", real)
    dsd, path = get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    assert len(dsd["train"]) == SMALL["train_size"] and path.parent == cache_dir


def test_temporary_folder_of_a_killed_build_is_cleared(cache_dir):
    cfg = StarConfig(name="star", **SMALL)
    final = store.cache_path(cache_dir, cfg.name, store.cache_key(cfg))
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that no longer runs, like a build killed with SIGKILL
    stale = cache_dir / f".tmp-{final.name}-{pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "train-00000.arrow").write_bytes(b"partial")
    get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    assert not stale.exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == [final.name]


def test_drawing_from_the_clean_board_equals_drawing_from_scratch():
    geom = board.Geometry(448)
    for kind in DefectType:
        params = {"type": kind.value, **synth.defect_params(kind, np.random.default_rng(3))}
        for shape in Shape:
            scratch, draw = board.new_canvas(geom, board.LOOKS[1], 2)
            for r in range(3):
                for c in range(9):
                    board.draw_cell(draw, geom, 2, r, c, shape, board.LOOKS[1], params if (r, c) == (2, 8) else None)
            cached = synth._clean_board(448, 2, 1, shape).copy()
            d = ImageDraw.Draw(cached)
            d.rectangle([v * 2 for v in geom.cell_box(2, 8)], fill=board.LOOKS[1].board)
            board.draw_cell(d, geom, 2, 2, 8, shape, board.LOOKS[1], params)
            assert np.array_equal(np.asarray(scratch), np.asarray(cached)), (kind, shape)


# ---------------------------------------------------------------- labels agree with pixels


def red_stars(img: Image.Image) -> list[tuple[float, float]]:
    """Centroids of red, star-shaped blobs: a 5-point star fills about half of its convex hull,
    circles, triangles and diamonds nearly all of theirs."""
    a = np.asarray(img, dtype=np.int16)
    red = (a[..., 0] > 120) & (a[..., 0] - a[..., 1] > 80) & (a[..., 0] - a[..., 2] > 80)
    labelled, n = ndimage.label(red)
    stars = []
    for k, sl in enumerate(ndimage.find_objects(labelled), 1):
        blob = labelled[sl] == k
        if blob.sum() < 30:
            continue
        ys, xs = np.nonzero(blob)
        corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)])
        if blob.sum() / ConvexHull(corners).volume < 0.8:
            stars.append((xs.mean() + sl[1].start, ys.mean() + sl[0].start))
    return stars


@pytest.mark.parametrize("nuisance", [CLEAN, NuisanceConfig()], ids=["clean", "default"])
def test_star_is_in_the_labelled_cell(cache_dir, nuisance):
    cfg = StarConfig(name="star", nuisance=nuisance, distractors=IntRange(4, 8), **SMALL)
    dsd, _ = get_dataset(cfg, cache_dir, num_workers=2, progress=False)
    geom = board.Geometry(cfg.render.width)
    for ex in dsd["test"]:
        stars = red_stars(ex["image"])
        assert len(stars) == 1, (ex["id"], stars)
        x0, y0, x1, y1 = geom.cell_box(*cell_index(ex["target"]))
        x, y = stars[0]
        assert x0 < x < x1 and y0 < y < y1, (ex["id"], ex["target"], stars[0])


@pytest.mark.parametrize("per_candidate", [IntRange(1, 1), IntRange(2, 3)], ids=["one", "several"])
def test_clean_pair_differs_exactly_at_the_labelled_cells(cache_dir, per_candidate):
    cfg = PairConfig(
        name="p",
        terminal_shapes=[Shape.square, Shape.round],
        nuisance=CLEAN,
        defects_per_candidate=per_candidate,
        train_size=12,
        test_size=60,
    )
    dsd, _ = get_dataset(cfg, cache_dir, num_workers=2, progress=False)
    geom = board.Geometry(cfg.render.width)
    seen = Counter()
    for ex in dsd["test"]:
        ref, cand = halves(ex["image"], cfg.render.width)
        labelled = {d["position"] for d in ex["defects"]}
        assert len(labelled) == len(ex["defects"]), "positions within a candidate are distinct"
        assert changed_cells(ref, cand, geom) == labelled, ex["id"]
        assert (ex["verdict"] == "defective") == bool(labelled)
        assert per_candidate.min <= len(labelled) <= per_candidate.max or not labelled
        seen.update(d["type"] for d in ex["defects"])
    assert set(seen) == {t.value for t in DefectType}


def test_with_nuisance_no_two_renders_are_equal_but_the_defect_cells_stand_out(cache_dir):
    cfg = PairConfig(name="p", terminal_shapes=[Shape.square, Shape.round], train_size=12, test_size=120)
    dsd, _ = get_dataset(cfg, cache_dir, num_workers=2, progress=False)
    geom = board.Geometry(cfg.render.width)
    located, defective, per_type = 0, 0, Counter()
    for ex in dsd["test"]:
        ref, cand = halves(ex["image"], cfg.render.width)
        assert (ref != cand).mean() > 0.5, "nuisance must change most pixels, not only the defect"
        if ex["verdict"] != "defective":
            continue
        defective += 1
        ranked = diff.concentrate(
            Image.fromarray(ref.astype(np.uint8)), Image.fromarray(cand.astype(np.uint8)), geom, DiffImageConfig()
        ).ranked()
        hit = ranked[0] == ex["defects"][0]["position"]
        located += hit
        per_type[ex["defects"][0]["type"]] += hit
    assert defective == 60
    assert located / defective >= 0.95, per_type
    assert all(per_type[t.value] >= 0.8 * 10 for t in DefectType), per_type


def test_diff_is_derived_from_the_same_pairs_as_pair_mixed(cache_dir):
    knobs = {"terminal_shapes": [Shape.square, Shape.round], **SMALL}
    pairs, _ = get_dataset(PairConfig(name="pair_mixed", **knobs), cache_dir, num_workers=2, progress=False)
    diffs, _ = get_dataset(DiffConfig(name="diff", **knobs), cache_dir, num_workers=2, progress=False)
    for split in ("train", "test"):
        assert diffs[split]["id"] == pairs[split]["id"]
        assert raw_images(diffs[split], "source_image") == raw_images(pairs[split])
        assert diffs[split]["defects"] == pairs[split]["defects"]
    geom = board.Geometry(448)
    ex = diffs["test"][0]
    assert ex["image"].size == (geom.width, geom.height) and ex["task"] == "diff"


@pytest.mark.parametrize("mode", list(DiffMode))
def test_diff_image_is_dark_where_nothing_differs(cache_dir, mode):
    cfg = DiffConfig(
        name="diff",
        terminal_shapes=[Shape.square, Shape.round],
        diff=DiffImageConfig(mode=mode, keep_source=False),
        train_size=4,
        test_size=30,
    )
    dsd, _ = get_dataset(cfg, cache_dir, num_workers=2, progress=False)
    geom = board.Geometry(cfg.render.width)
    assert dsd["test"][0]["source_image"] is None
    for ex in dsd["test"]:
        if ex["verdict"] != "defective":
            continue
        a = np.asarray(ex["image"].convert("L"), dtype=np.float32)
        bright = {}
        for pos in POSITIONS:
            x0, y0, x1, y1 = (int(round(v)) for v in geom.cell_box(*cell_index(pos)))
            bright[pos] = a[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].mean()
        brightest = max(bright, key=bright.get)
        assert brightest == ex["defects"][0]["position"], (ex["id"], ex["defects"], mode)


def test_scores_in_the_diff_row_come_from_pixels_not_labels(cache_dir):
    cfg = DiffConfig(name="diff", **SMALL)
    dsd, _ = get_dataset(cfg, cache_dir, num_workers=1, progress=False)
    ex = dsd["test"][3]
    scores = np.array(json.loads(ex["meta"])["diff"]["scores"])
    ref, cand = halves(ex["source_image"], cfg.render.width)
    again = diff.concentrate(
        Image.fromarray(ref.astype(np.uint8)), Image.fromarray(cand.astype(np.uint8)), board.Geometry(448), cfg.diff
    )
    assert np.allclose(again.scores, scores, atol=1e-3)


# ---------------------------------------------------------------- stratification


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_split_is_balanced_over_verdict_defect_type_position_and_shape(split):
    cfg = PairConfig(name="p", terminal_shapes=[Shape.square, Shape.round])  # 500 / 300: plans are cheap
    specs = synth.plan(cfg, split)
    n = len(specs)
    verdicts = Counter(s["verdict"] for s in specs)
    assert verdicts["defective"] == round(0.5 * n) and verdicts["pass"] == n - round(0.5 * n)
    types = Counter(d["type"] for s in specs for d in s["defects"])
    positions = Counter(d["position"] for s in specs for d in s["defects"])
    shapes = Counter(s["shape"] for s in specs)
    assert set(types) == {t.value for t in DefectType} and max(types.values()) - min(types.values()) <= 1
    assert set(positions) == set(POSITIONS) and max(positions.values()) - min(positions.values()) <= 1
    assert max(shapes.values()) - min(shapes.values()) <= 1


def test_defect_rate_and_types_are_honoured():
    cfg = PairConfig(
        name="p", defect_rate=0.2, defect_types=[DefectType.missing, DefectType.shifted], train_size=100, test_size=50
    )
    specs = synth.plan(cfg, "train")
    assert sum(s["verdict"] == "defective" for s in specs) == 20
    assert {d["type"] for s in specs for d in s["defects"]} == {"missing", "shifted"}


def test_star_positions_are_balanced():
    specs = synth.plan(StarConfig(name="star"), "test")
    counts = Counter(s["target"] for s in specs)
    assert set(counts) == set(POSITIONS) and max(counts.values()) - min(counts.values()) <= 1


def test_test_split_does_not_depend_on_the_train_size():
    small, large = PairConfig(name="p", train_size=50), PairConfig(name="p", train_size=2000)
    assert synth.plan(small, "test") == synth.plan(large, "test")
    assert synth.render(small, synth.plan(small, "test")[7]) == synth.render(large, synth.plan(large, "test")[7])


def test_the_cache_opens_with_datasets_load_from_disk(cache_dir):
    """The README calls the cache `datasets` Arrow files: any program opens it with the library's
    own loader, and reads the rows vlmqc reads."""
    import datasets

    cfg = StarConfig(name="star", **SMALL)
    dsd, path = get_dataset(cfg, cache_dir, num_workers=2, progress=False)
    other = datasets.load_from_disk(str(path))
    assert isinstance(other, datasets.DatasetDict) and list(other) == ["train", "test"]
    for split in ("train", "test"):
        assert len(other[split]) == len(dsd[split]) == SMALL[f"{split}_size"]
        assert other[split]["id"] == dsd[split]["id"] and other[split]["target"] == dsd[split]["target"]
        assert other[split][0]["image"].tobytes() == dsd[split][0]["image"].tobytes()
