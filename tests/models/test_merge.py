"""Merging a tiny LoRA run: the merged folder reproduces the adapter, carries the run's template, and the
fidelity gate catches a corrupted merge."""

import json
import math

import pytest
import torch

from tunesmith.cli import main
from tunesmith.data.templates import ChatTemplate, tool_source
from tunesmith.errors import TunesmithError
from tunesmith.models.fidelity import Fidelity, compare, logit_gap
from tunesmith.models.merge import FidelityError, merge_run

PROBE = torch.tensor([[1, 50, 100, 200, 300, 400, 2]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE, attention_mask=torch.ones_like(PROBE)).logits


def test_logit_gap_by_hand():
    reference = torch.tensor([[[0.0, 0.0], [1.0, 3.0]]])           # (B=1, T=2, V=2)
    candidate = torch.tensor([[[math.log(3.0), 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 0]])                                  # the second position is padding
    max_diff, kl_sum, n = logit_gap(reference, candidate, mask)
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert (max_diff, n) == (pytest.approx(math.log(3.0)), 1)
    assert kl_sum == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_compare_averages_kl_over_tokens_and_takes_the_max_difference():
    a = [torch.zeros(2, 3), torch.zeros(1, 3)]
    b = [torch.zeros(2, 3), torch.tensor([[0.5, 0.0, 0.0]])]
    fidelity = compare(a, b)
    assert (fidelity.sequences, fidelity.tokens) == (2, 3)
    assert fidelity.max_abs_logit_diff == pytest.approx(0.5)
    q = torch.softmax(torch.tensor([0.5, 0.0, 0.0]), 0)
    assert fidelity.mean_kl == pytest.approx(float((torch.full((3,), 1 / 3) * (torch.log(torch.tensor(1 / 3)) - q.log())).sum()) / 3, rel=1e-5)


def test_gate_puts_the_drift_next_to_the_adapter_effect():
    drift = Fidelity(max_abs_logit_diff=0.5, mean_kl=0.004, adapter_kl=0.05, tokens=10, sequences=1)
    assert drift.share == pytest.approx(0.08)
    assert drift.problems(max_logit_diff=1.0, max_kl=0.01, max_share=0.1) == []
    [problem] = drift.problems(max_logit_diff=1.0, max_kl=0.01, max_share=0.05)
    assert "8.0% of the adapter's own effect" in problem
    assert len(drift.problems(max_logit_diff=0.1, max_kl=0.001, max_share=0.05)) == 3
    noise = Fidelity(1e-5, 1e-8, 0.0, 10, 1)  # an adapter without effect: rounding noise is no reason to fail
    assert noise.problems(max_logit_diff=1e-2, max_kl=1e-4, max_share=0.05) == []


def test_merge_reproduces_the_adapter_and_serves_with_the_run_template(lora_run, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tunesmith.eval.generate import generate, load_for_inference
    from tunesmith.runs import RunDir

    out = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "fidelity gate passed\n  8 sequences" in printed and "the run's eval data" in printed
    assert "gate: adapter model: 100%" in captured.err and "gate: merged model: 100%" in captured.err  # progress bars

    base_path = RunDir(lora_run).recipe().model.path
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), lora_run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), logits(adapter), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits(adapter), logits(AutoModelForCausalLM.from_pretrained(base_path).eval()), atol=1e-3)

    template = ChatTemplate.load(lora_run / "template.json")
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == tool_source(template, saved)  # the run's template, with the built-in tool format if it has none
    assert saved.chat_template.endswith(template.source)
    assert GenerationConfig.from_pretrained(out).eos_token_id == template.stop_token_ids
    assert ChatTemplate.load(out / "template.json") == template
    provenance = json.loads((out / "tunesmith.json").read_text())
    assert provenance["merge"]["passed"] and provenance["merge"]["fidelity"]["tokens"] > 0
    assert provenance["base_model"] == base_path

    # Served as a plain model folder, it answers like the run does.
    conversation = [{"role": "system", "content": "Name the capital."}, {"role": "user", "content": "Capital of Peru?"}]
    from_run = generate(load_for_inference(str(lora_run)), [conversation], max_new_tokens=6, progress=False)
    from_merged = generate(load_for_inference(str(out)), [conversation], max_new_tokens=6, progress=False)
    assert from_merged == from_run


