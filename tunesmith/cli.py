"""`tunesmith <command>`: one thin function per command.

Nothing heavy is imported at module level, so `tunesmith --help` answers at once; each command
imports what it needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tunesmith import __version__
from tunesmith.errors import TunesmithError


def cmd_train(args) -> None:
    from tunesmith.config import field_help, load_recipe

    if args.keys:
        for key, default, description in field_help():
            print(f"{key:34} {default:14} {description}")
        return
    if not args.recipe:
        raise TunesmithError("train: give a recipe, e.g. tunesmith train recipes/quickstart.yaml")
    recipe = load_recipe(args.recipe, args.overrides)
    import importlib

    # One module per method, each with train(recipe, resume); imported only once the recipe is valid.
    method = importlib.import_module(f"tunesmith.methods.{recipe.method}")
    method.train(recipe, resume=args.resume)


def cmd_generate(args) -> None:
    from tunesmith.eval.engines import open_engine

    if (args.prompt is None) == (args.input is None):
        raise TunesmithError("generate: give a prompt, or --input prompts.jsonl --output out.jsonl (not both)")
    if args.input and not args.output:
        raise TunesmithError("generate --input: also give --output out.jsonl")
    decoding = decoding_from(args)
    engine = open_engine(args.target, template=args.template, engine=args.engine, decoding=decoding)
    if args.input:
        from tunesmith.eval.batch import generate_file

        n = generate_file(engine, args.input, args.output, decoding, args.batch_size, args.system)
        print(f"{n} outputs written to {args.output}", file=sys.stderr)
        return
    from tunesmith.eval.generate import require_conversation

    conversation = require_conversation(args.prompt, args.system or engine.system_prompt)
    print(engine.complete([conversation], decoding, progress=False)[0].text)


def add_decoding_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """Decoding flags shared by generate, eval and eval select (greedy unless --temperature > 0)."""
    g = p.add_argument_group("decoding (greedy by default)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampling")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0: off")
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, help="0: off")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="cut the output at this string (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--engine", default="auto", choices=["auto", "transformers", "vllm"], help="auto: vLLM when installed on a GPU")


def decoding_from(args):
    from tunesmith.eval.engines import Decoding

    return Decoding(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        # A shell passes --stop '\n' as backslash-n: read \n and \t as the characters.
        stop=[s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop],
        seed=args.seed,
    )


def cmd_eval(args) -> None:
    from tunesmith.eval.evaluate import run_eval

    run_eval(
        args.target,
        args.data,
        metrics=split_list(args.metrics),
        compare=args.compare,
        name=args.name,
        out=args.out,
        decoding=decoding_from(args),
        batch_size=args.batch_size,
        engine=args.engine,
        template=args.template,
        system=args.system,
        labels=split_list(args.labels),
        label_from=args.label_from,
        label_regex=args.label_regex,
        match=args.match,
        perplexity_scope=args.perplexity_scope,
        limit=args.limit,
        human_sheet=args.human_sheet,
    )


def cmd_eval_select(args) -> None:
    from tunesmith.eval.select import run_select

    run_select(
        split_list(args.models) or [],
        args.data,
        few_shot=args.few_shot,
        metrics=split_list(args.metrics),
        rank_by=args.rank_by,
        decoding=decoding_from(args),
        batch_size=args.batch_size,
        system=args.system,
        seed=args.seed,
        limit=args.limit,
        out=args.out,
    )


def cmd_eval_import_sheet(args) -> None:
    from tunesmith.eval.sheet import import_sheet

    import_sheet(args.sheet, args.key)


def cmd_runs_list(args) -> None:
    from tunesmith.eval.experiments import list_runs

    list_runs(args.folder)


def cmd_runs_compare(args) -> None:
    from tunesmith.eval.experiments import compare_runs

    compare_runs(args.runs, args.out)


def split_list(value: str | None) -> list[str] | None:
    return [item.strip() for item in value.split(",") if item.strip()] if value else None


def cmd_score(args) -> None:
    from tunesmith.models.reward import score_file

    summary = score_file(args.run, args.data, args.output, args.batch_size)
    for key, value in summary.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if args.output:
        print(f"scores written to {args.output}")


def cmd_merge(args) -> None:
    from tunesmith.models.merge import export_adapter, merge_run

    if args.adapter_only:
        out = export_adapter(args.run, args.out)
        print(f"adapter with tokenizer and template written to {out} (load with peft.PeftModel.from_pretrained)")
        return
    result = merge_run(
        args.run, args.out, dtype=args.dtype, prompts=args.prompts, n_prompts=args.gate_prompts,
        max_logit_diff=args.max_logit_diff, max_kl=args.max_kl, max_share=args.max_share, force=args.force,
    )
    f = result.fidelity
    verdict = "passed" if result.passed else "FAILED (kept because of --force): " + "; ".join(result.problems)
    print(
        f"fidelity gate {verdict}\n  {f.sequences} sequences, {f.tokens} tokens from {result.prompts_from}, dtype {result.dtype}: "
        f"max |logit diff| {f.max_abs_logit_diff:.3g} (allowed {result.max_logit_diff:g}), "
        f"mean KL {f.mean_kl:.3g} nats/token (allowed {result.max_kl:g}; "
        f"{f.share:.2%} of the adapter's own effect, KL adapter||base {f.adapter_kl:.3g}, allowed {result.max_share:.0%})"
    )
    print(f"merged model written to {result.out}")


def cmd_push(args) -> None:
    from tunesmith.publish.push import push

    plan = push(
        args.target, args.repo, private=args.private, dry_run=args.dry_run, out=args.out,
        license=args.license, language=args.language, datasets=args.dataset,
    )
    visibility = "private" if plan.private else "public"
    print(f"{'would upload' if args.dry_run else 'uploaded'} to {plan.repo} ({visibility} model repo), from {plan.folder}:")
    for path, size in plan.files:
        print(f"  {path:40} {size:>14,} bytes")
    for note in plan.notes:
        print(f"note: {note}")
    if args.dry_run:
        print("dry run: nothing uploaded")
    else:
        print(f"https://huggingface.co/{plan.repo}")


def cmd_serve(args) -> None:
    from tunesmith.serve.server import serve

    serve(
        args.target, host=args.host, port=args.port, graceful_timeout=args.graceful_timeout,
        adapters=args.adapter or [], engine=args.engine, api_key=args.api_key or os.environ.get("TUNESMITH_API_KEY"),
        template=args.template, dtype=args.dtype, max_batch=args.max_batch, max_tokens=args.max_tokens, threads=args.threads,
    )


def cmd_chat(args) -> None:
    from tunesmith.chat import chat

    chat(args.target, template=args.template, system=args.system, max_new_tokens=args.max_new_tokens,
         temperature=args.temperature, top_p=args.top_p)


def cmd_quickstart(args) -> None:
    from tunesmith.quickstart import run_quickstart

    run_quickstart(args.recipe, args.overrides)


def cmd_constitution(args) -> None:
    from tunesmith.data.constitution import Decoding, run

    decoding = Decoding(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty, args.seed)
    run(args.model, args.prompts, args.principles, args.out, rounds=args.rounds, batch_size=args.batch_size, decoding=decoding,
        critique_template=args.critique_template, revision_template=args.revision_template, system=args.system, template=args.template,
        truncated=args.truncated)


def build_parser() -> argparse.ArgumentParser:
    from tunesmith.eval.metrics import EVAL_METRICS

    parser = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune, check and serve open LLMs.")
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a YAML recipe", description="Train from a YAML recipe. Overrides: key.path=value.")
    p.add_argument("recipe", nargs="?", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 peft.r=8")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--keys", action="store_true", help="list every recipe key with its default and meaning")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "generate",
        help="answer a prompt (or a JSONL file of prompts) with a run or a model, using its chat template",
        description="Answer one prompt, or every row of --input (a 'prompt' string or 'messages' list per row) into --output.",
    )
    p.add_argument("target", help="run directory, model folder, hub id or .gguf file")
    p.add_argument("prompt", nargs="?", help="the user message")
    p.add_argument("--input", help="JSONL file of prompts (batch mode)")
    p.add_argument("--output", help="JSONL file to write: each input row plus 'output'")
    p.add_argument("--system", help="system message (default for a run: the data.system_prompt it was trained with)")
    p.add_argument("--template", default="model", help="template for a plain model (a run uses its own)")
    add_decoding_args(p, max_new_tokens=128)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "eval",
        help="evaluate a run or model on held-out data; compare, report, review sheets (also: eval select, eval import-sheet)",
        description="Generate on --data with the model's own template, score, compare with --compare, and write "
        "predictions.jsonl, metrics.json, report.md and report.html. Also: `tunesmith eval select` (rank base models "
        "few-shot) and `tunesmith eval import-sheet` (read a filled review sheet).",
    )
    p.add_argument("target", help="run directory, model folder, hub id or .gguf file")
    p.add_argument("--data", required=True, help="eval file, in any training-data format (last assistant turn = reference)")
    p.add_argument("--metrics", help=f"comma list of {', '.join(EVAL_METRICS)} (default: all that apply)")
    p.add_argument("--compare", action="append", default=[], metavar="OTHER", help="'base' (the run's base model) or another run/model; repeatable")
    p.add_argument("--name", help="report name (default: the data file's name)")
    p.add_argument("--out", help="output folder (default: RUN/eval/NAME, or evals/NAME for a plain model)")
    p.add_argument("--template", default="model", help="template for a plain model (a run uses its own)")
    p.add_argument("--system", help="system message for every row without one (default: the run's data.system_prompt)")
    p.add_argument("--labels", help="classification label set, comma-separated (default: detected from short references)")
    p.add_argument("--label-from", choices=["first_line", "regex", "closest"], help="how a label is read from an output (default: closest with a label set)")
    p.add_argument("--label-regex", help="regex whose first group (or match) is the label")
    p.add_argument("--match", default="lenient", choices=["lenient", "first_line", "strict"], help="exact-match normalisation")
    p.add_argument("--perplexity-scope", default="response", choices=["response", "text"], help="score the reference answer only, or every token")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--human-sheet", metavar="CSV", help="also write a blinded review sheet (and its .key.json)")
    add_decoding_args(p, max_new_tokens=256)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("eval-select", help="rank candidate base models few-shot on the task, before fine-tuning (tunesmith eval select)")
    p.add_argument("--models", required=True, help="comma-separated models: folders, hub ids or .gguf files")
    p.add_argument("--data", required=True, help="task data, in any training-data format")
    p.add_argument("--few-shot", type=int, default=3, help="in-context examples taken from the data (not scored)")
    p.add_argument("--metrics", help=f"comma list of {', '.join(EVAL_METRICS)} (default: all that apply)")
    p.add_argument("--rank-by", help="metric to rank by (default: accuracy for labels, else chrf)")
    p.add_argument("--system", help="system message for every row without one")
    p.add_argument("--limit", type=int, help="score only the first N rows")
    p.add_argument("--out", help="output folder (default: evals/select-DATA)")
    add_decoding_args(p, max_new_tokens=64)
    p.set_defaults(func=cmd_eval_select)

    p = sub.add_parser("eval-import-sheet", help="read a filled review sheet: mean rating per model, win rates (tunesmith eval import-sheet)")
    p.add_argument("sheet", help="the CSV written by --human-sheet, with ratings filled in")
    p.add_argument("--key", help="key file (default: SHEET.key.json next to it)")
    p.set_defaults(func=cmd_eval_import_sheet)

    p = sub.add_parser("runs", help="the experiment table: list runs, compare their configs and metrics")
    runs = p.add_subparsers(dest="runs_command", required=True)
    q = runs.add_parser("list", help="one line per run in a folder")
    q.add_argument("folder", nargs="?", default="runs")
    q.set_defaults(func=cmd_runs_list)
    q = runs.add_parser("compare", help="what differs in the configs, next to the metrics; Markdown, CSV and one loss plot")
    q.add_argument("runs", nargs="+", help="run directories")
    q.add_argument("--out", default="runs/compare", help="folder for compare.md, compare.csv and loss.png")
    q.set_defaults(func=cmd_runs_compare)

    p = sub.add_parser("score", help="score preference pairs or prompt/reply rows with a reward model run")
    p.add_argument("run", help="run directory of a `method: reward` run")
    p.add_argument("--data", required=True, help="preference pairs (prompt, chosen, rejected) or conversations whose last reply is scored")
    p.add_argument("--output", help="write one JSON line of scores per row here")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "merge",
        help="merge a run's LoRA adapter into its base, checked by a fidelity gate (or export the adapter alone)",
        description="Merge a LoRA/QLoRA run into a plain transformers folder with the run's template, then compare "
        "merged and adapter logits on the run's eval data and fail above the thresholds.",
    )
    p.add_argument("run", help="run directory with an adapter/")
    p.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="merge dtype (default: the run's model.dtype)")
    p.add_argument("--adapter-only", action="store_true", help="export the adapter with tokenizer and template instead of merging")
    p.add_argument("--prompts", help="gate sequences: a .txt file (one prompt per line) or a data file (default: the run's eval data)")
    p.add_argument("--gate-prompts", type=int, default=8, help="how many sequences the gate compares on")
    p.add_argument("--max-logit-diff", type=float, help="gate: largest allowed |logit difference| (default depends on dtype)")
    p.add_argument("--max-kl", type=float, help="gate: largest allowed mean KL in nats/token (default depends on dtype)")
    p.add_argument("--max-share", type=float, default=0.05, help="gate: largest allowed mean KL as a share of the adapter's own effect, KL(adapter||base)")
    p.add_argument("--force", action="store_true", help="keep the merged model even if it fails the gate")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "push",
        help="publish a run, merged model or adapter to the Hugging Face Hub with a model card",
        description="Build the folder exactly as it will be uploaded (weights, tokenizer with the run's template, "
        "model card), then upload it. The token comes from HF_TOKEN or `hf auth login` and is never printed.",
    )
    p.add_argument("target", help="run directory, or a folder written by tunesmith merge")
    p.add_argument("--repo", required=True, help="hub repo id, owner/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="build and list the folder, upload nothing")
    p.add_argument("--out", help="where to build the folder (default: a temporary folder)")
    p.add_argument("--license", help="license id for the card (default: the base model's, else 'other')")
    p.add_argument("--language", action="append", help="language code for the card, repeatable (default: the base model's)")
    p.add_argument("--dataset", action="append", help="hub dataset id for the card, repeatable")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible server for a run or model, with several LoRA adapters on one base",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health and /generate. Each model "
        "name (the base, the run, every --adapter) uses the chat template its run trained with.",
    )
    p.add_argument("target", help="run directory, model folder (e.g. from tunesmith merge), hub id or .gguf file")
    p.add_argument("--adapter", action="append", metavar="NAME=RUN", help="serve another run's adapter on the same base, repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to accept other machines)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (default: $TUNESMITH_API_KEY, else none)")
    p.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto", help="auto: vLLM when installed with a GPU")
    p.add_argument("--template", default="model", help="template for a plain model (runs and merged folders bring their own)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype for a plain model")
    p.add_argument("--max-batch", type=int, default=16, help="most requests decoded together")
    p.add_argument("--max-tokens", type=int, default=256, help="completion length when a request gives no max_tokens")
    p.add_argument("--graceful-timeout", type=int, default=30, help="seconds running requests get to finish on SIGTERM")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; fewer helps on a CPU shared with other work)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("chat", help="multi-turn chat in the terminal with a run or a model, using its chat template")
    p.add_argument("target", help="run directory, model folder, hub id or .gguf file")
    p.add_argument("--system", help="system message (default for a run: the data.system_prompt it was trained with)")
    p.add_argument("--template", default="model", help="template for a plain model (a run uses its own)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("quickstart", help="LoRA-tune SmolLM2-135M-Instruct on support tickets; accuracy before vs after")
    p.add_argument("--recipe", default="recipes/quickstart.yaml", help="recipe to run (default: recipes/quickstart.yaml, here or as shipped with tunesmith)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the recipe")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "constitution",
        help="self-critique data: answer, critique against principles, revise; writes SFT and preference sets",
        description="Answer each prompt, critique the answer against every principle, revise; up to --rounds rounds, "
        "stopping early for a prompt when every critique says NO_PROBLEM. Writes sft.jsonl, preference.jsonl, "
        "trace.jsonl and report.json into --out.",
    )
    p.add_argument("--model", required=True, help="run directory, model folder, hub id or .gguf file")
    p.add_argument("--prompts", required=True, help='JSONL rows with "prompt" (string) or "messages", optional "id"')
    p.add_argument("--principles", required=True, help="YAML list of {name, critique, revision}")
    p.add_argument("--out", required=True, help="folder for the datasets, the trace and the report")
    p.add_argument("--rounds", type=int, default=2, help="most critique-and-revise rounds per prompt (default 2)")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per generate batch (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, critique or revision (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above 0: sampling")
    p.add_argument("--top-p", type=float, help="nucleus sampling (with --temperature)")
    p.add_argument("--top-k", type=int, help="top-k sampling (with --temperature)")
    p.add_argument("--repetition-penalty", type=float, help="above 1 discourages repeats")
    p.add_argument("--seed", type=int, default=42, help="sampling seed")
    p.add_argument("--truncated", choices=("drop", "keep"), default="drop",
                   help="rows whose answers used up --max-new-tokens (likely cut off): drop them, counted (default), or keep them")
    p.add_argument("--critique-template", help="Jinja file for the critique request (default: built in)")
    p.add_argument("--revision-template", help="Jinja file for the revision request (default: built in)")
    p.add_argument("--system", help="system message for answering (default for a run: its data.system_prompt)")
    p.add_argument("--template", default="model", help="template for a plain model (a run uses its own)")
    p.set_defaults(func=cmd_constitution)
    return parser


# `tunesmith eval select ...` and `tunesmith eval import-sheet ...` are the commands eval-select and eval-import-sheet.
EVAL_SUBCOMMANDS = ("select", "import-sheet")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"] and argv[1:2] and argv[1] in EVAL_SUBCOMMANDS:
        argv = [f"eval-{argv[1]}", *argv[2:]]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunesmith.data.formats import DataError

    try:
        args.func(args)
    except (TunesmithError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
