"""How the recipe's train section maps onto the trainer arguments TRL and transformers receive."""

import pytest

from tunesmith.config import validate
from tunesmith.methods import common
from tunesmith.runs import RunDir


def args_for(tmp_path, monkeypatch, bf16_hardware=False, **sections):
    monkeypatch.setattr("tunesmith.models.load.has_fast_bf16", lambda: bf16_hardware)
    raw = {"model": {"path": "org/model"}, "data": {"train": "x.jsonl"}, **sections}
    recipe = validate(raw)
    return common.trainer_arguments(recipe, RunDir(tmp_path), has_eval=bool(recipe.data.eval or recipe.data.eval_split))


def test_defaults_evaluate_and_save_once_per_epoch(tmp_path, monkeypatch):
    args = args_for(tmp_path, monkeypatch, data={"train": "x.jsonl", "eval_split": 0.1})
    assert (args["eval_strategy"], args["save_strategy"]) == ("epoch", "epoch")
    assert args["max_steps"] == -1 and args["optim"] == "adamw_torch"
    assert args["output_dir"] == str(tmp_path / "checkpoints")
    assert args["load_best_model_at_end"] is False and args["report_to"] == []


def test_no_eval_data_means_no_evaluation(tmp_path, monkeypatch):
    assert args_for(tmp_path, monkeypatch)["eval_strategy"] == "no"


def test_keep_best_and_early_stopping_select_on_eval_loss(tmp_path, monkeypatch):
    args = args_for(
        tmp_path, monkeypatch,
        data={"train": "x.jsonl", "eval": "y.jsonl"},
        train={"eval_steps": 10, "save_steps": 20, "early_stopping_patience": 3},
    )
    assert (args["eval_strategy"], args["eval_steps"], args["save_strategy"], args["save_steps"]) == ("steps", 10, "steps", 20)
    assert args["load_best_model_at_end"] and args["metric_for_best_model"] == "eval_loss" and args["greater_is_better"] is False


@pytest.mark.parametrize(
    ("model", "hardware", "bf16", "fp16"),
    [
        ({"dtype": "float32"}, True, False, False),   # an explicit float32 run is not autocast to bf16
        ({"dtype": "auto"}, True, True, False),
        ({"dtype": "auto"}, False, False, False),
        ({"dtype": "float16"}, False, False, True),
    ],
)
def test_mixed_precision_follows_the_model_dtype(tmp_path, monkeypatch, model, hardware, bf16, fp16):
    args = args_for(tmp_path, monkeypatch, hardware, model={"path": "org/model", **model})
    assert (args["bf16"], args["fp16"]) == (bf16, fp16)


def test_qlora_compute_dtype_decides_mixed_precision(tmp_path, monkeypatch):
    args = args_for(tmp_path, monkeypatch, False, model={"path": "org/m", "dtype": "float32", "compute_dtype": "bfloat16"}, peft={"method": "qlora"})
    assert args["bf16"] is True


def test_optimizer_names_and_no_library_trackers(tmp_path, monkeypatch):
    args = args_for(tmp_path, monkeypatch, tracking="tensorboard", train={"optimizer": "adamw_8bit", "warmup": 0.1, "group_by_length": False})
    # tunesmith.tracking logs metrics.jsonl itself; transformers' own callbacks would log everything twice.
    assert args["report_to"] == [] and args["optim"] == "adamw_bnb_8bit"
    assert args["warmup_steps"] == 0.1 and args["train_sampling_strategy"] == "random"


def test_missing_tracker_is_an_install_hint(monkeypatch):
    import importlib

    from tunesmith.errors import TunesmithError
    from tunesmith.tracking import check_installed

    def missing(name, *args):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", missing)
    recipe = validate({"model": {"path": "org/m"}, "data": {"train": "x.jsonl"}, "tracking": "wandb"})
    with pytest.raises(TunesmithError, match=r"^tracking.backend: wandb cannot be imported \(ModuleNotFoundError: No module named 'wandb'\): pip install -c constraints.txt 'tunesmith\[wandb\]'$"):
        check_installed(recipe.tracking)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_trainer_arguments_use_no_deprecated_name(tmp_path, monkeypatch, checkpointing):
    import warnings

    from trl import SFTConfig

    args = args_for(tmp_path, monkeypatch, train={"gradient_checkpointing": checkpointing})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        config = SFTConfig(**args)
    assert [str(w.message) for w in seen if issubclass(w.category, FutureWarning)] == []
    assert config.activation_checkpointing is checkpointing


def test_progress_bar_shows_each_loss_as_soon_as_it_is_logged_and_a_bar_for_evaluation(capsys):
    from types import SimpleNamespace

    bar = common.ProgressBar()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0, num_input_tokens_seen=0)
    bar.on_train_begin(None, state, None)
    state.global_step, state.num_input_tokens_seen = 1, 100
    bar.on_step_end(None, state, None)
    assert "loss" not in bar.bar.postfix  # nothing logged yet: no placeholder
    bar.on_log(None, state, None, logs={"loss": 2.5, "grad_norm": 1.0})
    assert bar.bar.postfix.startswith("loss 2.5000 | ")  # step 1's loss, at step 1
    bar.on_prediction_step(None, state, None, eval_dataloader=[0, 1, 2])
    bar.on_prediction_step(None, state, None, eval_dataloader=[0, 1, 2])
    assert (bar.eval_bar.n, bar.eval_bar.total, bar.eval_bar.desc) == (2, 3, "eval")
    bar.on_evaluate(None, state, None)
    bar.on_log(None, state, None, logs={"eval_loss": 2.25})
    assert bar.eval_bar is None and bar.bar.postfix.startswith("loss 2.5000 | eval 2.2500 | ")
    bar.on_train_end(None, state, None)


def test_settings_are_shown_as_people_write_them():
    from tunesmith.methods.steps import shown

    assert [shown(v) for v in (None, False, 1e-05, 0.1, "cosine")] == ["none", "no", "1e-05", "0.1", "cosine"]
    assert shown([{"type": "regex", "pattern": "^A", "column": None, "weight": 1.0}]) == "[type: regex, pattern: ^A, weight: 1]"
