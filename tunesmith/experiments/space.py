"""SWEEP.yaml: a base recipe, a search space over any of its keys, an objective, and how to search.

    # tunesmith sweep sweeps/capitals.yaml
    recipe: recipes/quickstart.yaml       # the base recipe
    overrides: [train.max_steps=40]       # fixed changes to it, as on the command line
    space:
      train.lr: {log_uniform: [1.0e-5, 1.0e-3]}
      peft.r: {choice: [8, 16, 32]}
      train.warmup: {uniform: [0.0, 0.1]}
      train.grad_accum: {int: [1, 4]}      # also log_int; int and uniform take `step`
    objective: eval_loss                  # a metrics.jsonl key (eval_loss, eval_<metric> of generation_eval)
    direction: minimize                   # default: minimize for a *loss, else maximize
    n_trials: 12
    sampler: tpe                          # tpe, random or grid (a grid takes choice lists only)
    pruner: median                        # median, hyperband or none: stops trials doing worse at an evaluation
    seed: 42

Every value the space can take is checked against the recipe schema before the first trial starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import ConfigError

KINDS = ("log_uniform", "uniform", "int", "log_int", "choice")


@dataclass
class Param:
    """One key of the search space: a range (low, high, step) or the values to choose from."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.kind == "log_int")
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.kind == "log_uniform")

    def extremes(self) -> list:
        """The values that bound what it can suggest: checked against the recipe before any trial runs."""
        if self.kind == "choice":
            return self.choices
        cast = int if self.kind in ("int", "log_int") else float
        return [cast(self.low), cast(self.high)]


