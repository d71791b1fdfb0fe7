"""A mixture run is evaluated with its task tags on the prompts, as it trained, and with metrics per task."""

import json

from tunesmith.cli import main


def test_eval_tags_each_row_with_its_task_and_reports_per_task(tiny_llama, tmp_path, lora_run_factory):
    rows = [{"question": f"Capital of {c}?", "answer": a, "task": "CAPITAL"} for c, a in (("France", "Paris"), ("Japan", "Tokyo"))]
    rows += [{"question": f"Spell {w}", "answer": w.upper(), "task": "SPELL"} for w in ("cat", "dog", "sun")]
    mixed = tmp_path / "mixed_eval.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    capitals = tmp_path / "capitals.jsonl"
    capitals.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    run = lora_run_factory(tmp_path / "mixture", tiny_llama, steps=1,
                           data={"train": [{"path": str(capitals), "task": "CAPITAL"}], "eval": [], "task_tag": "system", "task_template": "<{task}>"})
    out = tmp_path / "ev"
    assert main(["eval", str(run), "--data", str(mixed), "--task-column", "task", "--metrics", "exact_match", "--max-new-tokens", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert list(summary["by_task"]) == ["CAPITAL", "SPELL"]
    assert summary["by_task"]["CAPITAL"]["n"] == 2 and summary["by_task"]["SPELL"]["n"] == 3
    assert set(summary["by_task"]["SPELL"]["mixture"]) == {"exact_match"}
    prompts = [json.loads(line)["prompt"] for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert prompts[0][0] == {"role": "system", "content": "Name the capital.\n<CAPITAL>"}  # the run's system prompt, then its tag line
    assert prompts[2][0]["content"] == "Name the capital.\n<SPELL>"


def test_a_row_without_its_task_is_named(tiny_llama, tmp_path, lora_run, capsys):
    data = tmp_path / "e.jsonl"
    data.write_text('{"question": "q", "answer": "a", "task": "X"}\n{"question": "q2", "answer": "b"}\n', encoding="utf-8")
    assert main(["eval", str(lora_run), "--data", str(data), "--task-column", "task", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {data}:2: --task-column task: the row has no task name there")
