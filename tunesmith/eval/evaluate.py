"""`tunesmith eval RUN_OR_MODEL --data FILE [--compare base ...]`: generate on held-out data with the
template the model was trained with, score, compare, and write a report.

    tunesmith eval runs/quickstart --data examples/data/support_tickets/heldout.jsonl --compare base

Eval data is read like training data (same files and formats): the last assistant turn of each row is
the reference and the messages before it the prompt; `text` rows are scored by perplexity only. Rows with
tools give the model their tools, and a reference reply that calls tools is scored by tool-call accuracy
(tunesmith.eval.tool_calls: the `tool_calls` metric, the default for such data), the calls read as `tunesmith
serve` reads them (the parser of the model's template, or --tool-parser). A run
brings its template and the system prompt it was trained with; `--compare base` is the run's base model
with that same template and system prompt. Every model sees the same rows and the same decoding.

Writes `<run>/eval/<name>/` (a plain model: `--out`, default `evals/<name>/`): predictions.jsonl,
metrics.json, report.md and report.html (one file, opens offline).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.formats import Example, with_system
from tunesmith.data.load import load_examples, read_rows
from tunesmith.data.tools import call_json
from tunesmith.errors import TunesmithError
from tunesmith.eval.classification import classification_report, extract_label, label_set
from tunesmith.eval.engines import Decoding
from tunesmith.eval.metrics import EVAL_METRICS, bleu, chrf, exact_match, normalize, perplexity, rouge
from tunesmith.eval.tool_calls import as_call, tool_call_scores, tool_family
from tunesmith.runs import RunDir, is_run_dir
from tunesmith.serve.tools import FAMILIES, Family

log = logging.getLogger(__name__)

# How exact match compares an output with its reference (keyword arguments of metrics.normalize).
MATCH_MODES = {
    "lenient": {},                                     # NFKC, lowercase, outer punctuation and extra spaces dropped
    "first_line": {"first_line": True},                # the same, on the first non-empty line of the output
    "strict": {"lower": False, "strip_punct": False},  # case and punctuation count
}


@dataclass
class EvalData:
    file: str
    examples: list[Example]
    ids: list[str]
    tasks: list[str] = field(default_factory=list)   # each row's task, with --task-column
    tag: Callable | None = None                       # (messages, task) -> the messages tagged as training tagged them

    @property
    def is_text(self) -> bool:
        return self.examples[0].text is not None

    @property
    def references(self) -> list[str]:
        """Each reference reply as text: its content, then each tool call it makes as {"name", "arguments"} JSON."""
        if self.is_text:
            return []
        return ["\n".join([e.messages[-1]["content"]] * bool(e.messages[-1]["content"]) + [call_json(c) for c in e.messages[-1].get("tool_calls", ())])
                for e in self.examples]

    @property
    def tools(self) -> list[list[dict] | None]:
        return [e.tools for e in self.examples]

    @property
    def expected_calls(self) -> list[list[dict] | None]:
        """Each reference reply's tool calls ({"name", "arguments"}), None where it answers in text."""
        return [[as_call(c["function"]) for c in e.messages[-1].get("tool_calls", ())] or None for e in self.examples]

    def prompts(self, system: str | None) -> list[list[dict]]:
        """Each conversation without its answer; `system` is added where a row has no system message, then the
        row's task tag (as training added data.system_prompt, then the tag)."""
        return [self.tagged(with_system(e.messages[:-1], system), i) for i, e in enumerate(self.examples)]

    def tagged(self, messages: list[dict], i: int) -> list[dict]:
        return self.tag(messages, self.tasks[i]) if self.tasks else messages


