"""Stopping and resuming runs: a kill in the middle of a save, Ctrl-C, changed settings, a finished run, a loss
that turns non-finite. Each resumed run must end exactly where the same run, never stopped, ends."""

import json
import shutil
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from tunesmith.cli import main
from tunesmith.config import validate
from tunesmith.errors import ConfigError
from tunesmith.methods import sft, steps
from tunesmith.methods.steps import open_run
from tunesmith.runs import RunDir

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]
# Values that differ between two runs of the same training: wall-clock speeds.
TIMING = ("train_runtime", "tokens_per_s", "train_samples_per_second", "train_steps_per_second")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "capitals.jsonl"
    path.write_text("".join(json.dumps({"question": f"Capital of {c}?", "answer": a}) + "\n" for c, a in CAPITALS), encoding="utf-8")
    return str(path)


def raw_recipe(stories_path, data_file, out, **train):
    """8 steps of 2 examples each: shuffled batches, dropout and a warmup+cosine schedule, so the data order,
    the RNG and the schedule must all resume exactly; a checkpoint every 2 steps, all kept."""
    return {
        "name": "capitals",
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": data_file, "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "train": {"max_steps": 8, "lr": 1e-2, "batch_size": 2, "logging_steps": 1, "warmup": 2, "scheduler": "cosine",
                  "save_steps": 2, "save_total_limit": 10, **train},
        "output_dir": str(out),
    }


def recipe_file(tmp_path, raw) -> str:
    path = tmp_path / "capitals.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def straight(stories_path, data_file, tmp_path_factory) -> RunDir:
    """The run never stopped, to compare resumed runs with."""
    return sft.train(validate(raw_recipe(stories_path, data_file, tmp_path_factory.mktemp("straight") / "run")))


def per_step(run: RunDir) -> list[dict]:
    """metrics.jsonl without timings, the end-of-training summary and the resume records."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in run.metrics() if "train_loss" not in r and "resumed_from" not in r]


def assert_same_run(resumed: RunDir, straight: RunDir):
    a, b = per_step(straight), per_step(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert [x[k] for k in x] == pytest.approx([y[k] for k in x], abs=1e-4)
    wa = load_file(straight.path / "adapter" / "adapter_model.safetensors")
    wb = load_file(resumed.path / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


class At(TrainerCallback):
    """Calls `act()` when step `step` ends."""

    def __init__(self, step, act):
        self.step, self.act = step, act

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.act()


class Killed(Exception):
    """Stands in for kill -9: nothing of tunesmith's runs after it, unlike KeyboardInterrupt."""


