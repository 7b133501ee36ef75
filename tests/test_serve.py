"""The trial's web page: a tiny trained trial served by ``python -m vlmqc.serve`` on a free port,
asked over HTTP and in headless Chromium, its answers checked against ``Inspector.predict``."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import chromium_page, needs_chromium, run_app
from PIL import Image

from vlmqc.cli.serve import is_loopback
from vlmqc.data import board
from vlmqc.data.synth import pair_gap
from vlmqc.serve import marks

TINY = [
    "data=pair_mixed",
    "lora=r4",
    "data.train_size=32",
    "data.test_size=12",
    "trainer.max_steps=4",
    "trainer.logging_steps=2",
    "trainer.samples=4",
    "logger=none",
]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    run = root / "run"
    done = run_app(root, "vlmqc.train", *TINY, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def pair(trial) -> tuple[Image.Image, Image.Image]:
    """A reference and a candidate: the halves of one of the trial's test images, cut where the
    data code stacked them (its ``stack`` meta is not in the sample, so from the render geometry)."""
    stacked = Image.open(next((trial / "samples" / "images").glob("*.png"))).convert("RGB")
    h, gap = board.Geometry(stacked.width).height, pair_gap(stacked.width)
    assert stacked.height == 2 * h + gap
    return stacked.crop((0, 0, stacked.width, h)), stacked.crop((0, h + gap, stacked.width, stacked.height))


@pytest.fixture(scope="module")
def expected(trial, pair) -> dict:
    from vlmqc.inspector import Inspector

    reference, candidate = pair
    return Inspector.load(trial, device="cpu").predict([candidate], references=[reference])[0]


@pytest.fixture(scope="module")
def server(trial, tmp_path_factory):
    """The page, as a user starts it, on a free port; its own TMPDIR, to see it stays empty."""
    tmp = tmp_path_factory.mktemp("server-tmp")
    proc = run_app(
        trial.parent, "vlmqc.serve", str(trial), "--port", "0", "--device", "cpu", env={"TMPDIR": str(tmp)}, wait=False
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if m := re.match(r"vlmqc\.serve: .* on (http://127\.0\.0\.1:\d+/)$", line.strip()):
            break
    else:
        pytest.fail("the server exited: " + "".join(lines)[-3000:])
    try:
        yield {"url": m.group(1), "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ask(server, **files) -> requests.Response:
    return requests.post(
        server["url"] + "api/predict", files={k: (f"{k}.png", v, "image/png") for k, v in files.items()}, timeout=120
    )


@pytest.mark.slow
def test_an_upload_answers_as_the_inspector_does(server, pair, expected, trial):
    reference, candidate = pair
    before = sorted(p.relative_to(trial) for p in trial.rglob("*"))
    r = ask(server, candidate=png(candidate), reference=png(reference))
    assert r.status_code == 200, r.text
    got = r.json()
    for key in ("verdict", "defects", "target", "answer", "parsed"):
        assert got[key] == expected[key], key
    assert got["seconds"] > 0
    assert got["positions"] == marks.positions_of(expected)
    image = Image.open(io.BytesIO(base64.b64decode(got["image"].split(",", 1)[1])))
    assert image.width == 2 * candidate.width  # the candidate, enlarged for the page
    assert sorted(p.relative_to(trial) for p in trial.rglob("*")) == before  # nothing written in the run folder


@pytest.mark.slow
def test_the_page_lists_the_trial_and_its_test_images(server, trial):
    page = requests.get(server["url"], timeout=30)
    assert page.status_code == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["run_name"] in page.text and "pair_mixed" in page.text
    ids = summary["facts"]["sample_ids"]
    assert all(f'value="{i}"' in page.text for i in ids)
    r = requests.post(server["url"], data={"example": ids[0]}, timeout=120)
    assert r.status_code == 200 and 'id="verdict"' in r.text and 'id="marked"' in r.text


@pytest.mark.slow
def test_bad_uploads_get_a_clear_message_and_nothing_is_spooled_to_disk(server, pair):
    reference, candidate = pair
    spooled = sorted(os.listdir(server["tmp"]))
    cases = [
        ({"candidate": b"GIF89a but not really"}, 400, "the candidate is not an image Pillow can read"),
        (
            {"candidate": png(candidate), "reference": png(reference.resize((100, 50)))},
            400,
            "the reference is 100 x 50 pixels but the candidate is",
        ),
        (
            {"candidate": png(candidate)},
            400,
            "stacked pair",
        ),  # a pair trial's candidate alone: the inspector's own refusal
        ({"candidate": b"\0" * (17 * 2**20)}, 413, "larger than 16 MB"),
    ]
    for files, status, message in cases:
        r = ask(server, **files)
        assert r.status_code == status and message in r.json()["error"], (status, r.text[:300])
    page = requests.post(server["url"], files={"candidate": ("x.png", b"junk", "image/png")}, timeout=30)
    assert page.status_code == 400 and "not an image Pillow can read" in page.text and "Traceback" not in page.text
    # a file werkzeug would spool to a temporary file (over 500 kB), read in memory instead
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8))
    r = ask(server, candidate=png(noise), reference=png(reference))  # refused after reading, for its size
    assert len(png(noise)) > 10**6 and r.status_code == 400 and "700 x 700" in r.json()["error"]
    assert sorted(os.listdir(server["tmp"])) == spooled


def test_the_app_in_process_shows_the_trial_and_answers_as_the_inspector_does(completed_trial):
    """The page's app through Flask's test client, around the session's star trial (tests/conftest.py):
    the page lists the trial and its test images; one of them, picked by its id or uploaded, gets
    the inspector's answer for that image; a file that is no image is refused."""
    from vlmqc.inspector import Inspector
    from vlmqc.runs.records import read_samples
    from vlmqc.serve.app import create_app

    run, _ = completed_trial
    summary = json.loads((run / "summary.json").read_text())
    inspector = Inspector.load(run, device="cpu")
    client = create_app(inspector, run).test_client()
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert summary["run_name"] in page.text and all(f'value="{i}"' in page.text for i in summary["facts"]["sample_ids"])
    samples, problems = read_samples(run / "samples" / f"step-{summary['step']:06d}.jsonl")
    assert samples and not problems
    sample = samples[0]
    with Image.open(run / sample.image) as image:
        expected = inspector.predict([image.convert("RGB")])[0]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    picked = client.post("/api/predict", data={"example": sample.id})
    assert picked.status_code == 200, picked.text
    for key in ("verdict", "defects", "target", "answer", "parsed"):
        assert picked.json[key] == expected[key], key
    assert picked.json["seconds"] > 0
    uploaded = client.post(
        "/api/predict", data={"candidate": (io.BytesIO((run / sample.image).read_bytes()), "board.png")}
    )
    assert uploaded.status_code == 200 and uploaded.json["answer"] == expected["answer"]
    shown = client.post("/", data={"example": sample.id})
    assert shown.status_code == 200 and 'id="marked"' in shown.text and 'id="truth"' in shown.text
    refused = client.post("/api/predict", data={"candidate": (io.BytesIO(b"GIF89a but not really"), "c.png")})
    assert refused.status_code == 400 and "the candidate is not an image Pillow can read" in refused.json["error"]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written in the run folder


