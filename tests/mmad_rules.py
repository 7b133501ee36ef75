"""MMAD's scoring rules written again from the benchmark's definitions, independently of vlmqc's
(vlmqc/evaluation/choice.py): the tests score the same answers file both ways."""

from __future__ import annotations

from collections import defaultdict


def benchmark_table(entries: list[dict]) -> dict[str, dict[str, float]]:
    """MMAD's rules, from its answers file alone, written from the benchmark's definitions: accuracy
    per source (the path's first segment) and question type; Anomaly Detection the mean of the
    accuracy on normal queries (path containing 'good') and on anomalous ones; Overkill and Miss;
    a source's Average over its types; the Average row over the sources. An answer that is not a
    letter is wrong."""

    def accuracy(es):
        return sum(e["gpt_answer"] == e["correct_answer"] for e in es) / len(es)

    def kind(e):
        return "Object Analysis" if e["question_type"] in ("Object Structure", "Object Details") else e["question_type"]

    by_source = defaultdict(list)
    for e in entries:
        by_source[e["image"].split("/")[0]].append(e)
    table = {}
    for source, es in by_source.items():
        row = {}
        for t in {kind(e) for e in es}:
            mine = [e for e in es if kind(e) == t]
            if t == "Anomaly Detection":
                normal = accuracy([e for e in mine if "good" in e["image"]])
                anomalous = accuracy([e for e in mine if "good" not in e["image"]])
                row[t] = (normal + anomalous) / 2
            else:
                row[t] = accuracy(mine)
        row["Average"] = sum(row.values()) / len(row)
        row["Overkill"], row["Miss"] = 1 - normal, 1 - anomalous
        table[source] = row
    columns = set().union(*table.values())
    table["Average"] = {c: sum(r[c] for r in table.values()) / len(table) for c in columns}
    return table
