"""Rendering: the Jinja2 template beside this file, its CSS and JS inlined, into one HTML page.

Autoescape is on and undefined names fail, so a value reaches the page only as escaped text or
as markup this package wrote. The script is allowed by its hash alone (Content-Security-Policy):
even markup that slipped through escaping could not run.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

HERE = Path(__file__).parent
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _visible(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 256 else "\ufffd"  # a lone surrogate cannot be written as UTF-8


def _finalize(value):
    """Every printed value: control characters written out as \\xNN (models emit NULs and ESCs)."""
    if isinstance(value, (str, Path)) and not isinstance(value, Markup):  # a run folder's name is text too
        return _CONTROL.sub(lambda m: _visible(m.group()), str(value))
    return value


def shown(value) -> Markup:
    """Text content, escaped, its control characters marked up to stand out from the text."""
    text = escape("" if value is None else str(value))
    return Markup(_CONTROL.sub(lambda m: f'<span class="ctl">{_visible(m.group())}</span>', text))


def number(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)


def runtime(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def sort_value(value) -> str:
    """What a table column sorts on: a number where there is one, empty when missing."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return "" if value is None else str(value)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shown=shown, number=number, runtime=runtime, sort_value=sort_value)
    return env


def render(**context) -> str:
    templates = HERE / "templates"
    css, js = (templates / "report.css").read_text(), (templates / "report.js").read_text()
    script_hash = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    # nothing is fetched from anywhere; inline style attributes colour the confusion matrices
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return environment().get_template("report.html.j2").render(css=Markup(css), js=Markup(js), csp=csp, **context)
