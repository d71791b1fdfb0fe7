"""SFT's packed rows on tiny models: each example scores as it does alone, a leak between packed examples is
caught, training matches unpacked training step for step, and a model that cannot pack is said to."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.conftest import FIXTURES
from tunesmith.config import validate
from tunesmith.data.batching import Collator
from tunesmith.errors import ConfigError
from tunesmith.losses import linear_cross_entropy
from tunesmith.methods import sft
from tunesmith.models import attention, lm_loss

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Cuba", "Havana"),
            ("Ghana", "Accra"), ("Iran", "Tehran")]


@pytest.fixture(scope="module")
def capitals_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "capitals.jsonl"
    # Answers of different lengths, so that packed rows and padded batches really differ.
    rows = [{"question": f"Capital of {c}?", "answer": f"{a}, {'the capital ' * (k % 4)}of {c}."} for k, (c, a) in enumerate(CAPITALS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def recipe(model, data_file, out, train=None, **sections):
    raw = {
        "name": "p",
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": str(data_file), "eval": str(data_file), "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 3, "lr": 1e-2, "warmup": 0, "scheduler": "constant", "logging_steps": 1, "eval_steps": 1,
                  "eval_batch_size": 4, "save_steps": 3, **(train or {})},
        "output_dir": str(out),
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return validate(raw)


def ids_of(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("implementation", ["sdpa", "eager", attention.NAME])
def test_each_packed_example_scores_exactly_as_it_does_alone(stories_path, implementation):
    """transformers' block-diagonal mask from position_ids (sdpa, eager), and sdpa one example at a time."""
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32, attn_implementation="eager" if implementation == "eager" else "sdpa")
    if implementation == attention.NAME:
        assert attention.use_packed_sdpa(model)
    examples = ids_of(9, 17, 5, 30)
    collate = Collator(pad_token_id=0, packed=True, varlen=implementation == attention.NAME)
    with torch.no_grad():
        packed = lm_loss.token_logprobs(model, collate([lm_loss.item(*examples)]))[0]
        at = 0
        for ids in examples:
            alone = lm_loss.token_logprobs(model, collate([lm_loss.item(ids)]))[0]
            torch.testing.assert_close(packed[at : at + len(ids) - 1], alone, atol=1e-5, rtol=1e-5)
            at += len(ids)  # the prediction across the boundary (at + len - 1) is never trained
    found = lm_loss.check(model, collate, examples[0], chunked=lm_loss.add_chunked_loss(model) is None)
    assert found == lm_loss.Checked(None, None)


def test_a_planted_leak_between_packed_examples_is_caught_and_training_pads_instead(stories_path, capitals_file, tmp_path, monkeypatch, capsys):
    # transformers no longer reads the examples' bounds from position_ids, and tunesmith's packed sdpa no longer
    # from cu_seq_lens: every token attends to the whole row before it.
    monkeypatch.setattr("transformers.masking_utils.find_packed_sequence_indices", lambda position_ids: None)
    leaky = lambda module, q, k, v, mask, cu_seq_lens_q=None, **kw: sdpa_attention_forward(module, q, k, v, mask, **kw)  # noqa: E731
    monkeypatch.setitem(AttentionInterface._global_mapping, attention.NAME, leaky)
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32)
    found = lm_loss.check(model, Collator(0, packed=True), ids_of(20)[0], chunked=False)
    assert found.packing == "an example's log-probs change with the example packed before it: its attention ignores position_ids"
    attention.use_packed_sdpa(model)
    found = lm_loss.check(model, Collator(0, packed=True, varlen=True), ids_of(20)[0], chunked=False)
    assert found.packing == "an example's log-probs change with the example packed before it: its attention ignores position_ids"

    run = sft.train(recipe(stories_path, capitals_file, tmp_path / "run", train={"max_steps": 1}))
    assert "train.packing: an example's log-probs change with the example packed before it" in capsys.readouterr().err
    report = json.loads((run.path / "data_report.json").read_text())["batching"]
    assert report["mode"] == "grouped" and report["note"].startswith("packing is off: an example's log-probs change")
    assert "  - note: packing is off" in (run.path / "data_report.md").read_text()


def test_half_precision_rounding_is_not_taken_for_a_leak_and_a_planted_leak_still_is(stories_path, monkeypatch):
    """In bfloat16 transformers' block mask over a packed row rounds otherwise than the example alone (stories260K:
    log-probs 0.068 apart, its logits reach ~13, where bfloat16's spacing is 0.0625): no leak; a real leak is."""
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.bfloat16, attn_implementation="sdpa")
    assert lm_loss.check(model, Collator(0, packed=True), ids_of(20)[0], chunked=False) == lm_loss.Checked(None, None)
    monkeypatch.setattr("transformers.masking_utils.find_packed_sequence_indices", lambda position_ids: None)
    found = lm_loss.check(model, Collator(0, packed=True), ids_of(20)[0], chunked=False)
    assert found.packing == "an example's log-probs change with the example packed before it: its attention ignores position_ids"


def trained(run):
    return [{k: r[k] for k in ("loss", "eval_loss", "grad_norm") if k in r} for r in run.metrics() if "loss" in r or "eval_loss" in r]


