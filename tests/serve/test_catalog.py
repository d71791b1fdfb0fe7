"""Which names a server serves, with which template and system prompt; adapters must match the base; names are
never local paths; every path and name is checked before anything heavy runs."""

import shutil
from pathlib import Path

import pytest

import tunesmith.models.load as load_module
from tunesmith.errors import TunesmithError
from tunesmith.serve.catalog import build_catalog, served_name


def test_a_run_serves_its_base_and_itself_with_their_templates(story_runs, stories_path):
    from tunesmith.data.templates import ChatTemplate

    first, second = story_runs
    catalog = build_catalog(str(first), [f"other={second}"])
    assert list(catalog.models) == ["stories260K", "first", "other"]  # the base by its folder's name, not its path
    base, run, other = catalog.models.values()
    assert base.adapter is None and base.system_prompt is None
    assert base.template == ChatTemplate.load(first / "template.json")  # stories260K has no template of its own
    assert (run.adapter, run.system_prompt, run.rank) == (first / "adapter", "Name the capital.", 4)
    assert other.adapter == second / "adapter"
    assert catalog.default == "first" and catalog.base_path == str(stories_path)


def test_a_run_named_like_its_base_folder_cannot_take_the_base_name(story_runs, tmp_path):
    twin = shutil.copytree(story_runs[0], tmp_path / "stories260K")
    catalog = build_catalog(str(twin))
    assert list(catalog.models) == ["stories260K-base", "stories260K"] and catalog.default == "stories260K"
    with pytest.raises(TunesmithError, match="'stories260K-base' is already served"):
        build_catalog(str(twin), [f"stories260K-base={story_runs[1]}"])


def test_served_names_are_hub_ids_or_folder_names(stories_path, tmp_path, monkeypatch):
    assert served_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert served_name(str(stories_path)) == "stories260K"
    monkeypatch.chdir(stories_path)
    assert served_name(".") == "stories260K"


def test_dtype_applies_to_a_run_too(story_runs):
    assert build_catalog(str(story_runs[0]), dtype="bfloat16").base.dtype == "bfloat16"
    assert build_catalog(str(story_runs[0])).base.dtype == "float32"  # the run's own


def test_adapters_must_match_the_served_base(story_runs, lora_run):
    with pytest.raises(TunesmithError, match="an adapter only works on the base it was trained on"):
        build_catalog(str(story_runs[0]), [f"x={lora_run}"])  # lora_run was trained on another base


@pytest.fixture
def nothing_heavy(monkeypatch):
    """Fails the test when a model source is resolved (a hub download, a GGUF conversion) or loaded."""

    def heavy(*args, **kwargs):
        raise AssertionError("a model was resolved or loaded before every name and path was checked")

    monkeypatch.setattr(load_module, "resolve_source", heavy)
    monkeypatch.setattr(load_module, "load_model", heavy)


@pytest.mark.parametrize(
    "target, spec, options, message",
    [
        ("{first}", "noequals", {}, "expected name=RUN_DIR"),
        ("{first}", "other=runs/missing", {}, "runs/missing is not a run directory"),
        ("{first}", "first={second}", {}, "'first' is already served"),
        ("{first}", "stories260K={second}", {}, "'stories260K' is already served"),
        ("{first}", "x={no_weights}", {}, "holds no adapter weights"),
        ("{first}", None, {"template": "chatml"}, "is a run, served with the template it trained with"),
        ("{stories}", None, {"template": "no-such.jinja"}, "--template no-such.jinja: not 'model', 'chatml', 'alpaca'"),
    ],
)
def test_every_path_and_name_is_checked_before_anything_heavy(story_runs, stories_path, tmp_path, nothing_heavy, target, spec, options, message):
    no_weights = shutil.copytree(story_runs[1], tmp_path / "no_weights")
    (no_weights / "adapter" / "adapter_model.safetensors").unlink()
    paths = {"first": story_runs[0], "second": story_runs[1], "stories": stories_path, "no_weights": no_weights}
    adapters = [spec.format(**paths)] if spec else []
    with pytest.raises(TunesmithError, match=message):
        build_catalog(target.format(**paths), adapters, **options)


def test_serve_checks_the_adapters_before_loading_the_base(story_runs, nothing_heavy):
    from tunesmith.serve.server import create_app

    with pytest.raises(TunesmithError, match="runs/missing is not a run directory"):
        create_app(str(story_runs[0]), adapters=[f"second={story_runs[1]}", "other=runs/missing"], engine="transformers")


def test_the_base_is_resolved_once_however_many_adapters(story_runs, monkeypatch):
    """Each resolve of a hub id that falls back to a packaged GGUF says so: once, not once per look-up."""
    from tunesmith.serve.server import create_app

    resolved = []
    real = load_module.resolve_source
    monkeypatch.setattr(load_module, "resolve_source", lambda cfg: resolved.append(cfg.path) or real(cfg))
    create_app(str(story_runs[0]), adapters=[f"second={story_runs[1]}"], engine="transformers")
    assert len(resolved) == 1


def test_errors_shown_to_clients_carry_no_local_paths(story_runs, stories_path):
    catalog = build_catalog(str(story_runs[0]), [f"second={story_runs[1]}"])
    adapter = Path(story_runs[1]).resolve() / "adapter" / "adapter_model.safetensors"
    error = {"error": {"message": f"cannot read {adapter} or {stories_path}/config.json in {Path.home()}/x", "type": "server_error", "param": None, "code": None}}
    shown = catalog.public(error)["error"]["message"]
    assert shown == "cannot read <second>/adapter/adapter_model.safetensors or <stories260K>/config.json in ~/x"
