"""A folder written by `tunesmith merge` serves like the run it came from: same template, same training
system prompt, same answers."""

import openai

from tunesmith.models.merge import merge_run

PROMPTS = ["Once upon a time", "The little dog"]


def answers(url: str, model: str, api_key: str = "none") -> list[str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0)
    return [
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=12)
        .choices[0].message.content
        for p in PROMPTS
    ]


def test_merged_folder_answers_like_its_run(story_runs, start_server, live, tmp_path):
    merged = merge_run(story_runs[0], tmp_path / "story-merged").out
    with start_server(merged) as server:
        assert list(server.catalog.models) == ["story-merged"]
        assert server.catalog.models["story-merged"].system_prompt == "Name the capital."
        from_merged = answers(server.url, "story-merged")
    assert from_merged == answers(live.url, "first", api_key="sk-test")
