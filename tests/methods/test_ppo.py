"""PPO against a small reward model, on the pretrained stories260K model."""

import json

import pytest
import torch

from tunesmith.config import validate
from tunesmith.methods.ppo import train
from tunesmith.runs import RunDir

COUNTRIES = ["France", "Japan", "Italy", "Spain", "Egypt", "Peru", "Kenya", "Chile"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Capital of {c}?"}) + "\n" for c in COUNTRIES), encoding="utf-8")
    return str(path)


def recipe(stories_path, prompts, reward, out, **sections):
    raw = {
        "name": "p", "method": "ppo",
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": prompts, "eval": prompts, "template": "chatml", "max_length": 128},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1},
        "train": {"max_steps": 4, "lr": 5e-3, "batch_size": 4, "logging_steps": 1, "warmup": 0, "scheduler": "cosine",
                  "eval_steps": 2, "save_steps": 2},
        "ppo": {"reward_model": reward, "max_new_tokens": 12, "mini_batch_size": 2, "ppo_epochs": 2},
        "output_dir": str(out),
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate(raw)


class Watch:
    """The policy's weights after the last step, and which of them are trainable."""

    def __call__(self, loop, record):
        self.after = {n: p.detach().clone() for n, p in loop.policy.named_parameters()}
        self.trainable = {n for n, p in loop.policy.named_parameters() if p.requires_grad}


def test_ppo_updates_adapters_and_value_head_against_the_reward_model(stories_path, prompts_file, reward_run, tmp_path):
    watch = Watch()
    run = train(recipe(stories_path, prompts_file, reward_run, tmp_path / "run"), callbacks=[watch])
    records = run.metrics()
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    first = records[0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert first["approx_kl"] >= 0 and first["clip_frac"] >= 0
    assert all(torch.isfinite(torch.tensor([r["loss"], r["value_loss"], r["reward"]])).all() for r in records)
    assert records[-1]["kl"] > 0  # the policy moved away from the reference
    assert "eval_reward" in records[1] and "eval_reward" in records[3]
    assert watch.trainable and all("lora_" in n for n in watch.trainable)
    from transformers import AutoModelForCausalLM

    original = dict(AutoModelForCausalLM.from_pretrained(stories_path).named_parameters())
    frozen = set(watch.after) - watch.trainable
    assert frozen and all(  # base weights untouched
        torch.equal(watch.after[n], original[n.replace("base_model.model.", "").replace(".base_layer", "")]) for n in frozen
    )
    adapter = {n: p for n, p in watch.after.items() if "lora_B" in n}
    assert adapter and any(p.abs().sum() > 0 for p in adapter.values())  # lora_B starts at zero: moved
    assert (run.path / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert "reward (eval, greedy replies): first" in (run.path / "report.md").read_text()
    progress = run.progress()  # what `tunesmith queue ls` reads
    assert (progress["step"], progress["max_steps"], progress["start_step"], progress["loss"]) == (4, 4, 0, records[-1]["loss"])


class Crash:
    def __call__(self, loop, record):
        if loop.step == 2:
            raise KeyboardInterrupt


def test_ppo_resumed_after_a_kill_matches_an_uninterrupted_run(stories_path, prompts_file, reward_run, tmp_path):
    from safetensors.torch import load_file

    straight = train(recipe(stories_path, prompts_file, reward_run, tmp_path / "a"))
    killed = recipe(stories_path, prompts_file, reward_run, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(killed, callbacks=[Crash()])
    assert RunDir(tmp_path / "b").last_checkpoint().name == "checkpoint-2"
    resumed = train(killed, resume=True)
    keys = ("reward", "kl", "loss")
    records = [r for r in resumed.metrics() if "resumed_from" not in r]
    assert [r["step"] for r in records] == [r["step"] for r in straight.metrics()]
    assert [r[k] for r in records for k in keys] == pytest.approx([r[k] for r in straight.metrics() for k in keys], abs=1e-4)
    assert {"step": 2, "resumed_from": "checkpoint-2"} in resumed.metrics()
    a = load_file(straight.path / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed.path / "adapter" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4


class Payload:
    """What a hostile checkpoint could hold: unpickling it would run code."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_ppo_checkpoints_load_tensors_and_plain_values_only(tmp_path, monkeypatch):
    from tunesmith.errors import TunesmithError
    from tunesmith.methods.ppo import read_state

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    torch.save({"step": 2, "rng": torch.get_rng_state(), "scheduler": {"base_lrs": [0.1]}}, folder / "ppo_state.pt")
    assert read_state(folder)["step"] == 2
    torch.save({"step": 2, "trainable": Payload()}, folder / "ppo_state.pt")
    with pytest.raises(TunesmithError, match=r"ppo_state.pt holds more than tensors and plain values: not loading it"):
        read_state(folder)
    assert not (tmp_path / "pwned").exists()


def test_ppo_stops_when_the_loss_is_not_finite(stories_path, prompts_file, reward_run, tmp_path):
    from tunesmith.errors import TunesmithError

    # Several updates per step: the first one blows the weights up, the next one's gradients are NaN.
    with pytest.raises(TunesmithError, match=r"^the gradients are not finite at step 1: training stopped before applying it, and no final weights"):
        train(recipe(stories_path, prompts_file, reward_run, tmp_path / "run", train={"lr": 1e6}))
    assert not (tmp_path / "run" / "adapter").exists() and not list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))


def test_ctrl_c_in_ppo_saves_the_step_it_ends(stories_path, prompts_file, reward_run, tmp_path):
    import signal

    from tunesmith.errors import Interrupted

    def press(loop, record):
        if loop.step == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted) as stop:
        train(recipe(stories_path, prompts_file, reward_run, tmp_path / "run"), callbacks=[press])
    assert (stop.value.step, stop.value.saved, stop.value.checkpoint) == (1, True, tmp_path / "run" / "checkpoints" / "checkpoint-1")
    assert RunDir(tmp_path / "run").last_checkpoint().name == "checkpoint-1"


def test_chunked_log_probs_and_values_equal_those_of_the_full_logits(stories_path):
    """PPO's forward without the logits tensor: same log-probs, values and gradients as from the model's own logits,
    on left-padded prompts at a sampling temperature."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunesmith.methods.ppo import forward

    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    value_head = torch.nn.Linear(policy.config.hidden_size, 1)
    ids = torch.randint(3, 512, (3, 11))
    attention = torch.ones_like(ids)
    attention[0, :3] = attention[1, :1] = 0  # left padding of the shorter prompts
    batch = {"input_ids": ids, "attention_mask": attention, "prompt_width": 5}
    results = []
    for chunked in (True, False):
        policy.zero_grad()
        value_head.zero_grad()
        logprobs, values = forward(policy, value_head, batch, temperature=0.7, chunked=chunked)
        (logprobs.sum() + values.sum()).backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results.append((logprobs.detach(), values.detach(), grads, value_head.weight.grad.clone()))
    (lp, v, g, vg), (lp_own, v_own, g_own, vg_own) = results
    assert lp.shape == (3, 6)
    torch.testing.assert_close(lp, lp_own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, v_own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vg, vg_own, atol=1e-5, rtol=1e-5)
    assert g.keys() == g_own.keys() and g
    for name in g:
        scale = g_own[name].abs().max().item()
        torch.testing.assert_close(g[name], g_own[name], atol=1e-5 * max(1.0, scale), rtol=1e-5)  # float32: relative to the largest entry