def load_eval_data(path: str, fmt: str = "auto", columns: dict | None = None, limit: int | None = None, task_column: str | None = None,
                   tag: Callable | None = None) -> EvalData:
    """With task_column, each row's task (that column) tags its prompt as a mixture source's task tagged it in
    training (`tag(messages, task)`), and metrics are also given per task."""
    examples, _ = load_examples(path, fmt=fmt, columns=columns)
    rows = {where: row for where, row in read_rows(path) if isinstance(row, dict)}
    # Row ids: the file's own "id" field where it has one, else the row's place in the file.
    ids = [str(rows[e.where]["id"]) if rows.get(e.where, {}).get("id") is not None else place(e.where) for e in examples]
    tasks = []
    if task_column:
        missing = next((e.where for e in examples if not isinstance(rows[e.where].get(task_column), str) or not rows[e.where][task_column]), None)
        if missing:
            raise TunesmithError(f"{missing}: --task-column {task_column}: the row has no task name there")
        tasks = [rows[e.where][task_column] for e in examples]
    if limit:
        examples, ids, tasks = examples[:limit], ids[:limit], tasks[:limit]
    return EvalData(path, examples, ids, tasks, tag)


def place(where: str) -> str:
    """'data.jsonl:12' -> '12', 'data.parquet:row 3' -> '3': the row's number in its file."""
    return where.rsplit(":", 1)[-1].replace("row ", "").replace("item ", "")


@dataclass
class Scoring:
    """What to compute, decided once for all models."""

    metrics: list[str]
    labels: list[str] | None = None
    label_from: str = "closest"
    label_regex: str | None = None
    match: str = "lenient"
    bleu_tokenize: str = "auto"
    perplexity_scope: str = "response"
    tool_parser: str | None = None   # how replies write tool calls (serve's --tool-parser); None: from each model's template


def plan_scoring(data: EvalData, metrics: list[str] | None, labels: list[str] | None, label_from: str | None,
                 label_regex: str | None, match: str, perplexity_scope: str, human_sheet: str | None = None,
                 tool_parser: str | None = None) -> Scoring:
    unknown = [m for m in metrics or [] if m not in EVAL_METRICS]
    if unknown:
        raise TunesmithError(f"--metrics: unknown {', '.join(unknown)}; known: {', '.join(EVAL_METRICS)}")
    if match not in MATCH_MODES:
        raise TunesmithError(f"--match: {match!r} is not one of {', '.join(MATCH_MODES)}")
    if "tool_calls" in (metrics or []) and (data.is_text or not any(data.tools)):
        raise TunesmithError(f"--metrics tool_calls: the rows of {data.file} have no tools (a `tools` list per row)")
    if tool_parser is not None and tool_parser not in FAMILIES:
        raise TunesmithError(f"--tool-parser: {tool_parser!r} is not one of {', '.join(FAMILIES)}")
    if tool_parser is not None and (data.is_text or not any(data.tools)):
        raise TunesmithError(f"--tool-parser {tool_parser}: the rows of {data.file} have no tools, so no reply is read for tool calls")
    if data.is_text:
        if human_sheet:
            raise TunesmithError(f"--human-sheet: {data.file} holds text rows, with no prompts to answer")
        if metrics and metrics != ["perplexity"]:
            raise TunesmithError(f"{data.file}: text rows have no reference answer; only perplexity applies (got --metrics {','.join(metrics)})")
        return Scoring(["perplexity"], perplexity_scope="text")
    calls = any(data.expected_calls)
    found = labels or (None if calls else label_set(data.references))
    if metrics is None and calls:
        metrics = ["tool_calls", "perplexity"]
    if metrics is None:
        # n-gram overlap says nothing about one-word labels (BLEU of a single word is 0 even when it is right).
        metrics = ["exact_match", "accuracy", "perplexity"] if found or label_regex else ["exact_match", "bleu", "chrf", "rouge", "perplexity"]
    if "accuracy" in metrics and not (found or label_regex or label_from == "first_line"):
        raise TunesmithError("--metrics accuracy: give --labels a,b,c or --label-regex, or use --label-from first_line")
    mode = label_from or ("regex" if label_regex else "closest" if found else "first_line")
    return Scoring(metrics, [normalize(label) for label in found] if found else None, mode, label_regex, match,
                   perplexity_scope=perplexity_scope, tool_parser=tool_parser)


