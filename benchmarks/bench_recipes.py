"""The training recipes that bench_train.py runs side by side, and the ``--recipes`` option that
picks them, shared with bench_scaling.py. Imports nothing heavy: bench_scaling only launches
bench_train in subprocesses and must not load torch or transformers to parse its arguments."""

from __future__ import annotations

import argparse

RECIPES = {"a": "notebook", "b": "trl", "c": "hf-tuned", "d": "vlmqc"}


def parse_recipes(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """``--recipes a,c,d`` -> ["a", "c", "d"], or argparse's usage error (exit 2) naming what is not a recipe."""
    recipes = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in recipes if r not in RECIPES]
    if bad or not recipes:
        ap.error(f"--recipes: {','.join(bad) or 'none'} not among {','.join(RECIPES)}")
    return recipes
