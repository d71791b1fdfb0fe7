"""Experiment trackers: a run's settings, metrics, reports and adapter, sent to MLflow, Weights & Biases or TensorBoard.

    tracking: mlflow                                     # or tensorboard, wandb: stored inside the run directory
    tracking: {backend: wandb, project: support-bot, run_name: lora-r16}
    tracking: {backend: mlflow, uri: http://mlflow.internal:5000}

Every tracker gets the same things: as params, the resolved recipe flattened to dotted keys as `tunesmith
runs compare` reads it (peft.r, peft.target_modules, data.template, ...) and the data counts
(data_report.train.kept, ...); as metrics, every line of metrics.jsonl at its step (RunDir.append_metrics
hands each one over, whichever method wrote it); at the end, config.yaml, the data report, report.md,
loss.png and the adapter/ folder. TensorBoard has no place for
files: it gets the texts and the plot. The tracker's run id is kept in RUN/tracking.json, so --resume continues
the same tracker run.

The backend is imported for real (check_installed) and its run opened (open_tracker) before any model loads, so
a broken install or an unreachable server is one line, not a traceback after minutes of loading.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunesmith.config import Recipe, TrackingConfig
from tunesmith.errors import TunesmithError
from tunesmith.eval.experiments import flatten
from tunesmith.runs import RunDir

# What a run directory holds that a tracker should keep, in this order; the final adapter/ comes after.
RUN_FILES = ("config.yaml", "environment.json", "data_report.md", "data_report.json", "template.json", "report.md", "loss.png")


def modules_needed(cfg: TrackingConfig) -> list[str]:
    """The modules a backend needs: MLflow's SQLite store (the default) is a module of its own, with its own
    dependencies (SQLAlchemy, Alembic); the mlflow extra installs them."""
    if cfg.backend == "mlflow":
        sqlite = cfg.uri is None or cfg.uri.startswith("sqlite:")
        return ["mlflow", *(["mlflow.store.tracking.sqlalchemy_store"] if sqlite else [])]
    return {"none": [], "wandb": ["wandb"], "tensorboard": ["torch.utils.tensorboard"]}[cfg.backend]


def check_installed(cfg: TrackingConfig) -> None:
    """Import the tracker: a missing or broken install is an install hint, before anything else happens."""
    for name in modules_needed(cfg):
        try:
            importlib.import_module(name)
        except Exception as err:  # ImportError, or a broken dependency failing at import (protobuf, ...)
            raise TunesmithError(
                f"tracking.backend: {cfg.backend} cannot be imported ({err.__class__.__name__}: {first_line(err)}): "
                f"pip install -c constraints.txt 'tunesmith[{cfg.backend}]'"
            ) from None


def open_tracker(recipe: Recipe, run: RunDir, resume: bool) -> Tracker | None:
    """Start (or, with --resume, continue) the tracker run and log the recipe; None without tracking.
    `check_installed` has run already."""
    cfg = recipe.tracking
    if cfg.backend == "none":
        return None
    state_file = run.path / "tracking.json"
    previous = json.loads(state_file.read_text(encoding="utf-8")) if resume and state_file.is_file() else {}
    resume_id = previous.get("run_id") if previous.get("backend") == cfg.backend else None
    name = cfg.run_name or recipe.name or run.path.name
    try:
        tracker = BACKENDS[cfg.backend](cfg, run.path, name, resume_id)
        if resume_id is None:  # a continued run keeps the settings it started with
            tracker.log_params(flatten(recipe.model_dump(mode="json")))
    except Exception as err:  # the backend's own errors: unreachable server, bad URI, no W&B login, ...
        where = f" at {cfg.uri}" if cfg.uri else ""
        raise TunesmithError(f"tracking: cannot start a {cfg.backend} run{where}: {err.__class__.__name__}: {first_line(err)}") from None
    state_file.write_text(json.dumps({"backend": cfg.backend, "where": tracker.where, "run_id": tracker.run_id}, indent=2), encoding="utf-8")
    # A run that never reaches finish() (an error, Ctrl-C) is closed as failed when the process exits.
    atexit.register(tracker.close, ok=False)
    logging.getLogger(__name__).info("tracking: %s run %r, %s", cfg.backend, name, tracker.where)
    return tracker


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else "(no message)"


def data_params(report) -> dict[str, Any]:
    """The data counts of a preflight report, as params next to the recipe's."""
    params = {"data_report.kind": report.kind, "data_report.template": report.template}
    for split in ("train", "eval"):
        s = getattr(report, split)
        params |= {
            f"data_report.{split}.examples": s.examples,
            f"data_report.{split}.kept": s.kept,
            f"data_report.{split}.dropped": sum(s.dropped.values()),
            f"data_report.{split}.truncated": s.truncated,
            f"data_report.{split}.trained_tokens": s.trained_tokens,
        }
    return params


def numeric(record: dict) -> dict[str, float]:
    """A metrics.jsonl record's values, without its step (the tracker's own axis)."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """What every backend shares. A backend sets `where` (where the run went) and `run_id` (for --resume), and has
    log_params(params), log_metrics(record), log_outputs(files, adapter) and end(ok)."""

    def __init__(self, run_path: Path):
        self.run_path = run_path
        self.closed = False

    def finish(self, final_dir: Path) -> None:
        """Log the run's reports and its adapter (a full model stays in RUN/model: gigabytes), then end the run."""
        files = [self.run_path / name for name in RUN_FILES if (self.run_path / name).is_file()]
        self.log_outputs(files, final_dir if final_dir.name == "adapter" else None)
        self.close(ok=True)

    def close(self, ok: bool) -> None:
        if not self.closed:
            self.closed = True
            self.end(ok)


