"""``vlmqc data``: generate (or load from the cache) one dataset, print its counts, draw a contact sheet.

    vlmqc data                          # the star task
    vlmqc data data=pair_round          # any option in vlmqc/conf/data/
    vlmqc data data=diff data.diff.mode=heatmap data.nuisance.strength=2
    vlmqc data data=custom data.path=/path/to/folder
    vlmqc data -m data=star,pair_square,pair_round,pair_mixed,diff   # all of them
    vlmqc data data=pair_round export=mmad  # also written as MMAD (or mvtec, conversations): vlmqc/data/export.py

The contact sheet lands in the Hydra run folder (``outputs/data/<name>/<time>/``).
Exit status: 0 done, 2 bad config or bad custom data (the message names the key, on stderr).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlmqc.config import ConfigError, PairConfig
from vlmqc.data import get_dataset, report, store
from vlmqc.data.custom import CustomDataError
from vlmqc.preflight import run_checked, validate

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="data_app")
def main(cfg: DictConfig) -> None:
    try:
        objs = validate(cfg)
        data, sheet_cfg = objs["data"], objs["contact_sheet"]
        dsd, path = get_dataset(data, cfg.paths.cache_dir, num_workers=cfg.num_workers)
    except (ConfigError, CustomDataError) as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except store.WorkerDied as e:  # not the input's fault: no traceback, a different status
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    log.info("dataset %s at %s", data.name, path)
    print(report.format_counts(dsd))
    split = dsd[sheet_cfg.split]
    sheet = report.contact_sheet(
        split, report.pick(split, sheet_cfg.examples), Path(cfg.paths.output_dir) / "contact_sheet.png"
    )
    print(f"contact sheet: {sheet}")
    if cfg.baseline and isinstance(data, PairConfig):
        print(f"pixel-difference baseline on test: {report.pixel_baseline(dsd['test'], data)}")
    if cfg.export:
        from vlmqc.data.export import export

        out = Path(cfg.export_dir or Path(cfg.paths.output_dir) / "export").expanduser()
        try:
            read_as = export(dsd, cfg.export, out, data.name, objs["prompt"], seed=data.seed)
        except FileExistsError as e:
            print(f"config error: export_dir: {e}", file=sys.stderr)
            sys.exit(2)
        grid = " data.grid=[3,9]" if cfg.export == "mvtec" else ""  # the board's grid: positions as drawn
        print(f"exported as {cfg.export}: {out} (read it back with data={cfg.export}{grid} data.path={read_as})")


def cli(argv: list[str] | None = None) -> None:
    """``vlmqc data``: a config error (in any config of a ``-m`` sweep) exits 2 naming the key."""
    run_checked("data_app", main, argv, quote_numeric=False)
