"""`tunesmith push --dry-run`: the folder as it would be uploaded, its model card, and the token kept out of both."""

import json
import shutil

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.publish.card import CardInfo, front_matter, render_card

SECRET = "hf_thisIsNotARealTokenButMustNeverBeWritten"
EVAL = {
    "name": "heldout",
    "target": "runs/capitals",
    "data": "data/heldout.jsonl",
    "n": 8,
    "metrics": {"exact_match": 0.875, "chrf": 61.5},
    "compare": {},
    "details": {"per_class": {"a": 1.0}},
    "decoding": {"max_new_tokens": 8},
}


@pytest.fixture
def run_with_eval(lora_run, tmp_path):
    run = shutil.copytree(lora_run, tmp_path / "capitals")
    (run / "eval" / "heldout").mkdir(parents=True)
    (run / "eval" / "heldout" / "metrics.json").write_text(json.dumps(EVAL))
    return run


@pytest.fixture
def token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login from the machine
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return SECRET


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def no_secret_in(folder, output: str) -> None:
    assert SECRET not in output
    for file in folder.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file


def test_dry_run_builds_the_adapter_folder_with_a_card(run_with_eval, token, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "upload"
    code = main(["push", str(run_with_eval), "--repo", "me/capitals", "--dry-run", "--out", str(out),
                 "--license", "apache-2.0", "--language", "en", "--language", "ko"])
    captured = capsys.readouterr()
    printed = captured.out
    assert "build folder: 100%" in captured.err  # the folder build shows a progress bar (weights can be gigabytes)
    assert code == 0
    assert "would upload to me/capitals (public model repo)" in printed and "dry run: nothing uploaded" in printed
    assert "token: found" in printed
    files = {p.name for p in out.iterdir()}
    assert files == {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "template.json"}
    for name in files:
        assert name in printed
    no_secret_in(out, printed)

    meta, body = split_card((out / "README.md").read_text())
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en", "ko"]
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"tunesmith", "sft", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # the tiny base is a local folder
    assert meta["metrics"] == ["exact_match", "chrf"]
    [result] = meta["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"exact_match": 0.875, "chrf": 61.5}
    assert "| heldout | heldout.jsonl | 8 | exact_match | 0.875 |" in body
    assert "AutoPeftModelForCausalLM.from_pretrained(\"me/capitals\")" in body
    assert "Name the capital." in body  # the training system prompt, which users must give too
    assert "## Training" in body and "r=4, alpha=8" in body and "## Intended use and limitations" in body

    base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)  # loadable as uploaded


def test_dry_run_of_a_merged_folder(run_with_eval, token, tmp_path, capsys):
    from tunesmith.models.merge import merge_run

    merged = merge_run(run_with_eval, tmp_path / "merged").out
    out = tmp_path / "upload"
    assert main(["push", str(merged), "--repo", "me/capitals-merged", "--private", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(private model repo)" in printed
    assert "note: license: unknown, written as 'other'" in printed and "note: language: not set" in printed
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "template.json", "README.md"} <= files
    assert "tunesmith.json" not in files  # provenance holds local paths
    no_secret_in(out, printed)
    meta, body = split_card((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "merged" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.875  # evals found through the run
    assert "## Merge check" in body and "AutoModelForCausalLM.from_pretrained(\"me/capitals-merged\")" in body


def test_front_matter_links_a_hub_base_and_is_valid_yaml():
    recipe = {"method": "sft", "model": {"path": "org/base", "dtype": "auto", "quantization": "4bit", "quant_type": "nf4"},
              "peft": {"method": "qlora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
              "data": {"system_prompt": None, "max_length": 512, "truncation": "drop"},
              "train": {"max_steps": 10, "epochs": 1, "lr": 1e-4, "scheduler": "cosine", "warmup": 0.1, "batch_size": 4, "grad_accum": 2, "seed": 1}}
    info = CardInfo(repo="me/x", kind="merged", base_model="org/base", license="mit", datasets=["org/data"], recipe=recipe,
                    evals=[{"name": "held: out", "data": None, "n": 3, "metrics": {"accuracy": 1.0}}])
    meta, body = split_card(render_card(info))
    assert meta == front_matter(info)
    assert meta["base_model"] == "org/base" and meta["base_model_relation"] == "finetune"
    assert meta["datasets"] == ["org/data"] and meta["tags"] == ["tunesmith", "sft", "qlora", "merged"]
    assert "4-bit-rounded base" in body  # the QLoRA merge caveat


def test_dry_run_without_token_says_so_and_real_push_needs_one(run_with_eval, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["push", str(run_with_eval), "--repo", "me/x", "--dry-run", "--out", str(tmp_path / "a")]) == 0
    assert "token: none found" in capsys.readouterr().out
    assert main(["push", str(run_with_eval), "--repo", "me/x", "--out", str(tmp_path / "b")]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err


def test_upload_creates_the_repo_and_uploads_the_built_folder(run_with_eval, token, monkeypatch, tmp_path, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token):
            calls.append(("token", token == SECRET))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs["private"]))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload", repo_id, sorted(p.name for p in folder_path.iterdir())))
            raise RuntimeError(f"403 Forbidden for token {SECRET}")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["push", str(run_with_eval), "--repo", "me/x", "--private", "--out", str(tmp_path / "up")]) == 2
    captured = capsys.readouterr()
    assert calls[:2] == [("token", True), ("create", "me/x", True)]
    assert calls[2][0] == "upload" and "README.md" in calls[2][2]
    assert "upload to me/x failed: RuntimeError: 403 Forbidden" in captured.err
    assert SECRET not in captured.err + captured.out


def test_bad_repo_id_is_a_user_error(run_with_eval, tmp_path, capsys):
    assert main(["push", str(run_with_eval), "--repo", "no-owner", "--dry-run", "--out", str(tmp_path / "x")]) == 2
    assert "expected owner/name" in capsys.readouterr().err


def test_license_and_language_default_to_the_base_model_card(run_with_eval, tiny_llama, tmp_path, capsys):
    base = shutil.copytree(tiny_llama, tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: mit\nlanguage:\n- en\n- ko\n---\n# base\n")
    config = yaml.safe_load((run_with_eval / "config.yaml").read_text())
    config["model"]["path"] = str(base)
    (run_with_eval / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["push", str(run_with_eval), "--repo", "me/x", "--dry-run", "--out", str(tmp_path / "up")]) == 0
    assert "note: license" not in capsys.readouterr().out
    meta, _ = split_card((tmp_path / "up" / "README.md").read_text())
    assert (meta["license"], meta["language"]) == ("mit", ["en", "ko"])


def test_the_base_card_is_read_without_downloading_the_base(run_with_eval, token, tmp_path, monkeypatch):
    config = run_with_eval / "config.yaml"
    config.write_text(config.read_text().replace(yaml.safe_load(config.read_text())["model"]["path"], "org/base"))
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: mit\nlanguage: ko\n---\n# base\n")
    asked = []

    def download(repo, filename, revision=None):
        asked.append((repo, filename))
        return str(readme)

    def snapshot(*args, **kwargs):
        raise AssertionError("the whole base model was downloaded for its card")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot)
    assert main(["push", str(run_with_eval), "--repo", "me/x", "--dry-run", "--out", str(tmp_path / "up")]) == 0
    assert asked == [("org/base", "README.md")]
    meta, _ = split_card((tmp_path / "up" / "README.md").read_text())
    assert (meta["license"], meta["language"], meta["base_model"]) == ("mit", ["ko"], "org/base")