@contextmanager
def fail_fast():
    """MLflow retries an unreachable server for minutes (7 tries, 120 s timeout each): opening the store tries
    once, within 10 s, so a wrong tracking.uri is an error at once. Later requests keep MLflow's patience
    (a blip mid-run should not end it), and a user's own MLFLOW_HTTP_REQUEST_* settings win."""
    chosen = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = [key for key in chosen if key not in os.environ]
    os.environ.update({key: chosen[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            del os.environ[key]


class MlflowTracker(Tracker):
    """MLflow's client API (no global active run). Default store: RUN/mlflow/mlflow.db (SQLite) with artifacts in
    RUN/mlflow/artifacts; view it with `mlflow ui --backend-store-uri sqlite:///RUN/mlflow/mlflow.db`."""

    def __init__(self, cfg: TrackingConfig, run_path: Path, name: str, resume_id: str | None):
        super().__init__(run_path)
        for noisy in ("mlflow", "alembic"):  # database set-up chatter on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        folder = (run_path / "mlflow").resolve()
        if cfg.uri is None:
            folder.mkdir(parents=True, exist_ok=True)
        self.where = cfg.uri or f"sqlite:///{folder / 'mlflow.db'}"
        self.client = MlflowClient(self.where)
        with fail_fast():
            experiment = self.client.get_experiment_by_name(cfg.project)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifacts = (folder / "artifacts").as_uri() if cfg.uri is None else None
            experiment_id = self.client.create_experiment(cfg.project, artifact_location=artifacts)
        if resume_id is not None:
            self.client.update_run(resume_id, status="RUNNING")
            self.run_id = resume_id
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        items = []
        for key, value in params.items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if len(text) > MAX_PARAM_VAL_LENGTH:  # MLflow refuses longer values; config.yaml has it whole
                text = text[: MAX_PARAM_VAL_LENGTH - 40] + " ... (cut; whole in config.yaml)"
            items.append(Param(key, text))
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, record["step"]) for key, value in numeric(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_outputs(self, files: list[Path], adapter: Path | None) -> None:
        for file in files:
            self.client.log_artifact(self.run_id, str(file))
        if adapter is not None:
            self.client.log_artifacts(self.run_id, str(adapter), artifact_path="adapter")

    def end(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbTracker(Tracker):
    """A W&B run under `project`, its local files in RUN/wandb/ (with WANDB_MODE=offline, all of it: `wandb sync`
    uploads it later); the adapter becomes a `model` artifact."""

    def __init__(self, cfg: TrackingConfig, run_path: Path, name: str, resume_id: str | None):
        super().__init__(run_path)
        import wandb

        # silent: one line of ours says where the run went, instead of a dozen of W&B's per run
        settings = wandb.Settings(silent=True, **({"base_url": cfg.uri} if cfg.uri else {}))
        self.name = name
        self.wb = wandb.init(
            project=cfg.project, name=name, dir=str(run_path), id=resume_id, resume="allow" if resume_id else None,
            settings=settings, reinit="create_new",
        )
        self.run_id = self.wb.id
        self.where = f"project {cfg.project}, {self.wb.url or 'offline: ' + str(Path(self.wb.dir).parent)}"

    def log_params(self, params: dict[str, Any]) -> None:
        self.wb.config.update(params, allow_val_change=True)

    def log_metrics(self, record: dict) -> None:
        self.wb.log(numeric(record), step=record["step"])

    def log_outputs(self, files: list[Path], adapter: Path | None) -> None:
        import wandb

        for file in files:
            self.wb.save(str(file), base_path=str(self.run_path), policy="now")
        if adapter is not None:
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", f"{self.name}-adapter"), type="model")
            artifact.add_dir(str(adapter))
            self.wb.log_artifact(artifact)

    def end(self, ok: bool) -> None:
        self.wb.finish(exit_code=0 if ok else 1)


class TensorboardTracker(Tracker):
    """Event files in RUN/tensorboard (or `uri`): metrics as scalars, the settings and reports as text, the loss plot
    as an image (`tensorboard --logdir runs`)."""

    run_id = None

    def __init__(self, cfg: TrackingConfig, run_path: Path, name: str, resume_id: str | None):
        super().__init__(run_path)
        from torch.utils.tensorboard import SummaryWriter

        self.where = str(Path(cfg.uri) if cfg.uri else run_path / "tensorboard")
        self.writer = SummaryWriter(self.where)
        self.params: dict[str, Any] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        # One table, rewritten with what came since (the data counts follow the recipe): the last one is complete.
        self.params |= params
        rows = [f"| {key} | {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)} |" for key, value in self.params.items()]
        self.writer.add_text("params", "\n".join(["| key | value |", "| --- | --- |", *rows]))

    def log_metrics(self, record: dict) -> None:
        for key, value in numeric(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def log_outputs(self, files: list[Path], adapter: Path | None) -> None:
        import matplotlib.image

        for file in files:
            if file.suffix == ".md":
                self.writer.add_text(file.stem, file.read_text(encoding="utf-8"))
            elif file.suffix == ".png":
                self.writer.add_image(file.stem, matplotlib.image.imread(file)[..., :3], dataformats="HWC")

    def end(self, ok: bool) -> None:
        self.writer.close()


BACKENDS = {"mlflow": MlflowTracker, "wandb": WandbTracker, "tensorboard": TensorboardTracker}
