"""Use a trained reward model: load a `method: reward` run and score replies with its own template and
system prompt.

    tunesmith score runs/reward-tickets --data pairs.jsonl [--output scores.jsonl]

Scoring renders prompt + reply with the template the reward model was trained on (template.json), so
PPO, GRPO and `tunesmith score` show it exactly the text shape it learned, whatever template the
policy uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import with_system
from tunesmith.data.templates import ChatTemplate
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunDir, is_run_dir

# Rows `tunesmith score` reads: preference pairs (both replies scored), or any conversation format,
# whose last assistant turn is the reply scored.
SCORE_FORMATS = ("preference", "prompt_completion", "messages", "question_answer", "alpaca", "sharegpt")


@dataclass
class RewardModel:
    model: object
    tokenizer: object
    template: ChatTemplate
    name: str
    system_prompt: str | None = None   # the run's data.system_prompt: every conversation it learned from had it


def reward_run(target: str | Path) -> tuple[RunDir, object]:
    """The run directory and recipe of a `method: reward` run; anything else is a one-line error."""
    recipe = RunDir(Path(target)).recipe() if is_run_dir(target) else None
    if recipe is None or recipe.method != "reward":
        raise TunesmithError(f"{target}: not a reward model run (a run directory trained with method: reward)")
    return RunDir(Path(target)), recipe


def load_reward_model(target: str | Path) -> RewardModel:
    from tunesmith.models.load import load_model, load_tokenizer

    run, recipe = reward_run(target)
    final = run.final_dir
    if final.name == "adapter":
        from peft import PeftModel

        base, _, _ = load_model(recipe.model, head="reward")
        model = PeftModel.from_pretrained(base, final)  # the adapter folder also holds the trained head
    else:
        model, _, _ = load_model(recipe.model.model_copy(update={"path": str(final), "gguf_file": None}), head="reward")
    model.eval()
    template = ChatTemplate.load(run.path / "template.json")
    return RewardModel(model, load_tokenizer(str(final)), template, run.path.name, recipe.data.system_prompt)


def score(reward: RewardModel, prompts: list[list[dict]], replies: list[str], batch_size: int = 8) -> list[float]:
    """The reward of each reply to its prompt (conversation messages ending with a user turn). A prompt without
    a system message gets the reward run's training system prompt, as its training conversations had."""
    import torch

    from tunesmith.data.prepare_align import tokenize_reply

    sequences = []
    for prompt, reply in zip(prompts, replies, strict=True):
        prompt = with_system(prompt, reward.system_prompt)
        prompt_ids, reply_ids, _ = tokenize_reply(reward.template, reward.tokenizer, prompt, reply)
        sequences.append(prompt_ids + reply_ids)
    pad = reward.tokenizer.pad_token_id
    device = next(reward.model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(s) for s in batch)
        # Right padding: the head reads the last token that is not padding.
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=device)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        with torch.no_grad():
            logits = reward.model(input_ids=input_ids, attention_mask=attention).logits  # (B, 1)
        scores += logits[:, 0].float().tolist()
    return scores


def score_file(target: str, data: str, output: str | None = None, batch_size: int = 8) -> dict:
    """Score every row of a file; pairs also give pairwise accuracy. Returns the summary printed by the CLI."""
    from tunesmith.data.load import load_examples

    examples, report = load_examples(data, formats=SCORE_FORMATS)  # a bad row is reported before the model loads
    reward = load_reward_model(target)
    if report.format == "preference":
        prompts = [e.prompt for e in examples]
        chosen = score(reward, prompts, [e.chosen for e in examples], batch_size)
        rejected = score(reward, prompts, [e.rejected for e in examples], batch_size)
        rows = [{"where": e.where, "chosen_score": c, "rejected_score": r} for e, c, r in zip(examples, chosen, rejected)]
        wins = sum(c > r for c, r in zip(chosen, rejected))
        summary = {"rows": len(rows), "pairwise_accuracy": wins / len(rows), "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(rows)}
    else:
        prompts = [e.messages[:-1] for e in examples]
        scores = score(reward, prompts, [e.messages[-1]["content"] for e in examples], batch_size)
        rows = [{"where": e.where, "score": s} for e, s in zip(examples, scores)]
        summary = {"rows": len(rows), "mean_score": sum(scores) / len(scores), "min_score": min(scores), "max_score": max(scores)}
    if output:
        Path(output).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return summary