def score_outputs(outputs: list[str], references: list[str], scoring: Scoring, calls: list | None = None,
                  family: Family | None = None, tools: list | None = None) -> tuple[dict, dict]:
    """Flat metric numbers and the details behind them (classification report, BLEU tokenizer). For the tool_calls
    metric: `calls`, each row's expected tool calls (EvalData.expected_calls); `family`, the parser of the
    model's replies (tool_family; default hermes); `tools`, each row's tools."""
    flat, details = {}, {}
    if "tool_calls" in scoring.metrics:
        flat.update(tool_call_scores(outputs, calls, family, tools))
    if "exact_match" in scoring.metrics:
        flat["exact_match"] = exact_match(outputs, references, **MATCH_MODES[scoring.match])
    if "accuracy" in scoring.metrics:
        predicted = [extract_label(o, scoring.label_from, scoring.labels, scoring.label_regex) for o in outputs]
        report = classification_report(predicted, [normalize(r) for r in references], scoring.labels)
        flat["accuracy"], flat["macro_f1"] = report["accuracy"], report["macro_f1"]
        details["classification"] = report
        details["predicted_labels"] = predicted
    if "bleu" in scoring.metrics:
        flat["bleu"], details["bleu_tokenize"] = bleu(outputs, references, scoring.bleu_tokenize)
    if "chrf" in scoring.metrics:
        flat["chrf"] = chrf(outputs, references)
    if "rouge" in scoring.metrics:
        flat.update(rouge(outputs, references))
    return flat, details


@dataclass
class ModelResult:
    name: str
    target: str
    outputs: list[str]
    metrics: dict
    details: dict = field(default_factory=dict)
    family: Family | None = None    # the tool-call parser its replies were decoded for and read with


def evaluate_model(engine, data: EvalData, scoring: Scoring, decoding: Decoding, batch_size: int, system: str | None) -> ModelResult:
    outputs, flat, details = [], {}, {"engine": engine.name_of_engine}
    system = system if system is not None else engine.system_prompt
    # Rows with tools: decoded and read for calls as the server would for this model (its template's family).
    family = tool_family(engine.template, engine.tokenizer, scoring.tool_parser) if not data.is_text and any(data.tools) else None
    if family is not None:
        details["tool_parser"] = family.name
    if not data.is_text and scoring.metrics != ["perplexity"]:
        completions = engine.complete(data.prompts(system), decoding, batch_size=batch_size, tools=data.tools, family=family)
        outputs = [c.text for c in completions]
        flat, more = score_outputs(outputs, data.references, scoring, data.expected_calls, family, data.tools)
        details.update(more, generated_tokens=sum(c.tokens for c in completions))
    if "perplexity" in scoring.metrics:
        if engine.name_of_engine != "transformers":
            details["perplexity"] = "not computed: needs the transformers engine (--engine transformers)"
        else:
            from tunesmith.eval.perplexity import nll_sums

            examples = data.examples if data.is_text else [
                Example(data.tagged(with_system(e.messages, system), i), None, e.where, tools=e.tools) for i, e in enumerate(data.examples)
            ]
            sums, counts = nll_sums(engine.loaded, examples, scope=scoring.perplexity_scope, batch_size=batch_size,
                                    progress=f"perplexity {engine.name}")
            flat["perplexity"] = perplexity(sums, counts)
            details["perplexity_tokens"] = sum(counts)
            details["perplexity_scope"] = scoring.perplexity_scope
    return ModelResult(engine.name, "", outputs, flat, details, family)


