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

    p = sub.add_parser("quickstart", help="LoRA-tune SmolLM2-135M-Instruct on support tickets; accuracy before vs after")
    p.add_argument("--recipe", default="recipes/quickstart.yaml")
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