def parse_param(key: str, spec: Any) -> Param:
    where = f"space.{key}"
    if not isinstance(spec, dict) or len([k for k in spec if k in KINDS]) != 1:
        raise ValueError(f"{where}: give one of {', '.join(KINDS)}, e.g. {{log_uniform: [1.0e-5, 1.0e-3]}} or {{choice: [8, 16]}}")
    kind = next(k for k in spec if k in KINDS)
    extra = set(spec) - {kind, "step"}
    if extra or ("step" in spec and kind not in ("int", "uniform")):
        bad = sorted(extra or {"step"})[0]
        raise ValueError(f"{where}: {bad!r} does not go with {kind} (step goes with int and uniform)")
    value = spec[kind]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}: choice takes a list of values, e.g. {{choice: [8, 16, 32]}}")
        return Param(key, kind, choices=value)
    numbers = isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not all(math.isfinite(v) for v in value):
        raise ValueError(f"{where}: {kind} takes [low, high], two numbers, got {value!r}")
    low, high = value
    if kind in ("int", "log_int") and not all(float(v).is_integer() for v in value):
        raise ValueError(f"{where}: {kind} takes whole numbers, got {value!r}")
    if low >= high:
        raise ValueError(f"{where}: low {low} is not below high {high}")
    if kind in ("log_uniform", "log_int") and low <= 0:
        raise ValueError(f"{where}: {kind} needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0):
        raise ValueError(f"{where}: step must be a number > 0, got {step!r}")
    return Param(key, kind, low, high, step)


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="The sweep's name: its study, and runs/<name>/. Default: the file's name.")
    recipe: str = Field(description="The base recipe every trial starts from.")
    overrides: list[str] = Field([], description="Fixed dotted overrides of the base recipe, e.g. [train.max_steps=40].")
    space: dict[str, Any] = Field(description="Recipe key -> {log_uniform|uniform|int|log_int: [low, high]} or {choice: [...]}.")
    objective: str = Field("eval_loss", description="The metric to optimise: a metrics.jsonl key, e.g. eval_loss or eval_exact_match.")
    direction: Literal["minimize", "maximize"] | None = Field(None, description="Default: minimize for a loss, else maximize.")
    n_trials: int | None = Field(None, gt=0, description="Trials in all (a resumed sweep counts the ones done). Default: the grid's size; 10 otherwise.")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="How the next trial's values are chosen.")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Stop a trial whose evaluation falls behind the others'.")
    startup_trials: int = Field(2, ge=0, description="median pruner: trials that finish before any is pruned.")
    seed: int = Field(42, ge=0, description="The sampler's seed: the same seed, the same trials.")
    gpus: int = Field(1, gt=0, description="CUDA devices each trial gets (on a worker with --devices).")
    storage: str | None = Field(None, description="Optuna storage URL; a database URL lets machines share the study. Default: sqlite:///<output_dir>/study.db.")
    output_dir: str | None = Field(None, description="Folder of the study, its trials' runs and the results. Default: runs/<name>.")

    @field_validator("space")
    @classmethod
    def _non_empty(cls, space: dict) -> dict:
        if not space:
            raise ValueError("give at least one recipe key to search, e.g. train.lr: {log_uniform: [1.0e-5, 1.0e-3]}")
        return space

    @model_validator(mode="after")
    def _grid_takes_choices(self) -> SweepConfig:
        if self.sampler == "grid":
            ranges = [k for k, spec in self.space.items() if not (isinstance(spec, dict) and "choice" in spec)]
            if ranges:
                raise ValueError(f"sampler grid: space.{ranges[0]} is a range; a grid takes choice lists only, e.g. {{choice: [1.0e-4, 3.0e-4]}}")
        return self

    @property
    def params(self) -> list[Param]:
        return [parse_param(key, spec) for key, spec in self.space.items()]

    @property
    def folder(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"

    @property
    def maximize(self) -> bool:
        if self.direction:
            return self.direction == "maximize"
        return not self.objective.endswith("loss")

    @property
    def grid(self) -> dict[str, list]:
        return {p.key: p.choices for p in self.params}

    @property
    def trials(self) -> int:
        """n_trials; a grid has no more trials than points."""
        if self.sampler == "grid":
            points = math.prod(len(v) for v in self.grid.values())
            return min(self.n_trials or points, points)
        return self.n_trials or 10


def load_sweep(path: str | Path) -> SweepConfig:
    """Read SWEEP.yaml and check it: its keys, its space, and the base recipe under every value the space bounds."""
    from tunesmith.config import format_error, read_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    raw = read_yaml(path.read_text(encoding="utf-8-sig"), str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep is a mapping (recipe, space, objective, ...), got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    try:
        sweep = SweepConfig.model_validate(raw)
        params = sweep.params
    except ValidationError as err:
        lines = list(dict.fromkeys(format_error(e) for e in err.errors()))
        raise ConfigError(f"{path}: invalid sweep\n" + "\n".join(f"  {line}" for line in lines)) from None
    except ValueError as err:
        raise ConfigError(f"{path}: invalid sweep\n  {err}") from None
    check_space(sweep, params, path)
    return sweep


def check_space(sweep: SweepConfig, params: list[Param], path: Path) -> None:
    """The base recipe with its overrides, then with each bound of each key: a key the recipe does not have, or a
    value it refuses, is an error now, not in trial 7."""
    from tunesmith.config import load_recipe

    base = load_recipe(sweep.recipe, sweep.overrides)
    if sweep.objective.startswith("eval_") and not (base.data.eval or base.data.eval_split > 0):
        raise ConfigError(f"{path}: objective {sweep.objective} needs eval data: the base recipe has no data.eval and no data.eval_split")
    for param in params:
        for value in param.extremes():
            try:
                load_recipe(sweep.recipe, [*sweep.overrides, override(param.key, value)], check_files=False)
            except ConfigError as err:
                detail = str(err).split("\n", 1)[-1].strip()
                raise ConfigError(f"{path}: space.{param.key} = {value!r} does not make a valid recipe: {detail}") from None


def override(key: str, value: Any) -> str:
    """A dotted override the recipe loader reads back as `value`."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    return f"{key}={text}"
