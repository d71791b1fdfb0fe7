import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith import __version__
from tunesmith.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_parser_does_not_import_heavy_libraries():
    done = run_python(
        "import sys; from tunesmith.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_help_exits_zero_without_heavy_imports():
    done = run_python(
        "import sys\nfrom tunesmith.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('CODE', code, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert "usage: tunesmith" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "CODE 0 False False"


def test_config_errors_do_not_import_heavy_libraries(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  path: org/name\ndata:\n  train: x.jsonl\npeft:\n  method: lorra\n", encoding="utf-8")
    done = run_python(
        "import sys\nfrom tunesmith.cli import main\n"
        f"code = main(['train', {str(recipe)!r}])\n"
        "print('CODE', code, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert done.stdout.strip().splitlines()[-1] == "CODE 2 False False"


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tunesmith {__version__}"


def test_subcommands_are_listed():
    help_text = build_parser().format_help()
    for command in ("train", "generate", "quickstart", "constitution"):
        assert command in help_text


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: tunesmith" in capsys.readouterr().err


def test_train_parses_recipe_and_overrides():
    args = build_parser().parse_args(["train", "r.yaml", "train.lr=1e-4", "peft.r=8", "--resume"])
    assert args.recipe == "r.yaml"
    assert args.overrides == ["train.lr=1e-4", "peft.r=8"]
    assert args.resume is True
    assert args.keys is False


def test_train_takes_overrides_before_and_after_its_flags(monkeypatch, capsys):
    import tunesmith.cli as cli

    seen = []
    monkeypatch.setattr(cli, "cmd_train", seen.append)
    assert main(["train", "r.yaml", "train.lr=1e-4", "--resume", "peft.r=8", "--allow-changes", "data.max_length=64"]) == 0
    assert seen[0].overrides == ["train.lr=1e-4", "peft.r=8", "data.max_length=64"]
    assert seen[0].resume and seen[0].allow_changes
    with pytest.raises(SystemExit):
        main(["train", "r.yaml", "--resume", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_ctrl_c_outside_training_is_one_line_and_exit_130(monkeypatch, capsys):
    import tunesmith.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_train", interrupted)  # e.g. while the model loads
    assert main(["train", "r.yaml"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_allow_changes_goes_with_resume(tmp_path, capsys):
    assert main(["train", "r.yaml", "--allow-changes"]) == 2
    assert "--allow-changes goes with --resume" in capsys.readouterr().err


def test_train_bad_value_exits_2_with_error_line(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        f"model:\n  path: org/name\ndata:\n  train: {tmp_path / 'train.jsonl'}\npeft:\n  method: lorra\n", encoding="utf-8"
    )
    assert main(["train", str(recipe)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ")
    assert "peft.method: 'lorra' is not one of 'none', 'lora' or 'qlora'" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_train_bad_override_exits_2(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(f"model:\n  path: org/name\ndata:\n  train: {tmp_path / 'train.jsonl'}\n", encoding="utf-8")
    assert main(["train", str(recipe), "train.batch_size=abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "train.batch_size: 'abc'" in err
    assert "Traceback" not in err


def test_train_missing_data_file_exits_2(tmp_path, capsys):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("model:\n  path: org/name\ndata:\n  train: absent_file.jsonl\n", encoding="utf-8")
    assert main(["train", str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == "error: data.train[0]: file not found: absent_file.jsonl"


def test_train_keys_lists_every_key(capsys):
    from tunesmith.config import field_help

    assert main(["train", "--keys"]) == 0
    out = capsys.readouterr().out
    lr_lines = [line for line in out.splitlines() if line.split()[:1] == ["train.lr"]]
    assert len(lr_lines) == 1
    assert "Peak learning rate" in lr_lines[0]
    assert len(out.strip().splitlines()) == len(field_help())


def test_train_missing_recipe(tmp_path, capsys):
    missing = tmp_path / "absent.yaml"
    assert main(["train", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: recipe not found: {missing}"
    assert "Traceback" not in err


def test_train_without_recipe(capsys):
    assert main(["train"]) == 2
    assert "give a recipe" in capsys.readouterr().err
