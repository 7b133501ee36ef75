"""Every option composes and validates; a typo or a bad value fails with the key's name."""

from __future__ import annotations

import pytest
from conftest import DATA_OPTIONS, compose_app
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from vlmqc.config import ConfigError, CustomConfig, DiffConfig, PairConfig, StarConfig, data_config


def data(*overrides: str):
    return data_config(compose_app("data_app", list(overrides)))


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_option_composes_and_validates(option):
    extra = ["data.path=/some/folder"] if option == "custom" else []
    cfg = data(f"data={option}", *extra)
    assert cfg.name == option
    expected = {"star": StarConfig, "custom": CustomConfig, "diff": DiffConfig}.get(option, PairConfig)
    assert type(cfg) is expected


def test_data_options_are_the_ones_the_study_needs():
    assert {"star", "pair_square", "pair_round", "pair_mixed", "diff", "custom"} <= set(DATA_OPTIONS)


def test_option_files_match_schema_defaults():
    """An option file restates the defaults so a reader sees every knob; they must agree."""
    assert data("data=pair_square") == PairConfig(name="pair_square")
    assert data("data=star") == StarConfig(name="star")


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.defect_rat=0.3", "defect_rat"),
        ("data.nuisance.strenght=2", "strenght"),
        ("data.defect_types=[missing,scratch]", "defect_types"),
        ("data.terminal_shapes=[hexagon]", "terminal_shapes"),
        ("data.train_size=many", "train_size"),
    ],
)
def test_typos_and_wrong_types_fail_at_composition(override, key):
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        data("data=pair_square", override)
    assert key in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize(
    "option, override, key",
    [
        ("pair_square", "data.defect_rate=1.5", "data.defect_rate=1.5"),
        ("pair_square", "data.render.width=-5", "data.render.width=-5"),
        ("pair_square", "data.test_size=0", "data.test_size=0"),
        ("pair_square", "data.nuisance.noise=-1", "data.nuisance.noise=-1"),
        ("pair_square", "data.nuisance.shift=0.5", "data.nuisance.shift=0.5"),
        ("pair_square", "data.defects_per_candidate.min=3", "data.defects_per_candidate.max=1"),
        ("pair_square", "data.defect_types=[]", "data.defect_types"),
        ("pair_square", "data.task=star", "data.task='star'"),
        ("star", "data.distractors.max=30", "data.distractors.max=30"),
        ("diff", "data.diff.scale=0", "data.diff.scale=0"),
        ("custom", "data.test_fraction=1.0", "data.test_fraction=1.0"),
    ],
)
def test_bad_values_fail_with_the_key(option, override, key):
    extra = ["data.path=/x"] if option == "custom" else []
    with pytest.raises(ConfigError) as e:
        data(f"data={option}", override, *extra)
    assert key in str(e.value)


def test_custom_needs_a_path():
    with pytest.raises(Exception, match="path"):
        data("data=custom")
