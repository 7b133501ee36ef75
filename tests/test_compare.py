"""The comparison report, built from real trials' run folders and read back (also in a browser)."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import chromium_page, needs_chromium, run_app
from PIL import Image

from vlmqc.cli import compare
from vlmqc.metrics import METRICS
from vlmqc.runs.standing import diagnose

TINY = [
    "data.train_size=32",
    "data.test_size=12",
    "trainer.max_steps=4",
    "trainer.logging_steps=2",
    "trainer.samples=4",
    "logger=none",
]
XSS = '<script>alert(1)</script> & "quoted"'


def train(root: Path, *overrides: str, multirun: bool = False) -> subprocess.Popen:
    return run_app(root, "vlmqc.train", *(["-m"] if multirun else []), *TINY, *overrides, wait=False)


def finish(proc: subprocess.Popen, status: int) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == status, out[-3000:]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    return dst


def last(folder: Path) -> Path:
    return max(folder.glob("step-*.jsonl"))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A multirun of two prompts, a failed trial (lr 1e30) and a star trial beside them, plus two
    doctored copies: one whose sample prediction is an HTML attack, one with a cut-off summary.json."""
    root = tmp_path_factory.mktemp("compare")
    sweep = root / "sweep"
    finish(train(root, "data=pair_mixed", "prompt=short,json", "lora=r4", f"hydra.sweep.dir={sweep}", multirun=True), 0)
    # the first trial cached the data and the tiny model, so these two can share the CPU
    failed = train(
        root,
        "data=pair_mixed",
        "prompt=short",
        "lora=r4",
        "trainer.lr=1e30",
        "trainer.max_grad_norm=1e30",
        "trainer.logging_steps=1",
        f"hydra.run.dir={sweep / 'failed'}",
    )
    star = train(root, "data=star", "lora=r4", "trainer.max_steps=2", f"hydra.run.dir={sweep / 'star'}")
    finish(failed, 1)
    finish(star, 0)

    xss = copy_run(next(sweep.glob("*prompt=json*")), sweep / "xss")
    samples = last(xss / "samples")
    rows = jsonl(samples)
    rows[0]["prediction"] = XSS
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))

    corrupt = copy_run(next(sweep.glob("*prompt=short*")), sweep / "corrupt")
    (corrupt / "summary.json").write_text((corrupt / "summary.json").read_text()[:150])
    return sweep


@pytest.fixture(scope="module")
def report(sweep) -> Path:
    return compare.main([str(sweep)])