def test_a_kill_in_the_middle_of_a_save_never_leaves_a_half_checkpoint(stories_path, data_file, straight, tmp_path, monkeypatch, capsys):
    save_rng_state = Trainer._save_rng_state

    def killed_at_6(self, output_dir):  # checkpoint-6 has its weights and optimiser state, not yet its RNG state
        if self.state.global_step == 6:
            raise Killed
        save_rng_state(self, output_dir)

    recipe = validate(raw_recipe(stories_path, data_file, tmp_path / "run"))
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_rng_state", killed_at_6)
        with pytest.raises(Killed):
            sft.train(recipe)
    run = RunDir(tmp_path / "run")
    assert sorted(p.name for p in run.checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not run.finished
    # And what else a user, a copy or a full disk leaves behind: a stray folder, a checkpoint without optimiser state.
    (run.checkpoints / "checkpoint-x.tmp").mkdir()
    (run.checkpoints / "checkpoint-4" / "optimizer.pt").unlink()
    capsys.readouterr()

    resumed = sft.train(recipe, resume=True)
    out = capsys.readouterr().err
    assert "--resume: skipping checkpoint-6: its save was interrupted" in out
    assert "--resume: skipping checkpoint-x.tmp: not a checkpoint" in out
    assert "--resume: skipping checkpoint-4: no optimizer.pt (the optimiser's moments): resuming without it would not continue the same run" in out
    assert f"resuming from {run.checkpoints / 'checkpoint-2'} (step 2)" in out
    assert_same_run(resumed, straight)
    assert (run.checkpoints / "checkpoint-4" / "optimizer.pt").is_file()  # written again when the run got there
    assert "- resumed from checkpoint-2" in (run.path / "report.md").read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # a terminal's Ctrl-C; kill, a scheduler, a queue worker
def test_ctrl_c_saves_a_checkpoint_at_the_end_of_the_step_and_says_how_to_go_on(stories_path, data_file, straight, tmp_path, monkeypatch, capsys, signum):
    recipe = recipe_file(tmp_path, raw_recipe(stories_path, data_file, tmp_path / "run"))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        with_callback(patch, At(5, lambda: signal.raise_signal(signum)))
        assert main(["train", recipe, "train.save_total_limit=10"]) == 130
    err = capsys.readouterr().err
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-5"
    assert err.strip().splitlines()[-1] == (
        f"interrupted at step 5: checkpoint saved to {checkpoint}; continue with: tunesmith train {recipe} train.save_total_limit=10 --resume"
    )
    assert "Traceback" not in err and not (tmp_path / "run" / "adapter").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # the handlers are put back

    assert main(["train", recipe, "--resume", "train.save_total_limit=10"]) == 0  # overrides after a flag are read too
    assert_same_run(RunDir(tmp_path / "run"), straight)


def with_callback(monkeypatch, callback):
    """`tunesmith train` with one more trainer callback."""
    monkeypatch.setattr(sft, "callbacks_for", lambda recipe, run, callbacks: steps.callbacks_for(recipe, run, [callback]))


def interrupt():
    raise KeyboardInterrupt


def test_a_second_ctrl_c_stops_at_once_and_a_run_with_no_checkpoint_starts_again(stories_path, data_file, tmp_path, monkeypatch, capsys):
    recipe = recipe_file(tmp_path, raw_recipe(stories_path, data_file, tmp_path / "run", max_steps=2))
    with monkeypatch.context() as patch:
        with_callback(patch, At(1, interrupt))  # a second Ctrl-C, or one outside the handler: KeyboardInterrupt at once
        assert main(["train", recipe]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted at step 1, before the first checkpoint: nothing saved; start again with: tunesmith train {recipe}"
    )
    assert main(["train", recipe]) == 0  # the folder holds no checkpoint: it is simply started again
    run = RunDir(tmp_path / "run")
    records = run.metrics()
    assert [r["step"] for r in records if "loss" in r] == [1, 2]

    capsys.readouterr()
    assert main(["train", recipe, "--resume"]) == 0
    assert "is finished (final weights in adapter/): nothing to resume" in capsys.readouterr().err
    assert run.metrics() == records  # no phantom step


@pytest.fixture(scope="module")
def stopped(stories_path, data_file, tmp_path_factory):
    """A run stopped by Ctrl-C after its checkpoint at step 2."""
    folder = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(KeyboardInterrupt):
        sft.train(validate(raw_recipe(stories_path, data_file, folder)), callbacks=[At(3, interrupt)])
    return folder


def copy_of(stopped, tmp_path):
    shutil.copytree(stopped, tmp_path / "run")
    return tmp_path / "run"


def test_resume_with_changed_settings_shows_them_and_needs_allow_changes(stories_path, data_file, stopped, tmp_path, capsys):
    folder = copy_of(stopped, tmp_path)
    recipe = recipe_file(tmp_path, raw_recipe(stories_path, data_file, folder))
    assert main(["train", recipe, "--resume", "train.lr=0.5", "train.logging_steps=5"]) == 2
    err = capsys.readouterr().err
    assert "--resume: the settings differ from checkpoint-2's, so this would not continue the same run:" in err
    assert "  train.lr: 0.01 (checkpoint-2) → 0.5 (now)" in err
    assert "logging_steps" not in err  # how often a run logs changes nothing it trains
    assert "--allow-changes" in err and "Traceback" not in err

    changed = validate(raw_recipe(stories_path, data_file, folder, lr=0.5))
    run, checkpoint = open_run(changed, resume=True, allow_changes=True)
    assert checkpoint == folder / "checkpoints" / "checkpoint-2"
    assert run.metrics()[-1] == {"step": 2, "resumed_from": "checkpoint-2", "changed": {"train.lr": [0.01, 0.5]}}
    assert [r["step"] for r in run.metrics()] == [1, 2, 2]  # what came after the checkpoint is gone
    assert run.recipe().train.lr == 0.5


def test_settings_the_checkpoint_belongs_to_cannot_change_at_all(stories_path, data_file, stopped, tmp_path):
    folder = copy_of(stopped, tmp_path)
    raw = raw_recipe(stories_path, data_file, folder)
    raw["peft"]["r"] = 8
    with pytest.raises(ConfigError, match=r"cannot change [^\n]*\n  peft.r: 4 \(checkpoint-2\) → 8 \(now\)"):
        open_run(validate(raw), resume=True, allow_changes=True)


def test_resume_without_a_complete_checkpoint_names_what_it_skipped(stories_path, data_file, stopped, tmp_path, capsys):
    folder = copy_of(stopped, tmp_path)
    (folder / "checkpoints" / "checkpoint-2" / "rng_state.pth").unlink()
    recipe = recipe_file(tmp_path, raw_recipe(stories_path, data_file, folder))
    assert main(["train", recipe, "--resume"]) == 2
    captured = capsys.readouterr()
    assert "--resume: skipping checkpoint-2: no rng_state.pth" in captured.err
    assert f"error: --resume: no complete checkpoint in {folder / 'checkpoints'} (checkpoint-2 skipped, see above)" in captured.err
    assert main(["train", recipe]) == 2  # nor is it silently overwritten
    assert "already holds a run: pass --resume" in capsys.readouterr().err


def test_a_loss_that_turns_non_finite_stops_the_run_and_saves_no_final_weights(stories_path, data_file, tmp_path, capsys):
    # lr 1e6 passes any range check; the first update blows the weights up and the next gradients are NaN.
    recipe = recipe_file(tmp_path, raw_recipe(stories_path, data_file, tmp_path / "run", lr=1e6, warmup=0, save_steps=1))
    assert main(["train", recipe]) == 2
    err = capsys.readouterr().err
    assert "error: the gradients are not finite at step 2: training stopped before applying it, and no final weights were written" in err
    assert "checkpoint-1 is kept: continue from it with a lower rate, --resume --allow-changes train.lr=<lower>" in err
    assert "train.lr 1e+06 too high" in err and "Traceback" not in err
    run = RunDir(tmp_path / "run")
    assert not run.finished and [p.name for p in run.checkpoints.glob("checkpoint-*")] == ["checkpoint-1"]
    weights = load_file(run.checkpoints / "checkpoint-1" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert run.status() == "incomplete (resumable from step 1)"


def test_a_run_resumed_at_its_lowered_last_step_trains_nothing_more(stories_path, data_file, straight, tmp_path, capsys):
    """train.max_steps lowered to the checkpoint's step: the Trainer alone would train one step more."""
    out = tmp_path / "run"
    shutil.copytree(straight.path, out)
    shutil.rmtree(out / "adapter")
    for step in (6, 8):
        shutil.rmtree(out / "checkpoints" / f"checkpoint-{step}")
    (out / "report.md").unlink()
    recipe = recipe_file(tmp_path, raw_recipe(stories_path, data_file, out))
    capsys.readouterr()

    assert main(["train", recipe, "--resume", "--allow-changes", "train.max_steps=3"]) == 2
    assert "--resume: checkpoint-4 is at step 4, past the run's last step (3, from train.max_steps or train.epochs)" in capsys.readouterr().err
    assert not (out / "adapter").exists()

    assert main(["train", recipe, "--resume", "--allow-changes", "train.max_steps=4"]) == 0
    steps_logged = [r["step"] for r in RunDir(out).metrics() if "loss" in r]
    assert steps_logged == [1, 2, 3, 4]
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    at_4 = load_file(out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == at_4.keys() and all(torch.equal(saved[k], at_4[k]) for k in saved)  # checkpoint-4, untrained further


def kill():
    raise Killed


@pytest.mark.parametrize("peft", [
    {"method": "adapter", "placement": "houlsby", "reduction_factor": 4, "dropout": 0.1},  # tunesmith's own, saved in the Trainer's checkpoints as part of the model
    {"method": "prefix", "num_virtual_tokens": 4},  # padded batches (no packing), PEFT's prompt encoder
    {"method": "prompt", "num_virtual_tokens": 8, "prompt_init_text": "The capital"},  # 8 tokens with <s>
], ids=["adapter", "prefix", "prompt"])
def test_a_killed_adapter_or_virtual_token_run_resumes_to_the_weights_of_one_never_stopped(stories_path, data_file, tmp_path, peft):
    raw = raw_recipe(stories_path, data_file, tmp_path / "straight", max_steps=6) | {"peft": peft}
    straight = sft.train(validate(raw))
    recipe = validate(raw | {"output_dir": str(tmp_path / "run")})
    with pytest.raises(Killed):
        sft.train(recipe, callbacks=[At(5, kill)])  # after checkpoint-4, before checkpoint-6 and the final save
    checkpoint = RunDir(tmp_path / "run").last_checkpoint()
    assert checkpoint.name == "checkpoint-4"
    if peft["method"] == "adapter":  # the adapters' weights alone: the Trainer saved the whole model, base and all
        saved = load_file(checkpoint / "model.safetensors")
        assert saved and all(".bottleneck.adapters.default." in key for key in saved)
    assert_same_run(sft.train(recipe, resume=True), straight)
