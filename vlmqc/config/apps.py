"""The apps' schemas (train, data, preview) and the groups without a module of their own (logger,
paths); their registration with Hydra; and the names a config file resolves (``${vlmqc...:}``)."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from vlmqc.config.checks import ConfigError, _check
from vlmqc.config.data import DATA_SCHEMAS, CustomConfig, SynthConfig
from vlmqc.config.model import ImageSizeConfig, LoraConfig, ModelConfig
from vlmqc.config.prompt import PromptConfig
from vlmqc.config.trainer import TrainerConfig
from vlmqc.metrics import DEFAULT_METRIC

# the option files, shipped inside the package (a wheel has them); a user's own conf/ folder is
# searched after them (conf/train.yaml's hydra.searchpath)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class LoggerConfig:
    name: str = MISSING  # wandb | none
    project: str = "vlmqc"
    entity: str | None = None
    group: str | None = None  # a sweep sets its id here
    tags: list[str] = field(default_factory=list)
    mode: str = "offline"  # offline (default: no account needed) | online | disabled
    # W&B's own history and summary printed when a run finishes (the run folder's summary.json has it either way)
    print_summary: bool = False

    def __post_init__(self):
        _check(self.name in ("wandb", "none"), "name", self.name, "must be wandb or none")
        _check(self.mode in ("offline", "online", "disabled"), "mode", self.mode, "must be offline, online or disabled")


@dataclass
class PathsConfig:
    cache_dir: str = MISSING  # generated datasets, keyed by a hash of the data config
    models_dir: str = MISSING  # models built offline (model.random=<family>: vlmqc/models)
    features_dir: str = (
        MISSING  # frozen vision features (trainer.vision_cache=disk), keyed by a fingerprint of the image path
    )
    output_dir: str = MISSING


@dataclass
class ContactSheetConfig:
    split: str = "test"
    examples: int = 12

    def __post_init__(self):
        _check(self.split in ("train", "test"), "split", self.split, "must be train or test")
        _check(1 <= self.examples <= 1000, "examples", self.examples, "must be between 1 and 1000")


@dataclass
class DataAppConfig:
    """``python -m vlmqc.data``: build or load a dataset, print its counts, draw a contact sheet."""

    data: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    num_workers: int = 2  # processes that render examples; results do not depend on it
    contact_sheet: ContactSheetConfig = field(default_factory=ContactSheetConfig)
    baseline: bool = True  # pair and diff tasks: score the test split with the pixel difference alone
    prompt: PromptConfig = MISSING  # the words of the conversations export=conversations writes
    export: str | None = None  # mvtec | mmad | conversations: also write the data in that layout (vlmqc/data/export.py)
    export_dir: str | None = None  # where (a new folder); default: export/ in the run folder


@dataclass
class TrainAppConfig:
    """``python -m vlmqc.train``: one trial."""

    data: Any = MISSING
    model: ModelConfig = MISSING
    prompt: PromptConfig = MISSING
    lora: LoraConfig = MISSING
    image_size: ImageSizeConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: Any = None
    run_name: str = MISSING  # from the command line's overrides; names the run folder and the W&B run
    sweep_metric: str = DEFAULT_METRIC  # what a metric-driven sweep optimises and a report sorts by (vlmqc/metrics.py)
    num_workers: int = 2  # processes that draw and encode datasets (conf/train.yaml: one per core)
    quiet: bool = False  # errors only on the console: no progress bars, no log lines (vlmqc/console.py)


@dataclass
class PreviewAppConfig:
    """``vlmqc preview``: what the model sees of a few examples, and what it costs."""

    data: Any = MISSING
    model: ModelConfig = MISSING
    prompt: PromptConfig = MISSING
    lora: LoraConfig = MISSING  # whether the vision tower keeps activations for backward
    image_size: ImageSizeConfig | None = None  # null: every option of conf/image_size
    trainer: TrainerConfig = MISSING  # batch size and precision of the memory estimate
    paths: PathsConfig = field(default_factory=PathsConfig)
    examples: int = 3  # test examples shown, the first ones
    num_workers: int = 2  # dataset generation processes


RUN_NAME_MAX = 255  # bytes in one file name (ext4, xfs, APFS): the run folder is named after the run
RUN_NAME_PREFIX = 120  # bytes of a too-long name kept readable before its hash


def run_name_of(overrides: str) -> str:
    """A run's name from its command-line overrides: ``data=pair_round,lora=r16``; a path's
    slashes would nest folders, so they become underscores, and quotes (``image_size='448'``) go.

    A name too long for a file name keeps its first bytes and adds a hash of the whole override
    string, so the same overrides always name the same folder (resume finds it) and two long
    names that share a beginning do not collide. A name that fits is never changed: existing run
    folders keep their names.
    """
    name = overrides.replace("/", "_").replace("\\", "_").replace("'", "").replace('"', "")
    if len(name.encode()) > RUN_NAME_MAX:
        prefix = name.encode()[:RUN_NAME_PREFIX].decode(errors="ignore")  # never half a character
        name = f"{prefix}-{hashlib.sha256(overrides.encode()).hexdigest()[:10]}"
    return name or "default"


def _gpu_count() -> int:
    """The GPUs this machine shows the launching process (hydra/launcher=gpus_local gives them all
    to every trial, and each trial then claims its own: vlmqc/training/gpus.py)."""
    import torch

    return torch.cuda.device_count()


def _cpus() -> int:
    """Cores this process may run on (its affinity: a Slurm or taskset share, not the whole host)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


