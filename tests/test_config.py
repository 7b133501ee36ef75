"""Every option composes and validates; a typo or a bad value fails with the key's name."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import CONF, DATA_OPTIONS, READ_OPTIONS, compose_app, run_app
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from vlmqc.config import (
    ConfigError,
    CustomConfig,
    DiffConfig,
    PairConfig,
    StarConfig,
    data_config,
    run_name_of,
    to_object,
)
from vlmqc.preflight import check_command_line, validate


def data(*overrides: str):
    return data_config(compose_app("data_app", list(overrides)))


@pytest.mark.parametrize("option", DATA_OPTIONS)
def test_every_data_option_composes_and_validates(option):
    from vlmqc.config import ConversationsConfig, MmadConfig, MvtecConfig, VisaConfig

    extra = ["data.path=/some/folder"] if option in READ_OPTIONS else []
    cfg = data(f"data={option}", *extra)
    assert cfg.name == option
    expected = {
        "star": StarConfig,
        "custom": CustomConfig,
        "diff": DiffConfig,
        "mvtec": MvtecConfig,
        "visa": VisaConfig,
        "mmad": MmadConfig,
        "conversations": ConversationsConfig,
    }.get(option, PairConfig)
    assert type(cfg) is expected


TRAIN_GROUPS = ("model", "prompt", "lora", "image_size", "trainer", "logger")


@pytest.mark.parametrize(
    "group, option", [(g, p.stem) for g in TRAIN_GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
)
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
        ("mvtec", "data.grid=[4,3]", "data.grid=[4, 3]"),
        ("mvtec", "data.grid=[3,10]", "data.grid=[3, 10]"),
        ("mvtec", "data.grid=[3]", "data.grid=[3]"),
        ("visa", "data.defect_type='a b'", "data.defect_type='a b'"),
        ("mmad", "data.shots=9", "data.shots=9"),
        ("mmad", "data.test_fraction=0", "data.test_fraction=0"),
        ("conversations", "data.split_seed=-1", "data.split_seed=-1"),
        ("mmad", "data.layout=separate", None),  # several images: allowed
        ("star", "data.layout=separate", "data.layout='separate'"),
    ],
)
def test_bad_values_fail_with_the_key(option, override, key):
    extra = ["data.path=/x"] if option in READ_OPTIONS else []
    if key is None:
        data(f"data={option}", override, *extra)
        return
    with pytest.raises(ConfigError) as e:
        data(f"data={option}", override, *extra)
    assert key in str(e.value)


def test_custom_needs_a_path():
    with pytest.raises(Exception, match="path"):
        data("data=custom")


# ---------------------------------------------------------------- the door: validate(cfg), and the apps' exit status


def validated(tmp_path, *overrides: str, app: str = "train"):
    """What ``validate`` makes of an app config; the run folder is what Hydra would name at run time."""
    cfg = compose_app(app, list(overrides))
    cfg.paths.output_dir = str(tmp_path)
    return validate(cfg)


def test_validate_instantiates_every_group_of_the_train_app(tmp_path):
    objs = validated(tmp_path, "data=pair_round", "lora=r4")
    assert set(objs) == {"model", "data", "prompt", "lora", "image_size", "trainer", "logger", "paths"}
    assert isinstance(objs["data"], PairConfig) and objs["lora"].r == 4 and objs["paths"].output_dir == str(tmp_path)


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.lr_schedule=bogus", "trainer.lr_schedule='bogus'"),
        ("trainer.max_grad_norm=-1", "trainer.max_grad_norm=-1.0"),
        ("trainer.weight_decay=-0.1", "trainer.weight_decay=-0.1"),
        ("trainer.save_total_limit=0", "trainer.save_total_limit=0"),
        ("trainer.lr=inf", "trainer.lr=inf"),
        ("trainer.lr=nan", "trainer.lr=nan"),
        ("trainer.epochs=inf", "trainer.epochs=inf"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5"),
        ("trainer.seed=-1", "trainer.seed=-1"),
        ("trainer.rdzv_port=70000", "trainer.rdzv_port=70000"),
        ("trainer.dataloader_workers=-1", "trainer.dataloader_workers=-1"),
        ("trainer.eval_workers=-1", "trainer.eval_workers=-1"),
        ("num_workers=-1", "num_workers=-1"),
        ("lora.dropout=nan", "lora.dropout=nan"),
        ("model.tiny.patch_size=0", "model.tiny.patch_size=0"),
        ("model.tiny.native_size=100", "model.tiny.native_size=100"),
        ("model.tiny.init_std=nan", "model.tiny.init_std=nan"),
        ("data.seed=-3", "data.seed=-3"),
        ("data.nuisance.noise=inf", "data.nuisance.noise=inf"),
        ("data.nuisance.brightness=1.2", "data.nuisance.brightness=1.2"),
        ("data.render.width=100000", "data.render.width=100000"),
        ("image_size.size=100000", "image_size.size=100000"),
    ],
)
def test_every_numeric_knob_has_a_range(tmp_path, override, key):
    with pytest.raises(ConfigError) as e:
        validated(tmp_path, override)
    assert key in str(e.value)


def test_the_sweep_metric_must_be_a_registered_metric(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^sweep_metric='eval/exact_mach': must be one of the metrics: .*eval/exact_match"
    ):
        validated(tmp_path, "sweep_metric=eval/exact_mach")
    validated(tmp_path, "sweep_metric=eval/escape_rate")


def test_the_data_app_refuses_negative_workers(tmp_path):
    with pytest.raises(ConfigError, match=r"^num_workers=-1"):
        validated(tmp_path, "num_workers=-1", app="data_app")


def test_every_transformers_schedule_is_accepted(tmp_path):
    from transformers import SchedulerType

    for schedule in ("linear", "cosine", "constant_with_warmup", "polynomial"):
        assert schedule in {s.value for s in SchedulerType}
        assert validated(tmp_path, f"trainer.lr_schedule={schedule}")["trainer"].lr_schedule == schedule


def test_a_qwen2_vl_image_size_below_its_processors_floor_is_refused_across_groups(tmp_path):
    with pytest.raises(ConfigError, match=r"image_size.size=32: .*min_pixels \(3136\); use a size >= 56"):
        validated(tmp_path, "model=qwen2_vl_2b_random", "image_size.size=32")
    assert validated(tmp_path, "model=qwen2_vl_2b_random", "image_size='224'")["image_size"].size == 224


@pytest.mark.parametrize(
    "path, rule",
    [
        ("./no/such/folder", "folder not found"),
        ("~/no-such-folder-here", "folder not found"),
        ("/no/such/folder", "folder not found"),
        ("not a hub id", "is neither an existing folder nor a hub id"),
        ("org/name/extra", "is neither an existing folder nor a hub id"),
    ],
)
def test_a_model_path_must_be_a_folder_or_a_hub_id(tmp_path, path, rule):
    with pytest.raises(ConfigError) as e:
        validated(tmp_path, f"model.path='{path}'")
    assert str(e.value).startswith(f"model.path={path!r}: {rule}")


def test_a_hub_id_or_a_model_folder_is_a_model_path(tmp_path):
    assert validated(tmp_path, "model.path=llava-hf/llava-1.5-7b-hf")["model"].path == "llava-hf/llava-1.5-7b-hf"
    (tmp_path / "config.json").write_text("{}")
    assert validated(tmp_path, f"model.path={tmp_path}")["model"].path == str(tmp_path)


def test_a_folder_that_holds_no_model_is_refused_before_a_run_folder_exists(cli_exit, tmp_path):
    (tmp_path / "photos").mkdir()
    code, err = cli_exit("vlmqc.train", f"model.path={tmp_path / 'photos'}", "logger=none")
    assert code == 2 and err.strip().endswith(
        "holds no config.json: not a model folder (a transformers checkpoint: config.json, weights, processor)"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]  # no outputs/: no failed run folder


def test_custom_data_needs_an_existing_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.path: required"):
        validated(tmp_path, "data=custom", app="data_app")
    with pytest.raises(ConfigError, match=r"^data.path='/no/such/folder': folder not found"):
        validated(tmp_path, "data=custom", "data.path=/no/such/folder")


@pytest.mark.parametrize("option", ["mvtec", "visa", "mmad", "conversations"])
def test_published_layouts_need_their_folder_or_file(tmp_path, option):
    with pytest.raises(ConfigError, match=r"^data.path: required"):
        validated(tmp_path, f"data={option}", app="data_app")
    kind = "file" if option == "conversations" else "folder"
    with pytest.raises(ConfigError, match=rf"^data.path='/no/such/place': {kind} not found"):
        validated(tmp_path, f"data={option}", "data.path=/no/such/place")
    (tmp_path / "data.jsonl").write_text("")
    found = tmp_path / "data.jsonl" if option == "conversations" else tmp_path
    assert validated(tmp_path, f"data={option}", f"data.path={found}", app="data_app")["data"].path == str(found)
    wrong = tmp_path if option == "conversations" else tmp_path / "data.jsonl"
    with pytest.raises(ConfigError, match=f"{kind} not found"):
        validated(tmp_path, f"data={option}", f"data.path={wrong}")


def test_a_sweep_is_checked_trial_by_trial_before_it_starts():
    assert check_command_line("train", ["-m", "prompt=short,json", "lora=r4,r8"]) == 4
    assert check_command_line("train", ["-m", "experiment=lora_rank"]) == 5  # its hydra.sweeper.params
    assert (
        check_command_line("train", ["-m", "hydra/sweeper=lr_rank"]) == 1
    )  # Optuna: the config without the swept values
    with pytest.raises(ConfigError, match=r"^lora.r=0: must be >= 1"):
        check_command_line("train", ["-m", "lora.r=8,0"])
    with pytest.raises(ConfigError, match=r"^lora=nope: no such option \(available: full, r16, r4, r64, r8\)"):
        check_command_line("train", ["-m", "experiment=lora_rank", "hydra.sweeper.params.lora='r4,nope'"])


def test_long_run_names_fit_a_file_name_and_stay_distinct(tmp_path):
    assert (
        run_name_of("data=pair_round,lora=r16,trainer.lr=0.0002") == "data=pair_round,lora=r16,trainer.lr=0.0002"
    )  # unchanged
    overrides = ",".join(
        f"data.nuisance.{k}=0.0{i}" for i, k in enumerate(["brightness", "contrast", "gradient", "shift", "blur"] * 8)
    )
    other = overrides.replace("blur=0.04", "blur=0.05", 1)
    name = run_name_of(overrides)
    assert len(name.encode()) <= 255 and name.startswith(overrides[:100]) and re.fullmatch(r".*-[0-9a-f]{10}", name)
    assert run_name_of(overrides) == name and run_name_of(other) != name
    (tmp_path / name).mkdir()  # too long, this was OSError: File name too long
    japanese = run_name_of("prompt.answer_pass=" + "合格" * 80)
    assert len(japanese.encode()) <= 255 and japanese.startswith("prompt.answer_pass=合格")
    (tmp_path / japanese).mkdir()


CONFIG_ERRORS = [
    ("vlmqc.train", ["trainer.lrr=1"], "'trainer.lrr'"),
    ("vlmqc.train", ["trainer.batch_size=abc"], "trainer.batch_size=abc"),
    ("vlmqc.train", ["data=nope"], "data=nope: no such option"),
    ("vlmqc.train", ["trainer.lr_schedule=bogus"], "trainer.lr_schedule='bogus'"),
    ("vlmqc.train", ["data=custom"], "data.path: required"),
    ("vlmqc.train", ["model.path=./no/such/folder"], "model.path='./no/such/folder': folder not found"),
    ("vlmqc.train", ["-m", "lora.r=8,0"], "lora.r=0: must be >= 1"),
    ("vlmqc.train", ["-m", "data=star,nope"], "data=nope: no such option"),
    ("vlmqc.data", ["data.defect_rat=1"], "'data.defect_rat'"),
    ("vlmqc.data", ["data=nope"], "data=nope: no such option"),
    ("vlmqc.data", ["data=custom"], "data.path: required"),
    ("vlmqc.data", ["num_workers=-1"], "num_workers=-1"),
    ("vlmqc.data", ["-m", "data=star,pair_round", "data.seed=-1"], "data.seed=-1"),
    # keys added with +: checked against the schema like any other
    ("vlmqc.train", ["--cfg", "job", "+trainer.lrr=1"], "trainer.lrr: not a key of trainer's schema"),
    ("vlmqc.train", ["+sweep_metrc=eval/loss"], "sweep_metrc: not a key of the app's schema"),
    ("vlmqc.data", ["+data.sed=1"], "data.sed: not a key of data's schema"),
    # schedulers the trial could not run
    ("vlmqc.train", ["trainer.lr_schedule=reduce_lr_on_plateau"], "steps on a metric of the Trainer's own"),
    ("vlmqc.train", ["trainer.lr_schedule=greedy"], "steps on a metric of the Trainer's own"),
    ("vlmqc.train", ["trainer.lr_schedule=warmup_stable_decay"], "cannot run with this trial's settings"),
    ("vlmqc.train", ["trainer.lr_schedule=cosine_with_min_lr"], "cannot run with this trial's settings"),
    # templates formatted once with sample values
    ("vlmqc.train", ["prompt.answer_star='{position}{0}'"], "prompt.answer_star='{position}{0}': does not format"),
    ("vlmqc.train", ["prompt.defect_item='{name} {position} {kind}'"], "KeyError: 'kind'"),
    # upper bounds, each saying why
    ("vlmqc.train", ["data.train_size=100000000"], "kept in the dataset cache on disk"),
    ("vlmqc.data", ["data.test_size=100000000"], "must be <= 1,000,000"),
    ("vlmqc.train", ["trainer.batch_size=100000000"], "no GPU holds that many"),
    ("vlmqc.train", ["trainer.eval_batch_size=5000"], "trainer.eval_batch_size=5000: must be <= 4096"),
    ("vlmqc.train", ["trainer.max_new_tokens=100000000"], "answers are one sentence"),
    ("vlmqc.train", ["lora.r=100000"], "no longer low-rank"),
    # export (vlmqc/data/export.py): a layout it knows, of pair data
    ("vlmqc.data", ["data=pair_mixed", "export=coco"], "must be one of mvtec, mmad, conversations"),
    ("vlmqc.data", ["data=star", "export=mvtec"], "writes pair data (pair_square, pair_round, pair_mixed"),
]


def app_args(app: str, args: list[str]) -> list[str]:
    return [*args, "logger=none" if app == "vlmqc.train" else "baseline=false"]


@pytest.mark.parametrize("app, args, key", CONFIG_ERRORS)
def test_every_config_error_is_refused_naming_the_key_before_anything_runs(cli_exit, tmp_path, app, args, key):
    code, err = cli_exit(app, *app_args(app, args))
    assert code == 2, err[-2000:]
    assert key in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # no folder touched: no outputs/, no dataset cache


# the same, as a user meets it: a real process each (a Python start and the app's imports, ~6 s
# for vlmqc.train); one case of each app in the default run, every case in the full suite
@pytest.mark.parametrize(
    "app, args, key",
    [pytest.param(*case, marks=[] if i in (0, 8, 13) else [pytest.mark.slow]) for i, case in enumerate(CONFIG_ERRORS)],
)
def test_every_config_error_exits_2_naming_the_key_before_anything_runs(tmp_path, app, args, key):
    out = run_app(tmp_path, app, *app_args(app, args), timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert key in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()  # no folder touched


BAD_VALUE_ON_A_COMPLETED_TRIAL = ["trainer.resume=false", "prompt.answer_star=nowhere", "logger=none"]


def completed_run(tmp_path) -> tuple[Path, str]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "final": {"eval/exact_match": 0.5}}))
    return run_dir, (run_dir / "summary.json").read_text()


def test_a_bad_value_is_refused_before_a_completed_trials_record_is_touched(cli_exit, tmp_path):
    run_dir, before = completed_run(tmp_path)
    code, err = cli_exit("vlmqc.train", f"hydra.run.dir={run_dir}", *BAD_VALUE_ON_A_COMPLETED_TRIAL)
    assert code == 2 and "prompt.answer_star='nowhere'" in err
    assert (run_dir / "summary.json").read_text() == before


@pytest.mark.slow  # the same in a real process
def test_a_bad_value_does_not_turn_a_completed_trial_into_a_failed_one(tmp_path):
    run_dir, before = completed_run(tmp_path)
    out = run_app(tmp_path, "vlmqc.train", f"hydra.run.dir={run_dir}", *BAD_VALUE_ON_A_COMPLETED_TRIAL, timeout=300)
    assert out.returncode == 2 and "prompt.answer_star='nowhere'" in out.stderr
    assert (run_dir / "summary.json").read_text() == before


def test_a_rank_validates_its_config_before_touching_anything(tmp_path):
    """A DDP rank composes its config again in its own process (vlmqc/training/launch.py's
    _worker): it validates it there, as the command did, before the folder is touched."""
    from vlmqc.runs.resume import Plan
    from vlmqc.training.launch import _worker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    overrides = ["trainer.resume=false", "prompt.answer_star=nowhere", "data.train_size=4", "data.test_size=4"]
    with pytest.raises(ConfigError, match="prompt.answer_star='nowhere'"):
        _worker(overrides, str(run_dir), "run", {"overrides": overrides, "sweep": None}, Plan(config_hash="x"))
    assert json.loads((run_dir / "summary.json").read_text()) == {"status": "completed"}
    assert not (tmp_path / "env-cache").exists()  # launch generated no dataset


def test_a_prompt_without_two_image_wording_is_refused_only_for_the_separate_layout(tmp_path):
    # a prompt recorded before layouts existed has no pair_separate: it still loads (rescore, predict)
    validated(tmp_path, "data=pair_round", "model=qwen2_vl_2b_random", "prompt.pair_separate=null")
    with pytest.raises(ConfigError, match=r"^prompt.pair_separate=None: required by data.layout=separate"):
        validated(
            tmp_path, "data=pair_round", "data.layout=separate", "model=qwen2_vl_2b_random", "prompt.pair_separate=null"
        )


@pytest.mark.parametrize("multirun", [False, True])
def test_an_output_folder_that_cannot_be_made_is_refused_in_one_line(cli_exit, tmp_path, multirun):
    (tmp_path / "file").write_text("not a folder")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    code, err = cli_exit("vlmqc.train", *(["-m"] if multirun else []), f"{key}={tmp_path / 'file' / 'run'}")
    assert code == 2 and err.count("\n") == 1 and "is not a folder, so the run folder cannot be made" in err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_output_folder_is_refused_in_one_line(cli_exit, tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    code, err = cli_exit("vlmqc.train", f"hydra.run.dir={tmp_path / 'ro' / 'run'}")
    assert code == 2 and "is not writable" in err and err.count("\n") == 1