MESSAGES = str(FIXTURES / "data" / "messages.jsonl")


@pytest.mark.parametrize("mode, data, train", [("packed", {}, {}), ("grouped", {}, {}), ("packed", {"train_on_prompt": True}, {}),
                                               ("packed", {"train": MESSAGES, "eval": MESSAGES}, {}),
                                               ("packed", {}, {"gradient_checkpointing": True})],
                         ids=["packed", "grouped", "packed-train_on_prompt", "packed-multi_turn", "packed-checkpointing"])
def test_packed_and_grouped_steps_equal_one_padded_batch_with_gradient_accumulation(stories_path, capitals_file, tmp_path, mode, data, train):
    """Each optimiser step accumulates every example: in one padded batch, or over several packed rows (or
    length-grouped batches), each of them one micro-batch. Normalised over the step's trained tokens, the losses,
    gradients, weights and eval losses are the same."""
    sgd = {"optimizer": "sgd", "lr": 0.1}  # updates linear in the gradients: Adam's first steps would divide float noise by tiny moments
    reference = sft.train(recipe(stories_path, capitals_file, tmp_path / "padded", {**sgd, "packing": False, "group_by_length": False, "batch_size": 16}, data=data))
    assert json.loads((reference.path / "data_report.json").read_text())["train"]["kept"] <= 16  # one batch
    settings = {**sgd, **train, "packing": mode == "packed", "max_tokens_per_batch": 200}  # recomputed activations see the same bounds
    probe = sft.train(recipe(stories_path, capitals_file, tmp_path / "probe", {**settings, "max_steps": 1}, data=data))
    micro_batches = json.loads((probe.path / "data_report.json").read_text())["batching"]["batches"]
    assert micro_batches > 2
    run = sft.train(recipe(stories_path, capitals_file, tmp_path / mode, {**settings, "grad_accum": micro_batches}, data=data))

    assert [r.keys() for r in trained(run)] == [r.keys() for r in trained(reference)]
    for a, b in zip(trained(run), trained(reference)):
        assert list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)
    wa, wb = (load_file(r.path / "adapter" / "adapter_model.safetensors") for r in (run, reference))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


def test_every_example_is_trained_once_per_epoch_in_a_new_order(stories_path, capitals_file, tmp_path, monkeypatch):
    seen = []
    collate = Collator.__call__
    monkeypatch.setattr(Collator, "__call__", lambda self, items: seen.append([tuple(ids) for item in items for ids in item["input_ids"]]) or collate(self, items))
    first = sft.train(recipe(stories_path, capitals_file, tmp_path / "probe", {"max_tokens_per_batch": 150, "max_steps": 1, "eval_steps": None}, data={"eval": []}))
    rows = json.loads((first.path / "data_report.json").read_text())["batching"]["batches"]
    seen.clear()
    sft.train(recipe(stories_path, capitals_file, tmp_path / "run", {"max_tokens_per_batch": 150, "max_steps": 2 * rows, "eval_steps": None}, data={"eval": []}))
    training = [batch for batch in seen if len(batch) > 0][-2 * rows :]  # after the checks' own tiny batches
    epochs = [training[:rows], training[rows:]]
    for epoch in epochs:
        examples = [e for batch in epoch for e in batch]
        assert len(examples) == len(set(examples)) == len(CAPITALS)
    assert sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1])) and epochs[0] != epochs[1]  # same rows, new order


def test_a_budget_below_the_longest_example_is_refused_before_the_model_loads(stories_path, capitals_file, tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "load_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"train.max_tokens_per_batch: 20 is less than the longest training example \(\d+ tokens\)"):
        sft.train(recipe(stories_path, capitals_file, tmp_path / "run", {"max_tokens_per_batch": 20}))


def test_a_chunked_loss_unlike_the_models_own_is_caught_and_training_uses_the_models_own(stories_path, capitals_file, tmp_path, monkeypatch, capsys):
    straight = sft.train(recipe(stories_path, capitals_file, tmp_path / "straight", {"max_steps": 2}))
    # As for a model that scales its logits in a way the chunked loss does not know.
    monkeypatch.setattr(lm_loss, "linear_cross_entropy", lambda *args: 1.5 * linear_cross_entropy(*args))
    run = sft.train(recipe(stories_path, capitals_file, tmp_path / "run", {"max_steps": 2}))
    assert "loss: computed from the full logits, since the chunked loss" in capsys.readouterr().err
    assert [list(r.values()) for r in trained(run)] == [pytest.approx(list(r.values()), abs=1e-5) for r in trained(straight)]


def test_the_default_budget_holds_about_batch_size_examples(stories_path, capitals_file, tmp_path):
    run = sft.train(recipe(stories_path, capitals_file, tmp_path / "run", {"max_steps": 1, "batch_size": 4}))
    report = json.loads((run.path / "data_report.json").read_text())
    lengths = report["train"]["lengths"]
    assert report["batching"]["budget"] == max(-(-4 * report["batching"]["tokens"] // 12), lengths["max"])
    assert report["batching"]["batches"] in (3, 4)  # 12 examples, about 4 to a row