class Tables(HTMLParser):
    """Every table of a page: its attributes, caption, head cells, and body rows of cells.

    A cell is (tag, attributes, text); a row is (attributes, cells)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self._cell = self._caption = None
        self._in_head = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"attrs": attrs, "caption": "", "head": [], "rows": []})
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and self.tables:
            self._row = (attrs, [])
        elif tag in ("td", "th"):
            self._cell = (tag, attrs, [])
        elif tag == "caption":
            self._caption = []
        elif tag == "br" and self._cell:
            self._cell[2].append(" ")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2].append(data)
        elif self._caption is not None:
            self._caption.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            tag_, attrs, parts = self._cell
            self._row[1].append((tag_, attrs, "".join(parts).strip()))
            self._cell = None
        elif tag == "tr":
            table = self.tables[-1]
            (table["head"] if self._in_head else table["rows"]).append(self._row)
        elif tag == "caption":
            self.tables[-1]["caption"] = "".join(self._caption)
            self._caption = None

    def find(self, **attrs) -> list[dict]:
        return [t for t in self.tables if all(t["attrs"].get(k) == v for k, v in attrs.items())]


GROUPS = ("metrics-final", "metrics-best", "metrics-baseline", "settings-fixed")  # the collapsible tables


def trials_table(text: str) -> tuple[list[str], dict[str, list]]:
    """The trials table and the collapsible groups after it as one: the column heads, and each
    row's cells keyed by run folder name (a group's own "trial" column left out)."""
    tables = Tables(text)
    (table,) = tables.find(id="trials")
    head = [c[2] for c in table["head"][0][1]]
    rows = {Path(attrs["data-dir"]).name: list(cells) for attrs, cells in table["rows"]}
    for group in GROUPS:
        for t in tables.find(id=group):
            head += [c[2] for c in t["head"][0][1][1:]]
            for attrs, cells in t["rows"]:
                rows[Path(attrs["data-dir"]).name] += cells[1:]
    return head, rows


def column(head: list[str], name: str) -> int:
    return head.index(name)


def runs(sweep: Path) -> dict[str, Path]:
    """The trials by a short name: short, json (the multirun), failed, star, xss, corrupt."""
    found = {d.name: d for d in sweep.iterdir() if (d / "summary.json").exists()}
    return {("short" if "prompt=short" in k else "json" if "prompt=json" in k else k): v for k, v in found.items()}


@pytest.mark.slow
def test_one_row_per_trial_with_its_status_and_reason(sweep, report):
    head, rows = trials_table(report.read_text())
    by_name = {k: rows[v.name] for k, v in runs(sweep).items()}
    assert len(rows) == 6
    status = column(head, "status")
    assert {k: cells[status][1]["data-value"] for k, cells in by_name.items()} == {
        "short": "completed",
        "json": "completed",
        "xss": "completed",
        "star": "completed",
        "failed": "failed",
        "corrupt": "unreadable",
    }
    reason = json.loads((sweep / "failed" / "summary.json").read_text())["reason"]
    assert reason.startswith("non-finite training loss at step") and reason in by_name["failed"][status][2]
    assert "summary.json" in by_name["corrupt"][status][2]
    # a swept override is its own column; a trial that did not type it shows its config's value
    assert [by_name[k][column(head, "prompt")][2] for k in ("short", "json", "star")] == ["short", "json", "long"]
    assert (
        by_name["failed"][column(head, "trainer.lr")][2] == "1e30"
        and by_name["json"][column(head, "trainer.lr")][2] == "0.001"
    )


@pytest.mark.slow
def test_table_cells_carry_the_numbers_to_sort_on(sweep, report):
    text = report.read_text()
    head, rows = trials_table(text)
    for name in ("json", "short", "star"):
        run = runs(sweep)[name]
        summary = json.loads((run / "summary.json").read_text())
        cells = rows[run.name]
        for kind in ("final", "best"):
            for metric, value in summary[kind].items():
                if metric.startswith("eval/"):
                    assert (
                        float(cells[column(head, f"{kind} {metric.removeprefix('eval/')}")][1]["data-value"]) == value
                    )
        assert float(cells[column(head, "runtime")][1]["data-value"]) == summary["runtime_seconds"]
    # a metric the trial has not got sorts as missing; the chosen metric's column is marked
    failed = rows[runs(sweep)["failed"].name]
    assert failed[column(head, "final exact_match")][1]["data-value"] == ""
    assert "chosen" in failed[column(head, "final exact_match")][1]["class"]
    assert (
        "defect_recall" in head[column(head, "final defect_recall")]
        and rows[runs(sweep)["star"].name][column(head, "final defect_recall")][1]["data-value"] == ""
    )


@pytest.mark.slow
def test_figures_are_valid_pngs_embedded_in_the_page(report):
    text = report.read_text()
    pngs = sorted(report.parent.glob("*.png"))
    assert {p.name for p in pngs} >= {"curves.png", "param-prompt.png", "param-trainer.lr.png", "param-data.png"}
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG"
        assert base64.b64encode(png.read_bytes()).decode() in text
    # the failed trial is left out of the sweep plots, and the page says so
    assert re.search(r"param-trainer\.lr\.png: .*Left out: [^<]*trainer\.lr=1e30[^<]*\(failed\)", text)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def shown(text: str) -> str:
    """A prediction as the page shows it: control characters written out as \\xNN."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", text)


