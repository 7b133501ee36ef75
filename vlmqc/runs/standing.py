"""What a trial's evaluations conclude, from its ``metrics.jsonl`` rows: the final, baseline and
best evaluation, and whether it sits on the plateau the study met."""

from __future__ import annotations

import math

from vlmqc.metrics import METRICS, better, chance_of
from vlmqc.runs.tracking import STEP


def evaluations(metric_rows: list[dict]) -> dict[int, dict]:
    """Every evaluation's metrics (those in ``METRICS``; not the Trainer's eval/runtime and such)
    by step, from ``metrics.jsonl`` rows. A step evaluated twice (an attempt interrupted after it,
    resumed from an earlier checkpoint) keeps the later values."""
    out: dict[int, dict] = {}
    for r in metric_rows:
        scores = {k: v for k, v in r.items() if k in METRICS}
        if scores:
            out.setdefault(r[STEP], {}).update(scores)
    return dict(sorted(out.items()))


def standing(evals: dict[int, dict], metric: str) -> dict:
    """Summary fields ``final``, ``baseline``, ``best`` and ``best_metric`` from the evaluations by step.

    Final is the last evaluation after step 0 (None while there is none).
    Best is the evaluation step with the best ``metric`` (the earliest on a tie), every metric
    at that step recorded with it; the base model's evaluation at step 0 is the baseline and
    never a candidate. A step without a finite value of ``metric`` is not a candidate either.
    """
    best_step = None
    for step, scores in evals.items():
        v = scores.get(metric)
        if step == 0 or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if best_step is None or better(metric, v, evals[best_step][metric]):
            best_step = step
    # the base model's evaluation is not a result of training: a trial that failed before its
    # first evaluation after step 0 has no final, rather than the baseline shown as one
    last = max((step for step in evals if step > 0), default=None)
    return {
        "final": {**evals[last], "step": last} if last is not None else None,
        "baseline": {**evals[0], "step": 0} if 0 in evals else None,
        "best": {**evals[best_step], "step": best_step} if best_step is not None else None,
        "best_metric": metric,
    }


PLATEAU_WINDOW = 1 / 3  # the last third of the training-loss logs
PLATEAU_FLAT = 0.02  # ... falling by less than 2 % across it counts as flat


def diagnose(rows: list[dict], final: dict | None, chance: dict | None, metric: str, n_test: int) -> dict | None:
    """The study's symptom, checked: a training loss that has stopped falling while the answers
    score at chance, for every metric that has a chance level a model can beat.

    - ``loss_change``: how much the mean training loss of the second half of the last third of the
      logs is below that of its first half, relative to the first (at least 6 logs; else None);
      ``loss_flat`` when it is under ``PLATEAU_FLAT``;
    - ``metrics``: per metric, its final ``value``, its one chance level (``chance``, and the
      guesser that scores it, ``kind``: ``vlmqc.metrics.chance_of``), ``margin`` (two binomial
      standard errors on ``n_test`` rows, so a few lucky answers do not count), ``at_chance`` (not
      better than the level by more than the margin) and ``plateau`` (a flat loss and at chance);
      a metric whose level is already its best possible value (no unreadable answer when guessing)
      is left out, as nothing can beat it;
    - at the top, the same for ``metric`` (the sweep metric), named: the trial's ``plateau`` is its.
      A flat loss alone is also what a converged model shows; answers at chance alone is also a
      model still learning.
    None where there is no final evaluation or no chance level for ``metric``.
    """
    if not final or n_test < 1:
        return None
    losses = [v for r in rows if isinstance(v := r.get("train/loss"), (int, float)) and math.isfinite(v)]
    window = losses[-max(6, round(len(losses) * PLATEAU_WINDOW)) :] if len(losses) >= 6 else []
    change = None
    if window:
        first, second = window[: len(window) // 2], window[len(window) // 2 :]
        before = sum(first) / len(first)
        change = (before - sum(second) / len(second)) / before if before > 0 else 0.0
    flat = change is not None and change < PLATEAU_FLAT
    per = {}
    for name, value in final.items():
        found = chance_of(chance, name)
        if found is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        level, kind = found
        if name != metric and (level >= 1 if METRICS[name].higher_is_better else level <= 0):
            continue  # already the best possible score: nothing could beat it
        margin = 2 * math.sqrt(max(level * (1 - level), 0.0) / n_test) if 0 <= level <= 1 else 0.0
        beyond = level + margin if METRICS[name].higher_is_better else level - margin
        at_chance = not better(name, value, beyond)
        per[name] = {
            "value": value,
            "chance": level,
            "kind": kind,
            "margin": margin,
            "at_chance": at_chance,
            "plateau": flat and at_chance,
        }
    if metric not in per:
        return None
    return {
        "metric": metric,
        **per[metric],
        "loss_change": change,
        "loss_flat": flat if change is not None else None,
        "metrics": per,
    }
