"""A local web page for one trial: upload a candidate (and its reference), see the answer.

    python -m vlmqc.predict --serve outputs/runs/<run>            # http://127.0.0.1:8000/
    python -m vlmqc.serve outputs/runs/<run>                      # the same
    python -m vlmqc.serve outputs/runs/<run> --port 0             # any free port, printed
    python -m vlmqc.serve outputs/runs/<run> --host 0.0.0.0       # other machines too (a warning)

The model is loaded once, at start (``vlmqc.inspector.Inspector``); the page shows what the trial
is, and for each upload the verdict, the defects, the raw answer, the time taken and the
candidate with the predicted cells outlined on its grid.
"""

from vlmqc.serve.app import create_app
from vlmqc.serve.cli import main, serve

__all__ = ["create_app", "main", "serve"]
