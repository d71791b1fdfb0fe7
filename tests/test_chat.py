"""`tunesmith chat` fed from stdin: multi-turn history, /system, /reset, /exit, the run's template."""

import io

import pytest

from tunesmith.cli import main
from tunesmith.eval.generate import generate, load_for_inference


def chat(monkeypatch, capsys, lines: list[str], *args) -> tuple[list[str], str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main(["chat", *args, "--max-new-tokens", "12"]) == 0
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err


def reply(loaded, conversation):
    return generate(loaded, [conversation], max_new_tokens=12, progress=False)[0]


def test_multi_turn_history_system_and_reset(stories_path, monkeypatch, capsys):
    loaded = load_for_inference(str(stories_path), template="chatml")
    lines = ["Once upon a time", "The dog ran", "/system Tell a story.", "Lily had a cat", "/reset", "Lily had a cat", "/exit", "never read"]
    out, err = chat(monkeypatch, capsys, lines, str(stories_path), "--template", "chatml")

    def user(text):
        return {"role": "user", "content": text}

    def assistant(text):
        return {"role": "assistant", "content": text}

    system = [{"role": "system", "content": "Tell a story."}]
    a1 = reply(loaded, [user("Once upon a time")])
    a2 = reply(loaded, [user("Once upon a time"), assistant(a1), user("The dog ran")])
    a3 = reply(loaded, system + [user("Once upon a time"), assistant(a1), user("The dog ran"), assistant(a2), user("Lily had a cat")])
    a4 = reply(loaded, system + [user("Lily had a cat")])
    assert "\n".join(out) == "\n".join([a1, a2, a3, a4])
    assert a3 != a4  # the history made a difference, and /reset dropped it
    assert "(conversation cleared)" in err and "(system message: 'Tell a story.')" in err


def test_a_run_chats_with_its_training_system_prompt(lora_run, monkeypatch, capsys):
    loaded = load_for_inference(str(lora_run))
    out, err = chat(monkeypatch, capsys, ["Capital of Peru?", "/oops"], str(lora_run))
    expected = reply(loaded, [{"role": "system", "content": "Name the capital."}, {"role": "user", "content": "Capital of Peru?"}])
    assert "\n".join(out) == expected
    assert f"chatting with {lora_run.name}" in err and "unknown command '/oops'" in err


@pytest.mark.parametrize("lines", [[], ["", "   "]])
def test_end_of_input_ends_the_chat(stories_path, monkeypatch, capsys, lines):
    out, _ = chat(monkeypatch, capsys, lines, str(stories_path), "--template", "chatml")
    assert out == []
