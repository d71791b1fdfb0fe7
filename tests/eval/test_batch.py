"""`tunesmith generate TARGET --input prompts.jsonl --output out.jsonl`: rows in, rows plus output out."""

import json

import pytest

from tunesmith.cli import main
from tunesmith.data.formats import DataError
from tunesmith.eval.batch import read_prompt_rows
from tunesmith.eval.generate import generate, load_for_inference


def test_batch_generate_writes_each_row_with_its_output(stories_path, tmp_path, capsys):
    rows = [
        {"id": "a", "prompt": "Once upon a time", "lang": "en"},
        {"messages": [{"role": "user", "content": "Lily had a cat"}]},
        {"id": 3, "prompt": "옛날 옛적에"},
    ]
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out" / "gen.jsonl"
    args = [str(stories_path), "--input", str(src), "--output", str(out), "--template", "chatml", "--max-new-tokens", "6", "--batch-size", "2"]
    assert main(["generate", *args]) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in w.items() if k != "output"} for w in written] == rows
    loaded = load_for_inference(str(stories_path), template="chatml")
    conversations = [[{"role": "user", "content": "Once upon a time"}], rows[1]["messages"], [{"role": "user", "content": "옛날 옛적에"}]]
    assert [w["output"] for w in written] == generate(loaded, conversations, max_new_tokens=6, progress=False)
    assert "3 outputs written" in capsys.readouterr().err

    # One prompt still works as before and agrees with the batch.
    assert main(["generate", str(stories_path), "Once upon a time", "--template", "chatml", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == written[0]["output"] + "\n"


def test_bad_rows_name_the_line(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p.jsonl:2: prompt: expected a non-empty string or a 'messages' list \(missing\)"):
        read_prompt_rows(src, None)
    src.write_text('{"messages": "hi"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p.jsonl:1: messages"):
        read_prompt_rows(src, None)


def test_generate_needs_a_prompt_or_an_input(capsys):
    assert main(["generate", "some/model"]) == 2
    assert "give a prompt, or --input" in capsys.readouterr().err
