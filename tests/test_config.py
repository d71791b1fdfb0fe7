from pathlib import Path

import pytest
import yaml

from tunesmith.config import DataConfig, ModelConfig, PeftConfig, Recipe, TrainConfig, field_help, load_recipe, parse_overrides
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
    assert "peft.method: 'lorra' is not one of 'none', 'lora' or 'qlora'" in message


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
    assert "peft.method: 'lorra' is not one of 'none', 'lora' or 'qlora'" in message


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


def test_rslora_dora_need_lora(recipe_file):
    message = config_error(recipe_file(), ["peft.method=none", "peft.dora=true"])
    assert "peft.rslora and peft.dora apply to LoRA" in message


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
        assert {f"{prefix}.{name}" for name in section.model_fields} <= set(keys)


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
        ({"method": "dpo", "dpo": {"beta": 0}}, "dpo.beta: 0: Input should be greater than 0"),
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
