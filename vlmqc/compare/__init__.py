"""Compare trials: one self-contained HTML page from the run folders' own records, offline.

    vlmqc compare outputs/multirun/2026-11-25_10-00-00          # -> that folder's report/report.html
    vlmqc compare outputs/runs/data=pair_round outputs/runs/data=pair_square --out cmp
    vlmqc compare outputs/multirun/2026-11-25_10-00-00 --metric eval/defect_recall

An argument is a run folder (it holds ``summary.json``) or a folder of run folders (a multirun).
The page (``DIR/report.html``, default DIR ``<first argument>/report`` for a multirun, else
``./report``) shows: a sortable table of the trials (overrides, status, baseline, final and best
``eval/`` metrics with the chance level beside them, runtime); the train and eval loss curves
overlaid; each swept override against the chosen metric; the fixed inference samples side by
side; a defect-type confusion matrix per trial; the failed trials with their reasons; and notes
naming every record, or field of one, it could not use. Its figures are written beside it as PNG
files and embedded in it, so the one HTML file can be mailed or archived alone.
Exit status 2 when an argument is not a folder or holds no run folder.

    notes.py     the notes naming what could not be used
    load.py      run folders, through vlmqc.runs.records' readers -> trials, samples, prediction rows
    settings.py  swept and fixed overrides, trial labels
    figures.py   matplotlib PNGs and sample thumbnails
    sections.py  what each section shows
    page.py      the Jinja2 template (templates/) rendered, CSS and JS inlined
    report.py    the sections put together into the page (the command: vlmqc/cli/compare.py)
"""

from vlmqc.compare.report import build

__all__ = ["build"]
