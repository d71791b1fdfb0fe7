"""`tunesmith eval` on the real demo model (SmolLM2-135M-Instruct from the packaged GGUF), Korean rows included.

Slow (loads a 135M model twice on CPU): plain `pytest` skips it, `make test` and CI run it.
"""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "Classify the customer support ticket. Answer with one word: billing, technical, account, shipping or refund."


@pytest.mark.slow
def test_demo_model_eval_on_heldout_tickets(tmp_path):
    from tunesmith.eval.engines import Decoding
    from tunesmith.eval.evaluate import run_eval

    heldout = ROOT / "examples/data/support_tickets/heldout.jsonl"
    rows = [json.loads(line) for line in heldout.read_text(encoding="utf-8").splitlines()]
    picked = [r for r in rows if r["lang"] == "ko"][:3] + [r for r in rows if r["lang"] == "en"][:3]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    summary = run_eval(model, str(data), compare=[model], out=str(tmp_path / "e"), system=SYSTEM,
                       decoding=Decoding(max_new_tokens=6), labels=["billing", "technical", "account", "shipping", "refund"])
    assert summary["n"] == 6
    assert summary["compare"][f"{model}-2"] == summary["metrics"]  # same model, same prompts, same greedy decoding
    assert 1.0 < summary["metrics"]["perplexity"] < 1e4
    predictions = [json.loads(line) for line in (tmp_path / "e" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in picked]
    assert all(p["outputs"][model].strip() for p in predictions)
