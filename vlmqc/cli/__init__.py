"""``vlmqc``: one command, a subcommand per stage. Each module here parses its arguments and calls
the library; nothing else lives in it.

    vlmqc train experiment=first_run         # a trial (Hydra: overrides, -m sweeps, --cfg job)
    vlmqc --help                             # the subcommands, one line each

``python -m vlmqc.<command>`` (train, data, predict, rescore, serve, compare, inspect) still works.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

# name -> (module, function, one line); Hydra apps take overrides, the others argparse options
COMMANDS = {
    "train": (
        "vlmqc.cli.train",
        "cli",
        "train one trial, or a sweep of them with -m (Hydra overrides: data=, model=, trainer.lr=...)",
    ),
    "data": ("vlmqc.cli.data", "cli", "draw a dataset (or read your own), print its counts, draw a contact sheet"),
    "preview": (
        "vlmqc.cli.preview",
        "cli",
        "what a model sees of a few examples: pixels, tiles, tokens, activation memory",
    ),
    "predict": (
        "vlmqc.cli.predict",
        "main",
        "answer new images with a completed trial, or merge its adapter into one checkpoint",
    ),
    "serve": ("vlmqc.cli.serve", "main", "a local web page that answers uploads with a completed trial"),
    "compare": ("vlmqc.cli.compare", "main", "one self-contained HTML report comparing trials"),
    "rescore": ("vlmqc.cli.rescore", "main", "score stored answers again with today's parser and metrics"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vlmqc <command> [arguments]   (vlmqc <command> --help for its own)", "", "commands:"]
    lines += [f"  {name:<{width}}  {line}" for name, (_, _, line) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        try:
            print(f"vlmqc {version('vlmqc')}")
        except PackageNotFoundError:
            print("vlmqc (not installed as a package)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vlmqc: no command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    sys.argv = [f"vlmqc {name}", *rest]  # what the command's own parser shows as its name
    result = getattr(importlib.import_module(module), function)(rest)
    return result if isinstance(result, int) else 0
