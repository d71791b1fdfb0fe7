"""Checkpoints in a run directory: written whole or not at all, and checked before --resume trusts one.

    checkpoints/
      checkpoint-<step>/   a complete checkpoint: the trainer's files (ppo: ppo_state.pt), plus config.yaml
                           (the recipe it was trained with) and tunesmith.json (how many metrics.jsonl lines it covers)
      .unfinished/         the save in progress, moved to checkpoint-<step> once every file is written

A kill during a save leaves .unfinished/ behind, never a half-written checkpoint-<step>. What can still
spoil a checkpoint afterwards (a file deleted, truncated or half copied) is what `problem` looks for.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

NAME = re.compile(r"checkpoint-(\d+)")
UNFINISHED = ".unfinished"

# Besides the weights, what a resumed Trainer run needs to continue exactly as if never stopped; without
# any of them transformers resumes anyway, into a different run.
TRAINER_STATE = {
    "trainer_state.json": "the step, the log history and the best checkpoint",
    "optimizer.pt": "the optimiser's moments",
    "scheduler.pt": "the learning-rate schedule's position",
    "rng_state*.pth": "the random state of dropout and shuffling",  # rng_state_<rank>.pth when distributed
}
PPO_STATE = {"ppo_state.pt": "weights, value head, optimiser, schedule and random state"}
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


@dataclass
class Choice:
    """The checkpoint --resume continues from (None: no complete one), and what it passed over, newest first."""

    checkpoint: Path | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (folder name, why)


def step_of(folder: Path) -> int | None:
    match = NAME.fullmatch(folder.name)
    return int(match.group(1)) if match else None


def named(checkpoints: Path) -> list[Path]:
    """The checkpoint-<step> folders, oldest first, complete or not."""
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and step_of(p) is not None] if checkpoints.is_dir() else []
    return sorted(found, key=step_of)


def newest_complete(checkpoints: Path, method: str) -> Choice:
    """The newest checkpoint a resume can trust, naming every newer or stray one it passed over and why."""
    skipped = [(p.name, "its save was interrupted (left in checkpoints/.unfinished)") for p in sorted((checkpoints / UNFINISHED).glob("checkpoint-*"))]
    skipped += [(p.name, "not a checkpoint (checkpoint-<step>)") for p in sorted(checkpoints.glob("checkpoint-*")) if step_of(p) is None or not p.is_dir()]
    for folder in reversed(named(checkpoints)):
        why = problem(folder, method)
        if why is None:
            return Choice(folder, skipped)
        skipped.append((folder.name, why))
    return Choice(None, skipped)


def problem(folder: Path, method: str) -> str | None:
    """Why a resume cannot trust `folder`, or None when it holds everything a resume reads."""
    if not any(folder.iterdir()):
        return "empty"
    needed = PPO_STATE if method == "ppo" else TRAINER_STATE
    for name, holds in needed.items():
        if not any(folder.glob(name)):
            return f"no {name.replace('*', '')} ({holds}): resuming without it would not continue the same run"
    if method != "ppo":
        weights = [name for name in WEIGHTS if (folder / name).is_file()]
        if not weights:
            return f"no weights ({' or '.join(WEIGHTS)})"
        why = weights_problem(folder, weights[0]) or state_problem(folder)
        if why:
            return why
    for file in sorted([*folder.glob("*.pt"), *folder.glob("*.pth")]):
        try:
            zipfile.ZipFile(file).close()  # torch.save writes a zip archive; a cut-off one has no central directory
        except (zipfile.BadZipFile, OSError):
            return f"{file.name} is truncated or corrupt"
    return None


def weights_problem(folder: Path, name: str) -> str | None:
    from safetensors import safe_open

    files = [name]
    if name.endswith(".index.json"):
        try:
            files = sorted(set(json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, OSError):
            return f"{name} is truncated or corrupt"
    for file in files:
        if not (folder / file).is_file():
            return f"no {file} (listed in {name})"
        try:
            with safe_open(str(folder / file), "pt"):
                pass
        except Exception as err:  # safetensors raises its own error type for a short or garbled file
            return f"{file} is truncated or corrupt ({err})"
    if name.startswith("adapter") and not (folder / "adapter_config.json").is_file():
        return "no adapter_config.json"
    return None


def state_problem(folder: Path) -> str | None:
    try:
        step = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, OSError):
        return "trainer_state.json is truncated or corrupt"
    if step != step_of(folder):
        return f"trainer_state.json is at step {step}, not {step_of(folder)}"
    return None


def staging(checkpoints: Path) -> Path:
    """An empty .unfinished/ to write the next checkpoint into (what an interrupted save left there is dropped)."""
    folder = checkpoints / UNFINISHED
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def commit(folder: Path, checkpoints: Path, config: Path, metrics_lines: int) -> Path:
    """Move a fully written checkpoint from .unfinished/ to checkpoints/<its name>, replacing an older copy there."""
    shutil.copy2(config, folder / "config.yaml")
    (folder / "tunesmith.json").write_text(json.dumps({"metrics_lines": metrics_lines}), encoding="utf-8")
    target = checkpoints / folder.name
    if target.exists():
        target.rename(folder.parent / f"replaced-{folder.name}")
    folder.rename(target)  # atomic: a reader sees the old checkpoint, none, or the new one, never half of one
    shutil.rmtree(folder.parent)
    return target


def rotate(checkpoints: Path, keep: int | None, protect: str | None = None) -> None:
    """Keep the newest `keep` checkpoints; the newest and `protect` (the best one) are never removed."""
    found = named(checkpoints)
    if not keep or len(found) <= keep:
        return
    protected = {found[-1].resolve(), *([Path(protect).resolve()] if protect else [])}
    removable = [p for p in found if p.resolve() not in protected]
    for old in removable[: len(found) - keep]:
        shutil.rmtree(old)


def metrics_lines(folder: Path) -> int | None:
    """How many metrics.jsonl lines the run had written when `folder` was saved (None: not recorded)."""
    try:
        return int(json.loads((folder / "tunesmith.json").read_text(encoding="utf-8"))["metrics_lines"])
    except (OSError, ValueError, KeyError, TypeError):  # saved by an older tunesmith, or spoilt: the caller trims by step
        return None
