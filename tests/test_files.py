"""The atomic writer under concurrent writers: threads of one process, and separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vlmqc.files import write_atomic

WRITES = 200
SIZE = 256 * 1024  # large enough that a write is not one system call's worth of luck


def payload(writer: int) -> bytes:
    return bytes([writer % 256]) * SIZE


def leftovers(folder: Path, name: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name != name]


def test_concurrent_threads_never_leave_a_mixed_or_missing_file(tmp_path):
    target, errors = tmp_path / "summary.json", []

    def writer(n: int) -> None:
        try:
            for _ in range(WRITES):
                write_atomic(target, payload(n))
        except Exception as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    seen = set()
    while any(t.is_alive() for t in threads):
        if target.exists():
            data = target.read_bytes()
            assert len(data) == SIZE and len(set(data)) == 1, "a reader saw a mixed or partial file"
            seen.add(data[0])
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in {payload(n) for n in range(1, 5)}
    assert leftovers(tmp_path, target.name) == []


WRITER = """
import sys
from pathlib import Path
from vlmqc.files import write_atomic
n = int(sys.argv[2])
for _ in range({writes}):
    write_atomic(Path(sys.argv[1]), bytes([n]) * {size})
"""


def test_concurrent_processes_never_leave_a_mixed_or_missing_file(tmp_path):
    target = tmp_path / "summary.json"
    code = WRITER.format(writes=WRITES, size=SIZE)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(target), str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(1, 4)
    ]
    while any(p.poll() is None for p in procs):
        if target.exists():
            data = target.read_bytes()
            assert len(data) == SIZE and len(set(data)) == 1, "a reader saw a mixed or partial file"
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert target.read_bytes() in {payload(n) for n in range(1, 4)}
    assert leftovers(tmp_path, target.name) == []


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "report"
    target.mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(OSError):
        write_atomic(target, b"x")
    assert leftovers(tmp_path, target.name) == []


def test_the_written_file_has_the_umasks_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "report.html", b"<p>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644
