"""`tunesmith eval RUN --data pairs.jsonl` (preference pairs): how often a model prefers the chosen reply.

    tunesmith eval runs/dpo-tickets --data examples/data/ticket_preferences/heldout.jsonl

What "prefers" means depends on the target:
- a DPO/KTO run (or any run): its implicit reward beta * (log pi(y|x) - log pi_ref(y|x)), the reference
  being the run's starting model (the adapters switched off, or the base loaded again for a full model);
  beta is the run's dpo.beta / kto.beta, else 1 (it scales the margins, not the accuracy);
- a reward run: its score;
- a plain model: its log-likelihood of each reply.

Writes `<run>/eval/<name>/` (a plain model: `--out`, default `evals/<name>/`) with metrics.json in the shape
every eval writes (flat `metrics`: reward_accuracy, reward_margin, chosen_reward, rejected_reward),
pairs.jsonl (each pair's two rewards) and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.data.formats import Example, with_system
from tunesmith.data.load import load_examples
from tunesmith.eval.evaluate import output_dir
from tunesmith.eval.metrics import reward_accuracy
from tunesmith.runs import RunDir, is_run_dir


def is_preference_file(path: str) -> bool:
    """Whether the file's first readable row holds chosen and rejected replies."""
    from tunesmith.data.load import read_rows

    for _, row in read_rows(path):
        if isinstance(row, dict):
            return "chosen" in row and "rejected" in row
    return False


def run_preference_eval(target: str, data_file: str, name: str | None = None, out: str | None = None,
                        system: str | None = None, batch_size: int = 8, limit: int | None = None) -> dict:
    pairs, _ = load_examples(data_file, formats=("preference",))
    pairs = pairs[:limit] if limit else pairs
    kind, chosen, rejected, system_used = rewards_of(target, pairs, system, batch_size)
    margins = [c - r for c, r in zip(chosen, rejected)]
    summary = {
        "name": name or Path(data_file.split("::")[0]).stem,
        "target": target,
        "data": data_file,
        "n": len(pairs),
        "metrics": {
            "reward_accuracy": reward_accuracy(chosen, rejected),
            "reward_margin": sum(margins) / len(margins),
            "chosen_reward": sum(chosen) / len(chosen),
            "rejected_reward": sum(rejected) / len(rejected),
        },
        "compare": {},
        "details": {"reward": kind, "system_prompt": system_used},
        "decoding": {},
    }
    folder = output_dir(target, summary["name"], out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    rows = [{"where": p.where, "chosen_reward": c, "rejected_reward": r} for p, c, r in zip(pairs, chosen, rejected)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lines = [f"# Preference evaluation `{summary['name']}`", "", f"- target: `{target}`; data: `{data_file}` ({len(pairs)} pairs)",
             f"- reward: {kind}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in summary["metrics"].items()]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[-2 - len(summary["metrics"]):]))
    print(f"written: {folder}/ (metrics.json, pairs.jsonl, report.md)")
    return summary


def rewards_of(target: str, pairs: list, system: str | None, batch_size: int):
    """(what the reward is, chosen rewards, rejected rewards, the system prompt used)."""
    recipe = RunDir(Path(target)).recipe() if is_run_dir(target) else None
    system = system if system is not None else (recipe.data.system_prompt if recipe else None)
    prompts = [with_system(p.prompt, system) for p in pairs]
    if recipe is not None and recipe.method == "reward":
        from tunesmith.models.reward import load_reward_model, score

        model = load_reward_model(target)
        return "reward model score", score(model, prompts, [p.chosen for p in pairs], batch_size), \
            score(model, prompts, [p.rejected for p in pairs], batch_size), system
    from tunesmith.eval.generate import load_for_inference

    loaded = load_for_inference(target)
    chosen, rejected = reply_logps(loaded, prompts, pairs, batch_size)
    if recipe is None:
        return "log-likelihood of the reply", chosen, rejected, system
    ref_chosen, ref_rejected = reference_logps(loaded, recipe, prompts, pairs, batch_size)
    beta = getattr(recipe.method_config, "beta", 1.0)
    return (
        f"implicit reward {beta} * (log p_policy - log p_reference)",
        [beta * (a - b) for a, b in zip(chosen, ref_chosen)],
        [beta * (a - b) for a, b in zip(rejected, ref_rejected)],
        system,
    )


def reply_logps(loaded, prompts: list[list[dict]], pairs: list, batch_size: int) -> tuple[list[float], list[float]]:
    """log p(reply | prompt) of each chosen and rejected reply: minus the NLL of the last assistant turn."""
    from tunesmith.eval.perplexity import nll_sums

    def logps(replies: list[str]) -> list[float]:
        examples = [Example(messages=[*p, {"role": "assistant", "content": r}], text=None, where=pair.where)
                    for p, r, pair in zip(prompts, replies, pairs)]
        sums, _ = nll_sums(loaded, examples, scope="response", batch_size=batch_size)
        return [-s for s in sums]

    return logps([p.chosen for p in pairs]), logps([p.rejected for p in pairs])


def reference_logps(loaded, recipe, prompts, pairs, batch_size):
    """The same log-probs under the run's starting model: its adapters off, or its base loaded again."""
    from peft import PeftModel

    if isinstance(loaded.model, PeftModel):
        with loaded.model.disable_adapter():
            return reply_logps(loaded, prompts, pairs, batch_size)
    from tunesmith.eval.generate import Loaded
    from tunesmith.models.load import load_model

    base, _, _ = load_model(recipe.model)
    base.eval()
    return reply_logps(Loaded(base, loaded.tokenizer, loaded.template, "reference"), prompts, pairs, batch_size)
