"""Writing files and folders so that a reader never sees half of one.

Every record, cache and export of vlmqc goes through here: a file is written beside its final
name and renamed over it (``write_atomic``); a folder is built under a temporary name and renamed
into place when complete (``publish``). A rename within one filesystem is atomic, so an
interrupted write (a killed process, a full disk) leaves the old file or nothing, never a part.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """A reader never sees half a file: written beside it, then renamed over it.

    The temporary file's name is its writer's own (pid and random, created exclusively), so two
    writers never share one; it sits in the same folder, so the rename stays on one filesystem,
    and it is removed when writing fails (a full disk). Created with the umask's permissions, as
    a plain open() would (mkstemp's 0600 would make reports unreadable to others).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def temporary_beside(final: Path) -> Path:
    """A fresh name next to ``final`` for building it: this process's, never another's."""
    return final.with_name(f".tmp-{final.name}-{os.getpid()}-{secrets.token_hex(4)}")


def publish(final: Path, build: Callable[[Path], None], done: Callable[[Path], bool] | None = None) -> bool:
    """Build a folder into a temporary one beside ``final`` and rename it into place.

    Returns False, building nothing, when ``done(final)`` says a complete one is already there
    (default: the folder exists). When another process publishes the same folder first, its copy
    is kept (the rename fails) and True is returned: both built the same thing. The temporary
    folder is removed whatever happens; an existing empty ``final`` is replaced.
    """
    done = done or Path.exists
    if done(final):
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(final)
    try:
        tmp.mkdir()
        build(tmp)
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        try:
            os.rename(tmp, final)
        except OSError:
            if not done(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True
