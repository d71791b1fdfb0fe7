"""steps.start: what every method checks before its model's weights load."""

import importlib

import pytest

from tunesmith.config import validate
from tunesmith.errors import TunesmithError

METHOD_SECTIONS = {
    "sft": {},
    "dpo": {},
    "kto": {"train": {"batch_size": 2}},
    "reward": {},
    "ppo": {"ppo": {"reward_model": "runs/rm", "mini_batch_size": 2}, "train": {"batch_size": 2}},
    "grpo": {"grpo": {"rewards": [{"type": "regex", "pattern": "x"}], "num_generations": 2}, "train": {"batch_size": 2}},
}


@pytest.mark.parametrize("method", METHOD_SECTIONS)
@pytest.mark.parametrize(
    "peft, message",
    [
        ({"target_modules": ["q_proj", "nope"]}, "peft.target_modules: no module of this model is named 'nope'; its linear modules are: "),
        ({"target_modules": ["input_layernorm"]}, "peft.target_modules: 'input_layernorm' names LlamaRMSNorm modules, which LoRA cannot adapt"),
        ({"modules_to_save": ["no_such_head"]}, "peft.modules_to_save: no module of this model is named 'no_such_head'; its module names are: "),
    ],
    ids=["missing_target", "norm_target", "missing_module_to_save"],
)
def test_adapter_targets_are_checked_before_the_weights_load(stories_path, tmp_path, monkeypatch, method, peft, message):
    module = importlib.import_module(f"tunesmith.methods.{method}")

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the adapter targets were checked")

    monkeypatch.setattr(module, "load_model", no_weights)
    raw = {
        "method": method,
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": str(tmp_path / "never-read.jsonl"), "template": "chatml"},
        "peft": {"method": "lora", **peft},
        "output_dir": str(tmp_path / "run"),
        **METHOD_SECTIONS[method],
    }
    with pytest.raises(TunesmithError) as info:
        module.train(validate(raw))
    assert str(info.value).startswith(message)


def test_valid_targets_pass_the_check(stories_path):
    from tunesmith.config import PeftConfig
    from tunesmith.models.peft import check_adapters

    for head in ("causal_lm", "reward"):
        check_adapters(str(stories_path), PeftConfig(target_modules=["q_proj", "self_attn.v_proj"], modules_to_save=["lm_head" if head == "causal_lm" else "score"]), head)


@pytest.mark.parametrize("method", ["sft", "dpo", "kto", "reward"])
def test_every_method_trains_with_the_cpu_memory_savers_in(stories_path, tmp_path, method):
    """The decoder layers give glibc's free pages back (tunesmith.models.heap) in every Trainer method, and SFT's
    LoRA dropouts keep byte masks (tunesmith.models.dropout); DPO, KTO and reward train without dropout."""
    import importlib

    import torch
    from transformers import TrainerCallback
    from transformers.modeling_layers import GradientCheckpointingLayer

    from tests.conftest import write_jsonl
    from tunesmith.config import validate
    from tunesmith.models import heap
    from tunesmith.models.dropout import BoolMaskDropout

    if method == "sft":
        rows, fmt = [{"question": f"Capital {i}?", "answer": f"City {i}."} for i in range(4)], "question_answer"
    elif method == "kto":
        rows, fmt = [{"prompt": f"Capital {i}?", "completion": f"City {i}.", "label": i % 2 == 0} for i in range(4)], "unpaired"
    else:
        rows, fmt = [{"prompt": f"Capital {i}?", "chosen": f"City {i}.", "rejected": f"No {i}."} for i in range(4)], "preference"
    seen = {}

    class Look(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            modules = list(model.modules())
            seen["dropouts"] = [type(m) for m in modules if isinstance(m, torch.nn.Dropout) and 0 < m.p < 1]
            seen["hooked"] = [len(m._forward_hooks) for m in modules if isinstance(m, GradientCheckpointingLayer)]

    recipe = validate({
        "method": method, "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": str(write_jsonl(tmp_path / "d.jsonl", rows)), "format": fmt, "template": "chatml", "max_length": 128},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1}, "train": {"max_steps": 1, "batch_size": 2},
        "output_dir": str(tmp_path / "run"),
    })
    importlib.import_module(f"tunesmith.methods.{method}").train(recipe, callbacks=[Look()])
    if method == "sft":
        assert seen["dropouts"] and set(seen["dropouts"]) == {BoolMaskDropout}
    else:
        assert seen["dropouts"] == []  # TRL's preference and reward trainers set every dropout to 0 (disable_dropout)
    assert seen["hooked"] and set(seen["hooked"]) == ({1} if heap._libc is not None else {0})