# Settings that do not change what a trial computes: they stay out of its run name (conf/train.yaml
# reads this list through the resolver below) and out of the config hash that guards a resume
# (vlmqc/runs/resume.py). One list, so a key that names a different folder always guards a resume too.
NON_COMPUTING_KEYS = (
    "trainer.resume",
    "logger",
    "logger.mode",
    "logger.project",
    "logger.entity",
    "logger.group",
    "logger.tags",
    "paths.cache_dir",
    "paths.models_dir",
    "paths.features_dir",
    "trainer.vision_cache",  # the same features, computed once (tests/test_features.py checks the equivalence)
    "trainer.vision_cache_memory_gb",  # where cached features are kept, not what they are
    "num_workers",
    "quiet",
    "logger.print_summary",
    "trainer.eval_batch_size",
    # the same batches, collated elsewhere (tests/evaluation/test_generate.py checks the answers)
    "trainer.eval_workers",
    # the same batches either way: checked on the first rows before training (vlmqc/training/preprocess.py)
    "trainer.preprocess",
    # the same computation: bf16 only where the first use of the pixels is a bf16 op (vlmqc/training/preprocess.py)
    "trainer.preprocess_pixels",
)


RESOLVERS = {
    "vlmqc.run_name": run_name_of,
    "vlmqc.cpus": _cpus,
    "vlmqc.gpu_count": _gpu_count,
    "vlmqc.non_computing_keys": lambda: list(NON_COMPUTING_KEYS),
}


def register() -> None:
    """Store the schemas where option files find them (``defaults: [<schema>]``) and the resolvers
    the option files use (``${vlmqc.run_name:...}``, ``${vlmqc.cpus:}``...). Every app calls it
    before Hydra composes (vlmqc/preflight.py); calling it again does nothing new."""
    # train.yaml searches a conf/ folder of the working directory for a user's own option files;
    # Hydra warns at every composition where there is none, which is the usual case
    warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=conf is not available")
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    cs = ConfigStore.instance()
    cs.store(name="data_app_schema", node=DataAppConfig)
    cs.store(group="paths", name="paths_schema", node=PathsConfig)
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="preview_schema", node=PreviewAppConfig)
    for group, schema in (
        ("prompt", PromptConfig),
        ("model", ModelConfig),
        ("lora", LoraConfig),
        ("image_size", ImageSizeConfig),
        ("trainer", TrainerConfig),
        ("logger", LoggerConfig),
    ):
        cs.store(group=group, name=f"{group}_schema", node=schema)
    for task, schema in DATA_SCHEMAS.items():
        cs.store(group="data", name=f"{task}_schema", node=schema)


def to_object(node: DictConfig, key: str) -> Any:
    """Instantiate one group's schema, running its checks; errors name the full key."""
    try:
        return OmegaConf.to_object(node)
    except ConfigError as e:
        raise ConfigError(f"{key}.{e}") from None
    except MissingMandatoryValue as e:  # a ``???`` nobody set, e.g. data.path of data=custom
        raise ConfigError(
            f"{e.full_key}: required, and not set (give it on the command line: {e.full_key}=...)"
        ) from None
    except OmegaConfBaseException as e:  # an interpolation that does not resolve, a key added with +
        raise ConfigError(f"{e.full_key or key}: {str(e).splitlines()[0]}") from None


def data_config(cfg: DictConfig) -> SynthConfig | CustomConfig:
    """The validated data config object of a composed app config."""
    return to_object(cfg.data, "data")