def check_targets(target: str, compare: list[str]) -> None:
    """Every model of the comparison is checked, and fetched when it comes from the hub, before the first loads."""
    from tunesmith.checks import fetch_models
    from tunesmith.models.load import resolve_source

    if "base" in compare and not is_run_dir(target):
        raise TunesmithError(f"--compare base: {target} is not a run directory, so it has no base model; name the model instead")
    fetch_models([(target, ""), *((spec, "--compare") for spec in compare if spec != "base")])
    if "base" in compare and not (Path(target) / "adapter").is_dir():  # an adapter run loads its base first anyway
        resolve_source(RunDir(Path(target)).recipe().model)


def open_target(spec: str, primary: str, template: str, engine: str, decoding: Decoding):
    """The engine for `spec`: 'base' is the primary run's base model; anything else a run or a model."""
    from tunesmith.eval.engines import open_base_of_run, open_engine

    if spec == "base":  # check_targets made sure `primary` is a run
        return open_base_of_run(primary), str(RunDir(Path(primary)).recipe().model.path)
    return open_engine(spec, template=template, engine=engine, decoding=decoding), spec


def output_dir(target: str, name: str, out: str | None) -> Path:
    if out:
        return Path(out)
    return Path(target) / "eval" / name if is_run_dir(target) else Path("evals") / name


