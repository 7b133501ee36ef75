"""``vlmqc preview``: what the model sees of a few examples, before any training (a Hydra app).

    vlmqc preview model=tiny data=star                          # every image_size option
    vlmqc preview model=qwen2_vl_2b_random data=pair_round image_size=448 examples=5

The table and its estimate are vlmqc/preview.py's. Exit status: 0, or 2 on a config error (named
on stderr), before any dataset is drawn.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from vlmqc.config import ConfigError
from vlmqc.data import first_examples
from vlmqc.preflight import run_checked, validate
from vlmqc.preview import precision_bytes, preview, table


@hydra.main(version_base="1.3", config_path="../conf", config_name="preview")
def main(cfg: DictConfig) -> None:
    try:
        objs = validate(cfg)
        rows_data = first_examples(objs["data"], cfg.paths.cache_dir, cfg.examples)  # only those shown are drawn
        rows, origins = preview(objs, cfg.paths.models_dir, rows_data)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    t = objs["trainer"]
    precision, _ = precision_bytes(t.precision, t.device)
    print(
        f"model={objs['model'].name} data={objs['data'].name} layout={objs['data'].layout.value} "
        f"prompt={objs['prompt'].name} lora={objs['lora'].name}"
    )
    for line in origins:
        print(f"  {line}")
    print(table(rows, t.batch_size))
    print(
        f"* an estimate of the activations kept for backward at {precision.value}, not a measurement: "
        "L*s*(8h+4i)*b + s*V*(b+4) [+ vision tower where it trains] (the formula: vlmqc/preview.py, README)"
        + (
            "; n/a: the preset's model.processor carries no text_config (config.json's shapes)"
            if any(r.facts and r.activation_bytes is None for r in rows)
            else ""
        )
    )


def cli(argv: list[str] | None = None) -> None:
    """``vlmqc preview``: a config error exits 2 naming the key."""
    run_checked("preview", main, argv)
