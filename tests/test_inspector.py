"""A completed trial used as an inspector (vlmqc/inspector.py, ``python -m vlmqc.predict``): tiny
trials are trained in a subprocess, then their held-out images are answered again from files, as
a user would give them, and the answers are held against what the trial itself recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_app
from PIL import Image

from vlmqc.data import store
from vlmqc.runs.records import read_predictions, read_summary

SIZES = ["data.train_size=24", "data.test_size=8"]  # synthetic data's; a custom folder's are its own
SHRINK = [
    "logger=none",
    "trainer.max_steps=6",
    "trainer.logging_steps=2",
    "trainer.save_steps=6",
    "trainer.samples=2",
    "trainer.eval_batch_size=8",
    "trainer.eval_every=0",
]


def train(tmp: Path, *overrides: str, sizes: list[str] = SIZES) -> Path:
    out = run_app(tmp, "vlmqc.train", f"hydra.run.dir={tmp / 'run'}", *SHRINK, *sizes, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run"


def recorded(run_dir: Path) -> tuple[list, list[dict], dict]:
    """The trial's final predictions, its test rows (from the dataset it was trained on) and its summary."""
    summary, problems = read_summary(run_dir / "summary.json")
    assert summary is not None and not problems
    rows, problems = read_predictions(run_dir / "predictions" / f"step-{summary.step:06d}.jsonl")
    assert not problems and summary.step > 0
    test = list(store.load(Path(summary.facts["dataset_path"]))["test"])
    assert [r["id"] for r in test] == [r.id for r in rows]
    return rows, test, summary.to_dict()


def halves(image: Image.Image, meta: str) -> tuple[Image.Image, Image.Image]:
    """Reference and candidate of a stored stacked pair, cut where its meta says."""
    stack = json.loads(meta)["stack"]
    return image.crop((0, 0, image.width, stack["top"])), image.crop(
        (0, stack["top"] + stack["gap"], image.width, image.height)
    )


def write_pairs(folder: Path, test: list[dict], pair_of, labels: bool = True) -> Path:
    """Each test row's candidate and reference as PNG files, and a custom-data metadata.jsonl naming them."""
    folder.mkdir(parents=True)
    lines = []
    for r in test:
        ref, cand = pair_of(r)
        ref.save(folder / f"{r['id']}-reference.png")
        cand.save(folder / f"{r['id']}.png")
        line = {"file": f"{r['id']}.png", "reference": f"{r['id']}-reference.png"}
        lines.append({**line, "verdict": r["verdict"], "defects": r["defects"]} if labels else line)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder / "metadata.jsonl"


def predict_cli(tmp: Path, *args: str):
    return run_app(tmp, "vlmqc.predict", *args)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def star_trial(completed_trial) -> Path:
    """The session's trial (tests/conftest.py): star data, trained in its own process."""
    return completed_trial[0]


@pytest.fixture(scope="module")
def pair_trial(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("pair"), "data=pair_square")


def test_star_trial_answers_its_held_out_images_as_it_did(star_trial, tmp_path, capsys):
    """``python -m vlmqc.predict``'s main in this process (the tests below run it as a command)."""
    from vlmqc.cli.predict import main

    rows, test, _ = recorded(star_trial)
    folder = tmp_path / "boards"
    folder.mkdir()
    for r in test:
        r["image"].save(folder / f"{r['id']}.png")
    code = main([str(star_trial), str(folder), "--out", str(tmp_path / "p.jsonl")])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    got = rows_of(tmp_path / "p.jsonl")
    assert [Path(g["image"]).stem for g in got] == [r.id for r in rows]
    assert [g["answer"] for g in got] == [r.prediction for r in rows]  # the same texts, byte for byte
    assert len({g["answer"] for g in got}) > 1  # not one answer for every image: the images reached the model
    assert [g["target"] for g in got] == [r.parsed["target"] for r in rows] and [g["parsed"] for g in got] == [
        r.parsed["ok"] for r in rows
    ]
    assert all(g["seconds"] > 0 and g["reference"] is None for g in got)
    assert "predicting" in out.err  # the progress bar, on stderr
    assert not (tmp_path / "p.metrics.json").exists()  # no labels, no metrics


