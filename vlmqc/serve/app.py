"""The page's server: one Flask app around one loaded ``Inspector``.

``GET /`` is the page; ``POST /`` answers its form (an uploaded candidate, with its reference for
a pair trial, or one of the trial's own test images) with the page again, the answer on it;
``POST /api/predict`` takes the same fields and answers JSON. Uploads are read from memory
(never spooled to a temporary file) and checked in ``uploads``; the marked image travels inside
the page as a data: URL, so nothing is written to disk.
"""

from __future__ import annotations

import base64
import io
import threading
from functools import cache
from pathlib import Path

import jinja2
from flask import Flask, Request, jsonify, request
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge

from vlmqc.compare.page import _finalize, number, runtime, shown
from vlmqc.metrics import METRICS
from vlmqc.runs.records import read_samples, read_summary
from vlmqc.serve import marks
from vlmqc.serve.uploads import MAX_BYTES, UploadError, read_image, same_size

TEMPLATES = Path(__file__).parent / "templates"
CSP = (
    "default-src 'none'; img-src data:; style-src 'self'; script-src 'self'; form-action 'self'; base-uri "
    "'none'; frame-ancestors 'none'"
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
BUSY_WAIT_S = 5.0  # how long a request waits for a free slot before it is told the page is busy


class InMemoryRequest(Request):
    """Uploaded files stay in memory: werkzeug would spool one over 500 kB to a temporary file.
    The request's size limit (``MAX_CONTENT_LENGTH``) bounds the memory."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shown=shown, number=number, runtime=runtime)
    return env


def trial_info(run_dir: Path) -> dict:
    """What the page says the trial is: name, model, data, and its final metrics."""
    summary, _ = read_summary(run_dir / "summary.json")
    config = summary.config if summary else {}
    facts = summary.facts if summary else {}
    data, model = config.get("data") or {}, config.get("model") or {}
    final = (summary.final or {}) if summary else {}
    return {
        "run_dir": str(run_dir),
        "run_name": (summary.run_name if summary else None) or run_dir.name,
        "model": model.get("name") or model.get("path") or "?",
        "family": facts.get("model_family") or "?",
        "data": data.get("name") or "?",
        "task": data.get("task") or "?",
        "layout": data.get("layout") or "stacked",
        "step": final.get("step"),
        "metrics": [(name, final[name]) for name in METRICS if name in final],
    }


def test_images(run_dir: Path) -> list[dict]:
    """The trial's inference samples at its last evaluation: test images with their true answer."""
    steps = sorted((run_dir / "samples").glob("step-*.jsonl"))
    if not steps:
        return []
    samples, _ = read_samples(steps[-1])
    return [{"id": s.id, "truth": s.truth, "path": run_dir / s.image} for s in samples if (run_dir / s.image).is_file()]


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def host_name(host: str) -> str:
    """The name in a Host header, without its port (``[::1]:8000`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def create_app(
    inspector, run_dir: Path, max_bytes: int = MAX_BYTES, hosts: tuple[str, ...] | None = LOOPBACK_NAMES, slots: int = 2
) -> Flask:
    """The app; ``inspector`` is loaded once by the caller and shared by every request.

    ``hosts``: the names a request's Host header may carry (the bound address; None where the
    server listens on every address). A page on another site that rebinds its DNS name to this
    machine sends its own name, and is refused, as is a POST whose Origin is another site's.
    ``slots``: requests decoded, answered and drawn at once; the others wait ``BUSY_WAIT_S``, then
    get 503, so memory stays within ``slots`` x (an upload, its decoded images, the drawn page)."""
    run_dir = Path(run_dir)
    info = trial_info(run_dir)
    examples = test_images(run_dir)
    by_id = {e["id"]: e for e in examples}
    lock = threading.Lock()  # one generation at a time: the model is not shared between threads
    # taken before the request's body is read: a waiting request holds no upload in memory
    free = threading.BoundedSemaphore(slots)

    app = Flask(__name__, static_folder=None)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = max_bytes

    def inputs() -> tuple[Image.Image, Image.Image | None, str]:
        """The candidate and reference the form names, checked; and what they are, for the page."""
        picked = request.form.get("example") or ""
        files = {
            k: request.files[k] for k in ("candidate", "reference") if k in request.files and request.files[k].filename
        }
        if picked and files:
            raise UploadError("choose either a test image of the trial or an upload, not both")
        if picked:
            if picked not in by_id:
                raise UploadError(f"no test image {picked!r} in this trial")
            with Image.open(by_id[picked]["path"]) as img:
                return img.convert("RGB"), None, picked  # stored stacked, as in training
        if "candidate" not in files:
            raise UploadError("no candidate image: choose a file to upload, or one of the trial's test images")
        candidate = read_image(files["candidate"].read(), "candidate")
        reference = read_image(files["reference"].read(), "reference") if "reference" in files else None
        if reference is not None:
            same_size(candidate, reference)
        return candidate, reference, files["candidate"].filename

    def answer() -> dict:
        candidate, reference, source = inputs()
        try:
            with lock:
                result = inspector.predict([candidate], references=None if reference is None else [reference])[0]
        except ValueError as e:  # the inspector's own refusal of an input names what is wrong
            raise UploadError(str(e)) from None
        if reference is None and (halves := marks.split_pair(candidate)):
            reference, candidate = halves
        marked, note = marks.mark(candidate, marks.positions_of(result))
        return {
            "source": source,
            "truth": by_id[source]["truth"] if source in by_id and request.form.get("example") else None,
            "verdict": result.get("verdict"),
            "defects": result.get("defects") or [],
            "target": result.get("target"),
            "answer": result.get("answer"),
            "parsed": result.get("parsed"),
            "seconds": result.get("seconds"),
            "positions": marks.positions_of(result),
            "mark_note": note,
            "candidate_image": data_url(marked),
            "reference_image": data_url(marks.mark(reference, [])[0])
            if reference is not None
            else None,  # enlarged alike
        }

    def page(result: dict | None = None, error: str | None = None, status: int = 200):
        html = (
            environment()
            .get_template("page.html.j2")
            .render(trial=info, examples=examples, result=result, error=error, max_mb=max_bytes / 2**20)
        )
        return html, status, {"Content-Type": "text/html; charset=utf-8"}

    def refused(message: str, status: int):
        """The refusal as the client asked: JSON for the API, the page with the message for the form."""
        if request.path.startswith("/api/"):
            return jsonify(error=message), status
        return page(error=message, status=status)

    @app.before_request
    def same_site():
        # Hand-written: Flask's TRUSTED_HOSTS answers a bare 400 without saying why, and nothing
        # in Flask checks a POST's Origin (no CSRF layer for a page without sessions).
        if hosts is not None and host_name(request.host) not in hosts:
            return (
                f"this page answers requests for {', '.join(hosts)}, not for {request.host}",
                403,
                {"Content-Type": "text/plain; charset=utf-8"},
            )
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site") or (
                # "null" too: a sandboxed frame or a file:// page of anyone's
                origin is not None and origin != f"{request.scheme}://{request.host}"
            ):
                return refused(f"a request from another site ({origin or 'cross-site'}) is refused", 403)
        return None

    def answered(respond):
        """``respond()`` in one of the slots, or 503 when none frees up in time."""
        if not free.acquire(timeout=BUSY_WAIT_S):
            return refused("the page is busy with other requests; try again in a moment", 503)
        try:
            return respond()
        finally:
            free.release()

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def index():
        return page()

    @app.post("/")
    def submit():
        def respond():
            try:
                return page(answer())
            except UploadError as e:
                return page(error=str(e), status=400)

        return answered(respond)

    @app.post("/api/predict")
    def api():
        def respond():
            try:
                result = answer()
            except UploadError as e:
                return jsonify(error=str(e)), 400
            return jsonify(
                {k: v for k, v in result.items() if not k.endswith("_image")} | {"image": result["candidate_image"]}
            )

        return answered(respond)

    @app.get("/page.css")
    def css():
        return (TEMPLATES / "page.css").read_text(), 200, {"Content-Type": "text/css; charset=utf-8"}

    @app.get("/page.js")
    def js():
        return (TEMPLATES / "page.js").read_text(), 200, {"Content-Type": "text/javascript; charset=utf-8"}

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        return refused(f"the upload is larger than {max_bytes / 2**20:.0f} MB, the most this page accepts", 413)

    @app.errorhandler(500)
    def failed(_):
        # the traceback goes to the server's console (Flask logs it), never to the page
        return refused("the inspector failed on this input; the server's console has the details", 500)

    return app
