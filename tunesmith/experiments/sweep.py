"""`tunesmith sweep SWEEP.yaml`: hyperparameter search with Optuna, every trial a queue job.

    tunesmith sweep sweeps/capitals.yaml                      # runs its trials here, one at a time on cpu
    tunesmith sweep sweeps/capitals.yaml --devices 0,1,2,3    # four trials at once, one GPU each
    tunesmith sweep sweeps/capitals.yaml --no-work            # only queue the trials; `tunesmith queue work` runs them

    runs/<name>/
      study.db             the Optuna study (storage: in SWEEP.yaml for a database that machines share)
      recipe.yaml          the base recipe as it was when the sweep began: every trial starts from it
      trial-<n>/           each trial's run directory (`tunesmith runs compare runs/<name>/trial-*`)
      trials.csv, .md      every trial: state, objective, values, run directory, error
      best.yaml            the best trial's recipe, ready for `tunesmith train`
      report.html          the table and the plots (optimisation history, importances, parallel coordinates)

The study asks for a trial, the trial's values become overrides of a train job, the job's run reports each
evaluation back (pruning, tunesmith.experiments.pruning), and its objective is told to the study when the job is
done. Run it again after a crash, or with a larger n_trials: finished trials are kept, unfinished ones continue
from their checkpoints, and only the missing ones are asked for.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
import time
from pathlib import Path

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.experiments.pruning import PRUNED, TRIAL_ENV, make_pruner
from tunesmith.experiments.space import SweepConfig, override
from tunesmith.experiments.store import JobQueue, this_host
from tunesmith.experiments.submit import train_job
from tunesmith.runs import RunDir


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise TunesmithError("tunesmith sweep needs Optuna: pip install 'tunesmith[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _AskTellGrid(optuna):
    """Optuna's grid sampler without its stop of an optimize loop after the last point (which raises outside
    study.optimize, before the trial's state is stored): the driver stops itself, a grid's n_trials is its size."""

    class AskTellGrid(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return AskTellGrid


def open_study(sweep: SweepConfig):
    optuna = require_optuna()
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=sweep.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=sweep.seed),
        "grid": lambda: _AskTellGrid(optuna)(sweep.grid, seed=sweep.seed),
    }
    sweep.folder.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.create_study(storage=sweep.storage_url, study_name=sweep.name, sampler=samplers[sweep.sampler](),
                                   pruner=make_pruner(sweep.pruner, sweep.startup_trials), direction="maximize" if sweep.maximize else "minimize", load_if_exists=True)
    except (ValueError, ImportError) as err:  # a bad URL, a database driver that is not installed, another direction
        raise TunesmithError(f"storage {sweep.storage_url}: {err}") from None


LOST_AFTER = 600


class Driver:
    """Keeps `parallel` trials queued or running until n_trials are finished, and tells the study how each ended."""

    def __init__(self, sweep: SweepConfig, study, queue: JobQueue, parallel: int):
        self.sweep, self.study, self.queue, self.parallel = sweep, study, queue, parallel
        self.optuna = require_optuna()
        self.here = f"{this_host()}:{queue.folder.resolve()}"  # trials whose jobs this machine's queue holds
        self.recipe = base_recipe(sweep)

    def step(self) -> bool:
        """Tell the study about ended trials, ask for new ones; whether any is still to come or running."""
        self.sync()
        state = self.optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("lost")]
        pending = [t for t in trials if t.state == state.RUNNING]
        while len(finished) + len(pending) < self.sweep.trials and len([t for t in pending if t.user_attrs.get("queue") == self.here]) < self.parallel:
            pending.append(self.ask())
        return len(finished) < self.sweep.trials

    def ask(self):
        trial = self.study.ask()
        trial.set_user_attr("queue", self.here)
        values = {param.key: param.suggest(trial) for param in self.sweep.params}
        name = f"{self.sweep.name}-{trial.number:03d}"
        words = [str(self.recipe), *self.sweep.overrides, *(override(k, v) for k, v in values.items()),
                 f"output_dir={self.sweep.folder / f'trial-{trial.number:03d}'}"]
        options = argparse.Namespace(name=name, after=[], priority=0, gpus=self.sweep.gpus, on_done=None, webhook=None)
        try:
            new = train_job(words, options)
        except ConfigError as err:  # each value was checked alone; together they may still clash
            self.fail(trial, trial.number, f"its values make no valid recipe: {' '.join(str(err).split())}")
            return trial
        new.sweep = self.sweep.name
        new.env = {TRIAL_ENV: json.dumps({"storage": self.sweep.storage_url, "study": self.sweep.name, "trial_id": trial._trial_id,
                                          "objective": self.sweep.objective, "pruner": self.sweep.pruner,
                                          "startup_trials": self.sweep.startup_trials})}
        job = self.queue.add(new)
        trial.set_user_attr("job", job.id)
        trial.set_user_attr("run_dir", job.run_dir)
        say(f"trial {trial.number}: job {job.id}, " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
        return trial

    def sync(self) -> None:
        state = self.optuna.trial.TrialState
        for frozen in self.study.get_trials(deepcopy=False, states=(state.RUNNING,)):
            attrs = frozen.user_attrs
            trial = self.optuna.trial.Trial(self.study, frozen._trial_id)
            if "job" not in attrs:
                # Asked here, but the sweep stopped before its job was queued (or, asked elsewhere and still without a
                # job after LOST_AFTER seconds, on a machine that stopped): asked again, not counted.
                age = time.time() - frozen.datetime_start.timestamp()
                if attrs.get("queue") == self.here or age > LOST_AFTER:
                    trial.set_user_attr("lost", True)
                    self.study.tell(frozen.number, state=state.FAIL)
                continue
            if attrs.get("queue") != self.here:
                continue  # another machine's trial
            try:
                job = self.queue.get(attrs["job"])
            except TunesmithError:
                self.fail(trial, frozen.number, f"its job {attrs['job']} was removed from the queue")
                continue
            if job.state in ("queued", "running"):
                continue
            if job.state != "done":
                self.fail(trial, frozen.number, (job.error or job.note or job.state).splitlines()[0])
                continue
            run = RunDir(Path(job.run_dir))
            if (run.path / PRUNED).is_file():
                pruned = json.loads((run.path / PRUNED).read_text(encoding="utf-8"))
                trial.set_user_attr("pruned_at", pruned["step"])
                self.study.tell(frozen.number, state=state.PRUNED)
                say(f"trial {frozen.number}: pruned at step {pruned['step']}")
                continue
            value = objective_value(run, self.sweep.objective)
            if value is None:
                self.fail(trial, frozen.number, f"its run logged no {self.sweep.objective}")
                continue
            self.study.tell(frozen.number, value)
            say(f"trial {frozen.number}: {self.sweep.objective} {value:.4g}")

    def fail(self, trial, number: int, why: str) -> None:
        trial.set_user_attr("error", why)
        self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        say(f"trial {number}: failed: {why}")


def base_recipe(sweep: SweepConfig) -> Path:
    """The base recipe copied into the sweep's folder when it begins; every trial, resumed or later, starts from it."""
    copy = sweep.folder / "recipe.yaml"
    if not copy.is_file():
        shutil.copy2(sweep.recipe, copy)
    elif not filecmp.cmp(sweep.recipe, copy, shallow=False):
        say(f"note: {sweep.recipe} changed since the sweep began; its trials keep training from the copy in {copy}")
    return copy


def objective_value(run: RunDir, objective: str) -> float | None:
    """The run's final value of the objective: its last evaluation, or with train.keep_best the best one (the
    weights it finished with)."""
    values = [r[objective] for r in run.metrics() if objective in r]
    if not values:
        return None
    if run.recipe().train.keep_best:
        return min(values) if objective.endswith("loss") else max(values)
    return values[-1]


def run_sweep(sweep: SweepConfig, workers: int, devices: list[str] | None, work: bool, report_only: bool, queue_folder: str | None,
              stale_after: float, backend=None) -> SweepConfig:
    from tunesmith.experiments.results import write_results
    from tunesmith.experiments.worker import Worker

    study = open_study(sweep)
    queue = JobQueue(queue_folder)
    driver = Driver(sweep, study, queue, workers)
    if report_only:
        driver.sync()
    elif work:
        Worker(queue, workers, devices, exit_when_empty=True, stale_after=stale_after, sweep=sweep.name, backend=backend).run(between=driver.step)
        driver.sync()
    else:
        say(f"queueing {sweep.name}'s trials in {queue.folder}, {workers} at a time: run them with tunesmith queue work")
        while driver.step():
            time.sleep(5)
    write_results(sweep, study)
    return sweep


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