@pytest.mark.slow
def test_samples_line_up_every_trial_escaped(sweep, report):
    text = report.read_text()
    trials = runs(sweep)
    _, rows = trials_table(text)
    label = {name: rows[run.name][0][1]["data-value"] for name, run in trials.items()}
    pair = next(t for t in Tables(text).find(**{"class": "samples"}) if len(t["head"][0][1]) > 4)
    heads = [c[2] for c in pair["head"][0][1]]
    ids = json.loads((trials["json"] / "summary.json").read_text())["facts"]["sample_ids"]
    assert [attrs["data-id"] for attrs, _ in pair["rows"]] == ids
    for name in ("json", "short", "failed", "xss"):
        (col,) = [i for i, h in enumerate(heads) if h.startswith(label[name])]
        predictions = {r["id"]: r for r in jsonl(last(trials[name] / "samples"))}
        for attrs, cells in pair["rows"]:
            cell = cells[col]
            row = predictions[attrs["data-id"]]
            assert cell[1]["data-trial"] == label[name]
            assert shown(row["prediction"]) in cell[2]
            assert ("right" if row["correct"] else "wrong") in cell[1]["class"]
    assert XSS not in text and "<script>alert" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; " in text  # escaped, whichever entity a quote gets
    # the star trial's samples are another dataset's: a table of their own
    (star,) = [
        t
        for t in Tables(text).find(**{"class": "samples"})
        if any(c[2].startswith(label["star"]) for c in t["head"][0][1])
    ]
    assert len(star["head"][0][1]) == 4 and len(star["rows"]) == 4


def hand_count(rows: list[dict]) -> dict[tuple[str, str], int]:
    """Confusion counts of single-defect pair rows, worked out plainly from predictions.jsonl."""
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        p = r["parsed"]
        assert len(r["defects"]) <= 1, "the fixture's data has one defect per candidate"
        true, position = (r["defects"][0]["type"], r["defects"][0]["position"]) if r["defects"] else ("pass", None)
        if not p["ok"]:
            said = "unparseable"
        elif p["verdict"] == "pass":
            said = "pass"
        elif position is None:
            said = next((t for _, t in p["defects"] if t), "untyped")
        else:
            here = [t for pos, t in p["defects"] if pos == position]
            said = "elsewhere" if not here else next((t for t in here if t), "untyped")
        counts[true, said] = counts.get((true, said), 0) + 1
    return counts


@pytest.mark.slow
def test_confusion_matrices_match_a_hand_count(sweep, report):
    text = report.read_text()
    trials = runs(sweep)
    _, rows = trials_table(text)
    tables = Tables(text)
    for name in ("json", "short", "failed"):
        label = rows[trials[name].name][0][1]["data-value"]
        (table,) = tables.find(**{"class": "confusion", "data-trial": label})
        step = re.search(r"step (\d+)", table["caption"]).group(1)
        predictions = last(trials[name] / "predictions")
        assert int(step) == int(predictions.stem.split("-")[1])
        counted = {
            (c[1]["data-true"], c[1]["data-pred"]): int(c[2])
            for _, cells in table["rows"]
            for c in cells
            if "data-true" in c[1]
        }
        expected = hand_count(jsonl(predictions))
        assert {k: v for k, v in counted.items() if v} == expected
        assert sum(counted.values()) == 12  # test_size, one defect or none per row
    star_label = rows[trials["star"].name][0][1]["data-value"]
    assert not tables.find(**{"class": "confusion", "data-trial": star_label})
    assert f"{html.escape(star_label)}</b>: star task" in text


