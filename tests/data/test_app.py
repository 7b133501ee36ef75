"""``python -m vlmqc.data`` as a user runs it: a real subprocess, a real Hydra run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_OPTIONS, READ_OPTIONS, compose_app
from PIL import Image

SHRINK = ["data.train_size=12", "data.test_size=9"]


def command(tmp_path: Path, *overrides: str) -> list[str]:
    flags = [o for o in overrides if o.startswith("-")]  # Hydra takes its flags before the overrides
    overrides = [o for o in overrides if not o.startswith("-")]
    return [
        sys.executable,
        "-m",
        "vlmqc.data",
        *flags,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *overrides,
    ]


def app_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "VLMQC_CACHE_DIR": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}


def run_app(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(tmp_path, *overrides), capture_output=True, text=True, env=app_env(tmp_path), cwd=tmp_path, timeout=300
    )


def test_generates_prints_counts_and_draws_a_contact_sheet(tmp_path):
    out = run_app(tmp_path, "data=pair_round", *SHRINK, "contact_sheet.examples=7")
    assert out.returncode == 0, out.stderr
    assert "defective" in out.stdout and "wrong_shape" in out.stdout and "position:" in out.stdout
    assert "pixel-difference baseline on test" in out.stdout
    sheet = tmp_path / "run" / "contact_sheet.png"
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 448 and im.height > 200
    assert len([p for p in (tmp_path / "cache" / "datasets").iterdir() if p.name.startswith("pair_round-")]) == 1
    again = run_app(tmp_path, "data=pair_round", *SHRINK)  # from the cache
    assert again.returncode == 0, again.stderr
    assert "generating" not in again.stderr


# five datasets generated in one process; tests/runs/test_sweep.py's sweep is the default run's multirun
@pytest.mark.slow
def test_every_synthetic_option_runs_in_one_multirun(tmp_path):
    options = [o for o in DATA_OPTIONS if o not in READ_OPTIONS]
    out = run_app(tmp_path, "-m", f"data={','.join(options)}", *SHRINK, "baseline=false")
    assert out.returncode == 0, out.stderr
    for option in options:
        assert (tmp_path / "multirun" / option / "contact_sheet.png").is_file(), option


# real processes (~6 s each on 2 cores): the same refusals run in-process in tests/test_config.py,
# and one of each app as a real process there too
@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=pair_square", "data.defect_rate=2"], "data.defect_rate=2.0"),
        (["data=custom", f"data.path={'/nonexistent/folder'}"], "folder not found"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_the_key(tmp_path, overrides, message):
    out = run_app(tmp_path, *overrides)
    assert out.returncode == 2
    assert message in out.stderr + out.stdout
    datasets_dir = tmp_path / "cache" / "datasets"
    assert not datasets_dir.exists() or not any(datasets_dir.iterdir())


@pytest.mark.slow  # a real process; tests/test_config.py runs this very typo as one in the default run
def test_a_typo_in_a_key_fails_before_anything_runs(tmp_path):
    out = run_app(tmp_path, "data=pair_square", "data.defect_rat=0.2")
    assert out.returncode != 0
    assert "defect_rat" in out.stderr


@pytest.mark.slow  # five runs of the app, four side by side
def test_runs_started_at_once_into_one_output_folder_all_succeed(tmp_path):
    first = run_app(tmp_path, *SHRINK, "baseline=false")  # the dataset is cached: the runs below race to the sheet
    assert first.returncode == 0, first.stderr
    (tmp_path / "run" / "contact_sheet.png").unlink()
    runs = [
        subprocess.Popen(
            command(tmp_path, *SHRINK, "baseline=false"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=app_env(tmp_path),
            cwd=tmp_path,
        )
        for _ in range(4)
    ]
    results = [(p.communicate(timeout=300)[1], p.returncode) for p in runs]
    for stderr, rc in results:
        assert rc == 0, stderr[-3000:]
    with Image.open(tmp_path / "run" / "contact_sheet.png") as im:
        im.load()
        assert im.format == "PNG"
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []


def test_the_pixel_ceiling_fits_its_threshold_and_skips_star_data():
    import numpy as np

    from vlmqc.config import StarConfig
    from vlmqc.data.report import _best_threshold_accuracy, pixel_ceiling

    # worked by hand: "> 0.35" separates them; with one pass scoring above the defect, "all pass" is best
    assert _best_threshold_accuracy(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, True, False, True])) == 1.0
    assert _best_threshold_accuracy(np.array([0.5, 0.2]), np.array([False, True])) == 0.5
    assert (
        _best_threshold_accuracy(np.array([0.3, 0.3]), np.array([True, True])) == 1.0
    )  # "all defective": the lowest cut
    assert pixel_ceiling([{"task": "star"}], StarConfig(name="star")) is None


def test_the_pixel_ceiling_is_kept_beside_the_dataset_for_the_next_trial(tmp_path):
    """A sweep's trials over the same data compute the ceiling once: the second call reads the
    file the first wrote (proved by a value only the file holds); other rows are another file;
    an unreadable file is computed again."""
    from vlmqc.config import data_config
    from vlmqc.data import get_dataset
    from vlmqc.data.report import pixel_ceiling

    cfg = data_config(
        compose_app("data_app", ["data=pair_round", "data.train_size=2", "data.test_size=6", "paths.output_dir=."])
    )
    dsd, data_path = get_dataset(cfg, tmp_path / "cache", num_workers=1, progress=False)
    rows = list(dsd["test"])
    first = pixel_ceiling(rows, cfg, data_path)
    assert first == pixel_ceiling(rows, cfg)  # the same figures as computing them without a cache
    [kept] = list(data_path.parent.glob(f"{data_path.name}-ceiling-*.json"))
    assert json.loads(kept.read_text()) == first

    kept.write_text(json.dumps({**first, "examples": -1}))  # only the file says -1
    assert pixel_ceiling(rows, cfg, data_path)["examples"] == -1
    assert pixel_ceiling(rows[:3], cfg, data_path)["examples"] == 3  # other rows: computed, a second file
    assert len(list(data_path.parent.glob(f"{data_path.name}-ceiling-*.json"))) == 2

    kept.write_text("{half a fi")
    assert pixel_ceiling(rows, cfg, data_path) == first  # unreadable: computed again, and rewritten
    assert json.loads(kept.read_text()) == first
