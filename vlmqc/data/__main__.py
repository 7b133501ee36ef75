"""Generate (or load from the cache) one dataset, print its counts, draw a contact sheet.

    python -m vlmqc.data                          # the star task
    python -m vlmqc.data data=pair_round          # any option in conf/data/
    python -m vlmqc.data data=diff data.diff.mode=heatmap data.nuisance.strength=2
    python -m vlmqc.data data=custom data.path=/path/to/folder
    python -m vlmqc.data -m data=star,pair_square,pair_round,pair_mixed,diff   # all of them

The contact sheet lands in the Hydra run folder (``outputs/data/<name>/<time>/``).
Exit status: 0 done, 2 bad config or bad custom data (the message names the key, on stderr).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vlmqc.config import ConfigError, PairConfig, run_checked, validate
from vlmqc.data import get_dataset, report, store
from vlmqc.data.custom import CustomDataError

log = logging.getLogger("vlmqc.data")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="data_app")
def main(cfg: DictConfig) -> None:
    try:
        objs = validate(cfg)
        data, sheet_cfg = objs["data"], objs["contact_sheet"]
        dsd, path = get_dataset(data, cfg.paths.cache_dir, num_workers=cfg.num_workers)
    except (ConfigError, CustomDataError) as e:
        log.error("%s", e)
        sys.exit(2)
    except store.WorkerDied as e:  # not the input's fault: no traceback, a different status
        log.error("%s", e)
        sys.exit(1)
    log.info("dataset %s at %s", data.name, path)
    print(report.format_counts(dsd))
    split = dsd[sheet_cfg.split]
    sheet = report.contact_sheet(split, report.pick(split, sheet_cfg.examples), Path(cfg.paths.output_dir) / "contact_sheet.png")
    print(f"contact sheet: {sheet}")
    if cfg.baseline and isinstance(data, PairConfig):
        print(f"pixel-difference baseline on test: {report.pixel_baseline(dsd['test'], data)}")


def cli() -> None:
    """``python -m vlmqc.data``: a config error (in any config of a ``-m`` sweep) exits 2 naming the key."""
    run_checked("data_app", main, quote_numeric=False)


if __name__ == "__main__":
    cli()
