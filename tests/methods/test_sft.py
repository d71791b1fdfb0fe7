"""SFT end to end on tiny in-process models: a few steps each, checking real effects."""

import json

import pytest
import torch
from transformers import TrainerCallback

from tunesmith.config import validate
from tunesmith.methods.sft import train
from tunesmith.runs import RunDir

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Cuba", "Havana"),
    ("Ghana", "Accra"), ("Iran", "Tehran"), ("Nepal", "Kathmandu"), ("Qatar", "Doha"), ("Mali", "Bamako"),
    ("Laos", "Vientiane"),
]


@pytest.fixture(scope="module")
def capitals_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "capitals.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"Capital of {c}?", "answer": a}) + "\n" for c, a in CAPITALS), encoding="utf-8"
    )
    return str(path)


FULL = {"method": "none"}  # full fine-tuning: replaces the LoRA section of recipe(), whose settings would not apply


def recipe(model_path, data_file, out, **sections):
    """A few steps of LoRA; the whole data set (16 rows) is one batch, so the loss curve is not batch noise."""
    raw = {
        "name": "t",
        "model": {"path": str(model_path), "dtype": "float32"},
        "data": {"train": data_file, "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 8, "lr": 1e-2, "batch_size": 16, "logging_steps": 1, "warmup": 0, "scheduler": "constant", "save_steps": 4},
        "output_dir": str(out),
    }
    for section, values in sections.items():
        raw[section] = values if values == FULL else {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return validate(raw)


def probe_logits(model, probe, grad_path=False):
    """Logits of `probe`. grad_path runs the training kernels: bitsandbytes' CPU inference kernel for 4-bit
    weights needs layer widths divisible by 32, which stories260K (intermediate size 172) does not have."""
    if grad_path:
        model.train()
        with torch.enable_grad():
            return model(input_ids=probe, attention_mask=torch.ones_like(probe)).logits.detach()
    model.eval()
    with torch.no_grad():
        return model(input_ids=probe, attention_mask=torch.ones_like(probe)).logits


class Snapshot(TrainerCallback):
    """Copies of every parameter (by name) at the start and end of training, and the logits at the end."""

    def __init__(self, probe, grad_path=False):
        self.probe, self.grad_path = probe, grad_path

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.logits = probe_logits(model, self.probe, self.grad_path)
        model.train()


PROBE = torch.tensor([[1, 50, 100, 200, 300, 400, 2]])  # valid ids for both vocabularies (512 and 49152)
MASK = torch.ones_like(PROBE)  # explicit: trainers set pad_token_id == eos id, and id 2 must not be read as padding


def losses(run: RunDir) -> list[float]:
    return [r["loss"] for r in run.metrics() if "loss" in r]


def changed(snap, names):
    return {n for n in names if not torch.equal(snap.before[n], snap.after[n])}


def test_lora_trains_adapters_only_and_reloads_with_plain_peft(stories_path, capitals_file, tmp_path):
    from peft import AutoPeftModelForCausalLM

    snap = Snapshot(PROBE)
    run = train(recipe(stories_path, capitals_file, tmp_path / "run"), callbacks=[snap])

    curve = losses(run)
    assert all(torch.isfinite(torch.tensor(curve))) and curve[-1] < curve[0] * 0.6
    lora = {n for n in snap.trainable if "lora_" in n}
    assert lora and snap.trainable == lora
    assert changed(snap, [n for n in lora if "lora_B" in n]) == {n for n in lora if "lora_B" in n}
    assert changed(snap, set(snap.before) - snap.trainable) == set()  # frozen base untouched

    reloaded = AutoPeftModelForCausalLM.from_pretrained(run.path / "adapter").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=PROBE, attention_mask=MASK).logits
    torch.testing.assert_close(logits, snap.logits, atol=1e-5, rtol=1e-5)


def test_run_directory_is_complete_and_readable(tiny_llama, capitals_file, tmp_path, capsys):
    from tunesmith.cli import main
    from tunesmith.eval.generate import generate, load_for_inference

    # SmolLM2's own template, pad == eos.
    data = {"eval_split": 0.25, "template": "model", "system_prompt": "Name the capital."}
    run = train(recipe(tiny_llama, capitals_file, tmp_path / "run", data=data, train={"batch_size": 4}))
    for name in ("config.yaml", "data_report.json", "data_report.md", "environment.json", "template.json",
                 "metrics.jsonl", "loss.png", "report.md", "adapter/adapter_model.safetensors", "adapter/tokenizer.json"):
        assert (run.path / name).is_file(), name
    assert run.recipe().train.max_steps == 8
    records = run.metrics()
    train_record = next(r for r in records if "loss" in r and r["step"] == 2)
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= train_record.keys()
    assert any("eval_loss" in r for r in records)
    assert (run.checkpoints / "checkpoint-8").is_dir()
    progress = run.progress()  # what `tunesmith queue ls` reads
    assert (progress["step"], progress["max_steps"], progress["start_step"]) == (8, 8, 0)
    assert progress["loss"] == [r["loss"] for r in records if "loss" in r][-1] and progress["updated_at"] >= progress["started_at"]
    report = json.loads((run.path / "data_report.json").read_text())
    assert report["train"]["kept"] == 12 and report["eval"]["kept"] == 4
    env = json.loads((run.path / "environment.json").read_text())
    assert env["versions"]["transformers"] and env["dtype"] == "float32"
    generation = json.loads((run.path / "adapter" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2]

    loaded = load_for_inference(str(run.path))
    assert loaded.system_prompt == "Name the capital."  # generation sees what training saw
    conversation = [{"role": "system", "content": "Name the capital."}, {"role": "user", "content": "Capital of Peru?"}]
    expected = generate(loaded, [conversation], max_new_tokens=5, progress=False)[0]
    assert main(["generate", str(run.path), "Capital of Peru?", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_full_finetuning_changes_all_weights_and_saves_a_plain_model(tiny_llama, capitals_file, tmp_path):
    from transformers import AutoModelForCausalLM

    snap = Snapshot(PROBE)
    run = train(recipe(tiny_llama, capitals_file, tmp_path / "run", peft=FULL, train={"lr": 5e-3}, data={"template": "model"}), callbacks=[snap])
    assert snap.trainable == set(snap.before)
    assert len(changed(snap, snap.trainable)) == len(snap.trainable)
    assert losses(run)[-1] < losses(run)[0]
    assert not (run.path / "adapter").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(run.path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=PROBE, attention_mask=MASK).logits, snap.logits, atol=1e-5, rtol=1e-5)


def test_qlora_trains_on_a_frozen_4bit_base(stories_path, capitals_file, tmp_path):
    from peft import PeftModel

    from tunesmith.config import ModelConfig
    from tunesmith.models.load import load_model

    snap = Snapshot(PROBE, grad_path=True)
    run = train(recipe(stories_path, capitals_file, tmp_path / "run", peft={"method": "qlora"}), callbacks=[snap])
    curve = losses(run)
    assert all(torch.isfinite(torch.tensor(curve))) and curve[-1] < curve[0] * 0.6
    base_weights = [n for n in snap.before if n.endswith("q_proj.base_layer.weight")]
    assert base_weights and snap.before[base_weights[0]].dtype == torch.uint8  # packed 4-bit
    assert changed(snap, set(snap.before) - snap.trainable) == set()
    assert changed(snap, [n for n in snap.trainable if "lora_B" in n])

    base, _, _ = load_model(ModelConfig(path=str(stories_path), dtype="float32", quantization="4bit"))
    reloaded = PeftModel.from_pretrained(base, run.path / "adapter")
    trained = {n: snap.after[n] for n in snap.trainable}
    assert {p.dtype for p in trained.values()} == {torch.bfloat16}  # TRL trains QLoRA adapters in bf16 (QLoRA paper, sec. 3)
    for name, param in reloaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(param.to(torch.bfloat16), trained[name])  # saved exactly
            param.data = param.data.to(torch.bfloat16)  # and computed in the precision they were trained in
    torch.testing.assert_close(probe_logits(reloaded, PROBE, grad_path=True), snap.logits, atol=1e-4, rtol=1e-4)


class Crash(TrainerCallback):
    """Simulates a kill right after the checkpoint at step 4 was written."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt


def test_resume_after_a_kill_matches_an_uninterrupted_run(stories_path, capitals_file, tmp_path):
    from safetensors.torch import load_file

    # Shuffled small batches, dropout and a warmup+cosine schedule: data order, RNG and scheduler state must all resume.
    settings = dict(peft={"dropout": 0.1}, train={"batch_size": 2, "scheduler": "cosine", "warmup": 2})
    straight = train(recipe(stories_path, capitals_file, tmp_path / "a", **settings))

    killed = recipe(stories_path, capitals_file, tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(killed, callbacks=[Crash()])
    assert RunDir(tmp_path / "b").last_checkpoint().name == "checkpoint-4"
    assert not (tmp_path / "b" / "adapter").exists()
    resumed = train(killed, resume=True)

    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-4)
    assert [r["step"] for r in resumed.metrics() if "loss" in r] == [r["step"] for r in straight.metrics() if "loss" in r]
    a = load_file(straight.path / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed.path / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4


def test_existing_run_directory_needs_resume(tiny_llama, capitals_file, tmp_path):
    from tunesmith.errors import TunesmithError

    (tmp_path / "run" / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(TunesmithError, match="already holds a run"):
        train(recipe(tiny_llama, capitals_file, tmp_path / "run"))
    (tmp_path / "run" / "config.yaml").write_text("method: sft\n")
    with pytest.raises(TunesmithError, match="no complete checkpoint"):
        train(recipe(tiny_llama, capitals_file, tmp_path / "run"), resume=True)


def test_a_failed_preflight_can_simply_be_run_again(tiny_llama, tmp_path):
    from tunesmith.data.formats import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: answer"):
        train(recipe(tiny_llama, str(bad), tmp_path / "run"))
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "a?", "answer": "b"}\n')
    run = train(recipe(tiny_llama, str(good), tmp_path / "run", train={"max_steps": 1}, data={"template": "model"}))
    assert (run.path / "adapter" / "adapter_config.json").is_file()


def test_a_template_end_of_turn_token_that_is_neither_eos_nor_in_the_generation_config_is_trained_and_saved(tmp_path, capitals_file):
    # A Qwen base model: EOS and generation config say <|endoftext|> (id 0); its ChatML template ends turns with <|im_end|> (id 2).
    from tests.conftest import make_tiny_llama

    base = make_tiny_llama(tmp_path / "base")
    config = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|endoftext|>"}))
    (base / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 0}))
    run = train(recipe(base, capitals_file, tmp_path / "run", data={"template": "model"}, train={"max_steps": 1}))
    assert json.loads((run.path / "template.json").read_text())["stop_token_ids"] == [0, 2]
    assert json.loads((run.path / "adapter" / "generation_config.json").read_text())["eos_token_id"] == [0, 2]
    assert "<|im_end|> (ends assistant turns in the template)" in (run.path / "data_report.md").read_text()
