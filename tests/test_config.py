from pathlib import Path
from typing import get_args

import pytest
import yaml

from tunesmith.config import (
    DataConfig,
    DpoConfig,
    GenerationEvalConfig,
    GrpoConfig,
    KtoConfig,
    ModelConfig,
    PeftConfig,
    PpoConfig,
    Recipe,
    RewardFunction,
    RewardModelConfig,
    TrainConfig,
    field_help,
    load_recipe,
    parse_overrides,
    read_yaml,
)
from tunesmith.errors import ConfigError, TunesmithError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.fixture
def recipe_file(tmp_path, monkeypatch):
    """A minimal valid recipe in tmp_path (also the cwd), with a real one-row data file; returns a writer."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    (tmp_path / "other.jsonl").write_text('{"text": "bye"}\n', encoding="utf-8")

    def write(extra: dict | None = None, name: str = "my_recipe.yaml", base: dict | None = None) -> Path:
        raw = base if base is not None else {"model": {"path": "org/name"}, "data": {"train": "train.jsonl"}}
        for section, values in (extra or {}).items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section] = {**raw[section], **values}
            else:
                raw[section] = values
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return path

    return write


def config_error(path, overrides=(), check_files=True) -> str:
    with pytest.raises(ConfigError) as info:
        load_recipe(path, overrides, check_files=check_files)
    return str(info.value)


def test_minimal_recipe_defaults(recipe_file):
    recipe = load_recipe(recipe_file())
    assert isinstance(recipe, Recipe)
    assert recipe.model.path == "org/name"
    assert recipe.data.train == ["train.jsonl"]
    assert recipe.data.eval == []
    assert recipe.method == "sft"
    assert recipe.peft.method == "lora"
    assert recipe.peft.target_modules == "all-linear"
    assert recipe.train.lr == 2e-4


def test_default_name_is_file_stem_and_run_dir_follows(recipe_file):
    recipe = load_recipe(recipe_file(name="tickets_v2.yaml"))
    assert recipe.name == "tickets_v2"
    assert recipe.run_dir == Path("runs") / "tickets_v2"


def test_explicit_name_and_output_dir(recipe_file):
    recipe = load_recipe(recipe_file({"name": "custom"}))
    assert recipe.name == "custom"
    assert recipe.run_dir == Path("runs/custom")
    recipe = load_recipe(recipe_file({"name": "custom", "output_dir": "elsewhere/out"}))
    assert recipe.run_dir == Path("elsewhere/out")


def test_config_error_is_a_tunesmith_error():
    assert issubclass(ConfigError, TunesmithError)


@pytest.mark.parametrize(
    "extra, key, allowed",
    [
        ({"trian": {"lr": 1e-4}}, "trian", Recipe.model_fields),
        ({"train": {"learning_rate": 1e-4}}, "train.learning_rate", TrainConfig.model_fields),
        ({"peft": {"rank": 8}}, "peft.rank", PeftConfig.model_fields),
        ({"model": {"pth": "x"}}, "model.pth", ModelConfig.model_fields),
    ],
)
def test_unknown_key_names_dotted_key_and_allowed_keys(recipe_file, extra, key, allowed):
    message = config_error(recipe_file(extra))
    line = next(line for line in message.splitlines() if line.strip().startswith(key + ":"))
    assert "unknown key" in line
    assert "allowed here: " + ", ".join(allowed) in line


def test_bad_literal_lists_choices(recipe_file):
    message = config_error(recipe_file({"peft": {"method": "lorra"}}))
    assert "peft.method: 'lorra' is not one of 'none', 'lora', 'qlora', 'adapter', 'ia3', 'prefix', 'prompt', 'loha', 'lokr', 'vera' or 'oft'" in message


def test_wrong_type_names_key_and_value(recipe_file):
    message = config_error(recipe_file({"train": {"batch_size": "abc"}}))
    assert "train.batch_size: 'abc'" in message


def test_out_of_range_value_names_key(recipe_file):
    message = config_error(recipe_file({"train": {"batch_size": 0}}))
    assert "train.batch_size: 0" in message


def test_several_problems_are_reported_together(recipe_file):
    message = config_error(recipe_file({"peft": {"method": "lorra"}, "train": {"batch_size": "abc"}}))
    assert "peft.method" in message and "train.batch_size" in message


def test_missing_required_key(recipe_file):
    message = config_error(recipe_file(base={"model": {"dtype": "float32"}, "data": {"train": "train.jsonl"}}))
    assert "model.path: required key is missing" in message


def test_missing_section(recipe_file):
    message = config_error(recipe_file(base={"model": {"path": "org/name"}}))
    assert "data: required key is missing" in message


def test_missing_recipe_file(tmp_path):
    message = config_error(tmp_path / "absent.yaml")
    assert message == f"recipe not found: {tmp_path / 'absent.yaml'}"


def test_recipe_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    assert "a recipe is a mapping" in config_error(path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n", encoding="utf-8")
    assert "not valid YAML" in config_error(path)


def test_missing_data_file_is_one_line(recipe_file):
    message = config_error(recipe_file({"data": {"train": ["train.jsonl", "absent.jsonl"]}}))
    assert message == "data.train[1]: file not found: absent.jsonl"


def test_missing_eval_file(recipe_file):
    message = config_error(recipe_file({"data": {"eval": "absent_eval.jsonl"}}))
    assert message == "data.eval[0]: file not found: absent_eval.jsonl"


def test_file_checks_can_be_skipped(recipe_file):
    recipe = load_recipe(recipe_file({"data": {"train": "absent.jsonl"}, "model": {"path": "./nope"}}), check_files=False)
    assert recipe.data.train == ["absent.jsonl"]


@pytest.mark.parametrize("path", ["./nope", "/x/y.gguf", "nope.gguf", "a/b/c", "~/surely-not-here-tunesmith"])
def test_missing_local_model_path_is_one_line(recipe_file, path):
    message = config_error(recipe_file({"model": {"path": path}}))
    assert "\n" not in message
    assert message.startswith("model.path: ")
    assert repr(path) in message and "does not exist" in message


@pytest.mark.parametrize("path", ["org/name", "gpt2"])
def test_hub_id_is_not_checked_locally(recipe_file, path):
    recipe = load_recipe(recipe_file({"model": {"path": path}}))
    assert recipe.model.path == path


def test_a_run_not_trained_yet_is_a_missing_local_path_not_a_hub_id(recipe_file, tmp_path):
    (tmp_path / "runs").mkdir()
    assert "model.path: 'runs/my-sft' does not exist" in config_error(recipe_file({"model": {"path": "runs/my-sft"}}))


def test_existing_local_model_folder_passes(recipe_file, tmp_path):
    (tmp_path / "my_model").mkdir()
    recipe = load_recipe(recipe_file({"model": {"path": "./my_model"}}))
    assert recipe.model.path == "./my_model"


def test_template_must_be_builtin_or_existing_file(recipe_file, tmp_path):
    message = config_error(recipe_file({"data": {"template": "absent.jinja"}}))
    assert message.startswith("data.template: 'absent.jinja'")
    (tmp_path / "mine.jinja").write_text("{{ messages }}", encoding="utf-8")
    assert load_recipe(recipe_file({"data": {"template": "mine.jinja"}})).data.template == "mine.jinja"


def test_override_float(recipe_file):
    recipe = load_recipe(recipe_file(), ["train.lr=1e-4"])
    assert isinstance(recipe.train.lr, float)
    assert recipe.train.lr == 1e-4


def test_override_int_bool_and_list(recipe_file):
    recipe = load_recipe(recipe_file(), ["peft.r=8", "train.group_by_length=false", "peft.target_modules=[q_proj,v_proj]"])
    assert recipe.peft.r == 8
    assert recipe.train.group_by_length is False
    assert recipe.peft.target_modules == ["q_proj", "v_proj"]


def test_override_one_file_becomes_list(recipe_file):
    recipe = load_recipe(recipe_file(), ["data.train=other.jsonl"])
    assert recipe.data.train == ["other.jsonl"]


def test_override_creates_missing_section(recipe_file):
    recipe = load_recipe(recipe_file(), ["train.epochs=3"])
    assert recipe.train.epochs == 3.0


def test_override_beats_yaml(recipe_file):
    recipe = load_recipe(recipe_file({"train": {"batch_size": 4}}), ["train.batch_size=2"])
    assert recipe.train.batch_size == 2


def test_override_values_are_validated(recipe_file):
    message = config_error(recipe_file(), ["peft.method=lorra"])
    assert "peft.method: 'lorra' is not one of 'none', 'lora', 'qlora', 'adapter', 'ia3', 'prefix', 'prompt', 'loha', 'lokr', 'vera' or 'oft'" in message


def test_override_unknown_key(recipe_file):
    message = config_error(recipe_file(), ["train.learning_rate=1e-4"])
    assert "train.learning_rate: unknown key" in message


@pytest.mark.parametrize("item", ["train.lr", "=1", "train..lr=1", "1train.lr=1", "train.lr-x=1"])
def test_bad_override_syntax(recipe_file, item):
    message = config_error(recipe_file(), [item])
    assert repr(item) in message
    assert "expected key.path=value" in message


def test_parse_overrides_keeps_everything_after_first_equals():
    assert parse_overrides(["data.system_prompt=a=b"]) == [(["data", "system_prompt"], "a=b")]
    assert parse_overrides(["name="]) == [(["name"], "")]


def test_override_into_non_section(recipe_file):
    message = config_error(recipe_file(), ["model.path.x=1"])
    assert message.startswith("override model.path.x: model.path is 'org/name', not a section")


def test_qlora_defaults_to_4bit(recipe_file):
    recipe = load_recipe(recipe_file(), ["peft.method=qlora"])
    assert recipe.model.quantization == "4bit"


def test_qlora_keeps_8bit(recipe_file):
    recipe = load_recipe(recipe_file(), ["peft.method=qlora", "model.quantization=8bit"])
    assert recipe.model.quantization == "8bit"


@pytest.mark.parametrize("method", ["lora", "none"])
def test_lora_and_full_default_to_no_quantization(recipe_file, method):
    recipe = load_recipe(recipe_file(), [f"peft.method={method}"])
    assert recipe.model.quantization == "none"


def test_qlora_without_quantization_errors(recipe_file):
    message = config_error(recipe_file(), ["peft.method=qlora", "model.quantization=none"])
    assert "peft.method 'qlora'" in message and "model.quantization" in message


@pytest.mark.parametrize("method", ["lora", "none"])
def test_quantized_base_needs_qlora(recipe_file, method):
    message = config_error(recipe_file(), [f"peft.method={method}", "model.quantization=4bit"])
    assert "model.quantization '4bit'" in message and "peft.method qlora" in message


def test_keep_best_needs_eval_data(recipe_file):
    message = config_error(recipe_file(), ["train.keep_best=true"])
    assert "train.keep_best needs evaluation data" in message


def test_early_stopping_needs_eval_data(recipe_file):
    message = config_error(recipe_file(), ["train.early_stopping_patience=2"])
    assert "train.early_stopping_patience needs evaluation data" in message


@pytest.mark.parametrize("eval_data", ["data.eval=other.jsonl", "data.eval_split=0.1"])
def test_keep_best_with_eval_data(recipe_file, eval_data):
    recipe = load_recipe(recipe_file(), ["train.keep_best=true", eval_data])
    assert recipe.train.keep_best is True


@pytest.mark.parametrize(
    "steps",
    [
        ["train.save_steps=15", "train.eval_steps=10"],
        ["train.save_steps=10"],
        ["train.eval_steps=10"],
    ],
)
def test_keep_best_needs_save_steps_multiple_of_eval_steps(recipe_file, steps):
    message = config_error(recipe_file(), ["train.keep_best=true", "data.eval_split=0.1", *steps])
    assert "train.save_steps must be a multiple of train.eval_steps" in message


def test_keep_best_with_matching_steps(recipe_file):
    recipe = load_recipe(recipe_file(), ["train.keep_best=true", "data.eval_split=0.1", "train.save_steps=20", "train.eval_steps=10"])
    assert (recipe.train.save_steps, recipe.train.eval_steps) == (20, 10)


def test_adapter_keys_need_adapters(recipe_file):
    message = config_error(recipe_file(), ["peft.method=none", "peft.dora=true"])
    assert "peft.dora: applies to adapters, but peft.method is 'none'" in message
    message = config_error(recipe_file(), ["peft.method=none", "peft.r=8", "peft.modules_to_save=[lm_head]"])
    assert "remove peft.r, peft.modules_to_save (on the command line: peft={method: none} replaces the section)" in message
    assert load_recipe(recipe_file({"peft": {"r": 8}}), ["peft={method: none}"]).peft.r == 16


def test_eval_split_range(recipe_file):
    message = config_error(recipe_file(), ["data.eval_split=1.0"])
    assert "data.eval_split: 1.0" in message


def test_data_config_accepts_single_string():
    assert DataConfig(train="a.jsonl", eval="b.jsonl").eval == ["b.jsonl"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(path, check_files=False)
    assert recipe.name
    # Every file it names exists, but for runs that another shipped recipe makes (ppo needs the reward run).
    made_by_recipes = {f"runs/{load_recipe(other, check_files=False).name}" for other in RECIPES}
    try:
        load_recipe(path, check_files=True)
    except ConfigError as err:
        for line in str(err).splitlines():
            missing = line.split("'")[1]
            assert missing in made_by_recipes and ("not a directory" in line or "does not exist" in line), line


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_starts_with_its_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#")
    assert "tunesmith" in first


def test_there_are_shipped_recipes():
    assert RECIPES


def test_field_help_has_train_lr():
    rows = {key: (default, description) for key, default, description in field_help()}
    default, description = rows["train.lr"]
    assert default == repr(2e-4)
    assert description.strip()
    assert rows["model.path"][0] == "(required)"


def test_every_field_has_a_description():
    rows = field_help()
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    for section in (ModelConfig, DataConfig, PeftConfig, TrainConfig):
        for name, info in section.model_fields.items():
            assert info.description and info.description.strip(), f"{section.__name__}.{name} has no description"
    assert [key for key, _, description in rows if not description.strip()] == []
    sections = {"model": ModelConfig, "data": DataConfig, "peft": PeftConfig, "train": TrainConfig}
    for prefix, section in sections.items():
        sections_of_keys = {key.rsplit(".", 1)[0] for key in keys}  # an optional section (train.token_weights) lists its own keys
        assert {f"{prefix}.{name}" for name in section.model_fields} <= set(keys) | sections_of_keys


def _method_errors(raw_extra: dict) -> str:
    from tunesmith.config import validate

    raw = {"model": {"path": "org/name"}, "data": {"train": "t.jsonl"}, **raw_extra}
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return str(info.value)


def test_method_sections_default_and_validate():
    from tunesmith.config import validate

    recipe = validate({"model": {"path": "m"}, "data": {"train": "t"}, "method": "dpo"})
    assert recipe.dpo.loss == "sigmoid" and recipe.dpo.beta == 0.1 and recipe.method_config is recipe.dpo
    assert validate({"model": {"path": "m"}, "data": {"train": "t"}, "method": "kto"}).kto.desirable_weight == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"method": "dpo", "dpo": {"loss": "lorra"}}, "dpo.loss: 'lorra' is not one of 'sigmoid', 'ipo', 'hinge', 'robust', 'simpo' or 'orpo'"),
        ({"method": "dpo", "dpo": {"beta": 0}}, "dpo.beta: 0: expected a finite number > 0"),
        ({"method": "dpo", "dpo": {"loss": "robust"}}, "dpo.label_smoothing: loss 'robust' needs a value > 0"),
        ({"method": "dpo", "dpo": {"label_smoothing": 0.1}}, "dpo.label_smoothing: applies to loss 'robust' only (loss is 'sigmoid')"),
        ({"method": "dpo", "dpo": {"simpo_gamma": 1.0}}, "dpo.simpo_gamma: applies to loss 'simpo' only"),
        ({"method": "dpo", "dpo": {"loss": "orpo", "reference": "copy"}}, "dpo.reference: loss 'orpo' is reference-free"),
        ({"method": "dpo", "dpo": {"reference": "adapters_off"}, "peft": {"method": "none"}}, "dpo.reference: 'adapters_off' needs adapters"),
        ({"method": "kto", "kto": {"reference": "copy", "precompute_reference": True}}, "remove kto.reference: copy"),
        ({"method": "sft", "dpo": {"loss": "ipo"}}, "dpo: settings of method dpo, but method is 'sft'"),
        ({"method": "dpo", "data": {"train": "t", "format": "messages"}}, "data.format: 'messages' is not one of auto, preference"),
        ({"method": "dpo", "data": {"train": "t", "train_on_prompt": True}}, "data.train_on_prompt applies to method sft only"),
        ({"method": "grpo"}, "method grpo needs a grpo section with grpo.rewards"),
        ({"method": "ppo", "ppo": {}}, "ppo.reward_model: required key is missing"),
        ({"method": "grpo", "grpo": {"rewards": []}}, "grpo.rewards: []: List should have at least 1 item"),
        ({"method": "grpo", "grpo": {"rewards": [{"type": "regex"}]}}, "grpo.rewards[0].pattern: required for reward type 'regex'"),
        ({"method": "grpo", "grpo": {"rewards": [{"type": "regex", "pattern": "(", }]}}, "grpo.rewards[0].pattern: '(' is not a valid regular expression"),
        ({"method": "grpo", "grpo": {"rewards": [{"type": "length", "max_chars": 9, "column": "a"}]}}, "grpo.rewards[0].column: not used by reward type 'length'"),
        ({"method": "grpo", "grpo": {"rewards": [{"type": "exact", "column": "a"}]}}, "grpo.rewards[0].type: 'exact' is not one of"),
        ({"method": "ppo", "ppo": {"reward_model": "r", "clip": 0.1}}, "ppo.clip: unknown key (allowed here: reward_model, kl_coef"),
    ],
)
def test_method_section_errors_name_the_key(extra, message):
    assert message in _method_errors(extra)


def test_method_keys_are_listed_with_their_meaning():
    rows = {key: (default, description) for key, default, description in field_help()}
    assert rows["dpo.loss"][0] == "'sigmoid'" and "arXiv:2305.18290" in rows["dpo.loss"][1]
    assert rows["grpo.rewards[].type"][0] == "(required)"
    assert rows["ppo.reward_model"][0] == "(required)"


@pytest.mark.parametrize("method", ["dpo", "kto", "reward", "grpo", "ppo"])
def test_a_resolved_config_validates_again(method, tmp_path):
    """config.yaml holds every key, defaults included: reading a run back must not trip the checks."""
    from tunesmith.config import validate
    from tunesmith.runs import RunDir

    sections = {"grpo": {"rewards": [{"type": "regex", "pattern": "x"}]}, "ppo": {"reward_model": "r"}}
    recipe = validate({"model": {"path": "m"}, "data": {"train": "t"}, "method": method, **({method: sections[method]} if method in sections else {})})
    run = RunDir(tmp_path)
    run.write_config(recipe)
    assert run.recipe() == recipe


# --- Values YAML reads with the wrong type or out of range: strict fields, finite numbers, whole step counts ---

# Every section of the recipe with the raw keys that make it valid, so each of its fields can be planted alone.
SECTIONS = {
    "model": (ModelConfig, {}),
    "data": (DataConfig, {}),
    "peft": (PeftConfig, {}),
    "train": (TrainConfig, {}),
    "generation_eval": (GenerationEvalConfig, {}),
    "dpo": (DpoConfig, {"method": "dpo"}),
    "kto": (KtoConfig, {"method": "kto"}),
    "reward": (RewardModelConfig, {"method": "reward"}),
    "ppo": (PpoConfig, {"method": "ppo", "ppo": {"reward_model": "r"}}),
    "grpo": (GrpoConfig, {"method": "grpo", "grpo": {"rewards": [{"type": "regex", "pattern": "x"}]}}),
    "grpo.rewards[0]": (RewardFunction, {"method": "grpo", "grpo": {"rewards": [{"type": "regex", "pattern": "x"}]}}),
}


def _fields_of_type(kind) -> list[tuple[str, str]]:
    found = []
    for prefix, (model, _) in SECTIONS.items():
        for name, info in model.model_fields.items():
            options = {a for a in get_args(info.annotation)} | {info.annotation}
            if kind in options:
                found.append((prefix, name))
    return found


def _plant(prefix: str, name: str, value) -> str:
    """The error lines of a minimal recipe with `prefix.name` set to `value`."""
    from tunesmith.config import validate

    raw = {"model": {"path": "org/name"}, "data": {"train": "t.jsonl"}}
    raw.update(SECTIONS[prefix][1])
    raw = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy
    if prefix == "grpo.rewards[0]":
        raw["grpo"]["rewards"][0][name] = value
    else:
        raw.setdefault(prefix, {})[name] = value
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return str(info.value)


FLOAT_FIELDS = _fields_of_type(float)
INT_FIELDS = _fields_of_type(int)
BOOL_FIELDS = _fields_of_type(bool)


def test_the_class_tests_see_the_fields():
    assert ("train", "lr") in FLOAT_FIELDS and ("grpo.rewards[0]", "weight") in FLOAT_FIELDS
    assert ("train", "max_steps") in INT_FIELDS and ("train", "seed") in INT_FIELDS
    assert ("train", "group_by_length") in BOOL_FIELDS and ("model", "trust_remote_code") in BOOL_FIELDS


@pytest.mark.parametrize("value, shown", [(float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan")])
@pytest.mark.parametrize("prefix, name", FLOAT_FIELDS, ids=lambda x: str(x))
def test_every_float_field_refuses_non_finite_numbers(prefix, name, value, shown):
    assert f"{prefix}.{name}: {shown}: expected a finite number" in _plant(prefix, name, value)


@pytest.mark.parametrize("value, shown", [(True, "true"), (2.5, "2.5"), (2.0, "2.0"), ("3", "'3'")])
@pytest.mark.parametrize("prefix, name", INT_FIELDS, ids=lambda x: str(x))
def test_every_int_field_refuses_booleans_floats_and_text(prefix, name, value, shown):
    assert f"{prefix}.{name}: {shown}: expected a whole number" in _plant(prefix, name, value)


@pytest.mark.parametrize("value, shown", [("yes", "'yes'"), ("true", "'true'"), (1, "1"), (0, "0")])
@pytest.mark.parametrize("prefix, name", BOOL_FIELDS, ids=lambda x: str(x))
def test_every_bool_field_refuses_text_and_numbers(prefix, name, value, shown):
    assert f"{prefix}.{name}: {shown}: expected true or false" in _plant(prefix, name, value)


@pytest.mark.parametrize("prefix, name", [p for p in FLOAT_FIELDS if p[0] == "train"], ids=lambda x: str(x))
def test_float_fields_refuse_booleans(prefix, name):
    assert f"{prefix}.{name}: true: expected a finite number" in _plant(prefix, name, True)


def test_the_allowed_range_is_named(recipe_file):
    message = config_error(recipe_file(), ["train.lr=.inf", "train.max_steps=true", "data.eval_split=1.5", "train.seed=-1"])
    assert "train.lr: inf: expected a finite number > 0" in message
    assert "train.max_steps: true: expected a whole number > 0, or null" in message
    assert "data.eval_split: 1.5: expected a finite number >= 0.0 and < 1.0" in message
    assert "train.seed: -1: expected a whole number >= 0 and < 4294967296" in message


@pytest.mark.parametrize("text, lr", [("lr: 1e-4", 1e-4), ("lr: 3E+5", 3e5), ("lr: 2.5e-5", 2.5e-5), ("lr: 1.0e-4", 1e-4)])
def test_yaml_exponents_without_a_dot_are_numbers(recipe_file, tmp_path, text, lr):
    path = tmp_path / "r.yaml"
    path.write_text(f"model:\n  path: org/name\ndata:\n  train: train.jsonl\ntrain:\n  {text}\n", encoding="utf-8")
    assert load_recipe(path).train.lr == lr
    assert load_recipe(recipe_file(), ["train.lr=5e-5"]).train.lr == 5e-5


def test_yaml_switches_are_bools_but_quoted_ones_are_text(recipe_file):
    assert load_recipe(recipe_file(), ["train.group_by_length=no"]).train.group_by_length is False
    assert "train.group_by_length: 'no': expected true or false" in config_error(recipe_file(), ["train.group_by_length='no'"])


def test_quoted_numbers_are_text(recipe_file):
    path = recipe_file()
    path.write_text(path.read_text(encoding="utf-8") + "train:\n  lr: '2e-4'\n", encoding="utf-8")
    assert "train.lr: '2e-4': expected a finite number > 0" in config_error(path)


@pytest.mark.parametrize("value", ["2.5", "10.5"])
def test_warmup_steps_must_be_whole(recipe_file, value):
    assert f"train.warmup: {value} is neither a share of the steps (< 1) nor a whole number of steps" in config_error(recipe_file(), [f"train.warmup={value}"])
    assert load_recipe(recipe_file(), ["train.warmup=10"]).train.warmup == 10


def test_override_that_is_not_yaml_names_the_override(recipe_file):
    message = config_error(recipe_file(), ["peft.target_modules=[a, b"])
    assert message == "override 'peft.target_modules=[a, b': not valid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)"


def test_text_overrides_are_not_read_as_yaml(recipe_file):
    recipe = load_recipe(recipe_file(), ["data.system_prompt=[a, b", "model.path=org/x: y"], check_files=False)
    assert (recipe.data.system_prompt, recipe.model.path) == ("[a, b", "org/x: y")


@pytest.mark.parametrize(
    "text, line, key, first",
    [
        ("model:\n  path: org/name\ndata:\n  train: train.jsonl\nmodel:\n  path: org/other\n", 5, "model", 1),
        ("model:\n  path: org/name\ndata:\n  train: train.jsonl\ntrain:\n  lr: 1.0e-4\n  epochs: 2\n  lr: 0.1\n", 8, "lr", 6),
    ],
)
def test_duplicate_yaml_key_is_an_error_with_its_line(tmp_path, text, line, key, first):
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    assert config_error(path) == f"{path}:{line}: not valid YAML: duplicate key {key!r} (first given on line {first})"


def test_yaml_merge_keys_may_be_overridden():
    text = "base: &base\n  lr: 1.0e-4\n  epochs: 2\ntrain:\n  <<: *base\n  lr: 0.5\n"
    assert read_yaml(text, "r.yaml")["train"] == {"lr": 0.5, "epochs": 2}


def test_recipe_that_is_not_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  path: org/name\ndata:\n  train: train.jsonl\n  system_prompt: café\n".encode("latin-1"))
    assert config_error(path) == f"{path}:5: not UTF-8 text (byte 0xe9); save the recipe as UTF-8"


def test_recipe_with_a_byte_order_mark_reads(recipe_file):
    path = recipe_file()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_recipe(path).model.path == "org/name"


def test_yaml_error_is_one_line_with_its_line_number(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  path: org/name\ndata: [unclosed\n", encoding="utf-8")
    message = config_error(path)
    assert "\n" not in message and message.startswith(f"{path}:4: not valid YAML: expected ',' or ']'")


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["data.train=[]"], "data.train: []: List should have at least 1 item"),
        (["data.train=['']"], "data.train[0]: '': String should have at least 1 character"),
        (["peft.target_modules=[]"], "peft.target_modules: []: List should have at least 1 item"),
        (["peft.modules_to_save=['']"], "peft.modules_to_save[0]: '': String should have at least 1 character"),
        (["model.path="], "model.path: '': String should have at least 1 character"),
        (["data.columns={ticket: prompt}"], "data.columns: unknown field(s) ticket; fields are: instruction, output"),
        (["data.eval=other.jsonl", "data.eval_split=0.1"], "data.eval_split: holds out training rows when there are no eval files"),
        (["train.eval_steps=10"], "train.eval_steps needs evaluation data: set data.eval or data.eval_split"),
        (["model.compute_dtype=bfloat16"], "model.compute_dtype applies to 4-bit quantisation (model.quantization is 'none')"),
        (["peft.method=qlora", "model.quantization=8bit", "model.quant_type=fp4"], "model.quant_type applies to 4-bit quantisation"),
        (["model.gguf_file=model.bin"], "model.gguf_file: 'model.bin' is not a .gguf file name"),
        (["model.path=m.gguf", "model.gguf_file=x.gguf"], "model.gguf_file: names a file inside model.path, but model.path is a .gguf file already"),
    ],
)
def test_nonsensical_values_name_the_key(recipe_file, overrides, line):
    assert line in config_error(recipe_file(), overrides, check_files=False)


def test_qlora_knobs_are_taken_with_4bit(recipe_file):
    recipe = load_recipe(recipe_file(), ["peft.method=qlora", "model.compute_dtype=bfloat16", "model.quant_type=fp4"])
    assert (recipe.model.compute_dtype, recipe.model.quant_type) == ("bfloat16", "fp4")


# --- Paths of the wrong kind: before anything loads ---


def test_model_path_that_is_a_file(recipe_file, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert config_error(recipe_file({"model": {"path": "model.safetensors"}})) == (
        "model.path: 'model.safetensors' is a file; give the model's folder (with config.json) or a .gguf file"
    )


@pytest.mark.parametrize("path", ["bad id!", "org/-name", "org/na..me"])
def test_model_path_that_is_not_a_hub_id(recipe_file, path):
    message = config_error(recipe_file({"model": {"path": path}}))
    assert message == f"model.path: {path!r} is neither a local path nor a hub id (org/name: letters, digits, '-', '_', '.')"


def test_revision_of_a_local_model(recipe_file, tmp_path):
    (tmp_path / "my_model").mkdir()
    message = config_error(recipe_file({"model": {"path": "./my_model", "revision": "main"}}))
    assert message == "model.revision: applies to hub ids; './my_model' is a local path"


@pytest.mark.parametrize("output_dir, blocker", [("afile", "afile"), ("afile/run", "afile")])
def test_output_dir_that_is_a_file(recipe_file, tmp_path, output_dir, blocker):
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    message = config_error(recipe_file({"output_dir": output_dir}))
    assert message == f"output_dir: the run folder {output_dir} cannot be made: {blocker} is a file"


def test_default_run_folder_under_a_file(recipe_file, tmp_path):
    (tmp_path / "runs").write_text("x", encoding="utf-8")
    assert config_error(recipe_file()) == f"name: the run folder {Path('runs/my_recipe')} cannot be made: runs is a file"


@pytest.mark.parametrize("entry", ["tatsu-lab/alpaca", "hf://tatsu-lab/alpaca", "org/name::test", "hf://org/name@de::validation"])
def test_hub_datasets_are_not_missing_files(recipe_file, entry):
    assert load_recipe(recipe_file({"data": {"train": entry, "eval": entry}})).data.train == [entry]


@pytest.mark.parametrize("entry", ["data/train.jsonl", "missing.csv", "data/train.jsonl.gz"])
def test_data_files_that_look_like_paths_are_still_missing_files(recipe_file, entry):
    assert config_error(recipe_file({"data": {"train": entry}})) == f"data.train[0]: file not found: {entry}"


def test_malformed_hf_entry(recipe_file):
    message = config_error(recipe_file({"data": {"train": "hf://just-a-name"}}))
    assert message == "data.train[0]: hf://just-a-name: not a hub dataset; the forms are org/name, hf://org/name, org/name::split or org/name@subset::split"


def test_a_runs_config_yaml_loads_as_a_recipe_with_its_unused_method_sections_null(tmp_path):
    recipe = tmp_path / "config.yaml"
    recipe.write_text("model:\n  path: org/name\ndata:\n  train: x.jsonl\npeft:\nppo: null\ngrpo: null\ndpo: null\n", encoding="utf-8")
    loaded = load_recipe(recipe, check_files=False)
    assert loaded.ppo is None and loaded.grpo is None and loaded.peft.method == "lora"
