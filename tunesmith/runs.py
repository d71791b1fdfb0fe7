"""The run directory: what a run writes, and how to read it back.

    runs/<name>/
      config.yaml          the resolved recipe (defaults and overrides applied)
      environment.json     library versions, device, dtype
      data_report.json/.md counts, drops, truncation, lengths, EOS share, template check, first example
      template.json        the chat template object that training used (drives eval and serving too)
      metrics.jsonl        one line per log/eval event: step, loss, lr, grad_norm, tokens_per_s, eval_loss
      progress.json        while it trains: the step, of how many, the latest loss (what `queue ls` shows)
      checkpoints/         checkpoints, each written whole or not at all (resume with --resume; see tunesmith.checkpoints)
      adapter/ or model/   the final LoRA adapter (PEFT folder) or full model, with the tokenizer: only a finished run has one
      loss.png             training and eval loss
      mlflow/, wandb/ or tensorboard/   the tracker's store, with tracking: (see tunesmith.tracking)
      tracking.json        which tracker run this is, so --resume continues it
      report.md            a short summary
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tunesmith import checkpoints
from tunesmith.config import Recipe

if TYPE_CHECKING:
    from tunesmith.tracking import Tracker


@dataclass
class RunDir:
    path: Path
    tracker: Tracker | None = None  # while a run trains: receives every metrics.jsonl line too

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def final_dir(self) -> Path:
        """adapter/ for LoRA runs, model/ for full fine-tuning: whichever the run wrote."""
        return self.path / "adapter" if (self.path / "adapter").is_dir() else self.path / "model"

    @property
    def finished(self) -> bool:
        """Whether the run wrote its final weights (written in one rename, after the last step)."""
        return (self.path / "adapter").is_dir() or (self.path / "model").is_dir()

    @property
    def method(self) -> str:
        return (yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8")) or {}).get("method", "sft")

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (see tunesmith.checkpoints.problem for what complete means)."""
        return checkpoints.newest_complete(self.checkpoints, self.method).checkpoint

    def status(self) -> str:
        """finished, or incomplete with the step it can resume from: for `runs list`."""
        if self.finished:
            return "finished"
        last = self.last_checkpoint()
        return f"incomplete (resumable from step {checkpoints.step_of(last)})" if last else "incomplete (no checkpoint)"

    def recipe(self) -> Recipe:
        return Recipe.model_validate(yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8")))

    def metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line]

    def append_metrics(self, record: dict) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.log_metrics(record)

    @property
    def progress_file(self) -> Path:
        return self.path / "progress.json"

    def write_progress(self, record: dict) -> None:
        """progress.json, replaced whole: a reader never sees half of it."""
        partial = self.progress_file.with_name("progress.json.tmp")
        partial.write_text(json.dumps(record), encoding="utf-8")
        os.replace(partial, self.progress_file)

    def progress(self) -> dict | None:
        """The step it is at, `max_steps`, the latest `loss`, and `start_step`/`started_at` of this session of training."""
        try:
            return json.loads(self.progress_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_config(self, recipe: Recipe) -> None:
        text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
        (self.path / "config.yaml").write_text(text, encoding="utf-8")

    def write_json(self, name: str, data: dict) -> None:
        (self.path / name).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "template.json").is_file()


def environment(model, dtype) -> dict:
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("tunesmith", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {
        "versions": versions,
        "python": platform.python_version(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def plot_loss(records: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
