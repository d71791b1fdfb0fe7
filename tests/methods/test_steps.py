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


@pytest.mark.parametrize("positions, peft, message", [
    (64, {"method": "lora"}, "data.max_length: 2048: the longest example has 77 tokens, but this model has 64 learned positions"),
    (90, {"method": "prompt", "num_virtual_tokens": 20}, "the longest example has 77 tokens after 20 virtual tokens (peft.num_virtual_tokens), "
     "but this model has 90 learned positions (absolute position embeddings), and a longer sequence would stop training with an IndexError; "
     "set data.max_length to at most 70 or lower peft.num_virtual_tokens"),
], ids=["longer-than-gpt2-positions", "virtual-tokens-push-it-over"])
def test_examples_longer_than_learned_positions_are_refused_before_the_model_loads(stories_path, tmp_path, monkeypatch, positions, peft, message):
    """GPT-2's position table ends (at 1,024 in the real one): a longer example stopped training with an IndexError."""
    import json
    import re
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from tunesmith.config import validate
    from tunesmith.errors import ConfigError
    from tunesmith.methods import sft

    model = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=512, n_positions=positions)).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(stories_path / name, model / name)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "Tell me a story about cat.", "answer": "Once upon a time there was a cat."}) + "\n")
    monkeypatch.setattr(sft, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    recipe = validate({"model": {"path": str(model)}, "data": {"train": str(data), "template": "chatml"}, "peft": peft, "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=re.escape(message)):
        sft.train(recipe)
    from tunesmith.methods.steps import check_positions

    check_positions(recipe, str(stories_path), "causal_lm", [{"input_ids": [1] * 4096}])  # rotary (Llama): no table to run out of


def test_valid_targets_pass_the_check(stories_path):
    from tunesmith.config import PeftConfig
    from tunesmith.models.peft import check_adapters

    for head in ("causal_lm", "reward"):
        check_adapters(str(stories_path), PeftConfig(target_modules=["q_proj", "self_attn.v_proj"], modules_to_save=["lm_head" if head == "causal_lm" else "score"]),
                       "sft" if head == "causal_lm" else "reward")


@pytest.mark.parametrize("method, trim", [("sft", True), ("dpo", True), ("kto", True), ("reward", True), ("sft", False)])
def test_every_method_trains_with_the_cpu_memory_savers_in(stories_path, tmp_path, method, trim):
    """The decoder layers give glibc's free pages back (tunesmith.models.heap) in every Trainer method, unless
    train.cpu_heap_trim is false, and SFT's LoRA dropouts keep byte masks (tunesmith.models.dropout); DPO, KTO and
    reward train without dropout."""
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
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1}, "train": {"max_steps": 1, "batch_size": 2, "cpu_heap_trim": trim},
        "output_dir": str(tmp_path / "run"),
    })
    importlib.import_module(f"tunesmith.methods.{method}").train(recipe, callbacks=[Look()])
    if method == "sft":
        assert seen["dropouts"] and set(seen["dropouts"]) == {BoolMaskDropout}
    else:
        assert seen["dropouts"] == []  # TRL's preference and reward trainers set every dropout to 0 (disable_dropout)
    assert seen["hooked"] and set(seen["hooked"]) == ({1} if heap._libc is not None and trim else {0})
