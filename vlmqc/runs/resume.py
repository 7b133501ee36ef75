"""What a rerun of a trial may trust in its run folder: the config it ran, its checkpoints, its records.

Before a trial writes anything, ``prepare`` decides how it starts:
- ``trainer.resume=true`` (the default) and a record whose config differs from this one (by a hash
  of the resolved config, leaving out ``NON_COMPUTING_KEYS``): refused (``ConfigChanged``, exit
  status 2), naming each differing key, old -> new. Resuming would mix two configs in one curve.
- ``trainer.resume=true``: the newest checkpoint that is complete (its trainer_state.json parses,
  its weights, optimizer and scheduler files open); damaged ones (a full disk, a kill mid-save) are
  moved aside to ``checkpoints/damaged-<name>`` and listed, with the reason, in the summary. The
  records logged after that checkpoint's step (``metrics.jsonl`` rows, ``predictions/`` and
  ``samples/`` step files) are dropped: the resumed trial logs those steps again, so a curve
  never doubles back.
- ``trainer.resume=false`` with records in the folder: the previous attempt's records, checkpoints,
  adapter and W&B run move into ``attempts/<n>/`` (n = 1, 2, …), and a new attempt starts.

Only the process that writes the records (the launcher's parent, or rank 0) changes files; the
others get the same answer from the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open

from vlmqc.config import NON_COMPUTING_KEYS, ConfigError
from vlmqc.files import read_json, write_atomic
from vlmqc.runs.tracking import STEP

log = logging.getLogger(__name__)

# derived from the folder and the command line, not computing anything: a run folder given
# explicitly (hydra.run.dir) keeps them apart from what the trial computes
LOCATION_KEYS = ("run_name", "paths.output_dir")
# what a trial leaves in its folder; .hydra/, train.log and the lock stay with the folder
ATTEMPT_ENTRIES = (
    "summary.json",
    "metrics.jsonl",
    "samples",
    "predictions",
    "checkpoints",
    "adapter",
    "model",
    "wandb",
)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STEP_FILE = re.compile(r"^step-(\d+)\.(?:jsonl|mmad\.json)$")  # an evaluation's records, and MMAD's answers


class ConfigChanged(ConfigError):
    """A resume whose config differs from the one recorded in the run folder."""


@dataclass
class Plan:
    config_hash: str
    checkpoint: str | None = None  # what the Trainer resumes from
    skipped_checkpoints: list[dict] = field(default_factory=list)  # damaged: {"checkpoint", "reason", "moved_to"}
    dropped: dict | None = None  # records after the checkpoint's step: {"after_step", "metrics_rows", "files"}
    archived: str | None = None  # where trainer.resume=false moved the previous attempt


def computing_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys that do not change the computation."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in (*NON_COMPUTING_KEYS, *LOCATION_KEYS):
        *parents, last = key.split(".")
        node = resolved
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return resolved


def config_hash(computing: dict) -> str:
    return hashlib.sha256(json.dumps(computing, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs (missing keys shown as <absent>)."""
    a, b = _flat(old), _flat(new)
    absent = "<absent>"
    return [
        f"{k}: {a.get(k, absent)!r} -> {b.get(k, absent)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, absent) != b.get(k, absent)
    ]


def damage(checkpoint: Path) -> str | None:
    """Why the Trainer could not (or should not) resume from this checkpoint; None if it is complete.

    Cheap checks that catch a truncated or missing file: JSON parses, a safetensors header opens
    (safetensors refuses a file shorter than its header says), a torch zip has its central
    directory (written last, so a truncated file lacks it)."""
    state = read_json(checkpoint / "trainer_state.json")
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json is missing or unreadable"
    weights = sorted(checkpoint.glob("*.safetensors")) + sorted(checkpoint.glob("pytorch_model*.bin"))
    if not weights:
        return "no model weights (*.safetensors)"
    for name in ("optimizer.pt", "scheduler.pt"):  # without them the Trainer quietly starts a fresh optimizer
        if not (checkpoint / name).is_file():
            return f"{name} is missing"
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            elif path.suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(path).close()
        except Exception as e:  # noqa: BLE001 - whatever the reader says, the file is damaged
            return f"{path.name} is damaged ({type(e).__name__}: {str(e)[:200]})"
    return None