def test_single_run_report_goes_to_the_working_folder_and_an_unknown_metric_falls_back(
    completed_trial, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run, _ = completed_trial  # a star trial (tests/conftest.py)
    report = compare.main([str(run), "--metric", "eval/no_such_metric"])
    assert report == Path("report") / "report.html" and (tmp_path / "report" / "report.html").exists()
    text = report.read_text()
    assert "No trial has eval/no_such_metric; the report uses eval/exact_match." in text
    head, rows = trials_table(text)
    assert len(rows) == 1 and "chosen" in rows[run.name][column(head, "final exact_match")][1]["class"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_app(cwd, "vlmqc.compare", *args, timeout=120)


def test_bad_arguments_exit_2_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for arg in ("missing", "file.txt", "empty"):
        out = cli(arg, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert f"{arg}: " in out.stderr and ("not a folder" in out.stderr or "holds no run" in out.stderr)
    assert not (tmp_path / "report").exists()


def test_corrupt_summary_alone_still_makes_a_report(tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "comp')
    out = cli(str(run), "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    head, rows = trials_table((tmp_path / "out" / "report.html").read_text())
    cells = rows["broken"]
    assert (
        cells[column(head, "status")][1]["data-value"] == "unreadable"
        and "summary.json:" in cells[column(head, "status")][2]
    )


def page_notes(text: str) -> list[str]:
    """The page's notes on what it could not use, as plain text."""
    found = re.search(r'<ul class="notes">(.*?)</ul>', text, re.S)
    return (
        [html.unescape(re.sub(r"<[^>]+>", "", li)) for li in re.findall(r"<li>(.*?)</li>", found.group(1), re.S)]
        if found
        else []
    )


def rewrite(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_bad_fields_are_named_in_the_notes_and_the_rest_renders(sweep, tmp_path):
    good = copy_run(runs(sweep)["json"], tmp_path / "good")
    bad = copy_run(runs(sweep)["json"], tmp_path / "bad")
    summary = json.loads((bad / "summary.json").read_text())
    best = summary["best"]["eval/exact_match"]
    (bad / "summary.json").write_text(json.dumps(summary | {"final": "abc", "facts": [], "overrides": 5}))
    metrics = jsonl(bad / "metrics.jsonl")
    line = max(i for i, r in enumerate(metrics, 1) if "train/loss" in r)
    metrics[line - 1]["trainer/global_step"] = "4"
    rewrite(bad / "metrics.jsonl", metrics)
    samples, predictions = last(bad / "samples"), last(bad / "predictions")
    sample_rows, prediction_rows = jsonl(samples), jsonl(predictions)
    sample_rows[1]["prediction"] = 7
    prediction_rows[2]["parsed"] = None
    rewrite(samples, sample_rows)
    rewrite(predictions, prediction_rows)

    out = cli(str(good), str(bad), "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "out" / "report.html").read_text()
    notes = page_notes(text)
    for where, field in [
        (bad / "summary.json", "final"),
        (bad / "summary.json", "facts"),
        (bad / "summary.json", "overrides"),
        (f"{bad / 'metrics.jsonl'}:{line}", "trainer/global_step"),
        (f"{samples}:2", "prediction"),
        (f"{predictions}:3", "parsed"),
    ]:
        assert [n for n in notes if n.startswith(f"{where}: {field}: ")], (where, field, notes)
    assert not [n for n in notes if str(good) in n]

    # the rest of the doctored trial, and the other trial, render
    head, rows = trials_table(text)
    assert rows["bad"][column(head, "final exact_match")][1]["data-value"] == ""
    assert float(rows["bad"][column(head, "best exact_match")][1]["data-value"]) == best
    assert rows["good"][column(head, "final exact_match")][1]["data-value"] != ""
    assert (tmp_path / "out" / "curves.png").exists()
    tables = Tables(text)
    (pair,) = [
        t
        for t in tables.find(**{"class": "samples"})
        if any(c[1].get("data-trial") == "bad" for _, cells in t["rows"] for c in cells)
    ]
    shown_bad = {
        attrs["data-id"]: next(c[2] for c in cells if c[1].get("data-trial") == "bad") for attrs, cells in pair["rows"]
    }
    for i, row in enumerate(sample_rows):
        assert (
            shown(row["prediction"]) in shown_bad[row["id"]]
            if i != 1
            else "(no readable prediction)" in shown_bad[row["id"]]
        )
    (matrix,) = tables.find(**{"class": "confusion", "data-trial": "bad"})
    counted = {
        (c[1]["data-true"], c[1]["data-pred"]): int(c[2])
        for _, cells in matrix["rows"]
        for c in cells
        if "data-true" in c[1]
    }
    assert {k: v for k, v in counted.items() if v} == hand_count(prediction_rows[:2] + prediction_rows[3:])
    assert "1 row(s) of" in text


@pytest.mark.slow
def test_sample_images_are_embedded_only_from_inside_the_run_folder(sweep, tmp_path):
    run = copy_run(runs(sweep)["json"], tmp_path / "run")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (64, 64), (255, 0, 255)).save(outside)
    (run / "samples" / "images" / "link.png").symlink_to(outside)
    samples = last(run / "samples")
    rows = jsonl(samples)
    assert len(rows) == 4
    rows[0]["image"], rows[1]["image"], rows[2]["image"] = "../outside.png", str(outside), "samples/images/link.png"
    rewrite(samples, rows)

    out = cli(str(run), "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "out" / "report.html").read_text()
    notes = page_notes(text)
    for i, row in enumerate(rows):
        (tr,) = re.findall(rf'<tr data-id="{re.escape(row["id"])}">.*?</tr>', text, re.S)
        assert ("<img" in tr) == (i == 3), tr[:300]
        assert bool([n for n in notes if n.startswith(f"{samples}:{i + 1}: image: ")]) == (i != 3), notes


@pytest.mark.slow
def test_baseline_chance_and_best_step_are_shown_and_a_trial_not_above_chance_is_marked(sweep, tmp_path):
    """Summaries with the base model's evaluation, the dataset's chance levels and the best value's step, beside one
    without."""
    plain = copy_run(runs(sweep)["json"], tmp_path / "plain")
    # training evaluates the base model and records chance levels (and, on pair data, the pixel ceiling) by
    # default: the plain trial is one written without them
    summary = json.loads((plain / "summary.json").read_text())
    assert summary["ceiling"]["examples"] >= 1  # the sweep's real trial recorded one
    (plain / "summary.json").write_text(
        json.dumps({k: v for k, v in summary.items() if k not in ("baseline", "chance", "ceiling")})
    )
    # chance levels flat, and as the run record writes them (the higher guesser's level counts)
    chances = {
        "above": {"eval/exact_match": 0.25, "eval/verdict_accuracy": 0.5},
        "at": {
            "answer": {"pair": "pass"},
            "prior": {"eval/exact_match": 0.25, "eval/verdict_accuracy": 0.375},
            "uniform": {"eval/verdict_accuracy": 0.5},
        },
    }
    for name, final in (("above", 0.6), ("at", 0.25)):
        run = copy_run(plain, tmp_path / name)
        summary = json.loads((run / "summary.json").read_text())
        summary["final"]["eval/exact_match"] = final
        summary["best"] |= {"step": 3, "eval/exact_match": 0.7}
        summary |= {"baseline": {"step": 0, "eval/exact_match": 0.125}, "chance": chances[name]}
        if name == "above":  # the pixel-difference detector's levels, as a trial on pair data records them
            summary["ceiling"] = {
                "eval/verdict_accuracy": 0.99,
                "eval/position_accuracy": 1.0,
                "verdict_auroc": 0.998,
                "examples": 12,
            }
        (run / "summary.json").write_text(json.dumps(summary))
    out = cli(*(str(tmp_path / n) for n in ("plain", "above", "at")), "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "out" / "report.html").read_text()
    head, rows = trials_table(text)
    for name in ("above", "at"):
        cells = rows[name]
        assert float(cells[column(head, "baseline exact_match")][1]["data-value"]) == 0.125
        assert (
            cells[column(head, "chance")][2].startswith("0.250")
            and "chance 0.500" in cells[column(head, "final verdict_accuracy")][2]
        )
        assert cells[column(head, "best step")][2] == "3"
    # the level's kind, where the summary names the guessers: the prior's 0.250, the uniform guess's 0.500
    assert rows["at"][column(head, "chance")][2] == "0.250prior"
    assert "chance 0.500 (uniform)" in rows["at"][column(head, "final verdict_accuracy")][2]
    assert rows["plain"][column(head, "baseline exact_match")][1]["data-value"] == ""
    assert rows["plain"][column(head, "chance")][1]["data-value"] == ""
    assert "pixels 0.990" in rows["above"][column(head, "final verdict_accuracy")][2]
    assert (
        "pixels"
        not in rows["at"][column(head, "final verdict_accuracy")][2]
        + rows["plain"][column(head, "final verdict_accuracy")][2]
    )
    assert (
        "pixels" not in rows["above"][column(head, "final exact_match")][2]
    )  # the detector has no exact match: nothing shown
    (table,) = Tables(text).find(id="trials")
    marked = {Path(attrs["data-dir"]).name for attrs, _ in table["rows"] if "below-chance" in attrs["class"].split()}
    assert marked == {"at"}
    assert "≤ chance" in rows["at"][0][2] and "≤ chance" not in rows["above"][0][2] + rows["plain"][0][2]
    assert not page_notes(text)


@pytest.mark.slow
@needs_chromium  # in CI (.ci/run installs Chromium) this test runs or fails, never skips
def test_report_in_a_browser_loads_clean_and_sorts(sweep, report, tmp_path):
    with chromium_page(1400, 1000) as (page, problems, dialogs):
        page.on(
            "request",
            lambda r: problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:")) else None,
        )
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.locator("#trials tbody tr").count() == 6

        head = page.locator(
            "#trials thead th.chosen", has_text="final"
        ).first  # not the baseline's column: the failed trial has one
        index = page.locator("#trials thead th").all_inner_texts().index(head.inner_text())

        def values() -> list[str]:
            return page.eval_on_selector_all(
                "#trials tbody tr", f"rows => rows.map(r => r.cells[{index}].getAttribute('data-value'))"
            )

        head.click()
        first = values()
        numbers = [float(v) for v in first if v]
        assert (
            numbers == sorted(numbers, reverse=True)
            and first[len(numbers) :] == [""] * (len(first) - len(numbers))
            and len(numbers) == 4
        )
        head.click()
        second = values()
        assert [float(v) for v in second if v] == sorted(numbers) and second[-2:] == [
            "",
            "",
        ]  # missing values stay last
        assert head.get_attribute("aria-sort") == "ascending"
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    shutil.copy(tmp_path / "report.png", "/tmp/vlmqc-report-screenshot.png")
    assert problems == [] and dialogs == []


def write_trials(root: Path, n: int, extra_metrics: int) -> dict[str, float]:
    """n completed trials written as the run record writes them, each with the registered metrics
    and ``extra_metrics`` more; exact match rises with the trial's number except the last, which
    plateaus. Returns each run folder's final exact match."""
    finals = {}
    for i in range(n):
        run = root / f"trial-{i:02d}"
        run.mkdir(parents=True)
        exact = 0.5 if i == n - 1 else round(0.3 + 0.6 * (i % 7) / 7 + 0.001 * i, 4)
        scores = {m: 0.4 for m in METRICS if m != "eval/loss"} | {
            f"eval/extra_{k:02d}": 0.1 * (k % 10) for k in range(extra_metrics)
        }
        final = scores | {"eval/exact_match": exact, "eval/verdict_accuracy": 0.877}
        summary = {
            "schema_version": 2,
            "status": "completed",
            "run_name": f"trainer.lr={i}",
            "overrides": [f"trainer.lr={i}", "data=pair_round"],
            "final": final | {"step": 8},
            "best": final | {"step": 4, "eval/exact_match": exact + 0.01},
            "baseline": scores | {"step": 0, "eval/exact_match": 0.99},  # a baseline far above every trial
            "chance": {
                "prior": {"eval/exact_match": 0.0, "eval/verdict_accuracy": 0.5},
                "constant": {"eval/exact_match": 0.5, "eval/verdict_accuracy": 0.5},
            },
            "facts": {"dataset_hash": "h"},
            "config": {},
            "best_metric": "eval/exact_match",
        }
        if i == n - 1:
            summary["diagnosis"] = diagnose(
                [{"train/loss": 0.37} for _ in range(12)], final, summary["chance"], "eval/exact_match", 300
            )
        (run / "summary.json").write_text(json.dumps(summary))
        finals[run.name] = exact
    return finals


def test_the_first_screen_says_which_trial_is_best_and_by_how_much(tmp_path):
    """40 trials of 20 metrics: the first table has the sweep metric's final, lead, best, best step,
    chance and ceiling, a column each, the trials ranked and the best marked; the baseline and the
    other metrics follow in collapsible groups."""
    finals = write_trials(tmp_path / "sweep", 40, extra_metrics=12)
    report = compare.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    text = report.read_text()
    tables = Tables(text)
    (first,) = tables.find(id="trials")
    head = [c[2] for c in first["head"][0][1]]
    assert head[:7] == ["trial", "final exact_match", "vs best", "best exact_match", "best step", "chance", "ceiling"]
    assert len(head) <= 12, head  # readable: the trial, six numbers, the swept setting, status and runtime
    order = [Path(attrs["data-dir"]).name for attrs, _ in first["rows"]]
    assert order == sorted(finals, key=lambda k: -finals[k])  # best first
    best, runner_up = order[0], order[1]
    lead = finals[best] - finals[runner_up]
    (best_attrs, best_cells) = first["rows"][0]
    assert "best" in best_attrs["class"].split() and "★ best" in best_cells[0][2]
    assert not [a for a, _ in first["rows"][1:] if "best" in a["class"].split()]
    assert float(best_cells[2][1]["data-value"]) == pytest.approx(lead)
    assert best_cells[2][2] == f"best, by {lead:.3f} over trainer.lr={int(runner_up.removeprefix('trial-'))}"
    last = first["rows"][-1][1]
    assert float(last[2][1]["data-value"]) == pytest.approx(min(finals.values()) - finals[best])
    # the chance column: the one level, named by kind (a constant "pass" to all, not the prior's 0)
    assert best_cells[5][2] == "0.500constant"
    # the baseline leads nothing: it sits in a collapsible group after the first table
    assert "baseline" not in " ".join(head)
    assert re.search(r'<details class="more" id="more-baseline">', text)
    assert text.index('id="trials"') < text.index('id="metrics-baseline"')
    scored = len([m for m in METRICS if m != "eval/loss"]) + 12  # every metric the trials log, and the extra ones
    for group, metrics in (("metrics-final", scored - 1), ("metrics-best", scored - 1), ("metrics-baseline", scored)):
        (t,) = tables.find(id=group)
        assert len(t["head"][0][1]) == 1 + metrics and len(t["rows"]) == 40
    # the plateau names its metric, and every other metric against its own level
    plateaued = next(cells for attrs, cells in first["rows"] if Path(attrs["data-dir"]).name == "trial-39")
    assert "plateau on exact_match" in plateaued[0][2]
    assert "verdict_accuracy 0.877 above chance (0.500, prior)" in plateaued[0][2]
    assert "exact_match 0.500 at chance (0.500, constant)" in plateaued[0][2]
