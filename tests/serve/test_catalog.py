"""Which names a server serves, with which template and system prompt; adapters must match the base."""

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.serve.catalog import build_catalog


def test_a_run_serves_its_base_and_itself_with_their_templates(story_runs, stories_path):
    from tunesmith.data.templates import ChatTemplate

    first, second = story_runs
    catalog = build_catalog(str(first), [f"other={second}"])
    assert list(catalog.models) == [str(stories_path), "first", "other"]
    base, run, other = catalog.models.values()
    assert base.adapter is None and base.system_prompt is None
    assert base.template == ChatTemplate.load(first / "template.json")  # stories260K has no template of its own
    assert (run.adapter, run.system_prompt, run.rank) == (first / "adapter", "Name the capital.", 4)
    assert other.adapter == second / "adapter"
    assert catalog.default == "first"


def test_adapters_must_match_the_served_base(story_runs, lora_run):
    with pytest.raises(TunesmithError, match="an adapter only works on the base it was trained on"):
        build_catalog(str(story_runs[0]), [f"x={lora_run}"])  # lora_run was trained on another base


@pytest.mark.parametrize(
    "spec, message",
    [("noequals", "expected name=RUN_DIR"), ("first={run}", "already served"), ("x=/nonexistent", "not a run directory")],
)
def test_bad_adapter_specs(story_runs, spec, message):
    with pytest.raises(TunesmithError, match=message):
        build_catalog(str(story_runs[0]), [spec.format(run=story_runs[1])])
