"""Training on several processes: 2-process DDP on CPU (gloo, through `tunesmith train --nproc 2`, which spawns
torchrun) trains step for step as one process with the same global batch, writes its run directory once, and
resumes from its checkpoint; the engines' choice and the shipped FSDP and DeepSpeed configs are checked."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tunesmith import distributed
from tunesmith.config import validate
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.methods import sft

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "distributed"
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid")]


def raw_recipe(model, data, out, **train):
    return {
        "name": "d",
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": str(data), "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        # sgd: updates linear in the gradients (Adam's first steps would divide float noise by tiny moments).
        # A budget of 120 tokens holds one example: 5 batches, so 2 processes end the epoch on a filler.
        "train": {"optimizer": "sgd", "lr": 0.1, "warmup": 0, "scheduler": "constant", "logging_steps": 1, "save_steps": 2,
                  "max_tokens_per_batch": 120, "seed": 3, **train},
        "output_dir": str(out),
    }


def torchrun_train(recipe_file: Path, *flags: str) -> str:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "train", str(recipe_file), "--nproc", "2", *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_processes_train_as_one_with_the_same_global_batch_and_resume(stories_path, tmp_path):
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"question": f"Capital of {c}?", "answer": f"{a}, {'the capital ' * k}of {c}."}) + "\n"
                            for k, (c, a) in enumerate(CAPITALS)), encoding="utf-8")
    one = sft.train(validate(raw_recipe(stories_path, data, tmp_path / "one", grad_accum=2)))
    recipe_file = tmp_path / "two.yaml"
    recipe_file.write_text(yaml.safe_dump(raw_recipe(stories_path, data, tmp_path / "two")), encoding="utf-8")
    output = torchrun_train(recipe_file)
    two = tmp_path / "two"

    assert json.loads((two / "data_report.json").read_text())["batching"]["batches"] == 5
    reference = steps(one.path)
    assert [r["step"] for r in steps(two)] == [r["step"] for r in reference] == [1, 2, 3]  # each step logged once
    for a, b in zip(steps(two), reference):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
    wa, wb = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (two, one.path))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    # rank 0 alone ran the preflight and wrote the run; every rank saved its random state into the checkpoint
    assert output.count("## Splits") == 1 and output.count("run written to") == 1 and "distributed: ddp over 2 processes (gloo)" in output
    assert sorted(p.name for p in (two / "checkpoints" / "checkpoint-2").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert not (two / "checkpoints" / ".unfinished").exists()

    # killed after step 2: its final weights and last checkpoint gone; both ranks continue from checkpoint-2
    shutil.rmtree(two / "adapter")
    shutil.rmtree(two / "checkpoints" / "checkpoint-3")
    output = torchrun_train(recipe_file, "--resume")
    assert output.count("resuming from") == 1
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert sum("resumed_from" in r for r in records) == 1
    assert steps(two)[-1]["step"] == 3 and steps(two)[-1]["loss"] == pytest.approx(reference[-1]["loss"], abs=1e-5)
    assert max((load_file(two / "adapter" / "adapter_model.safetensors")[k] - wb[k]).abs().max().item() for k in wb) <= 1e-5


def test_the_last_step_of_an_epoch_is_topped_up_with_fillers_not_repeats():
    assert distributed.topped_up([4, 0, 2, 1, 3], 2, 5) == [4, 0, 2, 1, 3, 5]
    assert distributed.topped_up([1, 0, 2, 3], 2, 4) == [1, 0, 2, 3]
    assert distributed.topped_up([2, 0, 1], 4, 3) == [2, 0, 1, 3]  # 2 processes × 2 rows per micro-batch
    sampler = sft.EpochSeededPermutation(5, seed=0, shards=4)
    order = list(sampler)
    assert len(sampler) == len(order) == 8 and sorted(order[:5]) == [0, 1, 2, 3, 4] and order[5:] == [5, 5, 5]


def recipe(**train):
    return validate({"model": {"path": "m"}, "data": {"train": "t.jsonl"}, "train": train})


def test_an_engine_the_launch_cannot_run_is_refused_naming_the_key(monkeypatch):
    for variable in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(variable, raising=False)
    assert distributed.engine(recipe()) == "none"
    with pytest.raises(ConfigError, match=r"train.distributed: 'ddp' needs several processes.*--nproc N"):
        distributed.engine(recipe(distributed="ddp"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.engine(recipe()) == "ddp"
    with pytest.raises(ConfigError, match=r"method 'ppo' trains on one process only"):
        distributed.engine(validate({"method": "ppo", "model": {"path": "m"},
                                     "data": {"train": "t.jsonl", "format": "prompt"}, "ppo": {"reward_model": "r"}}))
    monkeypatch.setattr(distributed, "accelerators_present", lambda: True)  # as on a GPU machine
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert distributed.engine(recipe()) == "deepspeed_zero3"
    assert distributed.trainer_arguments(recipe(distributed="deepspeed_zero3")) == {}  # the accelerate config decides
    with pytest.raises(ConfigError, match=r"train.distributed: 'fsdp', but the accelerate config .* selects deepspeed_zero3"):
        distributed.engine(recipe(distributed="fsdp"))


def test_bottleneck_adapters_under_sharded_weights_are_refused_before_training(monkeypatch):
    """The refusal came when saving the adapter, after the whole run had trained."""
    for variable in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(distributed, "accelerators_present", lambda: True)  # as on a GPU machine
    adapter = {"model": {"path": "m"}, "data": {"train": "t.jsonl"}, "peft": {"method": "adapter"}}
    for engine in ("fsdp", "deepspeed_zero3"):
        with pytest.raises(ConfigError, match=rf"train.distributed: '{engine}' shards the weights, which peft.method 'adapter' .* use ddp or deepspeed_zero2"):
            distributed.engine(validate(adapter | {"train": {"distributed": engine}}), processes=2)
    assert distributed.engine(validate(adapter | {"train": {"distributed": "deepspeed_zero2"}}), processes=2) == "deepspeed_zero2"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # the same stage chosen by the accelerate config
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ConfigError, match="shards the weights"):
        distributed.engine(validate(adapter), processes=2)


def test_fsdp_and_deepspeed_on_a_machine_without_gpus_are_refused_not_run_as_ddp(monkeypatch):
    """accelerate sets FSDP and DeepSpeed up on accelerators only: on CPU processes it wraps the model in DDP."""
    for variable in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "accelerators_present", lambda: False)
    for name in ("fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        with pytest.raises(ConfigError, match=rf"train.distributed: '{name}' needs GPUs, and this machine has none.*use train.distributed: ddp"):
            distributed.engine(recipe(distributed=name))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # an accelerate config file that chose FSDP
    with pytest.raises(ConfigError, match=r"'fsdp' needs GPUs"):
        distributed.engine(recipe())
    monkeypatch.setattr(distributed, "accelerators_present", lambda: True)
    assert distributed.engine(recipe()) == "fsdp"
    assert distributed.engine(recipe(distributed="fsdp")) == "fsdp"


def test_nproc_is_checked_before_anything_starts(tmp_path, monkeypatch, capsys):
    from tunesmith.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    (tmp_path / "r.yaml").write_text("model: {path: m}\ndata: {train: t.jsonl}\n", encoding="utf-8")
    assert main(["train", "r.yaml", "--nproc", "0"]) == 2
    assert "train --nproc: 0 is not a number of processes" in capsys.readouterr().err
    # an engine the launch cannot run is said once, before torchrun starts (it would start nothing)
    monkeypatch.setattr(distributed, "launch", lambda *a: pytest.fail("launched"))
    monkeypatch.setattr(distributed, "accelerators_present", lambda: False)
    assert main(["train", "r.yaml", "--nproc", "2", "train.distributed=fsdp"]) == 2
    assert capsys.readouterr().err.count("train.distributed: 'fsdp' needs GPUs") == 1
    assert main(["train", "r.yaml", "--nproc", "1", "train.distributed=ddp"]) == 2
    assert "'ddp' needs several processes" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TunesmithError, match="already runs under a launcher"):
        distributed.launch(2, ["r.yaml"])


def test_the_shipped_fsdp_config_is_one_transformers_accepts(monkeypatch):
    from transformers import TrainingArguments

    for variable in ("WORLD_SIZE", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(distributed, "accelerators_present", lambda: True)  # as on a GPU machine
    kwargs = distributed.trainer_arguments(recipe(distributed="fsdp"))
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **kwargs)
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True  # full shard
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and plugin["state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize("stage", [2, 3])
def test_the_shipped_deepspeed_configs_leave_to_the_trainer_what_it_fills(stage, stories_path):
    """DeepSpeed does not install on this CPU machine, so the JSON is checked as transformers would check it:
    accelerate's config reader (the stage), then the Trainer's own filling of every "auto" value from the
    TrainingArguments (HfTrainerDeepSpeedConfig's methods), with no mismatch and no "auto" left."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers import AutoModelForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    path = CONFIGS / f"zero{stage}.json"
    trainer_side = {name: value for name, value in vars(HfTrainerDeepSpeedConfig).items() if not name.startswith("__")}
    checked = type("Checked", (HfDeepSpeedConfig,), trainer_side)(str(path))
    checked.mismatches = []
    assert checked.get_value("zero_optimization.stage") == stage and checked.is_zero3() == (stage == 3)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[], per_device_train_batch_size=1, gradient_accumulation_steps=4)
    checked.trainer_config_process(args)
    checked.trainer_config_finalize(args, AutoModelForCausalLM.from_pretrained(stories_path), num_training_steps=10)
    assert "auto" not in json.dumps(checked.config)
    assert checked.config["gradient_accumulation_steps"] == 4 and checked.config["train_micro_batch_size_per_gpu"] == 1
    if stage == 3:
        assert checked.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save")  # so rank 0 can save the model


