import json

import pytest

from tunesmith.cli import main


def test_data_check_reports_the_numbers_training_reported(lora_run, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["data", "check", str(lora_run / "config.yaml"), "--out", str(out)]) == 0
    trained = json.loads((lora_run / "data_report.json").read_text(encoding="utf-8"))
    assert json.loads(out.read_text(encoding="utf-8")) == trained
    assert out.with_suffix(".md").read_text(encoding="utf-8") == (lora_run / "data_report.md").read_text(encoding="utf-8")
    printed = capsys.readouterr()
    assert "# Data preflight" in printed.out and "⟦" in printed.out
    assert "data check passed: 8 train / 8 eval examples ready for sft" in printed.err


@pytest.fixture
def recipe(tiny_llama, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": f"Capital {i}?", "completion": "Paris"} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"prompt": "no answer"}\n', encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model:\n  path: {tiny_llama}\ndata:\n  train: {data}\n  max_length: 64\n"
        f"peft:\n  target_modules: [q_proj, v_proj]\noutput_dir: {tmp_path / 'run'}\n",
        encoding="utf-8",
    )
    return path


def test_data_check_reads_no_weights_and_makes_no_run(recipe, tmp_path, monkeypatch, capsys):
    import transformers

    import tunesmith.models.load

    def refuse(*args, **kwargs):
        raise AssertionError("data check loaded model weights")

    monkeypatch.setattr(tunesmith.models.load, "load_model", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    assert main(["data", "check", str(recipe), "data.on_bad_row=drop"]) == 0
    out = capsys.readouterr().out
    assert "read 7, kept 6, dropped: missing_field 1" in out
    assert not (tmp_path / "run").exists()


def test_data_check_stops_on_a_bad_row_naming_file_line_and_field(recipe, capsys):
    assert main(["data", "check", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {recipe.parent / 'train.jsonl'}:7: completion: missing")
    assert "Traceback" not in err


def test_data_check_refuses_a_wrong_adapter_target_before_any_weights(recipe, capsys):
    assert main(["data", "check", str(recipe), "peft.target_modules=[nope_proj]", "data.on_bad_row=drop"]) == 2
    assert "nope_proj" in capsys.readouterr().err
