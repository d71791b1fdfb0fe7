"""`tunesmith eval` end to end on a tiny LoRA run: files, metrics.json contract, comparison with the base."""

import json

import pytest

from tests.eval.conftest import SYSTEM, TICKETS, write_jsonl
from tunesmith.cli import main
from tunesmith.errors import TunesmithError
from tunesmith.eval.classification import classification_report, closest_label
from tunesmith.eval.engines import Decoding, open_base_of_run
from tunesmith.eval.evaluate import run_eval
from tunesmith.eval.generate import generate, load_for_inference
from tunesmith.eval.metrics import exact_match


def test_eval_run_with_compare_base_writes_reports_and_metrics(tiny_run, tickets_file, capsys, caplog):
    assert main(["eval", str(tiny_run), "--data", str(tickets_file), "--compare", "base", "--max-new-tokens", "4", "--batch-size", "6",
                 "--metrics", "exact_match,accuracy,bleu,chrf,rouge,perplexity",
                 "--human-sheet", str(tiny_run / "review.csv")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # Every phase of every model shows itself: a status line, then a bar for generating and one for perplexity.
    assert f"model 1/2: {tiny_run} (12 rows)" in caplog.text and "model 2/2: base (12 rows)" in caplog.text
    assert all(f"{phase} {name}: 100%" in captured.err for phase in ("generate", "perplexity") for name in ("tiny", "base"))
    assert out.startswith("| metric | tiny | base |")
    folder = tiny_run / "eval" / "tickets"
    summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert set(summary) == {"name", "target", "data", "n", "metrics", "compare", "details", "decoding"}
    assert (summary["name"], summary["n"], summary["data"]) == ("tickets", 12, str(tickets_file))
    assert set(summary["metrics"]) == {"exact_match", "accuracy", "macro_f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "perplexity"}
    assert all(isinstance(v, float) for v in summary["metrics"].values())
    assert set(summary["compare"]) == {"base"} and set(summary["compare"]["base"]) == set(summary["metrics"])
    assert summary["details"]["labels"] == ["billing", "refund", "shipping"]
    assert summary["details"]["models"]["tiny"]["bleu_tokenize"] == "13a"  # the references are English labels
    assert summary["decoding"]["max_new_tokens"] == 4 and summary["decoding"]["temperature"] == 0.0

    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [f"k{i}" for i in range(12)]
    assert rows[3]["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TICKETS[3][0]}]
    assert rows[3]["reference"] == "shipping" and set(rows[3]["outputs"]) == {"tiny", "base"}

    # The numbers are those of the saved outputs, and the outputs those of plain generation with the run's template.
    tuned = [r["outputs"]["tiny"] for r in rows]
    references = [r["reference"] for r in rows]
    assert summary["metrics"]["exact_match"] == exact_match(tuned, references)
    labels = ["billing", "refund", "shipping"]
    expected = classification_report([closest_label(o, labels) for o in tuned], references, labels)
    assert summary["details"]["models"]["tiny"]["classification"]["confusion"] == expected["confusion"]
    assert tuned == generate(load_for_inference(str(tiny_run)), [r["prompt"] for r in rows], max_new_tokens=4, progress=False)
    base = open_base_of_run(str(tiny_run)).loaded
    assert [r["outputs"]["base"] for r in rows] == generate(base, [r["prompt"] for r in rows], max_new_tokens=4, progress=False)

    report = (folder / "report.md").read_text(encoding="utf-8")
    for heading in ("## Metrics", "## Classification: tiny", "## Classification: base", "## Training loss", "## Sample outputs"):
        assert heading in report
    assert "Where the models differ" in report and f"{summary['details']['differences']} of 12 rows" in report
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3  # two confusion matrices and the loss curves
    assert "src=\"http" not in html and "href=" not in html  # nothing to fetch: opens offline
    assert "배송이 언제 오나요?" in html
    sheet = (tiny_run / "review.csv").read_bytes()
    assert sheet.startswith(b"\xef\xbb\xbf") and sheet.decode("utf-8-sig").count("\n") == 13


def test_default_metrics_follow_the_references(tickets_file, tmp_path):
    from tunesmith.eval.evaluate import load_eval_data, plan_scoring

    labels = plan_scoring(load_eval_data(str(tickets_file)), None, None, None, None, "lenient", "response")
    assert labels.metrics == ["exact_match", "accuracy", "perplexity"] and labels.label_from == "closest"
    free = write_jsonl(tmp_path / "free.jsonl", [{"question": f"q{i}", "answer": f"a long answer number {i}"} for i in range(4)])
    text = plan_scoring(load_eval_data(str(free)), None, None, None, None, "lenient", "response")
    assert text.metrics == ["exact_match", "bleu", "chrf", "rouge", "perplexity"] and text.labels is None


def test_eval_plain_model_text_rows_give_perplexity_only(stories_path, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "stories.jsonl", [{"text": "Once upon a time there was a cat."}, {"text": "Tom ran to the park."}])
    monkeypatch.chdir(tmp_path)
    summary = run_eval(str(stories_path), str(data), template="chatml")
    assert list(summary["metrics"]) == ["perplexity"] and 1 < summary["metrics"]["perplexity"] < 1000
    assert (tmp_path / "evals" / "stories" / "report.html").is_file()
    with pytest.raises(TunesmithError, match="only perplexity applies"):
        run_eval(str(stories_path), str(data), metrics=["bleu"], template="chatml")
    with pytest.raises(TunesmithError, match="--compare base: .* is not a run directory"):
        run_eval(str(stories_path), str(data), compare=["base"], template="chatml")


def test_eval_compares_two_plain_models_on_the_same_prompts(stories_path, tiny_llama, tickets_file, tmp_path):
    summary = run_eval(str(stories_path), str(tickets_file), metrics=["exact_match", "chrf"], compare=[str(stories_path)],
                       out=str(tmp_path / "e"), template="chatml", system=SYSTEM, decoding=Decoding(max_new_tokens=4), limit=4)
    # The same model twice: identical numbers, no differing rows, a de-duplicated name.
    name = str(stories_path)
    assert summary["compare"] == {f"{name}-2": summary["metrics"]}
    assert summary["details"]["differences"] == 0 and summary["n"] == 4
    with pytest.raises(TunesmithError, match="--metrics: unknown blue"):
        run_eval(str(stories_path), str(tickets_file), metrics=["blue"], template="chatml")
