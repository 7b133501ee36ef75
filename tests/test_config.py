"""Every option composes and validates; a typo or a bad value fails with the key's name."""

from __future__ import annotations

import pytest
from conftest import CONF, DATA_OPTIONS, compose_app
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from vlmqc.config import ConfigError, CustomConfig, DiffConfig, PairConfig, StarConfig, data_config, to_object


def data(*overrides: str):
    return data_config(compose_app("data_app", list(overrides)))


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_option_composes_and_validates(option):
    extra = ["data.path=/some/folder"] if option == "custom" else []
    cfg = data(f"data={option}", *extra)
    assert cfg.name == option
    expected = {"star": StarConfig, "custom": CustomConfig, "diff": DiffConfig}.get(option, PairConfig)
    assert type(cfg) is expected


TRAIN_GROUPS = ("model", "prompt", "lora", "image_size", "trainer", "logger")


@pytest.mark.parametrize("group, option", [(g, p.stem) for g in TRAIN_GROUPS for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_train_option_composes_and_validates(group, option):
    cfg = compose_app("train", [f"{group}='{option}'"])
    obj = to_object(cfg[group], group)
    assert getattr(obj, "name", option) == option or group == "trainer"


def test_train_groups_have_the_options_the_issue_names():
    names = {g: {p.stem for p in (CONF / g).glob("*.yaml")} for g in TRAIN_GROUPS}
    assert {"long", "short", "ja", "json"} <= names["prompt"]
    assert {"r4", "r8", "r16", "r64", "full"} <= names["lora"]
    assert {"224", "336", "448", "672", "native"} <= names["image_size"]
    assert {"wandb", "none"} <= names["logger"] and "tiny" in names["model"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("lora.r=0", "lora.r=0"),
        ("lora.dropout=1.5", "lora.dropout=1.5"),
        ("image_size.size=-5", "image_size.size=-5"),
        ("trainer.lr=0", "trainer.lr=0"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.device=tpu", "trainer.device='tpu'"),
        ("logger.mode=sometimes", "logger.mode='sometimes'"),
        ("model.dtype=int3", "model.dtype='int3'"),
        ("prompt.answer_star=nowhere", "prompt.answer_star='nowhere'"),
        ("+prompt.defect_names.scratch=kratzer", "prompt.defect_names"),
    ],
)
def test_bad_train_values_fail_with_the_key(override, key):
    cfg = compose_app("train", [override])
    with pytest.raises(ConfigError) as e:
        for group in TRAIN_GROUPS:
            to_object(cfg[group], group)
    assert key in str(e.value)


def test_a_typo_in_a_train_key_fails_at_composition():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_app("train", ["trainer.learning_rate=0.1"])
    assert "learning_rate" in str(e.value) + str(e.value.__cause__)


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
