"""README's commands work as written: every ``vlmqc ...`` line of its shell blocks names a command
that exists, and every trial, sweep, dataset and preview it gives composes and validates (the
check the command itself runs first); commands on a user's own files (<placeholders>, /ckpt/...)
are checked for their command alone."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import ROOT

from vlmqc.cli import COMMANDS, main
from vlmqc.preflight import check_command_line, quote_numeric_options

HYDRA_APPS = {"train": "train", "data": "data_app", "preview": "preview"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" && ")[-1].split("#")[0].strip()
            if line.startswith("vlmqc "):
                lines.append(line)
    return lines


def test_the_readme_gives_commands_of_every_stage():
    named = {shlex.split(c)[1] for c in readme_commands()}
    assert {"train", "data", "preview", "predict", "serve", "compare", "rescore"} <= named


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_command_works_as_written(command, tmp_path, monkeypatch, capsys):
    words = shlex.split(command)
    name, args = words[1], words[2:]
    assert name in COMMANDS, command
    if name not in HYDRA_APPS or any(("<" in a or "/ckpt/" in a or "=/" in a) for a in args):
        with pytest.raises(SystemExit) as exit_:  # the command and its options exist
            main([name, "--help"])
        assert exit_.value.code in (0, None) and capsys.readouterr().out.strip()
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMQC_CACHE_DIR", str(tmp_path / "cache"))
    assert check_command_line(HYDRA_APPS[name], quote_numeric_options(args)) >= 1
