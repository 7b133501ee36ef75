"""The trials' settings: which overrides were swept, each trial's value, and its short label."""

from __future__ import annotations

import json

from vlmqc.compare.load import TrialRow


def as_number(value) -> float | None:
    """An override's value as a number where it is one (``1e-3`` and ``0.001`` are one setting)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def sort_key(value: str):
    n = as_number(value)
    return (0, n, "") if n is not None else (1, 0.0, str(value))


def config_value(trial: TrialRow, key: str) -> str | None:
    """A dotted key's value in the trial's resolved config: a group's option name, or the scalar."""
    node = trial.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return str(node["name"]) if "name" in node else None
    return node if isinstance(node, str) else json.dumps(node)


def override_value(trial: TrialRow, key: str) -> tuple[str | None, bool]:
    """(value, typed on the command line?): a trial that left a key alone shows its config's value."""
    if key in trial.overrides:
        return trial.overrides[key], True
    return config_value(trial, key), False


def _distinct(trials: list[TrialRow], key: str) -> set:
    values = (override_value(t, key)[0] for t in trials)
    return {n if (n := as_number(v)) is not None else v for v in values if v is not None}


def swept_and_fixed(trials: list[TrialRow]) -> tuple[list[str], list[str]]:
    """The override keys whose values differ between the trials, and those that do not."""
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.overrides if k not in keys]
    # config groups (data, prompt, lora) before single fields: they say most about a trial
    swept = sorted((k for k in keys if len(_distinct(trials, k)) > 1), key=lambda k: "." in k)
    return swept, [k for k in keys if k not in swept]


def _rename_clashes(trials: list[TrialRow], rename) -> None:
    clashes: dict[str, list[TrialRow]] = {}
    for t in trials:
        clashes.setdefault(t.label, []).append(t)
    for same in clashes.values():
        if len(same) > 1:
            for i, t in enumerate(same, 1):
                t.label = rename(t, i)


def label_trials(trials: list[TrialRow], swept: list[str]) -> None:
    """Name each trial by the swept settings it typed; where two names clash, add the folder's
    name (a multirun's folder names are whole run names, so they are cut short), then a number."""
    for t in trials:
        t.label = ", ".join(f"{k}={t.overrides[k]}" for k in swept if k in t.overrides) or t.dir.name
    _rename_clashes(
        trials, lambda t, i: f"{t.label} [{t.dir.name if len(t.dir.name) <= 24 else t.dir.name[:23] + '…'}]"
    )
    _rename_clashes(trials, lambda t, i: f"{t.label} #{i}")
