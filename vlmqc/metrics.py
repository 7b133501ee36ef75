"""The one registry of evaluation metrics: name, direction, definition, how chance is reckoned.

Every number a trial reports as ``eval/...`` is defined here once; the scorer
(vlmqc/evaluation/scoring.py) computes them, the run record stores them, the report and sweeps
rank by them, and a config's ``sweep_metric`` must name one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmqc.labels import DEFECTIVE, PASS, DefectType


@dataclass(frozen=True)
class Metric:
    higher_is_better: bool
    definition: str
    chance: str  # how its chance level is computed


class _Registry(dict):
    """Fixed names, and families of names under a prefix: one metric per question type or source
    dataset, named by the data (``eval/source/mvtec_ad``). ``name in METRICS`` and ``METRICS[name]``
    know both; iterating lists the fixed names."""

    def __init__(self, fixed: dict[str, Metric], families: dict[str, Metric]):
        super().__init__(fixed)
        self.families = families

    def _family(self, name) -> Metric | None:
        if isinstance(name, str):
            for prefix, metric in self.families.items():
                if name.startswith(prefix) and len(name) > len(prefix):
                    return metric
        return None

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or self._family(name) is not None

    def __missing__(self, name) -> Metric:
        metric = self._family(name)
        if metric is None:
            raise KeyError(name)
        return metric

    def get(self, name, default=None):
        return self[name] if name in self else default


_PRIOR = "score of the prior-only answer: every test row answered with the train split's most frequent label"
# choice rows (vlmqc/choice.py): a uniformly guessed letter scores 1 / number of options
_LETTERS = (
    "a uniformly guessed letter (1 / number of options, uniform); the best letter given to every question "
    "(constant); the train split's most frequent letter (prior)"
)
# MMAD's table (vlmqc/evaluation/choice.py): a row per source dataset (the query path's first segment), a
# column per question type; a row's average is over its types, each column's over the sources
_MMAD = "MMAD's table (vlmqc/evaluation/choice.py): "
METRICS: dict[str, Metric] = _Registry(
    {
        "eval/verdict_accuracy": Metric(True, "pass / defective rows whose predicted verdict is the true one", _PRIOR),
        "eval/defect_recall": Metric(True, "defective rows predicted defective / defective rows", _PRIOR),
        "eval/escape_rate": Metric(
            False,
            "defective rows not predicted defective (pass or unreadable) / defective rows; 1 - defect_recall",
            _PRIOR,
        ),
        "eval/false_reject_rate": Metric(False, "pass rows predicted defective / pass rows", _PRIOR),
        "eval/position_accuracy": Metric(
            True,
            "star rows with the right target and defective rows predicted defective with the true set of positions / "
            "those rows",
            _PRIOR + "; also 1/27, a uniformly guessed position",
        ),
        "eval/defect_type_accuracy": Metric(
            True, "true defects whose position the answer names with the true type / true defects", _PRIOR
        ),
        "eval/exact_match": Metric(
            True,
            "rows answered exactly: star target; pass verdict; defective verdict and set of (position, type); "
            "answer-only text; choice: every question's letter",
            _PRIOR,
        ),
        "eval/unparseable_rate": Metric(
            False, "answers the parser could not read / rows with structured labels", _PRIOR
        ),
        "eval/loss": Metric(False, "the language-model loss on the test answers", "none"),
        "eval/mmad_average": Metric(
            True, _MMAD + "the mean over source datasets of each one's mean accuracy over question types", _LETTERS
        ),
        "eval/type/anomaly_detection": Metric(
            True,
            _MMAD + "Anomaly Detection questions: the mean of the accuracy on normal queries (path containing "
            "'good') and on anomalous ones, averaged over source datasets",
            _LETTERS,
        ),
        "eval/overkill": Metric(
            False,
            _MMAD + "normal queries answered wrong on Anomaly Detection / normal queries, averaged over sources",
            _LETTERS,
        ),
        "eval/miss": Metric(
            False,
            _MMAD + "anomalous queries answered wrong on Anomaly Detection / anomalous queries, averaged over sources",
            _LETTERS,
        ),
    },
    {
        "eval/type/": Metric(
            True, _MMAD + "accuracy on the questions of one type, averaged over source datasets", _LETTERS
        ),
        "eval/source/": Metric(True, _MMAD + "one source dataset's mean accuracy over question types", _LETTERS),
    },
)
DEFAULT_METRIC = "eval/exact_match"
# rows and columns of the defect-type confusion matrix, in this order; other labels follow, sorted
CONFUSION_ORDER = (PASS, *(t.value for t in DefectType), DEFECTIVE, "untyped", "elsewhere", "unparseable")


def better(name: str, a: float, b: float) -> bool:
    """Whether value ``a`` of metric ``name`` is strictly better than ``b`` (ties keep the earlier)."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return a > b if METRICS[name].higher_is_better else a < b


CHANCE_KINDS = ("prior", "uniform", "constant")  # the guessers a summary's chance holds, each {metric: level}


def chance_of(chance: dict | None, metric: str) -> tuple[float, str] | None:
    """The one level a trial must beat on ``metric``, and the guesser that scores it (its kind):
    the best (in the metric's direction) of the prior-only answer's, the uniform guess's and the
    best constant answer's score, from a summary's ``chance``; on a tie the earlier kind of
    ``CHANCE_KINDS``. The summary (its ``chance.level``), W&B (``chance/<metric>``,
    ``chance_kind/<metric>``), the report and the log all show this one."""
    if metric not in METRICS:
        return None
    found = None
    for kind in CHANCE_KINDS:
        v = ((chance or {}).get(kind) or {}).get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            if found is None or better(metric, v, found[0]):
                found = (float(v), kind)
    return found


def chance_level(chance: dict | None, metric: str) -> float | None:
    """The level of ``chance_of``, without its kind."""
    found = chance_of(chance, metric)
    return found[0] if found else None


def chance_levels(chance: dict | None) -> dict[str, dict]:
    """Every metric's level and kind, ``{metric: {"value": v, "kind": k}}``: the summary's ``chance.level``;
    the registry's fixed names, then the family members (per type, per source) the guessers scored."""
    scored = [m for kind in CHANCE_KINDS for m in ((chance or {}).get(kind) or {})]
    names = dict.fromkeys([*METRICS, *scored])
    return {m: {"value": v, "kind": k} for m in names if (found := chance_of(chance, m)) for v, k in [found]}
