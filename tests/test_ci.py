"""CI as it runs: ``.ci/run`` gives the full suite empty caches, and a hung test fails on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

COLD_VARS = [
    "VLMQC_CACHE_DIR",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "WANDB_DIR",
    "WANDB_CACHE_DIR",
    "WANDB_CONFIG_DIR",
    "MPLCONFIGDIR",
]


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


def test_ci_runs_the_suite_with_every_cache_in_an_empty_folder_removed_at_exit(tmp_path):
    # the real script in a copy of the repository, with the installers and pytest stubbed:
    # what is checked is the environment the suite starts in, and what is left afterwards
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record, args = tmp_path / "seen", tmp_path / "args"
    stub(bin_dir, "python3", 'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && : > "$3/bin/activate"; fi\n')
    stub(bin_dir, "apt-get", "exit 0\n")
    stub(bin_dir, "sudo", '"$@"\n')
    stub(
        bin_dir,
        "python",
        f"""\
        [ "$2" = pytest ] || exit 0
        printf '[%s]' "$@" > {args}
        for v in {" ".join(COLD_VARS)} VLMQC_REQUIRE_CHROMIUM; do
          val=$(printenv "$v" || true)
          # 'empty' when the folder is missing or has nothing in it: the suite starts cold
          state=$([ -z "$(ls -A "$val" 2>/dev/null)" ] && echo empty || echo full)
          echo "$v $val $state" >> {record}
        done
        """,
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path / "home")}
    for var in COLD_VARS:
        env.pop(var, None)
    out = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = {
        name: (value, state) for name, value, state in (line.split(" ") for line in record.read_text().splitlines())
    }
    assert seen.pop("VLMQC_REQUIRE_CHROMIUM")[0] == "1"
    assert set(seen) == set(COLD_VARS)
    folders = {Path(value) for value, _ in seen.values()}
    assert len(folders) == len(COLD_VARS)  # each its own folder
    (cold,) = {f.parent for f in folders}  # all in one temporary folder
    assert all(state == "empty" for _, state in seen.values()), seen
    assert not cold.exists()  # removed at exit
    assert (
        args.read_text() == "[-m][pytest][-m][]"
    )  # the full suite: an empty marker expression selects the slow tests too


def test_the_suite_has_a_per_test_timeout(request):
    timeout = float(request.config.getini("timeout"))  # pytest-timeout's setting in pyproject.toml
    assert 60 <= timeout <= 1800, timeout


@pytest.mark.slow  # a pytest run in a subprocess that waits out a 3 s timeout
def test_a_hung_test_fails_at_its_timeout_with_the_stacks(tmp_path):
    (tmp_path / "test_hang.py").write_text("import threading\n\n\ndef test_hangs():\n    threading.Event().wait()\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--timeout=3", "test_hang.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout[-3000:]
    assert (
        "Timeout (>3.0s) from pytest-timeout" in out.stdout and "threading.Event().wait()" in out.stdout
    )  # where it hung