@pytest.mark.slow  # a pair trial, and the command in its own process
def test_pair_trial_restacks_files_as_in_training_and_prints_its_metrics(pair_trial, tmp_path):
    rows, test, summary = recorded(pair_trial)
    metadata = write_pairs(tmp_path / "data", test, lambda r: halves(r["image"], r["meta"]))
    out = predict_cli(tmp_path, str(pair_trial), str(metadata), "--out", str(tmp_path / "p.jsonl"), "--batch-size", "8")
    assert out.returncode == 0, out.stderr[-3000:]
    got = rows_of(tmp_path / "p.jsonl")
    assert [g["answer"] for g in got] == [r.prediction for r in rows]
    assert [g["verdict"] for g in got] == [r.parsed["verdict"] for r in rows]
    assert [g["defects"] for g in got] == [[{"position": p, "type": t} for p, t in r.parsed["defects"]] for r in rows]
    assert (
        got[0]["labels"]["verdict"] == test[0]["verdict"]
        and Path(got[0]["reference"]).name == f"{test[0]['id']}-reference.png"
    )
    # the trial's metrics: every one it recorded at its final step (eval/loss is the Trainer's, not an answer's)
    final = {k: v for k, v in summary["final"].items() if k not in ("step", "eval/loss")}
    written = json.loads((tmp_path / "p.metrics.json").read_text())["metrics"]
    assert written.keys() == final.keys() and all(written[k] == pytest.approx(v) for k, v in final.items())
    printed = dict(line.split(" = ") for line in out.stdout.splitlines() if " = " in line)
    assert printed.keys() == final.keys() and all(
        float(printed[k]) == pytest.approx(v, abs=1e-4) for k, v in final.items()
    )


@pytest.mark.slow  # a pair trial
def test_already_stacked_pairs_are_taken_as_they_are(pair_trial):
    from vlmqc.inspector import Inspector

    rows, test, _ = recorded(pair_trial)
    inspector = Inspector.load(pair_trial, device="cpu")
    got = inspector.predict([r["image"] for r in test], ids=[r["id"] for r in test])
    assert [g["answer"] for g in got] == [r.prediction for r in rows]
    assert [g["id"] for g in got] == [r.id for r in rows]


