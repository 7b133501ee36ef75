"""Faster rendering, the same pixels: every generated image and meta equals what the drawing code
before the issue-13 speed-ups produced (golden hashes recorded from main at ecb427b), and each
hand-written shortcut equals the Pillow call it replaces."""

from __future__ import annotations

import hashlib

import numpy as np
import PIL
import pytest
from PIL import Image, ImageFilter

from vlmqc.config import DiffConfig, DiffImageConfig, DiffMode, NuisanceConfig, PairConfig, StarConfig
from vlmqc.data import board, diff, nuisance, synth
from vlmqc.labels import Shape

SMALL = {"train_size": 6, "test_size": 6}
SHAPES = [Shape.square, Shape.round]
CASES = {
    "star": StarConfig(name="star", **SMALL),
    "pair_mixed": PairConfig(name="pair_mixed", terminal_shapes=SHAPES, **SMALL),
    "diff_overlay": DiffConfig(name="diff", terminal_shapes=SHAPES, **SMALL),
    "diff_heatmap": DiffConfig(
        name="diff", terminal_shapes=SHAPES, diff=DiffImageConfig(mode=DiffMode.heatmap), **SMALL
    ),
    "diff_cells": DiffConfig(
        name="diff", terminal_shapes=SHAPES, diff=DiffImageConfig(mode=DiffMode.cells, keep_source=False), **SMALL
    ),
}
# sha256 of every row's stored image bytes, source-image bytes and meta, from main at ecb427b
# (before the speed-ups), Pillow 13.0.0 and numpy 2.4.6: the drawing and the encoder depend on them
GOLDEN_VERSIONS = ("13.0.0", "2.4.6")
GOLDEN = {
    "star": "e596e014c8075a1f7f0e9a7b105bfdd9",
    "pair_mixed": "88ca074b1d5e488da098f8307366c26b",
    "diff_overlay": "7acd92755579d541e3859464f5076fa1",
    "diff_heatmap": "66d9b300ac699db6b66b4d99bb83f618",
    "diff_cells": "b2f472f1add1a5b1005b3adc377e776d",
}


def _digest(cfg) -> str:
    h = hashlib.sha256()
    for split in synth.SPLITS:
        for job in synth.chunks(cfg, split, 4):
            for row in synth.rows(job):
                for col in ("image", "source_image"):
                    h.update(row[col]["bytes"] if row[col] else b"-")
                h.update(row["meta"].encode())
    return h.hexdigest()[:32]


@pytest.mark.skipif(
    (PIL.__version__, np.__version__) != GOLDEN_VERSIONS,
    reason=f"golden hashes recorded with Pillow/numpy {GOLDEN_VERSIONS}",
)
@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_rows_are_byte_identical_to_the_code_before_the_speedups(case):
    assert _digest(CASES[case]) == GOLDEN[case]


def _noisy_board(look: int, rng) -> Image.Image:
    clean = synth._clean_board(448, 2, look, Shape.round).reduce(2)
    return nuisance.photometric(clean, nuisance.Draw(0, 0, 0, 1, 1, 0, 0, 0.0, 4.0), rng)


def test_warp_samples_equal_pillows_bilinear_warp_everywhere():
    """Shifts of a few pixels (the alignment's) and of hundreds (pixels mapped off the image: 0)."""
    rng = np.random.default_rng(0)
    for k in range(12):
        gray = _noisy_board(k % 4, rng).convert("L")
        pr = np.array([224.0, 190.0]) + rng.normal(0, 3, 2)
        pc = pr + rng.normal(0, 300 if k % 3 == 0 else 4, 2)
        phi = float(rng.normal(0, 0.03))
        ys, xs = np.mgrid[0 : gray.height, 0 : gray.width]
        got = diff._warp_samples(np.asarray(gray), diff._affine(pc, pr, phi), ys, xs)
        np.testing.assert_array_equal(got, np.asarray(diff._warp(gray, pc, pr, phi), dtype=np.float32))


@pytest.mark.parametrize("width", [448, 224, 64])
def test_pasted_coordinates_equal_drawn_text(width):
    geom = board.Geometry(width)
    rng = np.random.default_rng(width)
    img = Image.fromarray(rng.integers(0, 256, size=(geom.height, geom.width, 3), dtype=np.uint8))
    drawn = img.copy()
    board._draw_coordinate_text(drawn, geom, (240, 240, 240))
    board.draw_coordinates(img, geom, colour=(240, 240, 240))
    assert np.array_equal(np.asarray(img), np.asarray(drawn))


def test_lighting_with_blur_equals_blurring_the_rgb_image():
    """The band-by-band blur gives the pixels of one RGB blur, at the nuisance's blur range."""
    rng = np.random.default_rng(3)
    img = _noisy_board(1, rng)
    for sigma in (0.1, 0.45, 0.8):
        d = nuisance.Draw(0, 0, 0, 1.0, 1.0, 0, 0, sigma, 0.0)
        expected = nuisance.photometric(
            img.filter(ImageFilter.GaussianBlur(sigma)), nuisance.Draw(0, 0, 0, 1.0, 1.0, 0, 0, 0.0, 0.0), rng
        )
        assert np.array_equal(np.asarray(nuisance.photometric(img, d, rng)), np.asarray(expected))


def test_clean_renders_are_unchanged_by_the_shared_reduced_board():
    """Boards without defects start from a shared reduced board; rendering must never draw on it."""
    cfg = PairConfig(name="pair_square", nuisance=NuisanceConfig(strength=0.0), **SMALL)
    shared = synth._clean_board_reduced(cfg.render.width, cfg.render.supersample, 0, Shape.square)
    before = np.asarray(shared).copy()
    for _ in range(2):
        synth.render_board(cfg, 0, Shape.square, np.random.default_rng(0))
    assert np.array_equal(np.asarray(shared), before)