def test_marks_outline_the_named_cells_only():
    # a board image drawn by the data code, marked at C5: magenta appears around C5 and nowhere else
    image = Image.new("RGB", (448, board.Geometry(448).height), (200, 200, 200))
    marked, note = marks.mark(image, ["C5"])
    assert note is None
    ys, xs = np.nonzero(np.all(np.asarray(marked) == marks.MARK, axis=-1))
    x0, y0, x1, y1 = board.Geometry(marked.width).cell_box(1, 4)
    assert (
        xs.min() < x0 < xs.max() and xs.min() < x1 < xs.max() and ys.min() < y0 < ys.max() and ys.min() < y1 < ys.max()
    )
    assert xs.max() - xs.min() < 1.5 * (x1 - x0)  # one cell, not a row of them
    unmarked, note = marks.mark(Image.new("RGB", (300, 300)), ["C5"])
    assert "cannot be placed" in note and not np.all(np.asarray(unmarked) == marks.MARK, axis=-1).any()


def test_a_folder_that_is_not_a_trial_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    """``python -m vlmqc.serve`` run in this process (runpy, as ``-m`` runs it)."""
    monkeypatch.setattr(sys, "argv", ["vlmqc.serve", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("vlmqc.serve", run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "nowhere" in err and "Traceback" not in err


@pytest.mark.slow  # the same in a real process
def test_a_folder_that_is_not_a_trial_exits_2_naming_it(tmp_path):
    done = run_app(tmp_path, "vlmqc.serve", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "nowhere" in done.stderr and "Traceback" not in done.stderr


def test_only_loopback_is_local():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


@pytest.mark.slow
@needs_chromium  # in CI (.ci/run installs Chromium) this test runs or fails, never skips
def test_the_page_in_a_browser_answers_an_upload(server, pair, expected, tmp_path):
    reference, candidate = pair
    (tmp_path / "candidate.png").write_bytes(png(candidate))
    (tmp_path / "reference.png").write_bytes(png(reference))
    with chromium_page(1200, 900) as (page, problems, dialogs):
        page.on(
            "request",
            lambda r: problems.append(f"request: {r.url}") if not r.url.startswith((server["url"], "data:")) else None,
        )
        page.goto(server["url"])
        page.wait_for_load_state("load")
        page.set_input_files("input[name=candidate]", str(tmp_path / "candidate.png"))
        page.set_input_files("input[name=reference]", str(tmp_path / "reference.png"))
        with page.expect_navigation(timeout=120_000):
            page.click("button[type=submit]")
        assert page.locator("#verdict").inner_text() == (expected["verdict"] or "unreadable")
        # control characters (tiny models write NULs) are shown written out, as \x00
        assert page.locator("#answer").inner_text() == re.sub(
            r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", expected["answer"]
        )
        assert page.eval_on_selector("#marked", "img => img.complete && img.naturalWidth") == 2 * candidate.width
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    shutil.copy(tmp_path / "serve.png", "/tmp/vlmqc-serve-screenshot.png")
    assert problems == [] and dialogs == []


def test_the_app_refuses_other_hosts_cross_site_posts_and_work_beyond_its_slots(completed_trial, monkeypatch):
    """DNS rebinding (a page of evil.example whose name now points here) sends its own Host; a
    cross-site form sends its Origin: both refused. Requests beyond the slots wait, then get 503,
    rather than each decoding a large upload at once (four 5000 x 5000 pairs once took 4.85 GB)."""
    import threading

    from vlmqc.inspector import Inspector
    from vlmqc.runs.records import read_samples
    from vlmqc.serve import app as serve_app

    run, _ = completed_trial
    summary = json.loads((run / "summary.json").read_text())
    inspector = Inspector.load(run, device="cpu")
    samples, _ = read_samples(run / "samples" / f"step-{summary['step']:06d}.jsonl")
    sample = samples[0]
    client = serve_app.create_app(inspector, run).test_client()
    assert client.get("/").status_code == 200  # the test client's Host is localhost
    rebound = client.get("/", headers={"Host": "evil.example"})
    assert rebound.status_code == 403 and "not for evil.example" in rebound.text
    assert (
        client.post("/api/predict", data={"example": sample.id}, headers={"Host": "evil.example:8000"}).status_code
        == 403
    )
    cross = client.post("/api/predict", data={"example": sample.id}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "another site (http://evil.example)" in cross.json["error"]
    fetched = client.post("/", data={"example": sample.id}, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetched.status_code == 403 and "another site" in fetched.text
    sandboxed = client.post("/api/predict", data={"example": sample.id}, headers={"Origin": "null"})
    assert sandboxed.status_code == 403, "a sandboxed frame's or a file:// page's POST"
    own = client.post("/api/predict", data={"example": sample.id}, headers={"Origin": "http://localhost"})
    assert own.status_code == 200, own.text
    # a server bound to another address answers its own name only
    named = serve_app.create_app(inspector, run, hosts=("10.1.2.3",)).test_client()
    assert named.get("/", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert named.get("/").status_code == 403

    class Held:  # the inspector, held inside its first answer until released
        def __init__(self):
            self.inside, self.go = threading.Event(), threading.Event()

        def predict(self, *args, **kwargs):
            self.inside.set()
            assert self.go.wait(60)
            return inspector.predict(*args, **kwargs)

    held = Held()
    monkeypatch.setattr(serve_app, "BUSY_WAIT_S", 0.2)
    app = serve_app.create_app(held, run, slots=1)
    first: list = []
    worker = threading.Thread(
        target=lambda: first.append(app.test_client().post("/api/predict", data={"example": sample.id}))
    )
    worker.start()
    assert held.inside.wait(60)
    busy = app.test_client().post("/api/predict", data={"example": sample.id})
    assert busy.status_code == 503 and "busy" in busy.json["error"]
    held.go.set()
    worker.join(60)
    assert first[0].status_code == 200
    assert app.test_client().post("/api/predict", data={"example": sample.id}).status_code == 200  # the slot is free


def test_marks_enlarge_a_small_image_but_draw_on_a_large_one_at_its_own_size():
    small = Image.new("RGB", (448, board.Geometry(448).height))
    assert marks.mark(small, [])[0].size == (896, 2 * small.height)
    large = Image.new("RGB", (5000, 5000))
    assert marks.mark(large, ["C5"])[0].size == (5000, 5000)
