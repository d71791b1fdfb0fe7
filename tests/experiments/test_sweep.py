"""`tunesmith sweep`: SWEEP.yaml checked before any trial, trials queued as jobs and told back to the study, the
same seed giving the same trials, a resumed sweep repeating no finished trial, results, and pruning inside a real
training. Most tests run the trials' jobs with a stand-in worker that writes the run's metrics at once."""

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("optuna")

from tests.experiments.conftest import ROOT, write_recipe  # noqa: E402
from tunesmith.cli import main  # noqa: E402
from tunesmith.config import load_recipe  # noqa: E402
from tunesmith.errors import ConfigError  # noqa: E402
from tunesmith.experiments.pruning import PRUNED, TRIAL_ENV  # noqa: E402
from tunesmith.experiments.space import load_sweep  # noqa: E402
from tunesmith.experiments.store import JobQueue  # noqa: E402
from tunesmith.experiments.sweep import Driver, open_study  # noqa: E402
from tunesmith.methods import sft  # noqa: E402
from tunesmith.runs import RunDir  # noqa: E402


def write_sweep(folder, recipe, name="lr-r", **fields):
    raw = {"recipe": str(recipe), "space": {"train.lr": {"log_uniform": [1e-4, 1e-1]}, "peft.r": {"choice": [2, 4, 8]}},
           "n_trials": 4, "seed": 0, **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def base(project, stories_path):
    """The capitals recipe with eval data (an eval_loss to optimise)."""
    recipe = write_recipe(project, stories_path)
    raw = yaml.safe_load(recipe.read_text())
    raw["data"]["eval"] = "capitals.jsonl"
    recipe.write_text(yaml.safe_dump(raw))
    return recipe


def fake_work(queue: JobQueue, ran: list, prune: set = frozenset(), fail: set = frozenset()) -> None:
    """Run every queued job at once: its run gets the config it would train and an eval_loss that is lowest at
    lr 1e-2, r 2; `prune`/`fail` name run directories that end pruned or failed."""
    while (job := queue.claim("stand-in:1", None)) is not None:
        recipe = load_recipe(job.argv[1], job.argv[2:])
        run = RunDir(recipe.run_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(recipe)
        ran.append(run.path.name)
        if run.path.name in fail:
            queue.finish(job.id, "failed", exit_code=2, error="error: the loss is nan at step 3")
            continue
        loss = (math.log10(recipe.train.lr) + 2) ** 2 + recipe.peft.r / 100
        run.append_metrics({"step": 4, "eval_loss": loss + 1.0})
        run.append_metrics({"step": 8, "eval_loss": loss})
        if run.path.name in prune:
            run.write_json(PRUNED, {"step": 4, "eval_loss": loss + 1.0})
        queue.finish(job.id, "done", exit_code=0)


def sweep_to_the_end(path, ran: list, parallel: int = 1, **kwargs):
    sweep = load_sweep(path)
    study = open_study(sweep)
    driver = Driver(sweep, study, JobQueue(), parallel)
    while driver.step():
        fake_work(driver.queue, ran, **kwargs)
    return sweep, study


@pytest.mark.parametrize("fields, message", [
    ({"space": {"train.bogus": {"choice": [1, 2]}}}, "space.train.bogus = 1 does not make a valid recipe: train.bogus: unknown key"),
    ({"space": {"peft.r": {"choice": [0, 8]}}}, "space.peft.r = 0 does not make a valid recipe: peft.r: 0"),
    ({"space": {"train.lr": {"log_uniform": [1e-4]}}}, "space.train.lr: log_uniform takes [low, high], two numbers, got [0.0001]"),
    ({"space": {"train.lr": {"log_uniform": [0, 1e-3]}}}, "space.train.lr: log_uniform needs low > 0, got 0"),
    ({"space": {"train.lr": {"uniform": [1e-3, 1e-4]}}}, "space.train.lr: low 0.001 is not below high 0.0001"),
    ({"space": {"peft.r": {"int": [2, 8], "log": True}}}, "space.peft.r: 'log' does not go with int"),
    ({"space": {"train.lr": {"gaussian": [0, 1]}}}, "space.train.lr: give one of log_uniform, uniform, int, log_int, choice"),
    ({"sampler": "grid"}, "sampler grid: space.train.lr is a range; a grid takes choice lists only"),
    ({"n_trails": 4}, "n_trails: unknown key"),
    ({"sampler": "cmaes"}, "sampler: 'cmaes'"),
    ({"overrides": ["data.eval=[]"]}, "objective eval_loss needs eval data: the base recipe has no data.eval and no data.eval_split"),
])
def test_a_bad_sweep_is_refused_before_any_trial(project, base, capsys, fields, message):
    path = write_sweep(project, base, **fields)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert message in str(err.value)
    assert main(["sweep", str(path)]) == 2 and not (project / "runs" / "lr-r").exists()


def test_trials_are_queue_jobs_and_the_same_seed_gives_the_same_trials(project, base):
    ran = []
    sweep, study = sweep_to_the_end(write_sweep(project, base, name="first", n_trials=5), ran)
    again, twin = sweep_to_the_end(write_sweep(project, base, name="second", n_trials=5), ran)
    other, _ = sweep_to_the_end(write_sweep(project, base, name="other", n_trials=5, seed=1), ran)
    params = [t.params for t in study.trials]
    assert params == [t.params for t in twin.trials] and len(params) == 5
    assert params != [t.params for t in open_study(other).trials]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5

    job = JobQueue().get(study.trials[0].user_attrs["job"])
    lr, r = params[0]["train.lr"], params[0]["peft.r"]
    assert job.argv[2:] == [f"train.lr={lr!r}", f"peft.r={r}", f"output_dir={sweep.folder / 'trial-000'}", "name=first-000"]
    assert job.sweep == "first" and json.loads(job.env[TRIAL_ENV])["trial_id"] == study.trials[0]._trial_id
    assert study.trials[0].value == pytest.approx((math.log10(lr) + 2) ** 2 + r / 100)  # the last evaluation's eval_loss


def test_a_resumed_sweep_repeats_no_finished_trial(project, base):
    path = write_sweep(project, base, n_trials=4)
    sweep = load_sweep(path)
    ran = []
    driver = Driver(sweep, open_study(sweep), JobQueue(), 1)
    driver.step()
    fake_work(driver.queue, ran)
    driver.step()  # trial 0 told, trial 1 queued: then the sweep is killed before its job runs ...
    driver.study.ask().set_user_attr("queue", driver.here)  # ... and a trial 2 asked at the moment of the kill, never queued
    assert ran == ["trial-000"]

    sweep, study = sweep_to_the_end(path, ran)
    assert ran == ["trial-000", "trial-001", "trial-003", "trial-004"]  # 0 not again, 1 from its queued job
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE", 4: "COMPLETE"}
    assert study.trials[2].user_attrs["lost"] and JobQueue().get(study.trials[1].user_attrs["job"]).attempts == 1


def test_results_table_best_recipe_and_report(project, base, capsys):
    path = write_sweep(project, base, n_trials=4)
    sweep = load_sweep(path)
    open_study(sweep).enqueue_trial({"train.lr": 0.05, "peft.r": 8})  # planted: pruned by the stand-in
    open_study(sweep).enqueue_trial({"train.lr": 0.09, "peft.r": 4})  # planted: its job fails
    ran = []
    sweep, study = sweep_to_the_end(path, ran, prune={"trial-000"}, fail={"trial-001"})
    capsys.readouterr()
    assert main(["sweep", str(path), "--report"]) == 0
    out = capsys.readouterr().out

    best = study.best_trial
    assert {t.state.name for t in study.trials} == {"PRUNED", "FAIL", "COMPLETE"}
    folder = project / "runs" / "lr-r"
    rows = (folder / "trials.csv").read_text(encoding="utf-8-sig").splitlines()
    assert rows[0] == "trial,state,eval_loss,train.lr,peft.r,run,note"
    assert rows[1].startswith("0,pruned,,0.05,8,") and rows[1].endswith(",pruned at step 4")
    assert rows[2].startswith("1,fail,,0.09,4,") and rows[2].endswith(",error: the loss is nan at step 3")
    assert f"| {best.number} | complete (best) |" in out
    assert f"best: trial {best.number}, eval_loss {best.value:.6g}; its recipe: runs/lr-r/best.yaml" in out

    recipe = load_recipe(folder / "best.yaml")  # ready for tunesmith train
    assert (recipe.train.lr, recipe.peft.r, recipe.name, recipe.output_dir) == (best.params["train.lr"], best.params["peft.r"], "lr-r-best", None)
    assert (folder / "best.yaml").read_text().startswith("# tunesmith train runs/lr-r/best.yaml\n")
    report = (folder / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3 and f"<td>{best.number}</td><td>complete (best)</td>" in report
    assert sorted(p.name for p in (folder / "plots").glob("*.png")) == ["history.png", "importances.png", "parallel.png"]


def trial_behind_the_others(project, base):
    """(the study, $TUNESMITH_TRIAL of a new trial in it) after two earlier trials that did far better at step 2
    than stories260K's first steps do: the median pruner stops the new one at its first evaluation."""
    import optuna

    sweep = load_sweep(write_sweep(project, base, pruner="median", startup_trials=2))
    study = open_study(sweep)
    for value in (0.5, 0.6):
        study.add_trial(optuna.trial.create_trial(params={"train.lr": 1e-2, "peft.r": 4}, distributions={
            "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True), "peft.r": optuna.distributions.CategoricalDistribution([2, 4, 8])},
            value=value, intermediate_values={2: value, 4: value}))
    trial = study.ask()
    spec = {"storage": sweep.storage_url, "study": sweep.name, "trial_id": trial._trial_id, "objective": "eval_loss", "pruner": "median", "startup_trials": 2}
    return study, json.dumps(spec)


def test_a_trial_falling_behind_is_pruned_at_an_evaluation(project, base, monkeypatch):
    study, spec = trial_behind_the_others(project, base)
    monkeypatch.setenv(TRIAL_ENV, spec)
    run = sft.train(load_recipe(base, ["train.eval_steps=2", "output_dir=runs/pruned"]))
    assert json.loads((run.path / PRUNED).read_text())["step"] == 2
    assert max(r["step"] for r in run.metrics()) == 2 and run.finished  # stopped at its first evaluation, weights saved
    assert study.trials[-1].intermediate_values.keys() == {2}


def test_a_pruned_trial_on_two_processes_stops_both(project, base):
    """Rank 0 alone asks the study; had it alone stopped, the other rank would wait on it at the next step forever."""
    study, spec = trial_behind_the_others(project, base)
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", str(base), "train.eval_steps=2", "train.max_steps=6",
                           "output_dir=runs/pruned", "--nproc", "2"], env=os.environ | {TRIAL_ENV: spec}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    run = RunDir(project / "runs" / "pruned")
    assert json.loads((run.path / PRUNED).read_text())["step"] == 2
    assert max(r["step"] for r in run.metrics()) == 2 and run.finished
    assert study.trials[-1].intermediate_values.keys() == {2}


@pytest.mark.slow  # three real trials, ~1 min on 2 CPU cores
def test_a_sweep_runs_real_trials_prunes_a_planted_bad_one_and_continues_with_more(project, base, capsys):
    path = write_sweep(project, base, n_trials=2, space={"train.lr": {"log_uniform": [1e-5, 1e-1]}}, startup_trials=2,
                       overrides=["train.eval_steps=2", "train.max_steps=6"])
    assert main(["sweep", str(path)]) == 0
    study = open_study(load_sweep(path))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    # One more trial, planted with a learning rate too small to learn anything by step 2: the median pruner stops it there.
    path.write_text(path.read_text().replace("n_trials: 2", "n_trials: 3"))
    study.enqueue_trial({"train.lr": 1e-5})
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 0
    err = capsys.readouterr().err
    trials = open_study(load_sweep(path)).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"], err
    assert "trial 0" not in err and "trial 1" not in err  # the finished trials are not run again
    pruned = RunDir(project / "runs" / "lr-r" / "trial-002")
    assert json.loads((pruned.path / PRUNED).read_text())["step"] == 2 and pruned.finished
    assert main(["runs", "compare", *(str(project / "runs" / "lr-r" / f"trial-00{i}") for i in range(3)), "--out", "runs/compare"]) == 0


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_loads_and_says_how_to_run_it(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # its recipe and data paths are the checkout's
    sweep = load_sweep(path.relative_to(ROOT))
    assert path.read_text().startswith(f"# tunesmith sweep sweeps/{path.name}")
    assert sweep.trials == sweep.n_trials and sweep.params


def test_values_that_clash_only_together_fail_their_trial_and_the_sweep_goes_on(project, base):
    space = {"train.eval_steps": {"choice": [2, 4]}, "train.save_steps": {"choice": [4, 6]}}
    path = write_sweep(project, base, sampler="grid", space=space, overrides=["train.keep_best=true", "train.eval_steps=2", "train.save_steps=4"])
    sweep, study = sweep_to_the_end(path, ran := [])
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(study.trials) == 4 and len(ran) == 3
    assert [t.params for t in failed] == [{"train.eval_steps": 4, "train.save_steps": 6}]
    assert failed[0].user_attrs["error"].startswith("its values make no valid recipe: ")
    assert "train.save_steps must be a multiple of train.eval_steps" in failed[0].user_attrs["error"]
