"""The door: every check a config gets before anything runs, in one place that every entry point calls.

``validate(cfg)`` instantiates each group's schema (its own ranges, the failing key prefixed with
its group: ``data.defect_rate=1.5``) and adds what spans groups or looks outside the config: the
file system, the model families, the metric registry. ``check_command_line`` composes the config
of every trial a command line will run (each combination of a ``-m`` sweep) and validates each
before Hydra starts any; ``run_checked`` is the apps' entry, exiting 2 with one line on stderr
that names the key. Nothing here loads a model or reaches the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmqc import models
from vlmqc.config import (
    CONF_DIR,
    ConfigError,
    ConversationsConfig,
    CustomConfig,
    DataAppConfig,
    DiffConfig,
    FolderConfig,
    ImageSizeConfig,
    Layout,
    PairConfig,
    PreviewAppConfig,
    TrainAppConfig,
    register,
    to_object,
)
from vlmqc.config.checks import _check
from vlmqc.metrics import METRICS

TRAIN_GROUPS = ("model", "data", "prompt", "lora", "image_size", "trainer", "logger", "paths")
DATA_APP_GROUPS = ("data", "paths", "contact_sheet", "prompt")
PREVIEW_GROUPS = ("model", "data", "prompt", "lora", "image_size", "trainer", "paths")
# a hub id as the hub spells it, org/name; a local path is anything that exists as a folder
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Every group of a composed app config (train or data) as its schema's object, with every
    check run: each group's ranges, then what spans groups or looks at the file system.

    Every entry point calls it before it touches a folder or claims a GPU; a ``ConfigError`` names
    the key, and the apps exit 2 on it. Nothing here reaches the network: a hub id is only
    checked for its shape.
    """
    app = OmegaConf.get_type(cfg)
    groups = {TrainAppConfig: TRAIN_GROUPS, PreviewAppConfig: PREVIEW_GROUPS}.get(app, DATA_APP_GROUPS)
    check_keys(cfg)
    objs = {group: None if cfg[group] is None else to_object(cfg[group], group) for group in groups}
    _check(cfg.num_workers >= 0, "num_workers", cfg.num_workers, "must be >= 0")
    data = objs["data"]
    if isinstance(data, (CustomConfig, FolderConfig)):
        # as vlmqc/data/custom.py and the readers of published layouts read it: a folder, or a JSONL file
        a_file = isinstance(data, ConversationsConfig)
        found = (os.path.isfile if a_file else os.path.isdir)(os.path.expanduser(data.path))
        _check(found, "data.path", data.path, "file not found" if a_file else "folder not found")
    if app is DataAppConfig:
        formats = ("mvtec", "mmad", "conversations")  # vlmqc/data/export.py
        _check(cfg.export in (None, *formats), "export", cfg.export, f"must be one of {', '.join(formats)} (or null)")
        _check(
            cfg.export is None or isinstance(data, PairConfig) and not isinstance(data, DiffConfig),
            "export",
            cfg.export,
            f"writes pair data (pair_square, pair_round, pair_mixed and their options), not data={data.name}",
        )
        return objs
    if app is TrainAppConfig:
        _check(
            cfg.sweep_metric in METRICS,
            "sweep_metric",
            cfg.sweep_metric,
            f"must be one of the metrics: {', '.join(METRICS)}",
        )
    else:
        _check(1 <= cfg.examples <= 100, "examples", cfg.examples, "must be between 1 and 100")
    model, size = objs["model"], objs["image_size"] or ImageSizeConfig(name="native")
    if model.path is not None and os.path.isdir(model.path):
        _check(
            os.path.isfile(os.path.join(model.path, "config.json")),
            "model.path",
            model.path,
            "holds no config.json: not a model folder (a transformers checkpoint: config.json, weights, processor)",
        )
    if model.path is not None and not os.path.isdir(model.path):
        # transformers reads "~" and "./x" as hub ids, so a path the shell did not expand fails late
        looks_local = model.path.startswith(("/", ".", "~")) or "\\" in model.path
        _check(
            not looks_local and HUB_ID.fullmatch(model.path),
            "model.path",
            model.path,
            "folder not found" if looks_local else "is neither an existing folder nor a hub id (org/name)",
        )
    models.check(model, size, data.layout)  # the families' checks, without loading a model
    if data.layout is Layout.separate and "prompt" in objs:
        _check(
            objs["prompt"].pair_separate is not None,
            "prompt.pair_separate",
            None,
            f"required by data.layout=separate: the {objs['prompt'].name} prompt has no wording for a pair given "
            f"as two images",
        )
    if app is PreviewAppConfig and model.path is not None and not os.path.isdir(model.path):
        # no checkpoint on disk: the processor is built offline from the preset's published facts
        _check(
            model.family in models.families(),
            "model.family",
            model.family,
            f"must name the family of {model.path} to preview it without its files (families: "
            f"{', '.join(sorted(models.families()))})",
        )
        family = models.families()[model.family]
        _check(
            type(family).offline_processor is not models.Family.offline_processor,
            "model.family",
            model.family,
            "this family cannot be previewed offline yet (it has no offline_processor); give model.path=<a local "
            "checkpoint folder>",
        )
        _check(bool(model.processor), "model.processor", {}, f"must hold the published processor facts of {model.path}")
        family.check(model, size, data.layout)
    return objs


