"""DPO's packed pairs on the stories260K model: packed sequences score as padded ones, a step over packed rows equals
one padded batch of the same pairs, a leak between packed sequences is caught, log-probs unlike the model's own
send training to TRL's DPOTrainer, and the data report gives the batches."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.methods.test_dpo import recipe
from tunesmith.errors import ConfigError
from tunesmith.methods import dpo
from tunesmith.models import attention, logprobs

# Replies of different lengths, so that packed rows and padded batches really differ.
PAIRS = [("France", "Paris", "Rome"), ("Japan", "Tokyo", "Seoul, or maybe Busan"), ("Italy", "Rome, the eternal city", "Paris"),
         ("Spain", "Madrid", "Lima"), ("Egypt", "Cairo on the Nile", "Accra"), ("Peru", "Lima", "Doha, the capital of Qatar"),
         ("Kenya", "Nairobi", "Cairo"), ("Chile", "Santiago de Chile", "Havana"), ("Cuba", "Havana", "Santiago"),
         ("Ghana", "Accra", "Nairobi, in Kenya")]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Capital of {c}?", "chosen": good, "rejected": bad}) + "\n" for c, good, bad in PAIRS), encoding="utf-8")
    return str(path)


def pair(seed, prompt, chosen, rejected):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(3, 512, (n,), generator=g).tolist() for k, n in (("prompt_ids", prompt), ("chosen_ids", chosen), ("rejected_ids", rejected))}


@pytest.mark.parametrize("implementation", ["sdpa", "eager", attention.NAME])
def test_packed_pairs_score_as_padded_ones(stories_path, implementation):
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32, attn_implementation="eager" if implementation == "eager" else "sdpa")
    if implementation == attention.NAME:
        assert attention.use_packed_sdpa(model)
    pairs = [pair(0, 7, 3, 9), pair(1, 12, 5, 1), pair(2, 4, 20, 6)]
    item = dpo.pairs_item(pairs)
    with torch.no_grad():
        packed, packed_counts = logprobs.sequence_logprobs(model, dpo.PairCollator(0, packed=True, varlen=implementation == attention.NAME)([item]), 6)
        padded, padded_counts = logprobs.sequence_logprobs(model, dpo.PairCollator(0, packed=False)([item]), 6)
        alone = [logprobs.sequence_logprobs(model, dpo.PairCollator(0, packed=True)([dpo.pairs_item([p])]), 2)[0] for p in pairs]
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert packed_counts.tolist() == padded_counts.tolist() == [3, 9, 5, 1, 20, 6]  # every reply token, no prompt token


def trained(run):
    keys = ("loss", "grad_norm", "rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/rejected", "eval_loss", "eval_rewards/margins")
    return [{k: r[k] for k in keys if k in r} for r in run.metrics() if "loss" in r or "eval_loss" in r]


@pytest.mark.parametrize("reference, settings", [({}, {}), ({"precompute_reference": True}, {}), ({"loss": "ipo", "beta": 0.5}, {}),
                                                ({}, {"gradient_checkpointing": True})],
                         ids=["adapters_off", "precomputed", "ipo", "checkpointing"])
def test_a_step_over_packed_rows_equals_one_padded_batch_of_its_pairs(stories_path, pairs_file, tmp_path, reference, settings):
    evaluated = {"eval": pairs_file}
    """Every step accumulates all 10 pairs: one padded batch, or several packed rows of different pair counts, each
    a micro-batch. Averaged over the step's pairs, the losses, rewards, eval losses and weights after 2 steps are the
    same."""
    sgd = {"optimizer": "sgd", "lr": 0.5, "max_steps": 2, "eval_steps": 1, "eval_batch_size": 4, **settings}  # updates linear in the gradients: Adam's first steps would divide float noise by tiny moments
    padded = dpo.train(recipe(stories_path, pairs_file, tmp_path / "padded", dpo=reference, train={**sgd, "packing": False, "batch_size": 10}, data=evaluated))
    assert json.loads((padded.path / "data_report.json").read_text())["batching"]["batches"] == 1
    probe = dpo.train(recipe(stories_path, pairs_file, tmp_path / "probe", dpo=reference, train={**sgd, "max_steps": 1, "max_tokens_per_batch": 300}, data=evaluated))
    batching = json.loads((probe.path / "data_report.json").read_text())["batching"]
    assert batching["mode"] == "packed" and batching["batches"] > 2 and batching["padding_share"] == 0
    run = dpo.train(recipe(stories_path, pairs_file, tmp_path / "packed", dpo=reference, train={**sgd, "max_tokens_per_batch": 300, "grad_accum": batching["batches"]}, data=evaluated))

    assert [r.keys() for r in trained(run)] == [r.keys() for r in trained(padded)]
    for a, b in zip(trained(run), trained(padded)):
        assert list(a.values()) == pytest.approx(list(b.values()), rel=1e-5, abs=1e-5)  # logps: sums of ~200 log-probs
    wa, wb = (load_file(r.path / "adapter" / "adapter_model.safetensors") for r in (run, padded))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    losses = [r["loss"] for r in trained(run) if "loss" in r]
    assert losses[-1] != losses[0] and sum("eval_loss" in r for r in trained(run)) == 2  # the step moved the policy; both steps evaluated


def test_a_planted_leak_between_packed_sequences_is_caught_and_training_pads_instead(stories_path, pairs_file, tmp_path, monkeypatch, capsys):
    # Neither transformers' mask from position_ids nor tunesmith's packed sdpa keeps the sequences apart any more.
    monkeypatch.setattr("transformers.masking_utils.find_packed_sequence_indices", lambda position_ids: None)
    leaky = lambda module, q, k, v, mask, cu_seq_lens_q=None, **kw: sdpa_attention_forward(module, q, k, v, mask, **kw)  # noqa: E731
    monkeypatch.setitem(AttentionInterface._global_mapping, attention.NAME, leaky)
    run = dpo.train(recipe(stories_path, pairs_file, tmp_path / "run", train={"max_steps": 1}))
    assert "train.packing: an example's log-probs change with the example packed before it" in capsys.readouterr().err
    report = json.loads((run.path / "data_report.json").read_text())["batching"]
    assert report["mode"] == "random" and report["note"].startswith("packing is off: train.packing: an example's log-probs change")
    assert "  - note: packing is off" in (run.path / "data_report.md").read_text()


def test_log_probs_unlike_the_models_own_send_training_to_trls_dpo_trainer(stories_path, pairs_file, tmp_path, monkeypatch, capsys):
    one_batch = {"max_steps": 2, "batch_size": 10}
    straight = dpo.train(recipe(stories_path, pairs_file, tmp_path / "straight", train={**one_batch, "packing": False}))
    plain = logprobs.token_logprobs
    # As for a model that scales its logits in a way the chunked log-probs do not know.
    monkeypatch.setattr(logprobs, "token_logprobs", lambda *args: 1.5 * plain(*args))
    run = dpo.train(recipe(stories_path, pairs_file, tmp_path / "run", train=one_batch))
    assert "log-probs: computed by TRL's DPOTrainer from the full logits, since the chunked log-probs" in capsys.readouterr().err
    assert json.loads((run.path / "data_report.json").read_text())["batching"]["mode"] == "random"
    assert len(trained(run)) == 2
    for a, b in zip(trained(run), trained(straight)):  # every step: all 10 pairs
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def test_a_budget_below_the_longest_pair_is_refused_before_the_model_loads(stories_path, pairs_file, tmp_path, monkeypatch):
    monkeypatch.setattr(dpo, "load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"train.max_tokens_per_batch: 20 is less than the longest training pair \(\d+ tokens: its prompt twice"):
        dpo.train(recipe(stories_path, pairs_file, tmp_path / "run", train={"max_tokens_per_batch": 20}))


def test_every_pair_is_trained_once_per_epoch_in_a_new_order(stories_path, pairs_file, tmp_path, monkeypatch):
    seen = []
    collate = dpo.PairCollator.__call__
    monkeypatch.setattr(dpo.PairCollator, "__call__", lambda self, items: seen.append([tuple(p) for item in items for p in item["chosen_ids"]]) or collate(self, items))
    settings = {"max_tokens_per_batch": 300, "batch_size": 2}
    first = dpo.train(recipe(stories_path, pairs_file, tmp_path / "probe", train={**settings, "max_steps": 1}))
    rows = json.loads((first.path / "data_report.json").read_text())["batching"]["batches"]
    seen.clear()
    dpo.train(recipe(stories_path, pairs_file, tmp_path / "run", train={**settings, "max_steps": 2 * rows}))
    training = seen[-2 * rows :]  # after the checks' own batch
    epochs = [training[:rows], training[rows:]]
    for epoch in epochs:
        replies = [reply for batch in epoch for reply in batch]
        assert len(replies) == len(set(replies)) == len(PAIRS)
    assert sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1])) and epochs[0] != epochs[1]  # same rows, new order


def test_data_check_plans_the_pairs_as_training_did(stories_path, pairs_file, tmp_path, capsys):
    from tunesmith.cli import main

    run = dpo.train(recipe(stories_path, pairs_file, tmp_path / "run", train={"max_steps": 1, "max_tokens_per_batch": 300}))
    out = tmp_path / "check.json"
    assert main(["data", "check", str(run.path / "config.yaml"), "--out", str(out)]) == 0
    checked = json.loads(out.read_text(encoding="utf-8"))
    assert checked == json.loads((run.path / "data_report.json").read_text(encoding="utf-8"))
    assert checked["batching"]["mode"] == "packed" and checked["batching"]["budget"] == 300


def test_a_resumed_run_trains_the_packed_rows_of_the_run_it_continues(stories_path, pairs_file, tmp_path):
    """Stopped after step 3 of 6 (mid-epoch: 10 pairs in rows of 300 tokens), resumed: the same rows in the same order,
    so the same losses and weights as a run never stopped (the recipe's schedule is constant: max_steps 3 or 6 trains
    the same first 3 steps)."""
    settings = {"max_tokens_per_batch": 300, "max_steps": 6, "save_steps": 3, "save_total_limit": None}
    straight = dpo.train(recipe(stories_path, pairs_file, tmp_path / "straight", train=settings))
    first = dpo.train(recipe(stories_path, pairs_file, tmp_path / "resumed", train={**settings, "max_steps": 3}))
    (first.path / "adapter").rename(tmp_path / "first_adapter")  # as if stopped after step 3: only its checkpoint
    for name in ("report.md", "loss.png"):
        (first.path / name).unlink(missing_ok=True)
    resumed = dpo.train(recipe(stories_path, pairs_file, tmp_path / "resumed", train=settings), resume=True, allow_changes=True)
    losses = {r["step"]: r["loss"] for r in straight.metrics() if "loss" in r}
    again = {r["step"]: r["loss"] for r in resumed.metrics() if "loss" in r}
    assert again.keys() == losses.keys() and len(losses) == 6
    assert list(again.values()) == pytest.approx(list(losses.values()), abs=1e-6)
    wa, wb = (load_file(r.path / "adapter" / "adapter_model.safetensors") for r in (straight, resumed))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
