"""PiSSA and OLoRA under methods with a reference model: the base weights become W - B0 A0, so the policy with
its adapters off is not the model training started from. The reference must still be the original model: at
step 1 (before any update) the policy equals it, so DPO's and KTO's rewards and GRPO's and PPO's KL are zero."""

import math

import pytest
import torch

from tests.methods import test_dpo, test_grpo, test_kto, test_ppo
from tests.methods.test_dpo import pairs_file  # noqa: F401 (fixture)
from tests.methods.test_grpo import prompts_and_reward  # noqa: F401 (fixture)
from tests.methods.test_kto import unpaired_file  # noqa: F401 (fixture)
from tests.methods.test_ppo import prompts_file  # noqa: F401 (fixture)

from tunesmith.config import validate

PISSA = {"method": "lora", "init": "pissa", "r": 8, "alpha": 8, "dropout": 0.0}
IDS = torch.tensor([[1, 403, 261, 378, 504, 300, 301, 77]])


class Logits:
    """The trained policy's logits on IDS when training ends."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.value = model(input_ids=IDS).logits


def trained_logits_reload(run_path) -> torch.Tensor:
    from tunesmith.eval.generate import load_for_inference

    loaded = load_for_inference(str(run_path))
    with torch.no_grad():
        return loaded.model(input_ids=IDS).logits


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_dpo_reference_is_the_original_model_and_the_saved_adapter_reloads(init, stories_path, pairs_file, tmp_path):  # noqa: F811
    from transformers import TrainerCallback

    class End(Logits, TrainerCallback):
        pass

    end = End()
    recipe = test_dpo.recipe(stories_path, pairs_file, tmp_path / "run", peft={**PISSA, "init": init})
    run = test_dpo.train(recipe, callbacks=[end])
    first = [r for r in run.metrics() if "loss" in r][0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5) and first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # The adapter is saved against the original base (PEFT's conversion to a rank-2r LoRA): it reloads as trained.
    torch.testing.assert_close(trained_logits_reload(run.path), end.value, atol=1e-4, rtol=1e-4)


def test_kto_reference_is_the_original_model(stories_path, unpaired_file, tmp_path):  # noqa: F811
    run = test_kto.train(test_kto.recipe(stories_path, unpaired_file, tmp_path / "run", peft=PISSA, train={"max_steps": 1}))
    first = [r for r in run.metrics() if "loss" in r][0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-5) and first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_grpo_reference_is_the_original_model(stories_path, prompts_and_reward, tmp_path):  # noqa: F811
    data, function = prompts_and_reward
    recipe = validate({
        "name": "g", "method": "grpo",
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": data, "max_length": 128, "template": "chatml"},
        "peft": PISSA,
        "train": {"max_steps": 1, "lr": 1e-3, "batch_size": 4, "logging_steps": 1, "warmup": 0, "scheduler": "constant"},
        "grpo": {"rewards": [{"type": "python", "function": function}], "num_generations": 4, "max_new_tokens": 8, "beta": 0.1},
        "output_dir": str(tmp_path / "run"),
    })
    first = [r for r in test_grpo.train(recipe).metrics() if "kl" in r][0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)


def test_ppo_reference_is_the_original_model(stories_path, prompts_file, reward_run, tmp_path):  # noqa: F811
    recipe = test_ppo.recipe(stories_path, prompts_file, reward_run, tmp_path / "run", peft={**PISSA, "dropout": 0.0},
                             train={"max_steps": 1, "eval_steps": 100, "save_steps": 100})
    first = test_ppo.train(recipe).metrics()[0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)
