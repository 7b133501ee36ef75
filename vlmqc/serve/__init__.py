"""A local web page for one trial: upload a candidate (and its reference), see the answer.

    vlmqc serve outputs/runs/<run>                      # http://127.0.0.1:8000/
    vlmqc serve outputs/runs/<run> --port 0             # any free port, printed
    vlmqc serve outputs/runs/<run> --host 0.0.0.0       # other machines too (a warning)

The model is loaded once, at start (``vlmqc.inspector.Inspector``); the page shows what the trial
is, and for each upload the verdict, the defects, the raw answer, the time taken and the
candidate with the predicted cells outlined on its grid.
"""

from vlmqc.serve.app import create_app

__all__ = ["create_app"]
