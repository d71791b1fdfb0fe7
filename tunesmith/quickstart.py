"""The quickstart: LoRA-tune SmolLM2-135M-Instruct to classify support tickets, and show held-out
exact-match accuracy of the base model and of the tuned one, with the same template and prompt.

    tunesmith quickstart            # recipes/quickstart.yaml; about 5-10 minutes on 2 CPU cores

Each quickstart is a new run, runs/quickstart-<time>/, and runs/quickstart links to the newest one: running it
again keeps the earlier results, and the follow-up commands (generate, eval, merge, serve runs/quickstart,
served as model "quickstart") always reach the latest. The recipe and its data come from the folder it runs
in, or from what tunesmith ships when they are not there (tunesmith.shipped).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunesmith.config import Recipe, check_paths, load_recipe
from tunesmith.data.prepare import DataReport, read_split
from tunesmith.eval.generate import generate, load_for_inference
from tunesmith.eval.metrics import exact_match, normalize, per_class_accuracy
from tunesmith.shipped import locate

console = Console()


def heldout_set(recipe) -> tuple[list[list[dict]], list[str]]:
    """Prompts (conversation without its answer) and reference answers of the recipe's eval file."""
    # As training reads it: the entry's format and columns, the system prompt, a mixture source's task tag.
    examples = read_split(recipe.data.eval[:1], recipe.data, DataReport())
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


def quickstart_recipe(recipe_path: str, overrides: list[str]) -> tuple[Recipe, Path | None]:
    """The recipe with its files found (here, or shipped), named <name>-<time>; and the link to point at it
    (runs/<name>), unless the overrides chose the run directory themselves."""
    recipe = load_recipe(locate(recipe_path), overrides, check_files=False)
    for split in ("train", "eval"):  # a mixture source keeps its settings, its path found like a plain entry's
        setattr(recipe.data, split, [locate(e) if isinstance(e, str) else e.model_copy(update={"path": locate(e.path)}) for e in getattr(recipe.data, split)])
    check_paths(recipe)
    if recipe.output_dir is not None:
        return recipe, None
    link = recipe.run_dir
    recipe.name = f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return recipe, link


def point_link(link: Path, run: Path) -> str:
    """Point `link` at `run` (its sibling) in one step; a real folder of that name is left alone."""
    if link.exists() and not link.is_symlink():
        return f"{link} is a run folder of its own (tunesmith train), left as it is: this run is {run}"
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.symlink_to(run.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as err:  # a file system without symbolic links
        tmp.unlink(missing_ok=True)
        return f"could not link {link} to {run.name} ({err.strerror}): use {run}"
    return f"{link} -> {run.name}: the commands in README use {link}"


def run_quickstart(recipe_path: str, overrides: list[str]) -> dict:
    recipe, link = quickstart_recipe(recipe_path, overrides)
    prompts, references = heldout_set(recipe)

    console.rule("1/3 base model on held-out tickets")
    base = score("base", recipe.model.path, prompts, references, recipe.data.template)
    console.print(f"base exact match: {base['accuracy']:.1%}")

    console.rule("2/3 LoRA fine-tuning")
    from tunesmith.methods.sft import train

    run = train(recipe)
    if link is not None:
        console.print(point_link(link, run.path))

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
    shown = link if link is not None and link.resolve() == run.path.resolve() else run.path
    console.print(f"details: {run.path}/report.md, {run.path}/quickstart.json")
    console.print(f'next: tunesmith generate {shown} "My parcel never arrived"   (README: Generating, Evaluating, Merge, serve)')
    return result
