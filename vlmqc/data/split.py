"""Stratified train/test assignment for examples that carry several labels at once.

A defective example is labelled with its verdict, every defect type and every position it
has, so plain stratification on one key does not apply. This is iterative stratification
(Sechidis, Tsoumakas and Vlahavas, 2011): take the rarest label still unassigned, give each of
its examples to the split that most lacks that label, and repeat. Every label ends up within
about one example of its share in each split.
"""

from __future__ import annotations

import numpy as np


def label_set(example: dict) -> set[str]:
    """The labels an example is stratified on."""
    if example.get("target"):
        return {f"position={example['target']}"}
    if not example.get("verdict"):
        return {"answer-only"}
    labels = {f"verdict={example['verdict']}"}
    for d in example.get("defects") or []:
        labels |= {f"type={d['type']}", f"position={d['position']}"}
    return labels


def stratified_split(label_sets: list[set[str]], test_fraction: float, seed: int) -> list[str]:
    """'train' or 'test' for each example, test getting ``test_fraction`` of every label."""
    rng = np.random.default_rng(seed)
    n = len(label_sets)
    fractions = {"test": test_fraction, "train": 1.0 - test_fraction}
    want = {s: f * n for s, f in fractions.items()}
    counts: dict[str, int] = {}
    for labels in label_sets:
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    want_label = {s: {label: f * c for label, c in counts.items()} for s, f in fractions.items()}
    todo = set(range(n))
    assigned = [""] * n
    while todo:
        remaining: dict[str, list[int]] = {}
        for i in todo:
            for label in label_sets[i]:
                remaining.setdefault(label, []).append(i)
        fewest = min(len(v) for v in remaining.values())
        label = sorted(k for k, v in remaining.items() if len(v) == fewest)[0]
        members = sorted(remaining[label])
        for i in (members[j] for j in rng.permutation(len(members))):
            split = max(("test", "train"), key=lambda s: (want_label[s][label], want[s], rng.random()))
            assigned[i] = split
            want[split] -= 1
            for other in label_sets[i]:
                want_label[split][other] -= 1
            todo.discard(i)
    return assigned