@pytest.mark.slow  # a diff trial, and the command in its own process
def test_diff_trial_computes_its_image_from_the_pair_as_in_training(tmp_path_factory, tmp_path):
    run_dir = train(tmp_path_factory.mktemp("diff"), "data=diff")
    rows, test, _ = recorded(run_dir)
    # the stored diff image is not what is given: the raw pair (kept beside it) is
    metadata = write_pairs(tmp_path / "data", test, lambda r: halves(r["source_image"], r["meta"]), labels=False)
    out = predict_cli(tmp_path, str(run_dir), str(metadata), "--out", str(tmp_path / "p.jsonl"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert [g["answer"] for g in rows_of(tmp_path / "p.jsonl")] == [r.prediction for r in rows]


@pytest.mark.slow  # a pair trial, and two merges in their own processes
def test_merged_checkpoint_loads_without_peft_and_answers_the_same(pair_trial, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmqc.evaluation.generate import predict
    from vlmqc.inspector import CompletedRun
    from vlmqc.models import family_for

    rows, test, _ = recorded(pair_trial)
    out = predict_cli(tmp_path, str(pair_trial), "--merge", str(tmp_path / "merged"))
    assert out.returncode == 0, out.stderr[-3000:]
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "config.json" in files and "model.safetensors" in files and "adapter_config.json" not in files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # the temporary folder renamed, not left
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in model.named_parameters())
    processor = AutoProcessor.from_pretrained(tmp_path / "merged")
    trial = CompletedRun.read(pair_trial)
    answers = predict(
        model, processor, family_for(model.config.model_type), trial.prompt, test, 8, trial.trainer.max_new_tokens
    )
    assert [a["text"] for a in answers] == [r.prediction for r in rows]
    # a second merge into the same folder is refused: the first is not overwritten
    again = predict_cli(tmp_path, str(pair_trial), "--merge", str(tmp_path / "merged"))
    assert again.returncode == 2 and str(tmp_path / "merged") in again.stderr


@pytest.mark.slow  # a pair trial, and ten commands in their own processes
def test_bad_input_exits_2_naming_it_and_writes_nothing(star_trial, pair_trial, tmp_path):
    _, test, summary = recorded(pair_trial)
    ref, cand = halves(test[0]["image"], test[0]["meta"])
    cand.save(tmp_path / "cand.png")
    ref.resize((ref.width // 2, ref.height // 2)).save(tmp_path / "small-ref.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "meta").mkdir()
    cand.save(tmp_path / "meta" / "cand.png")
    (tmp_path / "meta" / "metadata.jsonl").write_text('{"file": "cand.png", "verdict": "pass"}\n{"verdict": "pass"}\n')

    def folder(name: str, text: str | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        if text is not None:
            (d / "summary.json").write_text(text)
        return d

    running = folder("running", json.dumps({**summary, "status": "running"}))
    no_adapter = folder("no_adapter", json.dumps(summary))  # completed, but its adapter/ is not there
    garbled = folder("garbled", '{"status": "completed", ')
    empty = folder("empty", None)
    cases = [
        ([str(empty), str(tmp_path / "cand.png")], [str(empty), "summary.json"]),
        # a running record no process holds: the trial died (vlmqc/runs/lock.py)
        ([str(running), str(tmp_path / "cand.png")], [str(running), "not completed (status 'died'"]),
        ([str(no_adapter), str(tmp_path / "cand.png")], [str(no_adapter), "adapter/"]),
        ([str(garbled), str(tmp_path / "cand.png")], [str(garbled / "summary.json"), "not JSON"]),
        (
            [str(pair_trial), str(tmp_path / "broken.png"), "--reference", str(tmp_path / "cand.png")],
            [str(tmp_path / "broken.png"), "unreadable"],
        ),
        (
            [str(pair_trial), str(tmp_path / "cand.png"), "--reference", str(tmp_path / "small-ref.png")],
            [str(tmp_path / "small-ref.png"), "size"],
        ),
        (
            [str(pair_trial), str(tmp_path / "meta" / "metadata.jsonl")],
            [f"{tmp_path / 'meta' / 'metadata.jsonl'}:2", "no image"],
        ),
        ([str(star_trial), str(tmp_path / "cand.png"), "--reference", str(tmp_path / "cand.png")], ["star task"]),
        (
            [str(star_trial), str(tmp_path / "cand.png"), "--merge", str(tmp_path / "meta")],
            ["--merge", str(tmp_path / "meta"), "not an empty folder"],
        ),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(star_trial), str(tmp_path / "cand.png"), "--device", "cuda"], ["'cuda'", "no CUDA device"]))
    for args, named in cases:
        out_file = tmp_path / "out" / "p.jsonl"
        out = predict_cli(tmp_path, *args, "--out", str(out_file))
        assert out.returncode == 2, (args, out.stderr[-2000:])
        error = out.stderr.strip().splitlines()[-1] if "problem(s)" not in out.stderr else out.stderr
        assert all(n in out.stderr for n in named), (named, error)
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "out").exists()  # nothing written, not even the folder


@pytest.mark.slow  # a trial of its own
def test_full_fine_tuning_trial_answers_with_its_own_model_folder(tmp_path_factory):
    from peft import PeftModel

    from vlmqc.inspector import Inspector

    run_dir = train(tmp_path_factory.mktemp("full"), "lora=full")
    assert not (run_dir / "adapter").exists()
    rows, test, _ = recorded(run_dir)
    inspector = Inspector.load(run_dir, device="cpu")
    assert not isinstance(inspector.model, PeftModel)
    got = inspector.predict([r["image"] for r in test], ids=[r["id"] for r in test])
    assert [g["answer"] for g in got] == [r.prediction for r in rows]


@pytest.mark.slow  # two trials
def test_custom_trial_stacks_each_rows_reference_as_its_data_did(pair_trial, tmp_path_factory, tmp_path):
    # a custom folder made of the pair trial's boards: candidate and reference files per row
    _, test, summary = recorded(pair_trial)
    train_rows = list(store.load(Path(summary["facts"]["dataset_path"]))["train"])
    folder = tmp_path / "custom"
    lines = []
    for split, rows in (("train", train_rows), ("test", test)):
        write_pairs(folder / split, rows, lambda r: halves(r["image"], r["meta"]))
        lines += [
            {**json.loads(line), "split": split}
            for line in (folder / split / "metadata.jsonl").read_text().splitlines()
        ]
    for line in lines:
        line["file"], line["reference"] = f"{line['split']}/{line['file']}", f"{line['split']}/{line['reference']}"
    (folder / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run_dir = train(tmp_path_factory.mktemp("custom"), "data=custom", f"data.path={folder}", sizes=[])
    rows, _, _ = recorded(run_dir)
    assert [r.id for r in rows] == [f"test/{r['id']}.png" for r in test]
    out = predict_cli(
        tmp_path, str(run_dir), str(folder / "test" / "metadata.jsonl"), "--out", str(tmp_path / "p.jsonl")
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [g["answer"] for g in rows_of(tmp_path / "p.jsonl")] == [r.prediction for r in rows]


def test_inputs_are_checked_before_the_model_loads(star_trial, tmp_path):
    """A bad image is named at once (issue 21: 25 s of model loading first, on the tiny model):
    with the trial's weights made unloadable, the error must still be the image's."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(star_trial, run)
    for weights in (run / "adapter").glob("adapter_model.*"):
        weights.write_bytes(b"not weights")  # loading the model would fail
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = predict_cli(tmp_path, str(run), str(bad), "--out", str(tmp_path / "p.jsonl"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "bad.png" in out.stderr and "unreadable image" in out.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_the_adapter_names_a_portable_base_model(star_trial):
    """adapter_config.json and the model card name the base model by an id that other machines
    can resolve, never this machine's cache folder (where the random model was built)."""
    config = json.loads((star_trial / "adapter" / "adapter_config.json").read_text())
    summary = json.loads((star_trial / "summary.json").read_text())
    cache = str(Path(summary["facts"]["model_path"]).parent)
    base = config["base_model_name_or_path"]
    assert base == f"vlmqc-random:llava/{Path(summary['facts']['model_path']).name}"
    assert cache not in (star_trial / "adapter" / "README.md").read_text()
    assert cache not in json.dumps(config)