def test_gate_fails_on_a_planted_corruption_and_leaves_nothing(lora_run, tmp_path, monkeypatch):
    import tunesmith.models.merge as merge

    real_save = merge.save_merged

    def corrupt_then_save(model, tokenizer, template, folder):
        with torch.no_grad():
            model.model.layers[0].self_attn.q_proj.weight.mul_(1.5)  # a merge that scaled one delta wrong
        real_save(model, tokenizer, template, folder)

    monkeypatch.setattr(merge, "save_merged", corrupt_then_save)
    out = tmp_path / "merged"
    with pytest.raises(FidelityError, match=r"failed the fidelity gate on 8 sequences .*: max \|logit diff\| [\d.e-]+ > 0.01") as info:
        merge_run(lora_run, out)
    assert "Nothing was written" in str(info.value) and "Pass --force" in str(info.value)
    assert list(tmp_path.iterdir()) == []

    kept = merge_run(lora_run, out, force=True)
    assert not kept.passed and kept.fidelity.max_abs_logit_diff > kept.max_logit_diff
    assert kept.problems == [f"max |logit diff| {kept.fidelity.max_abs_logit_diff:.3g} > 0.01"]
    assert json.loads((out / "tunesmith.json").read_text())["merge"]["passed"] is False


def test_thresholds_and_prompt_file_are_configurable(lora_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Capital of Chile?\n\nCapital of Cuba?\n")
    result = merge_run(lora_run, tmp_path / "merged", prompts=str(prompts), max_logit_diff=0.5, max_kl=0.1, max_share=0.2)
    assert result.passed and result.fidelity.sequences == 2
    assert (result.max_logit_diff, result.max_kl, result.max_share) == (0.5, 0.1, 0.2)
    assert result.prompts_from == f"prompts from {prompts}"
    with pytest.raises(TunesmithError, match="already exists and is not empty"):
        merge_run(lora_run, tmp_path / "merged")


def test_adapter_only_export_loads_with_peft(lora_run, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    assert main(["merge", str(lora_run), "--adapter-only", "--out", str(out)]) == 0
    assert "adapter with tokenizer and template written" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors", "template.json", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), lora_run / "adapter").eval()
    assert torch.equal(logits(exported), logits(original))


def test_qlora_merges_into_the_unquantised_base(stories_path, lora_run_factory, tmp_path):
    from transformers import AutoConfig

    run = lora_run_factory(tmp_path / "qlora", stories_path, steps=2, peft={"method": "qlora"}, data={"template": "chatml", "max_length": 256, "eval": []})
    result = merge_run(run, tmp_path / "merged")
    assert result.passed and result.dtype == "float32"
    assert result.prompts_from == "the run's training data (it has no eval data)"
    config = AutoConfig.from_pretrained(tmp_path / "merged")
    assert getattr(config, "quantization_config", None) is None
    assert json.loads((tmp_path / "merged" / "tunesmith.json").read_text())["recipe"]["peft"]["method"] == "qlora"


def test_full_finetuning_runs_have_nothing_to_merge(tiny_llama, tmp_path, capsys):
    from tunesmith.config import validate
    from tunesmith.runs import RunDir

    run = RunDir(tmp_path / "full")
    (run.path / "model").mkdir(parents=True)
    run.write_config(validate({"model": {"path": str(tiny_llama)}, "data": {"train": "x.jsonl"}, "peft": {"method": "none"}}))
    (run.path / "template.json").write_text(json.dumps({"name": "model", "source": "", "stop_token_ids": [2]}))
    assert main(["merge", str(run.path), "--out", str(tmp_path / "m")]) == 2
    assert "full fine-tuning run: its model/ folder is already a plain transformers model" in capsys.readouterr().err