def run_eval(
    target: str,
    data_file: str,
    metrics: list[str] | None = None,
    compare: list[str] = (),
    name: str | None = None,
    out: str | None = None,
    decoding: Decoding | None = None,
    batch_size: int = 8,
    engine: str = "auto",
    template: str = "model",
    system: str | None = None,
    labels: list[str] | None = None,
    label_from: str | None = None,
    label_regex: str | None = None,
    match: str = "lenient",
    perplexity_scope: str = "response",
    limit: int | None = None,
    human_sheet: str | None = None,
    task_column: str | None = None,
    tool_parser: str | None = None,
) -> dict:
    """Evaluate `target` (and each of `compare`) on `data_file`; returns what metrics.json holds."""
    from tunesmith.eval.preference import is_preference_file, run_preference_eval
    from tunesmith.eval.report import print_summary, write_report

    if is_preference_file(data_file):  # pairs: reward accuracy, not generation
        if compare or human_sheet:
            raise TunesmithError(f"{data_file}: preference pairs are scored by reward accuracy; --compare and --human-sheet need conversations")
        check_targets(target, [])
        return run_preference_eval(target, data_file, name, out, system, batch_size, limit)

    from tunesmith.checks import check_output_file, check_output_folder

    decoding = decoding or Decoding()
    data = load_eval_data(data_file, limit=limit, task_column=task_column, tag=task_tagger(target) if task_column else None)
    scoring = plan_scoring(data, metrics, labels, label_from, label_regex, match, perplexity_scope, human_sheet, tool_parser)
    name = name or Path(data_file.split("::")[0]).stem
    folder = output_dir(target, name, out)
    check_output_folder(folder, "--out")
    check_output_file(human_sheet, "--human-sheet")
    check_targets(target, list(compare))
    results: list[ModelResult] = []
    primary_system = system
    specs = [target, *compare]
    for number, spec in enumerate(specs, 1):
        log.info("model %d/%d: %s (%d rows)", number, len(specs), spec, len(data.examples))
        model, origin = open_target(spec, target, template, engine, decoding)
        if not results and primary_system is None:
            primary_system = model.system_prompt
        # A plain model compared with a run gets the run's system prompt: the same prompts for every model.
        own = system if system is not None else (model.system_prompt if model.system_prompt is not None else primary_system)
        result = evaluate_model(model, data, scoring, decoding, batch_size, own)
        result.target = origin
        result.name = unique_name(result.name if spec != "base" else "base", [r.name for r in results])
        results.append(result)
        del model
        gc.collect()
    differ = differing_rows(data, results, scoring) if len(results) > 1 else []
    summary = build_summary(name, data, results, scoring, decoding, differ)
    if data.tasks:
        summary["by_task"] = {task: {r.name: task_scores(task, data, r, scoring) for r in results} | {"n": data.tasks.count(task)}
                              for task in dict.fromkeys(data.tasks)}
    folder.mkdir(parents=True, exist_ok=True)
    write_predictions(folder / "predictions.jsonl", data, results, primary_system)
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    write_report(folder, summary, data, results, differ, run=target if is_run_dir(target) else None)
    if human_sheet:
        from tunesmith.eval.sheet import write_sheet

        write_sheet(human_sheet, data.ids, [prompt_text(p) for p in data.prompts(None)] if not data.is_text else [],
                    data.references, {r.name: r.outputs for r in results})
    print_summary(summary, data, results, differ, folder, human_sheet)
    for task, per in summary.get("by_task", {}).items():
        numbers = "; ".join(f"{model}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) for model, metrics in per.items() if model != "n")
        print(f"task {task} ({per['n']} rows): {numbers}")
    return summary


def task_scores(task: str, data: EvalData, result: ModelResult, scoring: Scoring) -> dict:
    """A model's metrics on the rows of one task."""
    def rows(column: list) -> list:
        return [v for v, t in zip(column, data.tasks) if t == task]

    return score_outputs(rows(result.outputs), rows(data.references), scoring, rows(data.expected_calls), result.family, rows(data.tools))[0]


def task_tagger(target: str) -> Callable:
    """How the run's training tagged a task (its data.task_tag and data.task_template); for a plain model, the defaults."""
    from tunesmith.config import DataConfig
    from tunesmith.data.mixture import tag_messages, tag_text

    if is_run_dir(target):
        cfg = RunDir(Path(target)).recipe().data
        template, mode = cfg.task_template, cfg.task_tag
    else:
        template, mode = DataConfig.model_fields["task_template"].default, DataConfig.model_fields["task_tag"].default
    return lambda messages, task: tag_messages(messages, tag_text(template, task), mode)


def unique_name(name: str, taken: list[str]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}-{k}", k + 1
    return candidate


def build_summary(name: str, data: EvalData, results: list[ModelResult], scoring: Scoring, decoding: Decoding, differ: list[int]) -> dict:
    """The metrics.json contract: flat numbers for the target, per-model numbers under compare, the rest in details."""
    first, others = results[0], results[1:]
    return {
        "name": name,
        "target": first.target,
        "data": data.file,
        "n": len(data.examples),
        "metrics": first.metrics,
        "compare": {r.name: r.metrics for r in others},
        "details": {
            "models": {r.name: {"target": r.target, **{k: v for k, v in r.details.items() if k != "predicted_labels"}} for r in results},
            "target_name": first.name,
            "metrics_requested": scoring.metrics,
            "labels": scoring.labels,
            "label_from": scoring.label_from if "accuracy" in scoring.metrics else None,
            "match": scoring.match,
            "differences": len(differ),
        },
        "decoding": decoding.to_dict(),
    }


def comparable(output: str, scoring: Scoring) -> str:
    """What counts as 'the same answer': the extracted label for classification, else the normalised text."""
    if "accuracy" in scoring.metrics:
        return extract_label(output, scoring.label_from, scoring.labels, scoring.label_regex)
    return normalize(output, **MATCH_MODES[scoring.match])


def differing_rows(data: EvalData, results: list[ModelResult], scoring: Scoring) -> list[int]:
    """Rows where the models' answers differ (by `comparable`)."""
    if data.is_text or not results[0].outputs:
        return []
    return [i for i in range(len(data.examples)) if len({comparable(r.outputs[i], scoring) for r in results}) > 1]


def prompt_text(messages: list[dict]) -> str:
    """A conversation as a reviewer reads it: the user message alone, or every turn prefixed by its role."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def write_predictions(path: Path, data: EvalData, results: list[ModelResult], system: str | None) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, example in enumerate(data.examples):
            row = {"id": data.ids[i]}
            if data.is_text:
                row["text"] = example.text
            else:
                row.update(prompt=data.tagged(with_system(example.messages[:-1], system), i), reference=data.references[i])
                row["outputs"] = {r.name: r.outputs[i] for r in results}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
