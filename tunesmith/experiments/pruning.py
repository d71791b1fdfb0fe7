"""Pruning inside a sweep trial's training: at every evaluation the trial reports its objective to the Optuna study,
and stops when the study's pruner says it falls behind the others.

A trial is an ordinary `tunesmith train` job; the sweep names its study and trial in $TUNESMITH_TRIAL (JSON:
storage, study, trial_id, objective, pruner, startup_trials). Without it, training adds no callback. PPO runs its own loop, without
trainer callbacks, so its trials are never pruned.
"""

from __future__ import annotations

import json
import os
import sys

from transformers import TrainerCallback

from tunesmith import distributed
from tunesmith.runs import RunDir

TRIAL_ENV = "TUNESMITH_TRIAL"
PRUNED = "pruned.json"  # in the run directory of a pruned trial: the step and the value it was stopped at


def make_pruner(name: str, startup_trials: int):
    """The sweep's pruner: the same in the sweep and in each trial (a study does not store its pruner)."""
    import optuna

    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=startup_trials),
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    return pruners[name]()


def trial_callbacks(run: RunDir) -> list[TrainerCallback]:
    spec = os.environ.get(TRIAL_ENV)
    return [ReportToStudy(run, **json.loads(spec))] if spec else []


class ReportToStudy(TrainerCallback):
    def __init__(self, run: RunDir, storage: str, study: str, trial_id: int, objective: str, pruner: str, startup_trials: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.run, self.objective = run, objective
        self.trial = optuna.trial.Trial(optuna.load_study(study_name=study, storage=storage, pruner=make_pruner(pruner, startup_trials)), trial_id)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.objective)  # the global metric, the same on every rank
        if value is None:
            return
        prune = False
        if state.is_world_process_zero:
            self.trial.report(value, state.global_step)
            prune = self.trial.should_prune()
        # Rank 0 asks the study; every rank stops at this step, or the others would wait on it at the next one forever.
        if not distributed.any_rank(prune):
            return
        if state.is_world_process_zero:
            self.run.write_json(PRUNED, {"step": state.global_step, self.objective: value})
            print(f"\npruned at step {state.global_step}: {self.objective} {value:.4g} falls behind the sweep's other trials", file=sys.stderr)
        control.should_training_stop = True
