"""Up-front checks: every path and name a command takes is refused in one line before anything heavy loads."""

import shutil

import pytest
import yaml

from tunesmith.checks import check_input, check_model, check_output_file, check_output_folder, fetch_models
from tunesmith.cli import main
from tunesmith.errors import TunesmithError


class Loaded(Exception):
    """Raised by a stand-in for model loading: reaching it means the check came too late."""


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading any model's weights fails with Loaded (tokenizers still load)."""
    import transformers
    from peft import PeftModel

    def refuse(*args, **kwargs):
        raise Loaded(args)

    for owner in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification, PeftModel):
        monkeypatch.setattr(owner, "from_pretrained", refuse)


def fake_run(folder, final="adapter", base="org/base"):
    """A run directory's files, without weights: config.yaml, template.json and adapter/ or model/."""
    from tunesmith.config import validate

    folder.mkdir(parents=True)
    recipe = validate({"model": {"path": base}, "data": {"train": "x.jsonl"}})
    (folder / "config.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    (folder / "template.json").write_text("{}")
    if final == "adapter":
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text("{}")
    elif final == "model":
        (folder / "model").mkdir()
        (folder / "model" / "config.json").write_text("{}")
    return folder


def test_a_missing_path_says_no_such_file_and_lists_the_runs_beside_it(tmp_path):
    fake_run(tmp_path / "runs" / "quickstart-0412-1530")
    with pytest.raises(TunesmithError) as info:
        check_model(str(tmp_path / "runs" / "quickstart"))
    assert str(info.value) == (f"{tmp_path}/runs/quickstart: no such run folder or model folder "
                               f"(runs in {tmp_path}/runs/: quickstart-0412-1530)")
    with pytest.raises(TunesmithError, match=r"^--compare \./nope\.gguf: no such file$"):
        check_model("./nope.gguf", "--compare")


def test_what_cannot_be_a_model_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunesmithError, match="notes.txt: a file, not a run directory, a model folder, a .gguf file or a hub id"):
        check_model(str(tmp_path / "notes.txt"))
    with pytest.raises(TunesmithError, match="empty: a folder without config.json"):
        check_model(str(tmp_path / "empty"))
    with pytest.raises(TunesmithError, match="not a hub id"):
        check_model("org/name with spaces")
    assert check_model("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id: the hub answers when it is fetched


def test_runs_that_cannot_be_loaded_are_named(tmp_path):
    with pytest.raises(TunesmithError, match="no adapter/ or model/ folder: the run has not finished training"):
        check_model(str(fake_run(tmp_path / "unfinished", final=None)))
    with pytest.raises(TunesmithError, match=r"its base model /gone/base is not found \(model.path in its config.yaml"):
        check_model(str(fake_run(tmp_path / "orphan", base="/gone/base")))
    broken = fake_run(tmp_path / "broken", final="model")
    (broken / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(TunesmithError, match="broken is not a usable run"):
        check_model(str(broken))
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.yaml").write_text("{}")
    with pytest.raises(TunesmithError, match="a run directory without template.json"):
        check_model(str(half))
    assert check_model(str(fake_run(tmp_path / "full", final="model"))).model.path == "org/base"


def test_files_in_and_out(tmp_path):
    check_input(None, "--input")
    with pytest.raises(TunesmithError, match=r"^--data absent.jsonl: no such file or folder$"):
        check_input("absent.jsonl", "--data")
    check_input("tatsu-lab/alpaca", "--data")  # a hub dataset: data.load reads it (or says why it cannot)
    check_input("hf://org/name@ko::validation", "--data")
    (tmp_path / "file").write_text("")
    with pytest.raises(TunesmithError, match="is a file, not a folder"):
        check_output_file(str(tmp_path / "file" / "out.jsonl"), "--output")
    with pytest.raises(TunesmithError, match="a folder; give a file name"):
        check_output_file(str(tmp_path), "--output")
    check_output_file(str(tmp_path / "new" / "out.jsonl"), "--output")
    with pytest.raises(TunesmithError, match=r"^--out .*/file/report: .*/file is a file, not a folder$"):
        check_output_folder(tmp_path / "file" / "report", "--out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    check_output_folder(tmp_path / "full", "--out")
    with pytest.raises(TunesmithError, match="already exists and is not empty"):
        check_output_folder(tmp_path / "full", "--out", must_be_empty=True)


def test_fetching_stops_at_an_offline_hub_id_before_any_model_loads(stories_path, monkeypatch, no_model_loads):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunesmithError, match="nobody/no-such-model"):
        fetch_models([(str(stories_path), "--models"), ("nobody/no-such-model", "--models")])


def test_eval_select_checks_every_model_before_evaluating_the_first(stories_path, tickets_file, tmp_path, capsys, no_model_loads):
    models = f"{stories_path},{tmp_path / 'runs' / 'missing'}"
    assert main(["eval", "select", "--models", models, "--data", str(tickets_file), "--out", str(tmp_path / "sel")]) == 2
    assert capsys.readouterr().err == f"error: --models {tmp_path}/runs/missing: no such run folder or model folder\n"
    assert not (tmp_path / "sel").exists()


def test_eval_and_select_check_their_output_folder_before_loading(stories_path, tickets_file, tmp_path, capsys, no_model_loads):
    (tmp_path / "taken").write_text("")
    assert main(["eval", str(stories_path), "--data", str(tickets_file), "--out", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path}/taken: {tmp_path}/taken is a file, not a folder\n"
    assert main(["eval", "select", "--models", str(stories_path), "--data", str(tickets_file), "--out", str(tmp_path / "taken")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_eval_checks_every_compared_model_before_the_target(stories_path, tickets_file, tmp_path, capsys, no_model_loads):
    args = ["eval", str(stories_path), "--data", str(tickets_file), "--compare", str(tmp_path / "other.gguf")]
    assert main(args) == 2
    assert capsys.readouterr().err == f"error: --compare {tmp_path}/other.gguf: no such file\n"
    assert main(["eval", str(stories_path), "--data", str(tickets_file), "--compare", "base"]) == 2
    assert "--compare base: " in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["generate", "{missing}", "hi"],
    ["chat", "{missing}"],
    ["constitution", "--model", "{missing}", "--prompts", "p.jsonl", "--principles", "p.yaml", "--out", "{tmp}/c"],
])
def test_a_missing_model_is_named_as_a_path_not_a_hub_error(command, tmp_path, capsys, no_model_loads):
    (tmp_path / "runs").mkdir()
    missing = tmp_path / "runs" / "quickstart"
    assert main([arg.format(missing=missing, tmp=tmp_path) for arg in command]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such run folder or model folder" in err and "hub" not in err


def test_generate_checks_its_files_before_loading(stories_path, tmp_path, capsys, no_model_loads):
    assert main(["generate", str(stories_path), "--input", str(tmp_path / "absent.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err == f"error: --input {tmp_path}/absent.jsonl: no such file or folder\n"


def test_score_reads_its_data_before_loading(reward_run, tmp_path, capsys, no_model_loads):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n')
    assert main(["score", reward_run, "--data", str(tmp_path / "pairs.jsonl")]) == 2
    assert "pairs.jsonl:1" in capsys.readouterr().err


def test_merge_reads_its_gate_prompts_before_loading(lora_run, tmp_path, capsys, no_model_loads):
    run = shutil.copytree(lora_run, tmp_path / "run")
    assert main(["merge", str(run), "--out", str(tmp_path / "m"), "--prompts", str(tmp_path / "absent.txt")]) == 2
    assert capsys.readouterr().err == f"error: --prompts: file not found: {tmp_path}/absent.txt\n"
