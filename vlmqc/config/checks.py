"""What every schema's checks share: the error that names a key, and the range checks.

A schema's ``__post_init__`` checks its own fields with ``_check`` and ``_between``; the message
names the key, and ``vlmqc.config.to_object`` prefixes it with the group (``data.defect_rate=1.5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config value that composes but makes no sense; the message names the key."""


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def _between(value: float, key: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """``low <= value <= high`` (``low < value`` if low_open), and finite: Hydra reads ``inf`` and
    ``nan`` as floats, and nan passes no comparison, so it must be named or it slips through."""
    above = value > low if low_open else value >= low
    ok = math.isfinite(value) and above and value <= high
    rule = (
        f"must be {'>' if low_open else '>='} {low}"
        + (f" and <= {high}" if high != math.inf else "")
        + (" (finite)" if isinstance(value, float) else "")
    )
    _check(ok, key, value, rule)


SEED_MAX = 2**32 - 1  # numpy's seeds (torch's too, through transformers' set_seed) are unsigned 32-bit


@dataclass
class IntRange:
    min: int = 1
    max: int = 1

    def check(self, key: str, lowest: int) -> None:
        _check(self.min >= lowest, f"{key}.min", self.min, f"must be >= {lowest}")
        _check(self.max >= self.min, f"{key}.max", self.max, f"must be >= {key}.min ({self.min})")
