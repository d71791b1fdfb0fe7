"""`tunesmith <command>`: one thin function per command.

Nothing heavy is imported at module level, so `tunesmith --help` answers at once; each command
imports what it needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from tunesmith import __version__
from tunesmith.curate import cli as data_cli  # `tunesmith data <verb>`: the group owns its parser and commands
from tunesmith.errors import Interrupted, RunFinished, TunesmithError
from tunesmith.plan import cli as plan_cli  # `tunesmith plan`: the package owns its parser and command


def cmd_train(args) -> None:
    from tunesmith.config import field_help, load_recipe

    if args.keys:
        for key, default, description in field_help():
            print(f"{key:34} {default:14} {description}")
        return
    if not args.recipe:
        raise TunesmithError("train: give a recipe, e.g. tunesmith train recipes/quickstart.yaml")
    if args.allow_changes and not args.resume:
        raise TunesmithError("train: --allow-changes goes with --resume (it lets a resumed run take changed settings)")
    recipe = load_recipe(args.recipe, args.overrides)
    if args.nproc is not None:  # checked once here, then again by every process torchrun starts
        from tunesmith import distributed
        from tunesmith.distributed import launch

        if args.nproc < 1:
            raise TunesmithError(f"train --nproc: {args.nproc} is not a number of processes (1 or more)")
        distributed.engine(recipe, processes=args.nproc)  # an engine or method the launch cannot run: said once

        flags = [flag for flag, on in (("--resume", args.resume), ("--allow-changes", args.allow_changes)) if on]
        if code := launch(args.nproc, [args.recipe, *args.overrides, *flags]):
            raise SystemExit(code)
        return
    import importlib
    import shlex

    # One module per method, each with train(recipe, resume, allow_changes=...); imported only once the recipe is valid.
    method = importlib.import_module(f"tunesmith.methods.{recipe.method}")
    try:
        method.train(recipe, resume=args.resume, allow_changes=args.allow_changes)
    except RunFinished as done:
        print(done, file=sys.stderr)
    except Interrupted as stop:
        from tunesmith import distributed

        nproc = os.environ.get(distributed.NPROC)  # a rank of train --nproc N: resumed the same way
        stop.command = shlex.join(["tunesmith", "train", args.recipe, *args.overrides, *(["--nproc", nproc] if nproc else [])])
        if stop.saved:
            distributed.interrupted_under_launch()
        raise


def cmd_generate(args) -> None:
    from tunesmith.checks import check_input, check_model, check_output_file
    from tunesmith.eval.engines import open_engine

    if (args.prompt is None) == (args.input is None):
        raise TunesmithError("generate: give a prompt, or --input prompts.jsonl --output out.jsonl (not both)")
    if args.input and not args.output:
        raise TunesmithError("generate --input: also give --output out.jsonl")
    decoding = decoding_from(args)
    check_model(args.target)
    check_input(args.input, "--input")
    check_output_file(args.output, "--output")
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
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="longest output, in tokens")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampling")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature")
    g.add_argument("--top-k", type=int, default=0, help="top-k sampling, with --temperature; 0: off")
    g.add_argument("--num-beams", type=int, default=1, help="beam search above 1")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="above 1 discourages repeats; 1: off")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size; 0: off")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="cut the output at this string (repeatable)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per generate batch")
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
        task_column=args.task_column,
        tool_parser=args.tool_parser,
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
    from tunesmith.checks import check_input, check_output_file
    from tunesmith.models.reward import reward_run, score_file

    reward_run(args.run)
    check_input(args.data, "--data")
    check_output_file(args.output, "--output")
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
        tool_parser=args.tool_parser,
    )


def cmd_chat(args) -> None:
    from tunesmith.chat import chat
    from tunesmith.checks import check_model

    check_model(args.target)
    chat(args.target, template=args.template, system=args.system, max_new_tokens=args.max_new_tokens,
         temperature=args.temperature, top_p=args.top_p)


def cmd_quickstart(args) -> None:
    from tunesmith.quickstart import run_quickstart

    run_quickstart(args.recipe, args.overrides)


def cmd_constitution(args) -> None:
    from tunesmith.checks import check_model
    from tunesmith.data.constitution import Decoding, run

    check_model(args.model, "--model")
    decoding = Decoding(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty, args.seed)
    run(args.model, args.prompts, args.principles, args.out, rounds=args.rounds, batch_size=args.batch_size, decoding=decoding,
        critique_template=args.critique_template, revision_template=args.revision_template, system=args.system, template=args.template,
        truncated=args.truncated)


class HelpFormatter(argparse.HelpFormatter):
    """Prose is wrapped, indented lines (example commands) are kept as written, and every option with a
    default shows it."""

    def _fill_text(self, text, width, indent):
        blocks, prose = [], []
        for line in text.splitlines() + [""]:
            if line.strip() and not line.startswith(" "):
                prose.append(line)
                continue
            if prose:
                blocks.append(super()._fill_text(" ".join(prose), width, indent))
                prose = []
            blocks.append(indent + line)
        return "\n".join(blocks).rstrip()

    def add_argument(self, action):
        super().add_argument(action)
        if action.nargs == argparse.PARSER:  # argparse measures command names one indent short of where it prints them
            self._action_max_length += self._indent_increment

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.option_strings or action.nargs in ("?", "*")
        unset = action.default is None or action.default is False or action.default == [] or action.default is argparse.SUPPRESS
        if shown and not unset and "default" not in text:
            text += " (default: %(default)s)"
        return text


# tunesmith.serve.tools.FAMILIES, named here so that `tunesmith --help` imports no parser (a test keeps them equal).
TOOL_PARSERS = ("hermes", "llama3", "mistral", "qwen")
TEMPLATE_HELP = "template for a plain model: model (its own), chatml, alpaca or a .jinja file; a run uses its own"
VERBOSE_HELP = "also show the libraries' warnings and logs (or set TUNESMITH_VERBOSE=1)"

# Accepted after the command too (`tunesmith train r.yaml --verbose`); SUPPRESS keeps the top-level value otherwise.
VERBOSE = argparse.ArgumentParser(add_help=False)
VERBOSE.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def command(sub, name: str, summary: str, example: str, details: str = "", **kwargs) -> argparse.ArgumentParser:
    """A subcommand: `summary` is its line in `tunesmith --help`; its own --help adds `details` and an example."""
    description = f"{summary[0].upper()}{summary[1:]}." + (f" {details}" if details else "")
    label = "examples" if "\n" in example else "example"
    return sub.add_parser(
        name, help=summary, description=description, epilog=f"{label}:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
        formatter_class=HelpFormatter, parents=[VERBOSE], **kwargs,
    )


def build_parser() -> argparse.ArgumentParser:
    from tunesmith.eval.metrics import EVAL_METRICS
    from tunesmith.experiments import commands as experiments

    parser = argparse.ArgumentParser(
        prog="tunesmith", description="Fine-tune, check and serve open LLMs.", formatter_class=HelpFormatter,
        epilog="start with:\n  tunesmith quickstart\nevery command has its own help: tunesmith COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    p = command(sub, "train", "train from a YAML recipe", "tunesmith train recipes/quickstart.yaml train.lr=5e-4 peft.r=8",
                "Every recipe key can be overridden as key.path=value; `--keys` lists them with their defaults.")
    p.add_argument("recipe", nargs="?", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 peft.r=8")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its newest complete checkpoint, with the same settings")
    p.add_argument("--allow-changes", action="store_true", help="with --resume: continue even though settings differ from the checkpoint's (they are listed)")
    p.add_argument("--keys", action="store_true", help="list every recipe key with its default and meaning")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train on N processes of this machine (one per GPU) through torchrun: DDP, or train.distributed's engine")
    p.set_defaults(func=cmd_train)

    p = command(sub, "generate", "answer a prompt or a JSONL file with a run or model",
                'tunesmith generate runs/quickstart "My parcel never arrived"\n'
                "tunesmith generate runs/quickstart --input prompts.jsonl --output out.jsonl",
                "A run answers with the chat template and system prompt it was trained with. With --input, every "
                "row (a 'prompt' string or a 'messages' list) is answered into --output.")
    p.add_argument("target", help="run directory, model folder, hub id or .gguf file")
    p.add_argument("prompt", nargs="?", help="the user message")
    p.add_argument("--input", help="JSONL file of prompts (batch mode)")
    p.add_argument("--output", help="JSONL file to write: each input row plus 'output'")
    p.add_argument("--system", help="system message (default for a run: the data.system_prompt it was trained with)")
    p.add_argument("--template", default="model", help=TEMPLATE_HELP)
    add_decoding_args(p, max_new_tokens=128)
    p.set_defaults(func=cmd_generate)

    p = command(sub, "eval", "score a run or model on held-out data, compare, report",
                "tunesmith eval runs/quickstart --data examples/data/support_tickets/heldout.jsonl --compare base --max-new-tokens 8",
                "Generates on --data with the model's own template, scores, compares with every --compare, and writes "
                "predictions.jsonl, metrics.json, report.md and report.html. Also: `tunesmith eval select` (rank base "
                "models few-shot) and `tunesmith eval import-sheet` (read a filled review sheet).")
    p.add_argument("target", help="run directory, model folder, hub id or .gguf file")
    p.add_argument("--data", required=True, help="eval file, in any training-data format (last assistant turn = reference)")
    p.add_argument("--metrics", help=f"comma list of {', '.join(EVAL_METRICS)} (default: all that apply)")
    p.add_argument("--compare", action="append", default=[], metavar="OTHER", help="'base' (the run's base model) or another run/model; repeatable")
    p.add_argument("--name", help="report name (default: the data file's name)")
    p.add_argument("--out", help="output folder (default: RUN/eval/NAME, or evals/NAME for a plain model)")
    p.add_argument("--template", default="model", help=TEMPLATE_HELP)
    p.add_argument("--system", help="system message for every row without one (default: the run's data.system_prompt)")
    p.add_argument("--labels", help="classification label set, comma-separated (default: detected from short references)")
    p.add_argument("--label-from", choices=["first_line", "regex", "closest"], help="how a label is read from an output (default: closest with a label set)")
    p.add_argument("--label-regex", help="regex whose first group (or match) is the label")
    p.add_argument("--match", default="lenient", choices=["lenient", "first_line", "strict"], help="exact-match normalisation")
    p.add_argument("--perplexity-scope", default="response", choices=["response", "text"], help="score the reference answer only, or every token")
    p.add_argument("--limit", type=int, help="only the first N rows (default: all)")
    p.add_argument("--human-sheet", metavar="CSV", help="also write a blinded review sheet (and its .key.json)")
    p.add_argument("--task-column", metavar="COLUMN", help="a mixture's eval rows: tag each prompt with the task in this column, "
                   "as training tagged it (the run's data.task_tag), and report metrics per task")
    p.add_argument("--tool-parser", choices=list(TOOL_PARSERS),
                   help="rows with tools: how replies write tool calls, read as `tunesmith serve --tool-parser` reads them "
                   "(default: the parser that reads back the calls each model's chat template writes)")
    add_decoding_args(p, max_new_tokens=256)
    p.set_defaults(func=cmd_eval)

    p = command(sub, "eval select", "rank base models few-shot, before fine-tuning",
                "tunesmith eval select --models HuggingFaceTB/SmolLM2-135M-Instruct,./other-model "
                "--data examples/data/support_tickets/heldout.jsonl --few-shot 3 --max-new-tokens 8",
                "Every candidate is checked first, then scored on the same rows with the same K in-context examples "
                "from the data (not scored) and its own chat template (chatml when it has none).")
    p.add_argument("--models", required=True, help="comma-separated models: run directories, folders, hub ids or .gguf files")
    p.add_argument("--data", required=True, help="task data, in any training-data format")
    p.add_argument("--few-shot", type=int, default=3, help="in-context examples taken from the data (not scored)")
    p.add_argument("--metrics", help=f"comma list of {', '.join(EVAL_METRICS)} (default: all that apply)")
    p.add_argument("--rank-by", help="metric to rank by (default: accuracy for labels, else chrf)")
    p.add_argument("--system", help="system message for every row without one")
    p.add_argument("--limit", type=int, help="score only the first N rows (default: all)")
    p.add_argument("--out", help="output folder (default: evals/select-DATA)")
    add_decoding_args(p, max_new_tokens=64)
    p.set_defaults(func=cmd_eval_select)

    p = command(sub, "eval import-sheet", "read back a filled review sheet: ratings, win rates",
                "tunesmith eval import-sheet review.csv",
                "Ratings are 1 (bad) to 5 (excellent); an empty cell is skipped and reported. Writes SHEET.results.json.")
    p.add_argument("sheet", help="the CSV written by --human-sheet, with ratings filled in")
    p.add_argument("--key", help="key file (default: SHEET.key.json next to it)")
    p.set_defaults(func=cmd_eval_import_sheet)

    p = command(sub, "runs", "list runs, compare their configs and metrics", "tunesmith runs list runs")
    runs = p.add_subparsers(dest="runs_command", required=True, metavar="COMMAND", title="commands")
    q = command(runs, "list", "one line per run in a folder", "tunesmith runs list runs")
    q.add_argument("folder", nargs="?", default="runs", help="a folder of runs, or one run")
    q.set_defaults(func=cmd_runs_list)
    q = command(runs, "compare", "differing config keys next to the metrics",
                "tunesmith runs compare runs/quickstart runs/dpo-tickets --out runs/compare",
                "Writes compare.md, compare.csv and one loss plot.")
    q.add_argument("runs", nargs="+", help="run directories")
    q.add_argument("--out", default="runs/compare", help="folder for compare.md, compare.csv and loss.png")
    q.set_defaults(func=cmd_runs_compare)

    p = command(sub, "score", "score replies with a reward model run",
                "tunesmith score runs/reward-tickets --data examples/data/ticket_preferences/heldout.jsonl",
                "Preference pairs give pairwise accuracy and the mean margin; other rows the score of their last reply.")
    p.add_argument("run", help="run directory of a `method: reward` run")
    p.add_argument("--data", required=True, help="preference pairs (prompt, chosen, rejected) or conversations whose last reply is scored")
    p.add_argument("--output", help="write one JSON line of scores per row here")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    p.set_defaults(func=cmd_score)

    p = command(sub, "merge", "merge a LoRA run into its base, checked by a gate",
                "tunesmith merge runs/quickstart --out merged/quickstart\n"
                "tunesmith merge runs/quickstart --adapter-only --out adapters/quickstart",
                "Writes a plain transformers folder with the run's template and stop tokens, then compares the merged "
                "model's logits with the adapter model's on the run's eval data and fails above the thresholds "
                "(nothing is left at --out then). --adapter-only exports the adapter instead.")
    p.add_argument("run", help="run directory with an adapter/")
    p.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="merge dtype (default: the run's model.dtype)")
    p.add_argument("--adapter-only", action="store_true", help="export the adapter with tokenizer and template instead of merging")
    p.add_argument("--prompts", help="gate sequences: a .txt file (one prompt per line) or a data file (default: the run's eval data)")
    p.add_argument("--gate-prompts", type=int, default=8, help="how many sequences the gate compares on")
    p.add_argument("--max-logit-diff", type=float, help="gate: largest allowed |logit difference| (default: 1e-2 in float32, 4.0 in bfloat16, 2.0 in float16)")
    p.add_argument("--max-kl", type=float, help="gate: largest allowed mean KL in nats/token (default: 1e-4 in float32, 2e-2 in bfloat16, 1e-2 in float16)")
    p.add_argument("--max-share", type=float, default=0.05, help="gate: largest allowed mean KL as a share of the adapter's own effect, KL(adapter||base)")
    p.add_argument("--force", action="store_true", help="keep the merged model even if it fails the gate")
    p.set_defaults(func=cmd_merge)

    p = command(sub, "push", "publish a run or merged model to the Hugging Face Hub",
                "tunesmith push merged/quickstart --repo you/support-classifier --dry-run --license apache-2.0",
                "Builds the folder exactly as it will be uploaded (weights, tokenizer with the run's template, model "
                "card), then uploads it. The token comes from HF_TOKEN or `hf auth login` and is never printed.")
    p.add_argument("target", help="run directory, or a folder written by tunesmith merge")
    p.add_argument("--repo", required=True, help="hub repo id, owner/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="build and list the folder, upload nothing")
    p.add_argument("--out", help="where to build the folder (default: a temporary folder)")
    p.add_argument("--license", help="license id for the card (default: the base model's, else 'other')")
    p.add_argument("--language", action="append", help="language code for the card, repeatable (default: the base model's)")
    p.add_argument("--dataset", action="append", help="hub dataset id for the card, repeatable")
    p.set_defaults(func=cmd_push)

    p = command(sub, "serve", "OpenAI-compatible server for runs and models",
                "tunesmith serve runs/quickstart --adapter other=runs/other --api-key change-me",
                "Serves /v1/chat/completions, /v1/completions, /v1/models, /health and /generate. Each model name "
                "(the base, the run, every --adapter) uses the chat template its run trained with.")
    p.add_argument("target", help="run directory, model folder (e.g. from tunesmith merge), hub id or .gguf file")
    p.add_argument("--adapter", action="append", metavar="NAME=RUN", help="serve another run's adapter on the same base, repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to accept other machines)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (default: $TUNESMITH_API_KEY, else none)")
    p.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto", help="auto: vLLM when installed with a GPU")
    p.add_argument("--template", default="model", help="template for a plain model (runs and merged folders bring their own)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: a run's model.dtype; for a model, bfloat16 where fast, else float32)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests decoded together")
    p.add_argument("--max-tokens", type=int, default=256, help="completion length when a request gives no max_tokens")
    p.add_argument("--graceful-timeout", type=int, default=30, help="seconds running requests get to finish on SIGTERM")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; fewer helps on a CPU shared with other work)")
    p.add_argument("--tool-parser", choices=list(TOOL_PARSERS),
                   help="how replies write tool calls (default: the parser that reads back the calls each model's chat template "
                   "writes; a template whose calls none reads needs this for tool_choice auto)")
    p.set_defaults(func=cmd_serve)

    p = command(sub, "chat", "chat in the terminal with a run or model", "tunesmith chat runs/quickstart",
                "A run chats with the template and system prompt it was trained with. In the chat: /reset forgets "
                "the conversation, /system TEXT sets the system message (/system alone: none), /exit (or Ctrl-D) "
                "ends. Replies go to stdout, everything else to stderr: tunesmith chat RUN < questions.txt > answers.txt")
    p.add_argument("target", help="run directory, model folder, hub id or .gguf file")
    p.add_argument("--system", help="system message (default for a run: the data.system_prompt it was trained with)")
    p.add_argument("--template", default="model", help=TEMPLATE_HELP)
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampling")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature")
    p.set_defaults(func=cmd_chat)

    p = command(sub, "quickstart", "LoRA-tune SmolLM2 on support tickets, before vs after", "tunesmith quickstart",
                "Trains recipes/quickstart.yaml (SmolLM2-135M-Instruct, 320 tickets in English and Korean), then "
                "prints held-out accuracy of the base model and of the tuned one.")
    p.add_argument("--recipe", default="recipes/quickstart.yaml", help="the recipe to train (here, or as shipped with tunesmith)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the recipe, e.g. train.epochs=1")
    p.set_defaults(func=cmd_quickstart)

    p = command(sub, "constitution", "self-critique data: answer, critique, revise",
                "tunesmith constitution --model HuggingFaceTB/SmolLM2-135M-Instruct --prompts examples/data/constitution/prompts.jsonl "
                "--principles examples/data/constitution/principles.yaml --out runs/constitution",
                "Answers each prompt, critiques the answer against every principle and revises it, up to --rounds "
                "rounds, stopping early for a prompt when every critique says NO_PROBLEM. Writes sft.jsonl, "
                "preference.jsonl, trace.jsonl and report.json into --out.")
    p.add_argument("--model", required=True, help="run directory, model folder, hub id or .gguf file")
    p.add_argument("--prompts", required=True, help='JSONL rows with "prompt" (string) or "messages", optional "id"')
    p.add_argument("--principles", required=True, help="YAML list of {name, critique, revision}")
    p.add_argument("--out", required=True, help="folder for the datasets, the trace and the report")
    p.add_argument("--rounds", type=int, default=2, help="most critique-and-revise rounds per prompt")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per generate batch")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, critique or revision")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampling")
    p.add_argument("--top-p", type=float, help="nucleus sampling, with --temperature (default: off)")
    p.add_argument("--top-k", type=int, help="top-k sampling, with --temperature (default: off)")
    p.add_argument("--repetition-penalty", type=float, help="above 1 discourages repeats (default: off)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed")
    p.add_argument("--truncated", choices=("drop", "keep"), default="drop",
                   help="rows whose answers used up --max-new-tokens (likely cut off): drop them, counted, or keep them")
    p.add_argument("--critique-template", help="Jinja file for the critique request (default: built in)")
    p.add_argument("--revision-template", help="Jinja file for the revision request (default: built in)")
    p.add_argument("--system", help="system message for answering (default for a run: its data.system_prompt)")
    p.add_argument("--template", default="model", help=TEMPLATE_HELP)
    p.set_defaults(func=cmd_constitution)

    experiments.add_parser(sub)
    data_cli.add_parser(sub)
    plan_cli.add_parser(sub)
    return parser


# `tunesmith eval select ...` and `tunesmith eval import-sheet ...` are the commands "eval select" and "eval import-sheet":
# one argument each to argparse, so that `eval TARGET` keeps its positional.
EVAL_SUBCOMMANDS = ("select", "import-sheet")

# Libraries whose Python warnings and logs below ERROR stay out of the user's view unless --verbose: they
# speak to library developers (deprecations, optional kernels), not to someone fine-tuning a model.
QUIET_LIBRARIES = ("transformers", "peft", "trl", "torch", "bitsandbytes", "accelerate", "datasets", "huggingface_hub",
                   "tokenizers", "safetensors", "vllm")
# These set their own log level from the environment when first imported, overriding a level set before.
LIBRARY_VERBOSITY = {"transformers": "TRANSFORMERS_VERBOSITY", "datasets": "DATASETS_VERBOSITY", "huggingface_hub": "HF_HUB_VERBOSITY"}


def configure_output(verbose: bool) -> None:
    """tunesmith's own messages always; the libraries' warnings and INFO logs only when verbose."""
    level = logging.INFO if verbose else logging.ERROR
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("tunesmith").setLevel(logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(level)
    for variable in LIBRARY_VERBOSITY.values():
        os.environ[variable] = logging.getLevelName(level).lower()
    if sys.warnoptions:  # python -W or PYTHONWARNINGS: the user's own filters decide
        return
    if verbose:
        warnings.simplefilter("default")
    else:
        warnings.filterwarnings("ignore", module=rf"({'|'.join(QUIET_LIBRARIES)})(\.|$)")


def with_eval_subcommand(argv: list[str]) -> list[str]:
    """[--verbose] eval select ... -> [--verbose] 'eval select' ..."""
    i = next((k for k, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    if argv[i : i + 1] == ["eval"] and argv[i + 1 : i + 2] and argv[i + 1] in EVAL_SUBCOMMANDS:
        return [*argv[:i], f"eval {argv[i + 1]}", *argv[i + 2 :]]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = data_cli.with_label_subcommand(with_eval_subcommand(list(sys.argv[1:] if argv is None else argv)))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train" and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra  # overrides after a flag: train r.yaml --resume train.lr=1e-4
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_output(args.verbose or os.environ.get("TUNESMITH_VERBOSE", "") not in ("", "0"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunesmith.data.formats import DataError

    try:
        args.func(args)
    except (TunesmithError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:  # Ctrl-C in training: where it stopped and how to go on
        print(f"\n{stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
