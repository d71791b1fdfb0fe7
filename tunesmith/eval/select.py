"""`tunesmith eval select`: which base model is worth fine-tuning? Score each candidate on the task with
K in-context examples, before any training, and rank them.

    tunesmith eval select --models HuggingFaceTB/SmolLM2-135M-Instruct,./other-model --data heldout.jsonl --few-shot 3

The K examples (drawn once with --seed) come from the data file and are not scored; every candidate
gets the same examples, the same scored rows and the same decoding. Each candidate uses its own chat
template (chatml when it has none). Ranked by accuracy for classification-like references, else chrF;
--rank-by names another metric (perplexity ranks lowest first); ties go to the lower perplexity.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
from pathlib import Path

from tunesmith.checks import check_output_folder, fetch_models
from tunesmith.data.templates import TemplateError
from tunesmith.errors import TunesmithError
from tunesmith.eval.classification import label_set
from tunesmith.eval.engines import Decoding, open_engine
from tunesmith.eval.evaluate import EvalData, evaluate_model, load_eval_data, plan_scoring
from tunesmith.eval.report import fmt, to_markdown

log = logging.getLogger(__name__)


def split_shots(n: int, k: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the K in-context examples and of the rows to score (the others, in file order)."""
    if not 0 <= k < n:
        raise TunesmithError(f"--few-shot {k}: the data has {n} rows; it must keep at least one row to score")
    shots = sorted(random.Random(seed).sample(range(n), k))
    return shots, [i for i in range(n) if i not in set(shots)]


def few_shot_data(data: EvalData, shots: list[int], scored: list[int]) -> EvalData:
    """The scored rows, each preceded by the shots' turns (system messages moved to the front)."""
    context = [m for i in shots for m in data.examples[i].messages if m["role"] != "system"]
    examples = []
    for i in scored:
        example = data.examples[i]
        system = [m for m in example.messages[:1] if m["role"] == "system"]
        turns = example.messages[len(system):]
        examples.append(type(example)(messages=system + context + turns, text=None, where=example.where))
    return EvalData(data.file, examples, [data.ids[i] for i in scored])


def run_select(
    models: list[str],
    data_file: str,
    few_shot: int = 3,
    metrics: list[str] | None = None,
    rank_by: str | None = None,
    decoding: Decoding | None = None,
    batch_size: int = 8,
    system: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    out: str | None = None,
) -> list[dict]:
    decoding = decoding or Decoding(max_new_tokens=64)
    if not models:
        raise TunesmithError("--models: give at least one model (comma-separated)")
    data = load_eval_data(data_file)
    if data.is_text:
        raise TunesmithError(f"{data_file}: text rows have no answers to show as examples; eval select needs conversations")
    shots, scored = split_shots(len(data.examples), few_shot, seed)
    task = few_shot_data(data, shots, scored[:limit] if limit else scored)
    # Labels come from every row: a few scored rows may not show them all.
    scoring = plan_scoring(task, metrics, label_set(data.references), None, None, "lenient", "response")
    folder = Path(out or Path("evals") / f"select-{Path(data_file).stem}")
    check_output_folder(folder, "--out")
    fetch_models([(spec, "--models") for spec in models])
    rows = []
    for number, spec in enumerate(models, 1):
        log.info("model %d/%d: %s, %d-shot on %d rows", number, len(models), spec, few_shot, len(task.examples))
        try:
            engine = open_engine(spec, template="model", decoding=decoding)
            template = "model"
        except TemplateError:
            engine = open_engine(spec, template="chatml", decoding=decoding)
            template = "chatml"
        result = evaluate_model(engine, task, scoring, decoding, batch_size, system)
        rows.append({"model": spec, "template": template, **result.metrics})
        del engine
        gc.collect()
    rank_by = rank_by or ("accuracy" if "accuracy" in scoring.metrics else "chrf" if "chrf" in scoring.metrics else scoring.metrics[0])
    if rank_by not in rows[0]:
        raise TunesmithError(f"--rank-by: {rank_by!r} was not computed; computed: {', '.join(k for k in rows[0] if k not in ('model', 'template'))}")
    # Ties (often all zero before fine-tuning) go to the model that finds the references more likely.
    direction = 1 if rank_by == "perplexity" else -1
    rows.sort(key=lambda r: (direction * r[rank_by], r.get("perplexity", math.inf)))
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"data": data_file, "few_shot": few_shot, "shot_ids": [data.ids[i] for i in shots], "n": len(task.examples),
               "rank_by": rank_by, "decoding": decoding.to_dict(), "ranking": rows}
    (folder / "select.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    keys = [k for k in rows[0] if k not in ("model", "template")]
    table = ("table", ["rank", "model", "template", *keys], [[str(i), r["model"], r["template"], *(fmt(k, r[k]) for k in keys)] for i, r in enumerate(rows, 1)])
    text = to_markdown([("p", f"{few_shot}-shot on {len(task.examples)} rows of {data_file}, ranked by {rank_by}"), table])
    (folder / "select.md").write_text(text, encoding="utf-8")
    print(text.rstrip())
    return rows
