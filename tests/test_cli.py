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
    assert "peft.method: 'lorra' is not one of 'none', 'lora', 'qlora', 'adapter', 'ia3', 'prefix', 'prompt', 'loha', 'lokr', 'vera' or 'oft'" in captured.err
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


# --- Broken inputs through `tunesmith train`, as a user runs it: exit 2, one `error:` line naming the file, no traceback ---


def _plant_inputs(root: Path, stories: Path) -> dict:
    """name -> (recipe text or bytes, overrides, the start of the error line)."""
    import gzip
    import json
    import shutil

    good = root / "good.jsonl"
    good.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}"}) + "\n" for i in range(4)), encoding="utf-8")
    broken_model = Path(shutil.copytree(stories, root / "model"))
    (broken_model / "model.safetensors").write_bytes((stories / "model.safetensors").read_bytes()[:4096])
    zipped = gzip.compress(good.read_bytes() * 50)
    (root / "cut.jsonl.gz").write_bytes(zipped[: len(zipped) // 2])
    (root / "bad.parquet").write_bytes(b"PAR1 not really")
    (root / "dup.csv").write_text("prompt,completion,completion\nq,a,b\n", encoding="utf-8")
    (root / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9?", "answer": "a"}\n')
    (root / "weights.bin").write_bytes(b"x")
    recipe = f"model:\n  path: {stories}\n  dtype: float32\ndata:\n  train: {good}\n  template: chatml\noutput_dir: {root / 'run'}\n"
    return {
        "lr_inf": (recipe, ["train.lr=.inf"], "recipe.yaml: invalid config\n  train.lr: inf: expected a finite number > 0"),
        "max_steps_bool": (recipe, ["train.max_steps=true"], "recipe.yaml: invalid config\n  train.max_steps: true: expected a whole number > 0, or null"),
        "override_not_yaml": (recipe, ["peft.target_modules=[a, b"], "override 'peft.target_modules=[a, b': not valid YAML"),
        "duplicate_key": (recipe + "model:\n  path: x\n", [], "recipe.yaml:8: not valid YAML: duplicate key 'model' (first given on line 1)"),
        "recipe_not_utf8": (recipe.encode() + b"name: caf\xe9\n", [], "recipe.yaml:8: not UTF-8 text (byte 0xe9)"),
        "empty_train": (recipe, ["data.train=[]"], "recipe.yaml: invalid config\n  data.train: []: List should have at least 1 item"),
        "truncated_weights": (recipe, [f"model.path={broken_model}"], f"{broken_model / 'model.safetensors'}: not a complete safetensors file"),
        "model_is_a_file": (recipe, [f"model.path={root / 'weights.bin'}"], f"model.path: '{root / 'weights.bin'}' is a file"),
        "hub_id_invalid": (recipe, ["model.path=bad id!"], "model.path: 'bad id!' is neither a local path nor a hub id"),
        "target_not_linear": (recipe, ["peft.target_modules=[norm]"], "peft.target_modules: 'norm' names LlamaRMSNorm modules"),
        "modules_to_save_missing": (recipe, ["peft.modules_to_save=[no_such_head]"], "peft.modules_to_save: no module of this model is named 'no_such_head'"),
        "output_dir_is_a_file": (recipe, [f"output_dir={root / 'weights.bin'}"], f"output_dir: the run folder {root / 'weights.bin'} cannot be made"),
        "gzip_truncated": (recipe, [f"data.train={root / 'cut.jsonl.gz'}"], f"{root / 'cut.jsonl.gz'}: corrupt or truncated gzip data"),
        "parquet_corrupt": (recipe, [f"data.train={root / 'bad.parquet'}"], f"{root / 'bad.parquet'}: not a readable Parquet file"),
        "csv_duplicate_column": (recipe, [f"data.train={root / 'dup.csv'}"], f"{root / 'dup.csv'}:1: column(s) 'completion' named twice"),
        "line_not_utf8": (recipe, [f"data.train={root / 'latin1.jsonl'}"], f"{root / 'latin1.jsonl'}:1: not UTF-8 text (byte 0xe9 at column 18)"),
        "hub_dataset_offline": (recipe, ["data.train=someorg/not-downloaded"], "someorg/not-downloaded: hub dataset someorg/not-downloaded is not in the local cache and the hub is offline"),
    }


# The names of _plant_inputs' cases (the test checks that both agree).
CLI_CASE_NAMES = [
    "lr_inf", "max_steps_bool", "override_not_yaml", "duplicate_key", "recipe_not_utf8", "empty_train", "truncated_weights",
    "model_is_a_file", "hub_id_invalid", "target_not_linear", "modules_to_save_missing", "output_dir_is_a_file",
    "gzip_truncated", "parquet_corrupt", "csv_duplicate_column", "line_not_utf8", "hub_dataset_offline",
]


@pytest.mark.parametrize("case", CLI_CASE_NAMES)
def test_broken_inputs_are_one_error_line(stories_path, tmp_path, capsys, monkeypatch, case):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    cases = _plant_inputs(tmp_path, stories_path)
    assert sorted(cases) == sorted(CLI_CASE_NAMES)
    text, overrides, expected = cases[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    expected = expected.replace("recipe.yaml", str(recipe), 1) if expected.startswith("recipe.yaml") else expected
    assert main(["train", str(recipe), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}"), err
    assert "Traceback" not in err


def commands(parser=None, words=()):
    """(command words, parser) for every command and sub-command, e.g. (("runs", "list"), parser)."""
    import argparse

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*words, *name.split()), sub
                yield from commands(sub, (*words, *name.split()))


def test_every_command_has_one_summary_line_in_the_command_list(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    listing = build_parser().format_help().split("commands:\n  COMMAND\n")[1].split("\n\n")[0].splitlines()
    top = [words for words, _ in commands() if len(words) == 1 or words[0] == "eval"]
    assert [line.strip().split("  ")[0] for line in listing] == [" ".join(words) for words in top]
    assert all(len(line.split()) > 2 and len(line) <= 78 for line in listing)


def test_every_command_help_has_a_working_example_and_shows_defaults(monkeypatch):
    import shlex

    from tunesmith.cli import with_eval_subcommand
    from tunesmith.curate.cli import with_label_subcommand

    monkeypatch.setenv("COLUMNS", "100")
    for words, parser in commands():
        text = parser.format_help()
        assert text.rstrip().endswith(parser.epilog.rstrip()), words  # shown as written, not re-wrapped
        examples = [line.strip() for line in parser.epilog.splitlines()[1:]]
        assert examples and all(e.startswith("tunesmith " + " ".join(words)) for e in examples), (words, examples)
        for example in examples:  # each one parses: a real command line, not prose
            build_parser().parse_args(with_label_subcommand(with_eval_subcommand(shlex.split(example)[1:])))
        for action in parser._actions:
            if action.dest in ("help", "verbose") or action.nargs == "A...":
                continue
            assert action.help, (words, action.dest)
            unset = action.default is None or action.default is False or action.default == []
            if not unset and (action.option_strings or action.nargs in ("?", "*")):
                assert f"(default: {action.default})" in " ".join(text.split()), (words, action.dest)


def slash_commands(text: str) -> set[str]:
    import re

    return set(re.findall(r"(?<![\w.])/\w+", text))  # /reset, not the /quickstart of runs/quickstart


def test_chat_help_lists_every_slash_command():
    from tunesmith.chat import HELP

    text = dict(commands())[("chat",)].format_help()
    assert slash_commands(HELP) <= slash_commands(text) == {"/reset", "/system", "/exit"}


def test_eval_subcommands_are_found_after_top_level_options():
    from tunesmith.cli import with_eval_subcommand

    args = build_parser().parse_args(with_eval_subcommand(["--verbose", "eval", "select", "--models", "a", "--data", "d"]))
    assert args.verbose and args.models == "a"
    assert build_parser().parse_args(["eval", "runs/x", "--data", "d", "--verbose"]).verbose


def test_verbose_is_accepted_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--verbose", "train", "r.yaml"]).verbose
    assert parser.parse_args(["train", "r.yaml", "--verbose"]).verbose
    assert not parser.parse_args(["train", "r.yaml"]).verbose


@pytest.fixture
def restore_output_settings(monkeypatch):
    """configure_output sets logger levels and environment variables for the whole process: put them back."""
    import logging

    from tunesmith.cli import LIBRARY_VERBOSITY, QUIET_LIBRARIES

    names = ["", "tunesmith", *QUIET_LIBRARIES]
    levels = {name: logging.getLogger(name).level for name in names}
    for variable in LIBRARY_VERBOSITY.values():
        monkeypatch.setenv(variable, "warning")  # restored (or removed) by monkeypatch afterwards
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_and_logs_show_only_when_verbose(verbose, restore_output_settings, caplog):
    import logging
    import os
    import warnings

    from tunesmith.cli import configure_output

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # everything Python would show without our filters
        configure_output(verbose)
        warnings.warn_explicit("planted deprecation", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("planted checkpoint warning", UserWarning, "checkpoint.py", 1, module="torch.utils.checkpoint")
        warnings.warn_explicit("a user's own warning", UserWarning, "my_rewards.py", 1, module="my_rewards")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward from kernels-community")
    logging.getLogger("tunesmith.models.load").info("converting model.gguf to safetensors")
    shown = {str(w.message) for w in seen}
    logged = {r.getMessage() for r in caplog.records}
    assert "a user's own warning" in shown and "converting model.gguf to safetensors" in logged
    assert ({"planted deprecation", "planted checkpoint warning"} <= shown) is verbose
    assert ("Failed to load CPU gemm_4bit_forward from kernels-community" in logged) is verbose
    assert logging.getLogger("transformers.trainer").isEnabledFor(logging.INFO) is verbose
    assert logging.getLogger("datasets").isEnabledFor(logging.WARNING) is verbose
    assert os.environ["TRANSFORMERS_VERBOSITY"] == ("info" if verbose else "error")  # for transformers imported later


def test_training_and_generating_show_no_library_warnings_unless_verbose(stories_path, tmp_path, restore_output_settings):
    import json
    import warnings

    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"question": f"Capital of {c}?", "answer": a}) + "\n"
                            for c, a in [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Chad", "N'Djamena")]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{path: {stories_path}, dtype: float32}}\ndata: {{train: {data}, template: chatml, max_length: 256}}\n"
                      f"peft: {{method: lora, r: 2}}\ntrain: {{max_steps: 1, batch_size: 4}}\noutput_dir: {tmp_path / 'run'}\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["train", str(recipe)]) == 0
        assert main(["generate", str(tmp_path / "run"), "Capital of Peru?", "--max-new-tokens", "2"]) == 0
        assert [f"{w.category.__name__}: {w.message}" for w in seen] == []
        assert main(["--verbose", "generate", str(tmp_path / "run"), "Capital of Peru?", "--max-new-tokens", "2"]) == 0
    # PEFT asks transformers for a deprecated property on every adapter load: shown, but only when asked for.
    assert any(w.category is FutureWarning and "is_gradient_checkpointing" in str(w.message) for w in seen)
