"""The quickstart: LoRA-tune SmolLM2-135M-Instruct to classify support tickets, and show held-out
exact-match accuracy of the base model and of the tuned one, with the same template and prompt.

    tunesmith quickstart            # recipes/quickstart.yaml; about 5-10 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from tunesmith.config import load_recipe
from tunesmith.data.load import load_examples
from tunesmith.eval.generate import generate, load_for_inference
from tunesmith.eval.metrics import exact_match, normalize, per_class_accuracy

console = Console()


def heldout_set(recipe) -> tuple[list[list[dict]], list[str]]:
    """Prompts (conversation without its answer) and reference answers of the recipe's eval file."""
    examples, _ = load_examples(
        recipe.data.eval[0], fmt=recipe.data.format, columns=recipe.data.columns, system_prompt=recipe.data.system_prompt
    )
    prompts = [e.messages[:-1] for e in examples]
    references = [e.messages[-1]["content"] for e in examples]
    return prompts, references


def score(name: str, target: str, prompts, references, template: str) -> dict:
    loaded = load_for_inference(target, template=template)
    predictions = generate(loaded, prompts, max_new_tokens=8, batch_size=16)
    norm = dict(first_line=True)
    return {
        "name": name,
        "accuracy": exact_match(predictions, references, **norm),
        "per_class": per_class_accuracy(predictions, references, **norm),
        "predictions": predictions,
    }


def run_quickstart(recipe_path: str, overrides: list[str]) -> dict:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    recipe = load_recipe(recipe_path, [f"name=quickstart-{stamp}", *overrides])
    prompts, references = heldout_set(recipe)

    console.rule("1/3 base model on held-out tickets")
    base = score("base", recipe.model.path, prompts, references, recipe.data.template)
    console.print(f"base exact match: {base['accuracy']:.1%}")

    console.rule("2/3 LoRA fine-tuning")
    from tunesmith.methods.sft import train

    run = train(recipe)

    console.rule("3/3 tuned model on held-out tickets")
    tuned = score("tuned", str(run.path), prompts, references, recipe.data.template)

    table = Table(title=f"Held-out exact match ({len(references)} tickets)")
    table.add_column("class")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    for label in tuned["per_class"]:
        table.add_row(label, f"{base['per_class'][label]:.0%}", f"{tuned['per_class'][label]:.0%}")
    table.add_row("[b]all[/b]", f"[b]{base['accuracy']:.1%}[/b]", f"[b]{tuned['accuracy']:.1%}[/b]")
    console.print(table)
    misses = [
        (p[-1]["content"], r, t)
        for p, r, t in zip(prompts, references, tuned["predictions"])
        if normalize(t, first_line=True) != normalize(r, first_line=True)
    ]
    for ticket, expected, got in misses[:5]:
        console.print(f"[dim]miss[/dim] expected {expected!r}, got {got.strip()!r}: {ticket[:90]}")
    result = {"heldout": len(references), "base": base, "tuned": tuned}
    (run.path / "quickstart.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    console.print(f"details: {run.path}/report.md, {run.path}/quickstart.json")
    return result