def pick_checkpoint(folder: Path, write: bool) -> tuple[str | None, list[dict]]:
    """The newest complete checkpoint in ``folder``, and the damaged ones newer than it."""
    found = (
        sorted(
            ((int(m[1]), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir()), reverse=True
        )
        if folder.is_dir()
        else []
    )
    skipped = []
    for _, path in found:
        reason = damage(path)
        if reason is None:
            return str(path), skipped
        moved = folder / f"damaged-{path.name}"
        log.warning("skipping checkpoint %s: %s%s", path, reason, f"; moved to {moved}" if write else "")
        if write:
            # out of the Trainer's sight: it would resume from it, or rotate a good checkpoint out before it
            path.rename(moved)
        skipped.append({"checkpoint": str(path), "reason": reason, "moved_to": str(moved) if write else None})
    return None, skipped


def drop_after(run_dir: Path, step: int, write: bool) -> dict | None:
    """Remove the records of steps after ``step``: the resumed trial logs them again."""
    rows, files = 0, []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _step(line) <= step]
        rows = len(lines) - len(kept)
        if rows and write:
            write_atomic(metrics, "".join(kept).encode())
    for sub in ("predictions", "samples"):
        for path in sorted((run_dir / sub).glob("step-*")):
            if (m := STEP_FILE.match(path.name)) and int(m[1]) > step:
                files.append(str(path.relative_to(run_dir)))
                if write:
                    path.unlink()
    if not (rows or files):
        return None
    log.warning(
        "dropping the records after step %d (to be logged again): %d metrics row(s), %d step file(s)",
        step,
        rows,
        len(files),
    )
    return {"after_step": step, "metrics_rows": rows, "files": files}


def _step(line: str) -> int:
    try:
        return int(json.loads(line)[STEP])
    except (ValueError, KeyError, TypeError):
        return -1  # an unreadable line (a crash mid-write) is kept, for a person to see


def archive(run_dir: Path, write: bool) -> str | None:
    """Move the previous attempt's records into ``attempts/<n>/``; its folder name, or None."""
    present = [run_dir / e for e in ATTEMPT_ENTRIES if (run_dir / e).exists()]
    if not present:
        return None
    n = 1 + max((int(p.name) for p in (run_dir / "attempts").glob("*") if p.name.isdigit()), default=0)
    target = run_dir / "attempts" / str(n)
    if write:
        target.mkdir(parents=True)
        for path in present:
            path.rename(target / path.name)
        log.info("trainer.resume=false: the previous attempt's records moved to %s", target)
    return str(target.relative_to(run_dir))


def prepare(cfg: DictConfig, run_dir: Path, write: bool = True) -> Plan:
    """Check the rerun against the record and ready the folder (see the module's docstring).

    ``write=False`` (ranks other than 0) changes nothing and returns the same plan."""
    computing = computing_config(cfg)
    plan = Plan(config_hash=config_hash(computing))
    previous = read_json(run_dir / "summary.json") or {}
    if not cfg.trainer.resume:
        plan.archived = archive(run_dir, write)
        return plan
    if previous.get("config") is not None:
        recorded = {k: v for k, v in previous["config"].items()}
        old = previous.get("config_hash") or config_hash(computing_config(OmegaConf.create(recorded)))
        if old != plan.config_hash:
            diff = differences(computing_config(OmegaConf.create(recorded)), computing)
            raise ConfigChanged(
                f"{run_dir} holds a trial run with another config; resuming it would mix the two. Differs: "
                + "; ".join(diff or ["(the recorded hash only)"])
                + ". Rerun with trainer.resume=false to start a new attempt (the old one moves to attempts/), or "
                "pick another folder."
            )
    plan.checkpoint, plan.skipped_checkpoints = pick_checkpoint(run_dir / "checkpoints", write)
    if previous.get("status") != "completed":  # a completed trial is not run again: its records stay whole
        step = (
            (read_json(Path(plan.checkpoint) / "trainer_state.json") or {}).get("global_step", 0)
            if plan.checkpoint
            else -1
        )
        plan.dropped = drop_after(run_dir, step, write)
    return plan


def already_completed(cfg: DictConfig, run_dir: Path) -> bool:
    """A completed trial is not run again (``trainer.resume=false`` starts a new attempt instead)."""
    summary = read_json(run_dir / "summary.json") or {}
    if cfg.trainer.resume and summary.get("status") == "completed":
        log.info(
            "%s already completed (%s); trainer.resume=false runs it again", cfg.run_name, run_dir / "summary.json"
        )
        return True
    return False
