"""`tunesmith data check RECIPE.yaml`: the training preflight on its own, in seconds.

The same steps `tunesmith train` takes before its model loads (tunesmith.methods.steps: the tokenizer and
template, the adapter targets on the model's skeleton, tunesmith.data.prepare on every example), and the same
report, so the numbers are those training will print. No weights are read, no run directory is made.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunesmith.config import load_recipe
from tunesmith.errors import TunesmithError


def check(recipe_path: str, overrides: list[str], out: str | None = None) -> dict:
    """Print the preflight report; with `out`, also write it as JSON (and the Markdown next to it, .md)."""
    from tunesmith.data.preflight import render_markdown
    from tunesmith.data.prepare import prepare_data
    from tunesmith.methods.common import check_optimizer
    from tunesmith.methods.steps import check_positions, load_tokenizer_and_template, plan_batches_into
    from tunesmith.models.peft import check_adapters, check_prompt_init

    recipe = load_recipe(recipe_path, overrides)
    if out is not None:
        from tunesmith.checks import check_output_file

        check_output_file(out, "--out")
        if Path(out).suffix != ".json":
            raise TunesmithError(f"--out {out}: the report is JSON; give a .json file (the Markdown goes next to it)")
    check_optimizer(recipe)
    source, tokenizer, template = load_tokenizer_and_template(recipe)
    head = "reward" if recipe.method == "reward" else "causal_lm"
    check_adapters(source.path, recipe.peft, recipe.method, recipe.model.trust_remote_code)
    check_prompt_init(recipe.peft, tokenizer)
    train_rows, eval_rows, report = prepare_data(recipe.data, tokenizer, template, recipe.train.seed, method=recipe.method)
    if recipe.method in ("sft", "dpo", "reward"):  # the methods that plan their batches
        import importlib

        plan_batches_into(report, recipe, train_rows, importlib.import_module(f"tunesmith.methods.{recipe.method}").plan)
    text = render_markdown(report)
    print(text)
    check_positions(recipe, source.path, head, [*train_rows, *eval_rows])
    if out is not None:
        Path(out).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        Path(out).with_suffix(".md").write_text(text, encoding="utf-8")
    print(f"data check passed: {report.train.kept} train / {report.eval.kept} eval examples ready for {recipe.method}", file=sys.stderr)
    return report.to_dict()