@pytest.mark.parametrize("name", ["fsdp", "zero2", "zero3"])
def test_the_shipped_accelerate_configs_load_and_name_their_command(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / f"{name}.yaml"
    assert path.read_text().startswith(f"# accelerate launch --config_file recipes/distributed/{name}.yaml")
    config = load_config_from_file(str(path))
    assert config.distributed_type == ("FSDP" if name == "fsdp" else "DEEPSPEED")
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_reshard_after_forward"] is True
    else:
        assert (ROOT / config.deepspeed_config["deepspeed_config_file"]) == CONFIGS / f"{name}.json"


@pytest.mark.parametrize("method", ["dpo", "reward"])
def test_pairs_on_two_processes_train_as_one_with_the_same_global_batch(stories_path, tmp_path, method):
    """Packed pairs (tunesmith's DPO and reward losses): the loss of a step is the mean over every rank's pairs, so two
    processes of one row each step as one process accumulating two rows, also when the rows hold different numbers
    of pairs and the epoch's last step tops up the second process with the filler (no pair trains twice)."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Capital of {c}?", "chosen": a, "rejected": f"Not {a}, {'again ' * k}."}) + "\n"
                            for k, (c, a) in enumerate(CAPITALS * 2)), encoding="utf-8")

    def raw(out, **train):
        r = raw_recipe(stories_path, data, out, **train)
        r["method"] = method
        if method == "dpo":
            r["dpo"] = {"beta": 0.5}
        r["train"] |= {"max_tokens_per_batch": 300, "epochs": 1}  # 10 pairs of 134-169 tokens: 7 rows of 1 or 2 pairs
        return r

    from tunesmith.methods import dpo, reward

    one = {"dpo": dpo, "reward": reward}[method].train(validate(raw(tmp_path / "one", grad_accum=2)))
    recipe_file = tmp_path / "two.yaml"
    recipe_file.write_text(yaml.safe_dump(raw(tmp_path / "two")), encoding="utf-8")
    torchrun_train(recipe_file)
    two = tmp_path / "two"
    batching = json.loads((two / "data_report.json").read_text())["batching"]
    assert batching["batches"] == 7 and "note" not in batching
    reference = steps(one.path)
    assert [r["step"] for r in steps(two)] == [r["step"] for r in reference] == [1, 2, 3, 4]
    for a, b in zip(steps(two), reference):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
    # The last step is one row, alone in one process and beside the filler on two: the filler's stand-in pair counts
    # in no metric. (Earlier steps' metrics differ: TRL averages them per micro-batch, two processes per pair.)
    metrics = ["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"] if method == "dpo" else ["min_reward", "mean_reward", "max_reward", "margin"]
    assert {k: pytest.approx(v, abs=1e-5) for k, v in steps(two)[-1].items() if k in metrics} == {k: v for k, v in reference[-1].items() if k in metrics}
    assert len(metrics) == sum(k in metrics for k in reference[-1])
    weights = "adapter_model.safetensors"
    wa, wb = (load_file(run / "adapter" / weights) for run in (two, one.path))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


@pytest.mark.parametrize("method, mode, note", [
    ("dpo", "packed", None),  # planned batches, topped up with fillers
    ("dpo", "random", None),
    ("reward", "packed", None),
    ("reward", "random", "5 examples over 2 processes × 2: the last step of every epoch trains 3 of the epoch's first examples a second time"),
    ("sft", "packed", None),
])
def test_what_trl_trainers_repeat_to_even_out_the_processes_is_said_in_the_data_report(monkeypatch, method, mode, note):
    from types import SimpleNamespace

    from tunesmith.methods.steps import plan_batches_into

    monkeypatch.setenv("WORLD_SIZE", "2")
    plan = SimpleNamespace(mode=mode, batches=[[i] for i in range(5)], summary=lambda lengths, batch_size: {"batches": 5})
    report = SimpleNamespace(batching=None)
    recipe = SimpleNamespace(method=method, train=SimpleNamespace(batch_size=2))
    rows = [{"input_ids": [1, 2]}] * 5
    assert plan_batches_into(report, recipe, rows, lambda r, rows: plan) is plan
    assert report.batching.get("note", "").startswith(note) if note else "note" not in report.batching
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert plan_batches_into(report, recipe, rows, lambda r, rows: plan) is plan and "note" not in report.batching


def test_kto_says_what_trls_batches_repeat_on_several_processes(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from tunesmith.data.report import DataReport
    from tunesmith.methods import kto
    from tunesmith.runs import RunDir

    monkeypatch.setenv("WORLD_SIZE", "2")
    s = SimpleNamespace(train_rows=[{"prompt_ids": [1, 2], "completion_ids": [3]}] * 7, data_report=DataReport(), run=RunDir(tmp_path))
    kto.report_batching(recipe(batch_size=2, packing=False), s)
    saved = json.loads((tmp_path / "data_report.json").read_text())["batching"]
    assert saved["note"].startswith("7 examples over 2 processes × 2: the last step of every epoch trains 1 of the epoch's first examples")
