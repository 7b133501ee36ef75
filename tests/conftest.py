"""Shared test helpers: compose the real Hydra config, shrunk, with every cache in tmp_path; run
an app as a user does, in a subprocess, or its command-line check in-process; one completed
trial for the whole session."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "vlmqc" / "conf"
DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
# the options that read a user's files (data.path) rather than draw their data
READ_OPTIONS = ("conversations", "custom", "mmad", "mvtec", "visa")


def compose_app(config_name: str, overrides: list[str] = ()):
    """The config an app would get from these command-line overrides."""
    from vlmqc.config import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name, overrides=list(overrides))


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's real dataset cache."""
    monkeypatch.setenv("VLMQC_CACHE_DIR", str(tmp_path / "env-cache"))


def run_app(
    tmp_path: Path,
    module: str,
    *args: str,
    env: dict | None = None,
    launcher: list[str] | None = None,
    timeout: int = 600,
    wait: bool = True,
) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python -m <module> <args>`` in a subprocess started in tmp_path, so Hydra's ``outputs/``
    and every cache (``VLMQC_CACHE_DIR``) land there.

    W&B is quiet and runs in the mode the config gives: a ``WANDB_MODE`` of the test's own
    environment would override it. ``env`` adds to (or replaces in) that environment; ``launcher``
    replaces ``python`` (torchrun, say); ``wait=False`` returns the running process, its stdout and
    stderr together, for trials run side by side.
    """
    full_env = {**os.environ, "VLMQC_CACHE_DIR": str(tmp_path / "cache"), "WANDB_SILENT": "true"}
    full_env.pop("WANDB_MODE", None)
    full_env.update(env or {})
    cmd = [*(launcher or [sys.executable]), "-m", module, *args]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=full_env, timeout=timeout)


# ``python -m <module>`` -> the module whose cli() that command runs
COMMANDS = {"vlmqc.train": "vlmqc.cli.train", "vlmqc.data": "vlmqc.cli.data", "vlmqc.inspect": "vlmqc.cli.preview"}


@pytest.fixture
def cli_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``python -m <module> <args>`` in-process, up to where it would start work: the app's own
    ``cli()``, which composes and validates every config of the command line as the command does
    (``vlmqc.preflight.run_checked``), with Hydra's ``main`` replaced by one that fails the test, so a
    config error the check lets through cannot pass. Runs in tmp_path; returns (exit status, stderr).

    The in-process twin of ``run_app``'s exit-2 checks: the same check without a Python start
    and torch import (~6 s) per case; a few of those still run as real subprocesses."""

    def call(module: str, *args: str) -> tuple[int | str | None, str]:
        app = importlib.import_module(COMMANDS.get(module, module))

        def started():
            raise AssertionError(f"python -m {module} {' '.join(args)}: no config error was found and the app started")

        monkeypatch.setattr(app, "main", started)
        monkeypatch.setattr(sys, "argv", [module, *args])
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as exit_:
            app.cli()
        return exit_.value.code, capsys.readouterr().err

    return call


# A trial shrunk to seconds. num_workers=1: its data is generated in its own process (the same
# images as in a worker pool, tests/data/test_synth.py), not in a pool whose start costs seconds
TRIAL = [
    "data.train_size=32",
    "data.test_size=12",
    "trainer.max_steps=8",
    "trainer.logging_steps=2",
    "trainer.save_steps=4",
    "trainer.samples=4",
    "trainer.eval_batch_size=12",
    "trainer.eval_every=4",
    "num_workers=1",
]
WANDB_SECRET = "wandb-secret-0123456789abcdef"


def trial(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m vlmqc.train``, shrunk, its run folder tmp_path/run, with a W&B key to look for."""
    return run_app(
        tmp_path,
        "vlmqc.train",
        f"hydra.run.dir={tmp_path / 'run'}",
        *TRIAL,
        *overrides,
        env={"WANDB_API_KEY": WANDB_SECRET, **(env or {})},
    )


@pytest.fixture(scope="session")
def completed_trial(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One completed trial as a user runs it (star data, the tiny model, offline W&B), for the
    whole session: tests/training/test_trial.py reads back what it recorded; the inspector, the page and
    the report take it as their trial. Its folder, and the command's output."""
    tmp = tmp_path_factory.mktemp("trial")
    out = trial(tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run", out


def prompt_option(name: str):
    """A prompt option from conf/prompt/, validated."""
    from vlmqc.config import to_object

    return to_object(compose_app("train", [f"prompt={name}"]).prompt, "prompt")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """One folder of tiny models built offline for a test module, shared by its tests."""
    return tmp_path_factory.mktemp("models")


# noqa: A002 - the dataset's column name
def pair_row(verdict: str = "defective", size: tuple[int, int] = (448, 386), id: str | None = None) -> dict:
    """A pair example as the dataset gives it: a plain image of the stacked pair's size and its
    labels (one missing terminal at C5 when defective)."""
    from PIL import Image

    defects = [{"position": "C5", "type": "missing"}] if verdict == "defective" else []
    return {
        "id": id or f"t-{verdict}",
        "task": "pair",
        "image": Image.new("RGB", size, (120, 130, 140)),
        "verdict": verdict,
        "defects": defects,
        "target": "",
        "answer": "",
    }


def requirement_marks(family) -> list:
    """A skip mark, with its reason, for a family whose processor needs a package missing here
    (``Family.requires``: Phi-4's image processor needs torchvision); benchmarks/gpu_families.sh
    runs those tests on the GPU machine, where it is installed."""
    missing = [p for p in family.requires if importlib.util.find_spec(p) is None]
    if not missing:
        return []
    return [
        pytest.mark.skip(
            reason=f"the {family.name} family's processor needs {', '.join(missing)}, not installed here "
            f"(benchmarks/gpu_families.sh runs it on the GPU machine)"
        )
    ]


CHROMIUM = Path("/usr/bin/chromium")
# .ci/run installs Chromium and sets VLMQC_REQUIRE_CHROMIUM, so that in CI a browser test runs or fails, never skips
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("VLMQC_REQUIRE_CHROMIUM"),
    reason="needs Chromium at /usr/bin/chromium (Debian package chromium)",
)


@contextlib.contextmanager
def chromium_page(width: int, height: int):
    """A headless Chromium page (playwright), and the lists its console errors and warnings, page
    errors and dialogs are collected into: ``(page, problems, dialogs)``."""
    from playwright.sync_api import sync_playwright

    problems, dialogs = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            yield page, problems, dialogs
        finally:
            browser.close()
