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
    from tunesmith.eval.generate import generate, load_for_inference, require_conversation

    loaded = load_for_inference(args.target, template=args.template)
    conversation = require_conversation(args.prompt, args.system or loaded.system_prompt)
    print(generate(loaded, [conversation], max_new_tokens=args.max_new_tokens, progress=False)[0])


def cmd_score(args) -> None:
    from tunesmith.models.reward import score_file

    summary = score_file(args.run, args.data, args.output, args.batch_size)
    for key, value in summary.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if args.output:
        print(f"scores written to {args.output}")


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

    p = sub.add_parser("score", help="score preference pairs or prompt/reply rows with a reward model run")
    p.add_argument("run", help="run directory of a `method: reward` run")
    p.add_argument("--data", required=True, help="preference pairs (prompt, chosen, rejected) or conversations whose last reply is scored")
    p.add_argument("--output", help="write one JSON line of scores per row here")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_score)

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