# keys no schema describes: Hydra's own, and the documented free-form groups (an experiment file's
# name; a family's published processor facts and a prompt's defect names are dicts by their schema)
FREE_FORM = ("hydra", "experiment")


def check_keys(cfg: DictConfig, key: str = "") -> None:
    """Every key of a composed config is one its schema has. Hydra refuses a misspelt key, but a key
    added with ``+`` (``+trainer.lrr=1``) is composed into the config and read by nothing: refused
    here, naming the closest key the schema has."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    fields = [f.name for f in dataclasses.fields(schema)]
    for k in cfg.keys():
        full = f"{key}.{k}" if key else str(k)
        if k not in fields and not (not key and k in FREE_FORM):
            close = difflib.get_close_matches(str(k), fields, n=1)
            hint = f"did you mean {key + '.' if key else ''}{close[0]}? " if close else ""
            raise ConfigError(
                f"{full}: not a key of {key or 'the app'}'s schema ({schema.__name__}), so nothing would read it "
                f"({hint}a key added with + must be one the schema has)"
            )
        node = cfg._get_node(k)
        if isinstance(node, DictConfig) and not node._is_none():
            check_keys(node, full)


def check_output_dir(hydra_cfg: DictConfig, multirun: bool) -> None:
    """The run (or sweep) folder Hydra will make can be made: its nearest existing folder is a
    writable folder. Checked on the folder's fixed part (what precedes the first ``${...}``), so
    nothing is resolved or written."""
    node = hydra_cfg.sweep if multirun else hydra_cfg.run
    raw = OmegaConf.to_container(node, resolve=False)["dir"]
    key = f"hydra.{'sweep' if multirun else 'run'}.dir"
    fixed = Path(os.path.expanduser(str(raw).split("${", 1)[0]) or ".")
    existing = fixed if fixed.is_absolute() else Path.cwd() / fixed
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _check(existing.is_dir(), key, raw, f"{existing} is not a folder, so the run folder cannot be made under it")
    _check(
        os.access(existing, os.W_OK | os.X_OK),
        key,
        raw,
        f"{existing} is not writable, so the run folder cannot be made there (choose another: {key}=...)",
    )


NUMERIC_GROUPS = ("image_size",)  # config groups whose option names are numbers: image_size=448


def quote_numeric_options(argv: list[str]) -> list[str]:
    """``image_size=448`` -> ``image_size='448'`` (and ``=224,448`` -> ``='224','448'``).

    Hydra's override grammar reads 448 as an integer and refuses an integer as a config group's
    option; quoted, it is the option named 448. Hydra has no hook for this, so the command line
    is rewritten before Hydra reads it.
    """
    groups = "|".join(NUMERIC_GROUPS)
    out = []
    for arg in argv:
        m = re.fullmatch(rf"(\+{{0,2}}(?:{groups}))=(\d+(?:,\d+)*)", arg)
        out.append(f"{m[1]}=" + ",".join(f"'{v}'" for v in m[2].split(",")) if m else arg)
    return out


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def run_checked(app: str, main, argv: list[str] | None = None, quote_numeric: bool = True) -> None:
    """A Hydra app's entry: every config of the command line (each trial of a ``-m`` sweep) is
    composed and validated before Hydra starts ``main``, so a config error exits 2 naming the key
    on stderr (Hydra's own report exits 1). ``argv``: the app's arguments (default: the process's);
    Hydra reads ``sys.argv``, so it is set to them. ``quote_numeric``: ``image_size=448`` names the option."""
    register()
    argv = list(sys.argv[1:] if argv is None else argv)
    if quote_numeric:
        argv = quote_numeric_options(argv)
    try:
        check_command_line(app, argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = argv
    main()


def check_command_line(config_name: str, argv: list[str]) -> int:
    """Compose and ``validate`` the config of every trial a command line will run, before Hydra
    runs any; returns how many were checked, raises ``ConfigError`` naming the key.

    Hydra reports its own composition errors (a misspelt key, a wrong type, an unknown option)
    through a handler that prints and exits 1, with no hook to change that, so the apps compose
    here first with Hydra's compose API, from the same overrides. A ``-m`` sweep of Hydra's basic
    sweeper is expanded as that sweeper does (its ``hydra.sweeper.params``, then the command line)
    and every trial is checked; another sweeper (Optuna) picks trials as it goes, so only the
    config without the swept values is. Costs a composition per trial (about 0.1 s).
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser  # Hydra's own command line, so flags mean the same
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    register()
    args = get_args_parser().parse_args(argv)
    if (
        args.help
        or args.hydra_help
        or args.shell_completion
        or args.info
        or args.experimental_rerun
        or args.config_path
        or args.config_dir
    ):
        return 0  # no trial runs, or the config comes from elsewhere: Hydra handles it
    name = args.config_name or config_name
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            trials = [args.overrides]
            hydra_cfg = None
            if args.multirun:
                parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
                fixed = [o.input_line for o in parser.parse_overrides(args.overrides) if not o.is_sweep_override()]
                hydra_cfg = compose(name, fixed, return_hydra_config=True).hydra
                sweeper = hydra_cfg.sweeper
                trials = [fixed]
                if sweeper.get("_target_") == BASIC_SWEEPER:
                    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
                    trials = [
                        t
                        for batch in BasicSweeper.split_arguments(parser.parse_overrides(params + args.overrides), None)
                        for t in batch
                    ]
            if not args.cfg:  # --cfg job prints the config and runs nothing
                hydra_cfg = hydra_cfg or compose(name, args.overrides, return_hydra_config=True).hydra
                check_output_dir(hydra_cfg, args.multirun)
            for overrides in trials:
                cfg = compose(name, list(overrides))
                # Hydra names the run folder when the job starts; until then ${hydra:runtime.output_dir} has no value
                cfg.paths.output_dir = str(Path.cwd())
                validate(cfg)
    except HydraException as e:
        raise ConfigError(_hydra_message(e)) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key}: {str(e).splitlines()[0]}") from None
    return len(trials)


def _hydra_message(e: Exception) -> str:
    """One line naming the key: Hydra's message, and its cause's (where omegaconf says what is wrong)."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, option = e.missing_cfg_file.rpartition("/")
        return (
            f"{group}={option}: no such option (available: "
            f"{', '.join(o for o in e.options if not o.endswith('_schema'))})"
        )
    text = str(e).splitlines()[0].rstrip(".")
    if e.__cause__ is not None:
        text += ": " + str(e.__cause__).splitlines()[0]
    return text
