"""Shared test helpers: compose the real Hydra config, shrunk, with every cache in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def compose_app(config_name: str, overrides: list[str] = ()):
    """The config an app would get from these command-line overrides."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name, overrides=list(overrides))


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's real dataset cache."""
    monkeypatch.setenv("VLMQC_CACHE_DIR", str(tmp_path / "env-cache"))


def prompt_option(name: str):
    """A prompt option from conf/prompt/, validated."""
    from vlmqc.config import to_object

    return to_object(compose_app("train", [f"prompt={name}"]).prompt, "prompt")
