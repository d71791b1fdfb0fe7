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
    from tunesmith.methods import sft

    METHODS = {"sft": sft.train}
    METHODS[recipe.method](recipe, resume=args.resume)


def cmd_generate(args) -> None:
    from tunesmith.eval.generate import generate, load_for_inference, require_conversation

    loaded = load_for_inference(args.target, template=args.template)
    conversation = require_conversation(args.prompt, args.system or loaded.system_prompt)
    print(generate(loaded, [conversation], max_new_tokens=args.max_new_tokens, progress=False)[0])


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune, check and serve open LLMs.")
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a YAML recipe", description="Train from a YAML recipe. Overrides: key.path=value.")
    p.add_argument("recipe", nargs="?", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 peft.r=8")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--keys", action="store_true", help="list every recipe key with its default and meaning")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="answer a prompt with a run or a model, using its chat template")
    p.add_argument("target", help="run directory, model folder, hub id or .gguf file")
    p.add_argument("prompt", help="the user message")
    p.add_argument("--system", help="system message (default for a run: the data.system_prompt it was trained with)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--template", default="model", help="template for a plain model (a run uses its own)")
    p.set_defaults(func=cmd_generate)

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
    p.add_argument("--recipe", default="recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the recipe")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
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
