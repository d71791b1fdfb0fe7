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
    from tunesmith.models.peft import check_adapter_targets

    for head in ("causal_lm", "reward"):
        check_adapter_targets(str(stories_path), PeftConfig(target_modules=["q_proj", "self_attn.v_proj"], modules_to_save=["lm_head" if head == "causal_lm" else "score"]), head)
