"""What `tunesmith queue ls` shows of a job: progress, the latest loss, elapsed time and an ETA, read from its run's
progress.json (written by the trainer at every step; see tunesmith.runs)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.experiments.store import Job
from tunesmith.experiments.worker import duration
from tunesmith.runs import RunDir


@dataclass
class Progress:
    step: int | None = None
    max_steps: int | None = None
    loss: float | None = None
    elapsed: float | None = None  # seconds, of the latest attempt
    eta: float | None = None  # seconds left, while it runs

    @property
    def percent(self) -> float | None:
        return 100.0 * self.step / self.max_steps if self.step is not None and self.max_steps else None

    def cells(self) -> list[str]:
        """progress, loss, elapsed, ETA as `queue ls` prints them ('' where unknown)."""
        progress = f"{self.percent:.0f}% ({self.step}/{self.max_steps})" if self.percent is not None else ""
        return [
            progress,
            f"{self.loss:.4f}" if self.loss is not None else "",
            duration(self.elapsed) if self.elapsed is not None else "",
            duration(self.eta) if self.eta is not None else "",
        ]


def job_progress(job: Job, now: float | None = None) -> Progress:
    now = time.time() if now is None else now
    p = Progress()
    if job.started is not None and job.state != "queued":
        p.elapsed = (job.ended if job.state != "running" and job.ended else now) - job.started
    record = RunDir(Path(job.run_dir)).progress() if job.run_dir else None
    if not record:
        return p
    p.step, p.max_steps, p.loss = record.get("step"), record.get("max_steps"), record.get("loss")
    done = (p.step or 0) - record.get("start_step", 0)
    if job.state == "running" and done > 0 and p.max_steps and "updated_at" in record:
        per_step = (record["updated_at"] - record["started_at"]) / done
        p.eta = max(0.0, per_step * (p.max_steps - p.step) - (now - record["updated_at"]))
    return p
