"""DPO and its relatives on the pretrained stories260K model: a few steps each, checked against the
formulas computed independently from plain forward passes."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from tests.conftest import Snapshot

from tunesmith.config import validate
from tunesmith.methods.dpo import build_trainer, train
from tunesmith.runs import RunDir

CAPITALS = [
    ("France", "Paris", "Rome"), ("Japan", "Tokyo", "Seoul"), ("Italy", "Rome", "Paris"), ("Spain", "Madrid", "Lima"),
    ("Egypt", "Cairo", "Accra"), ("Peru", "Lima", "Doha"), ("Kenya", "Nairobi", "Cairo"), ("Chile", "Santiago", "Havana"),
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"Capital of {c}?", "chosen": good, "rejected": bad} for c, good, bad in CAPITALS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


FULL = {"method": "none"}  # full fine-tuning: replaces the LoRA section of recipe(), whose settings would not apply


def recipe(model_path, data_file, out, dpo=None, **sections):
    """The 8 pairs are one batch, so every step sees the same pairs and the logged loss is a full-batch loss."""
    raw = {
        "name": "t",
        "method": "dpo",
        "model": {"path": str(model_path), "dtype": "float32"},
        "data": {"train": data_file, "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 3, "lr": 5e-3, "batch_size": 8, "logging_steps": 1, "warmup": 0, "scheduler": "constant"},
        "dpo": dpo or {},
        "output_dir": str(out),
    }
    for section, values in sections.items():
        raw[section] = values if values == FULL else {**raw.get(section, {}), **values}
    return validate(raw)


def sequence_logps(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log p(response | prompt): the sum over response tokens of the log-softmax at the position before each."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    logprobs = logits[len(prompt) - 1 : -1].log_softmax(-1)  # (len(response), vocab)
    return logprobs.gather(-1, torch.tensor(response)[:, None]).sum()


class PairLogps(TrainerCallback):
    """After step 1: per-pair log-probs of chosen and rejected under the policy and under the reference
    (the policy with its adapters disabled); the loss logged at step 2 is computed from exactly these."""

    def __init__(self, rows):
        self.rows = rows

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1:
            return
        model.eval()
        self.policy = {k: torch.stack([sequence_logps(model, r["prompt_ids"], r[k]) for r in self.rows]) for k in ("chosen_ids", "rejected_ids")}
        with model.disable_adapter():
            self.reference = {k: torch.stack([sequence_logps(model, r["prompt_ids"], r[k]) for r in self.rows]) for k in ("chosen_ids", "rejected_ids")}
        self.lengths = {k: torch.tensor([float(len(r[k])) for r in self.rows]) for k in ("chosen_ids", "rejected_ids")}
        # Prompt and chosen reply together (all tokens after the first), for ORPO's SFT term.
        self.whole_chosen = torch.stack([sequence_logps(model, r["prompt_ids"][:1], r["prompt_ids"][1:] + r["chosen_ids"]) for r in self.rows])
        self.whole_length = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) - 1 for r in self.rows)
        model.train()


def prepared_rows(r):
    from tunesmith.data.prepare import prepare_data
    from tunesmith.data.templates import resolve_template
    from tunesmith.models.load import load_tokenizer

    tokenizer = load_tokenizer(r.model.path)
    rows, _, _ = prepare_data(r.data, tokenizer, resolve_template(r.data.template, tokenizer), 0, method="dpo")
    return rows


def expected_loss(loss: str, beta: float, smoothing: float, p: PairLogps) -> float:
    """The per-pair losses of each paper, averaged over the batch (shapes: (pairs,))."""
    chosen = p.policy["chosen_ids"] - p.reference["chosen_ids"]
    rejected = p.policy["rejected_ids"] - p.reference["rejected_ids"]
    h = chosen - rejected
    if loss == "sigmoid":  # DPO eq. 7
        per_pair = -F.logsigmoid(beta * h)
    elif loss == "hinge":  # SLiC
        per_pair = torch.relu(1 - beta * h)
    elif loss == "robust":  # rDPO eq. 8, label flip probability epsilon
        per_pair = ((1 - smoothing) * -F.logsigmoid(beta * h) + smoothing * F.logsigmoid(-beta * h)) / (1 - 2 * smoothing)
    elif loss == "ipo":  # IPO eq. 17, log-ratios averaged per token as TRL does (confirmed with the IPO authors)
        h = chosen / p.lengths["chosen_ids"] - rejected / p.lengths["rejected_ids"]
        per_pair = (h - 1 / (2 * beta)) ** 2
    return per_pair.mean().item()


@pytest.mark.parametrize(("loss", "beta", "smoothing"), [("sigmoid", 0.1, 0.0), ("ipo", 0.5, 0.0), ("hinge", 0.2, 0.0), ("robust", 0.1, 0.2)])
def test_logged_loss_equals_the_formula_from_policy_and_reference_logps(stories_path, pairs_file, tmp_path, loss, beta, smoothing):
    dpo = {"loss": loss, "beta": beta} | ({"label_smoothing": smoothing} if smoothing else {})
    r = recipe(stories_path, pairs_file, tmp_path / "run", dpo=dpo, train={"max_steps": 2})
    probe = PairLogps(prepared_rows(r))
    run = train(r, callbacks=[probe])

    step2 = next(rec for rec in run.metrics() if rec["step"] == 2 and "loss" in rec)
    assert step2["loss"] == pytest.approx(expected_loss(loss, beta, smoothing, probe), abs=1e-4)
    chosen_rewards = beta * (probe.policy["chosen_ids"] - probe.reference["chosen_ids"])
    rejected_rewards = beta * (probe.policy["rejected_ids"] - probe.reference["rejected_ids"])
    assert step2["rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), abs=1e-4)
    assert step2["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(), abs=1e-4)
    assert step2["rewards/accuracies"] == pytest.approx((chosen_rewards > rejected_rewards).float().mean().item())
    assert step2["logps/chosen"] == pytest.approx(probe.policy["chosen_ids"].mean().item(), abs=1e-3)


def test_simpo_and_orpo_log_their_reference_free_losses(stories_path, pairs_file, tmp_path):
    rows = None
    for loss, beta in (("simpo", 2.0), ("orpo", 0.1)):
        r = recipe(stories_path, pairs_file, tmp_path / loss, dpo={"loss": loss, "beta": beta}, train={"max_steps": 2})
        rows = rows or prepared_rows(r)
        probe = PairLogps(rows)
        run = train(r, callbacks=[probe])
        step2 = next(rec for rec in run.metrics() if rec["step"] == 2 and "loss" in rec)
        # Both score a reply by its mean token log-prob (length-normalised, no reference).
        avg = {k: probe.policy[k] / probe.lengths[k] for k in probe.policy}
        if loss == "simpo":  # SimPO eq. 6 with gamma = 0.5
            expected = -F.logsigmoid(beta * (avg["chosen_ids"] - avg["rejected_ids"]) - 0.5).mean()
        else:  # ORPO eq. 6-7: NLL of the chosen reply + lambda * odds-ratio loss
            log_odds = (avg["chosen_ids"] - avg["rejected_ids"]) - (
                torch.log1p(-avg["chosen_ids"].exp()) - torch.log1p(-avg["rejected_ids"].exp())
            )
            # TRL's ORPOTrainer takes the NLL over the prompt and the chosen reply (see tunesmith.methods.dpo).
            nll = -(probe.whole_chosen.sum() / probe.whole_length)
            expected = nll - beta * F.logsigmoid(log_odds).mean()
        assert step2["loss"] == pytest.approx(expected.item(), abs=1e-3), loss


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "simpo", "orpo"])
def test_each_loss_trains_only_the_adapters_and_reward_accuracy_rises(stories_path, pairs_file, tmp_path, loss):
    from peft import AutoPeftModelForCausalLM

    snap = Snapshot()
    run = train(recipe(stories_path, pairs_file, tmp_path / "run", dpo={"loss": loss, "beta": 0.5 if loss != "simpo" else 2.0}, train={"max_steps": 6}), callbacks=[snap])
    records = [r for r in run.metrics() if "loss" in r]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    accuracies = [r["rewards/accuracies"] for r in records]
    assert accuracies[-1] > accuracies[0] and accuracies[-1] >= 0.75
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert all(not torch.equal(snap.before[n], snap.after[n]) for n in snap.trainable if "lora_B" in n)
    assert all(torch.equal(snap.before[n], snap.after[n]) for n in set(snap.before) - snap.trainable)
    assert AutoPeftModelForCausalLM.from_pretrained(run.path / "adapter") is not None
    report = (run.path / "report.md").read_text()
    assert "reward accuracy (train): first" in report
    assert f"method: dpo (loss: {loss}, beta: " in report and "{" not in report  # written for people, not a Python repr


def test_full_finetuning_against_a_frozen_copy(stories_path, pairs_file, tmp_path):
    snap = Snapshot()
    run = train(recipe(stories_path, pairs_file, tmp_path / "run", peft=FULL, train={"lr": 1e-3}), callbacks=[snap])
    assert snap.trainable == set(snap.before)
    assert sum(not torch.equal(snap.before[n], snap.after[n]) for n in snap.trainable) > len(snap.trainable) // 2
    assert "- reference: copy" in (run.path / "report.md").read_text()
    assert (run.path / "model" / "model.safetensors").is_file()


def test_adapters_off_reference_gives_the_logps_of_a_separate_frozen_copy(stories_path, pairs_file, tmp_path):
    """The two ways of holding a reference must agree exactly, also once the adapters have moved away from zero."""
    from tunesmith.methods.steps import load_reference
    from tunesmith.models.load import load_model

    results = {}
    for mode in ("adapters_off", "copy"):
        r = recipe(stories_path, pairs_file, tmp_path / mode, dpo={"reference": mode})
        rows = prepared_rows(r)
        model, tokenizer, source = load_model(r.model)
        torch.manual_seed(0)
        trainer = build_trainer(r, RunDir(tmp_path / mode), model, load_reference(r, source), tokenizer, rows, [], [])
        with torch.no_grad():  # a policy that differs from its base: random adapter weights
            for name, param in trainer.model.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.5)
        batch = trainer._prepare_inputs(trainer.data_collator(rows))
        # As TRL's training step does: the reference model if there is one, else the policy (adapters off).
        chosen, rejected = trainer.compute_ref_log_probs(trainer.ref_model or trainer.model, batch)
        results[mode] = torch.cat([chosen, rejected])
        assert (trainer.ref_model is None) == (mode == "adapters_off")
    torch.testing.assert_close(results["adapters_off"], results["copy"], atol=1e-4, rtol=1e-5)
    base, _, _ = load_model(recipe(stories_path, pairs_file, tmp_path / "x").model)
    rows = prepared_rows(recipe(stories_path, pairs_file, tmp_path / "x"))
    independent = torch.stack([sequence_logps(base, r["prompt_ids"], r["chosen_ids"]) for r in rows])
    torch.testing.assert_close(results["copy"][: len(rows)], independent, atol=1e-3, rtol=1e-4)


def test_precomputed_reference_trains_without_a_reference_model(stories_path, pairs_file, tmp_path):
    run = train(recipe(stories_path, pairs_file, tmp_path / "run", dpo={"precompute_reference": True}))
    first = next(r for r in run.metrics() if "loss" in r)
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: -log sigmoid(0)
    assert "- reference: precomputed" in (run.path / "report.md").read_text()


def test_dpo_starts_from_an_sft_runs_adapter_with_its_template(stories_path, pairs_file, tmp_path, monkeypatch):
    """model.path: an SFT run. Its adapter is merged into its base (cached), its template comes along, and the
    policy (and so the reference) starts from the SFT weights, not from the base model."""
    from peft import AutoPeftModelForCausalLM

    from tunesmith.methods.sft import train as sft_train

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    sft = sft_train(validate({
        "name": "sft", "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": pairs_file, "format": "prompt_completion", "columns": {"completion": "chosen"}, "template": "chatml", "max_length": 128},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 3, "lr": 1e-2, "batch_size": 8, "warmup": 0},
        "output_dir": str(tmp_path / "sft"),
    }))
    r = recipe(sft.path, pairs_file, tmp_path / "dpo", data={"template": "model"}, train={"max_steps": 1})
    run = train(r)

    env = json.loads((run.path / "environment.json").read_text())
    assert env["source"]["kind"] == "run" and env["source"]["path"].startswith(str(tmp_path / "cache" / "merged"))
    assert json.loads((run.path / "template.json").read_text()) == json.loads((sft.path / "template.json").read_text())
    sft_model = AutoPeftModelForCausalLM.from_pretrained(sft.path / "adapter").eval()
    rows = prepared_rows(recipe(stories_path, pairs_file, tmp_path / "x"))  # same chatml template, same tokens
    expected = torch.stack([sequence_logps(sft_model, row["prompt_ids"], row["chosen_ids"]) for row in rows]).mean()
    first = next(rec for rec in run.metrics() if "loss" in rec)
    assert first["logps/chosen"] == pytest.approx(expected.item(), abs=1e-2)


def test_eval_reports_the_implicit_reward_accuracy_of_a_dpo_run(stories_path, pairs_file, tmp_path, capsys):
    """`tunesmith eval RUN --data pairs`: beta * (log p_policy - log p_reference) of each reply, independently
    recomputed here from the adapter model and the base model."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from tunesmith.cli import main

    run = train(recipe(stories_path, pairs_file, tmp_path / "run", dpo={"beta": 0.5}, train={"max_steps": 4}))
    assert main(["eval", str(run.path), "--data", pairs_file, "--name", "pairs"]) == 0
    assert "reward_accuracy" in capsys.readouterr().out
    summary = json.loads((run.path / "eval" / "pairs" / "metrics.json").read_text())

    rows = prepared_rows(recipe(stories_path, pairs_file, tmp_path / "x"))
    policy = AutoPeftModelForCausalLM.from_pretrained(run.path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(stories_path).eval()
    rewards = {k: torch.stack([0.5 * (sequence_logps(policy, r["prompt_ids"], r[k]) - sequence_logps(base, r["prompt_ids"], r[k])) for r in rows])
               for k in ("chosen_ids", "rejected_ids")}
    expected = (rewards["chosen_ids"] > rewards["rejected_ids"]).float().mean().item()
    assert summary["n"] == 8 and summary["metrics"]["reward_accuracy"] == pytest.approx(expected)
    assert summary["metrics"]["reward_margin"] == pytest.approx((rewards["chosen_ids"] - rewards["rejected_ids"]).mean().item(), abs=1e-3)
    assert summary["metrics"]["reward_accuracy"] >= 0.75


def test_a_dpo_run_merges_through_the_fidelity_gate_on_its_own_pairs(stories_path, pairs_file, tmp_path):
    from tunesmith.models.merge import merge_run

    run = train(recipe(stories_path, pairs_file, tmp_path / "run", train={"max_steps": 2}))
    result = merge_run(run.path, tmp_path / "merged", dtype="float32")
    assert result.passed and "training data" in result.prompts_from
    assert result.fidelity.sequences == 8 and (tmp_path / "merged" / "template.json").is_file()
