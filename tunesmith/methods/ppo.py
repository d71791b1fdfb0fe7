"""PPO from a reward model (Ouyang et al. 2022, arXiv:2203.02155; PPO: Schulman et al. 2017,
arXiv:1707.06347), with full fine-tuning, LoRA or QLoRA.

    tunesmith train recipes/ppo_tickets.yaml [ppo.kl_coef=0.1 ...] [--resume]

Each step: sample `train.batch_size` prompts; the policy writes a reply to each (sampling); the reward
model (a `method: reward` run, in its own template) scores every reply; each reply token is charged
kl_coef times its log-ratio to the reference policy, and the score is paid on the last token; GAE turns
these rewards into advantages, against a value head on the policy's last hidden state; then
`ppo.ppo_epochs` passes of clipped policy and value updates over mini-batches of the rollouts.

TRL used to ship this loop (trl.experimental.ppo) and removed it in September 2026 (trl#7020); it is
written out here instead, the pure parts (advantages, losses) in tunesmith.losses. Deliberate
choices: one network with a value head (as TRL's original PPOTrainer and InstructGPT's shared-trunk
variant) rather than a separate value model, so LoRA training holds one model; log-probs use the
sampling temperature, so the ratio compares the distributions replies were drawn from, and come from the
last hidden states a chunk of tokens at a time, without the [tokens × vocab] logits (tunesmith.models.logprobs;
checked against the model's own logits before step 1).

Steps, in order: open the run directory; load the tokenizer and template; load and check the prompts;
load the reward model; load the policy, its adapters and value head; load the reference; then the
loop above, logging to metrics.jsonl, checkpointing every `train.save_steps`; save; write the report.
"""

from __future__ import annotations

import math
import random
import time

import torch
from transformers import set_seed

from tunesmith import checkpoints, losses
from tunesmith.config import Recipe
from tunesmith.errors import TunesmithError
from tunesmith.eval.generate import cut_at_stop
from tunesmith.methods.common import InterruptRequest, check_finite_weights, diverged, finite_gradients
from tunesmith.methods.steps import console, describe, finish, first_last, interrupted, load_reference, reference_mode, start
from tunesmith.models.lm_loss import base_of
from tunesmith.models.load import load_model
from tunesmith.models.logprobs import check as check_logprobs
from tunesmith.models.logprobs import head_logprobs
from tunesmith.models.peft import count_parameters, rewrites_base, wrap_model
from tunesmith.models.reward import load_reward_model, score
from tunesmith.runs import RunDir


def train(recipe: Recipe, resume: bool = False, callbacks: list | None = None, allow_changes: bool = False) -> RunDir:
    """`callbacks` are called as callback(loop, record) after every step (a Loop, a metrics.jsonl record)."""
    s = start(recipe, resume, allow_changes)  # run directory, tokenizer and template, checked prompts: before the models load
    reward = load_reward_model(recipe.ppo.reward_model)

    set_seed(recipe.train.seed)  # adapters and value head draw from the global RNG
    model, _, _ = load_model(recipe.model, s.source)
    policy = wrap_model(model, recipe.peft, recipe.train.gradient_checkpointing, reference=reference_mode(recipe) == "adapters_off")
    for module in policy.modules():  # dropout would make the first update's ratio differ from 1 (TRL does the same)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    value_head = torch.nn.Linear(policy.config.get_text_config().hidden_size, 1, device=policy.device)
    reference = load_reference(recipe, s.source)
    trainable, total = count_parameters(policy)
    parameters = (trainable + sum(p.numel() for p in value_head.parameters()), total)
    describe(s.run, policy, recipe, s.source, f"ppo against reward model {reward.name}, reference: {reference_mode(recipe)}")

    loop = Loop(recipe, s, policy, value_head, reference, reward, callbacks or [])
    started = time.perf_counter()
    loop.run(s.resume_from)
    return finish(recipe, s, policy, loop.step, time.perf_counter() - started, parameters, lambda records: [
        f"- reference: {reference_mode(recipe)}; reward model: `{recipe.ppo.reward_model}`",
        f"- reward (train, mean score of each step's replies): {first_last(records, 'reward') or '-'}",
        f"- reward (eval, greedy replies): {first_last(records, 'eval_reward') or 'no eval data'}",
        f"- KL to the reference (per reply): {first_last(records, 'kl') or '-'}",
        f"- reply length in tokens: {first_last(records, 'response_length') or '-'}",
    ])


class Loop:
    """The PPO loop's state: models, optimiser, schedule, and where in the prompts it is."""

    def __init__(self, recipe: Recipe, s, policy, value_head, reference, reward, callbacks: list):
        from transformers import get_scheduler

        self.recipe, self.cfg, self.t = recipe, recipe.ppo, recipe.train
        self.run_dir, self.template, self.tokenizer = s.run, s.template, s.tokenizer
        self.policy, self.value_head, self.reference, self.reward = policy, value_head, reference, reward
        self.prompts, self.eval_prompts = s.train_rows, s.eval_rows
        self.callbacks = callbacks
        self.steps_per_epoch = math.ceil(len(self.prompts) / self.t.batch_size)
        self.total = self.t.max_steps or math.ceil(self.t.epochs * self.steps_per_epoch)
        updates = self.total * self.cfg.ppo_epochs * math.ceil(self.t.batch_size / self.cfg.mini_batch_size)
        params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
        self.optimizer = make_optimizer(self.t.optimizer, params, self.t.lr, self.t.weight_decay)
        warmup = self.t.warmup if self.t.warmup >= 1 else self.t.warmup * updates
        self.scheduler = get_scheduler(self.t.scheduler, self.optimizer, num_warmup_steps=int(warmup), num_training_steps=updates)
        self.step = 0
        self.chunked = self.check_chunked()

    def check_chunked(self) -> bool:
        """Whether the chunked log-probs are the model's own, on the first prompt; if not, they come from the full
        logits, and the terminal says so."""
        ids = torch.tensor([self.prompts[0]["prompt_ids"]], device=self.policy.device)
        why = check_logprobs(self.policy, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, 1)
        if why:
            console.print(f"ppo: log-probs computed from the full logits, since {why}", markup=False, highlight=False)
        return why is None

    def run(self, resume_from) -> None:
        """Steps until the last; Ctrl-C stops at the end of a step with a checkpoint there (a second one at once)."""
        from tqdm.auto import tqdm

        if resume_from is not None:
            self.load_checkpoint(resume_from)
        bar = tqdm(total=self.total, initial=self.step, desc="ppo", unit="step", dynamic_ncols=True)
        started, tokens, done = time.perf_counter(), 0, self.step
        progress = {"step": self.step, "max_steps": self.total, "start_step": self.step, "started_at": time.time()}
        try:
            with InterruptRequest() as request:
                while self.step < self.total and not request.requested:
                    self.step += 1
                    rollout = self.rollout(self.batch_of_prompts(self.step))
                    stats = self.update(rollout)
                    tokens += int(rollout["attention_mask"].sum())
                    record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), **stats,
                              "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens / (time.perf_counter() - started)}
                    if self.eval_prompts and (self.step % (self.t.eval_steps or self.steps_per_epoch) == 0 or self.step == self.total):
                        record["eval_reward"] = self.evaluate()
                    if self.step % self.t.logging_steps == 0 or self.step in (1, self.total) or "eval_reward" in record:
                        self.run_dir.append_metrics(record)
                    saved = self.step % (self.t.save_steps or self.steps_per_epoch) == 0
                    if saved:
                        self.save_checkpoint()
                    done = self.step
                    bar.update(1)
                    self.run_dir.write_progress(progress | {"step": self.step, "updated_at": time.time(), "loss": stats["loss"]})
                    bar.set_postfix_str(f"reward {stats['reward']:.3f} | kl {stats['kl']:.3f} | {record['tokens_per_s']:,.0f} tok/s", refresh=False)
                    for callback in self.callbacks:
                        callback(self, record)
                    if request.requested and not saved and self.step < self.total:
                        self.save_checkpoint()
        except KeyboardInterrupt:
            raise interrupted(self.run_dir, done, saved=False) from None
        finally:
            bar.close()
        if self.step < self.total:
            raise interrupted(self.run_dir, self.step, saved=True)

    def batch_of_prompts(self, step: int) -> list[dict]:
        """The prompts of a step: each epoch is a fresh seeded shuffle, so a step's batch depends on the step alone."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        order = list(range(len(self.prompts)))
        random.Random(self.t.seed + epoch).shuffle(order)
        picked = order[index * self.t.batch_size : (index + 1) * self.t.batch_size]
        return [self.prompts[i] for i in picked]

    def rollout(self, rows: list[dict]) -> dict:
        """Sample replies, score them, and turn the scores and the KL penalty into advantages."""
        cfg = self.cfg
        batch = self.generate(rows, sample=True)
        mask = batch["response_mask"]                                                  # (B, T)
        scores = torch.tensor(self.score(rows, batch), dtype=torch.float32)           # (B,)
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~batch["ended"]).float()
        raw_scores = scores.clone()
        if cfg.whiten_rewards and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        with torch.no_grad():
            logprobs, values = forward(self.policy, self.value_head, batch, cfg.temperature, self.chunked)
            ref_logprobs = self.reference_logprobs(batch)
        rewards = losses.token_rewards(scores, logprobs, ref_logprobs, mask, cfg.kl_coef)
        advantages, returns = losses.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        kl = ((logprobs - ref_logprobs) * mask).sum(1)                                 # (B,) per reply
        return {**batch, "logprobs": logprobs, "values": values, "advantages": losses.whiten(advantages, mask),
                "returns": returns, "scores": raw_scores, "kl": kl}

    def generate(self, rows: list[dict], sample: bool) -> dict:
        """Left-padded prompts and right-padded replies in one (B, P + T) batch, with the reply mask: 1 up to
        and including the first stop token (the reply's end), 0 after it."""
        prompts = [r["prompt_ids"] for r in rows]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.policy.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.policy.device)
        decoding = dict(do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0) if sample else dict(do_sample=False)
        self.policy.eval()
        with torch.no_grad():
            out = self.policy.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=self.cfg.max_new_tokens,
                                       eos_token_id=self.template.stop_token_ids, pad_token_id=pad, **decoding)
        responses = out[:, width:]                                                     # (B, T)
        is_stop = torch.isin(responses, torch.tensor(self.template.stop_token_ids, device=responses.device))
        ended = is_stop.any(1)
        first_stop = torch.where(ended, is_stop.int().argmax(1), torch.full_like(ended, responses.shape[1] - 1, dtype=torch.long))
        response_mask = (torch.arange(responses.shape[1], device=responses.device)[None] <= first_stop[:, None]).long()
        return {"input_ids": out, "attention_mask": torch.cat([attention, response_mask], 1), "response_mask": response_mask,
                "prompt_width": width, "ended": ended.cpu()}

    def score(self, rows: list[dict], batch: dict) -> list[float]:
        replies = [cut_at_stop(self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True), self.template.stop_texts)
                   for ids, mask in zip(batch["input_ids"][:, batch["prompt_width"]:], batch["response_mask"])]
        return score(self.reward, [r["prompt"] for r in rows], replies)

    def reference_logprobs(self, batch: dict) -> torch.Tensor:
        if self.reference is not None:
            return forward(self.reference, None, batch, self.cfg.temperature, self.chunked)[0]
        from trl.trainer.utils import use_adapter

        # Under PiSSA/OLoRA the adapters-off policy is the residual model; the frozen "ref" adapter restores the original.
        with use_adapter(self.policy, "ref") if rewrites_base(self.recipe.peft) else self.policy.disable_adapter():
            return forward(self.policy, None, batch, self.cfg.temperature, self.chunked)[0]

    def update(self, rollout: dict) -> dict:
        """ppo_epochs passes of clipped policy + value updates over shuffled mini-batches of the rollouts."""
        cfg, size = self.cfg, rollout["input_ids"].shape[0]
        self.policy.train()
        totals: dict[str, list[float]] = {"loss": [], "policy_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": [], "grad_norm": []}
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for _ in range(cfg.ppo_epochs):
            for idx in torch.randperm(size).split(cfg.mini_batch_size):
                part = {k: v[idx] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == size else v for k, v in rollout.items()}
                logprobs, values = forward(self.policy, self.value_head, part, cfg.temperature, self.chunked)
                mask = part["response_mask"]
                pg, clip_frac = losses.policy_loss(logprobs, part["logprobs"], part["advantages"], mask, cfg.clip_range)
                vf = losses.value_loss(values, part["values"], part["returns"], mask, cfg.value_clip_range)
                loss = pg + cfg.value_coef * vf
                if not torch.isfinite(loss):
                    raise diverged(f"the loss is {float(loss)}", self.step, self.recipe, self.run_dir, fp16=False)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, self.t.max_grad_norm) if self.t.max_grad_norm else torch.tensor(0.0)
                if not finite_gradients(params):
                    raise diverged("the gradients are not finite", self.step, self.recipe, self.run_dir, fp16=False)
                self.optimizer.step()
                self.scheduler.step()
                approx_kl = 0.5 * losses.masked_mean((logprobs.detach() - part["logprobs"]) ** 2, mask)
                for key, value in (("loss", loss), ("policy_loss", pg), ("value_loss", vf), ("clip_frac", clip_frac),
                                   ("approx_kl", approx_kl), ("grad_norm", norm)):
                    totals[key].append(float(value.detach()))
        mask = rollout["response_mask"].float()
        return {
            **{k: sum(v) / len(v) for k, v in totals.items()},
            "reward": float(rollout["scores"].mean()),
            "reward_std": float(rollout["scores"].std()) if size > 1 else 0.0,
            "kl": float(rollout["kl"].mean()),
            "response_length": float(mask.sum(1).mean()),
            "ended_share": float(rollout["ended"].float().mean()),
        }

    def evaluate(self) -> float:
        """Mean reward of greedy replies to the eval prompts."""
        from tqdm.auto import tqdm

        scores, size = [], self.t.eval_batch_size or self.t.batch_size
        for first in tqdm(range(0, len(self.eval_prompts), size), desc="eval", unit="batch", leave=False, dynamic_ncols=True):
            rows = self.eval_prompts[first : first + size]
            scores += self.score(rows, self.generate(rows, sample=False))
        return sum(scores) / len(scores)

    def save_checkpoint(self) -> None:
        """Everything --resume needs: trainable weights, value head, optimiser, schedule, RNG, step; written into
        checkpoints/.unfinished/ and moved into place once complete (tunesmith.checkpoints)."""
        check_finite_weights(self.policy, self.step)
        check_finite_weights(self.value_head, self.step)
        folder = checkpoints.staging(self.run_dir.checkpoints) / f"checkpoint-{self.step}"
        folder.mkdir()
        torch.save({
            "step": self.step,
            "trainable": {n: p.detach().cpu() for n, p in self.policy.named_parameters() if p.requires_grad},
            "value_head": self.value_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }, folder / "ppo_state.pt")
        checkpoints.commit(folder, self.run_dir.checkpoints, self.run_dir.path / "config.yaml", len(self.run_dir.metrics()))
        checkpoints.rotate(self.run_dir.checkpoints, self.t.save_total_limit)

    def load_checkpoint(self, folder) -> None:
        state = read_state(folder)
        named = dict(self.policy.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.step = state["step"]


def read_state(folder) -> dict:
    """A checkpoint's ppo_state.pt, read as tensors and plain values only: unpickling anything else could run
    code from whoever wrote the file."""
    import pickle

    try:
        return torch.load(folder / "ppo_state.pt", weights_only=True)
    except pickle.UnpicklingError as err:
        raise TunesmithError(f"{folder / 'ppo_state.pt'} holds more than tensors and plain values: not loading it ({str(err).splitlines()[0]})") from None


def forward(model, value_head, batch: dict, temperature: float, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, T) of the reply tokens under `model` at the sampling temperature, and the value head's
    estimate (B, T) at the position before each reply token. Positions count only real tokens, as in generate().
    chunked: the log-probs from the last hidden states without the (B, P + T, vocab) logits (tunesmith.models.logprobs);
    else from the model's own logits (a model whose logits are more than hidden @ W.T)."""
    ids, attention, width = batch["input_ids"], batch["attention_mask"], batch["prompt_width"]
    inputs = dict(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0))  # left padding must not shift positions
    if chunked:
        hidden = base_of(model).base_model(**inputs, use_cache=False).last_hidden_state[:, width - 1 : -1]  # (B, T, hidden): predicts reply tokens
        logprobs = head_logprobs(model, hidden, ids[:, width:], temperature)                           # (B, T)
    else:
        out = model(**inputs, output_hidden_states=value_head is not None)
        logits = out.logits[:, width - 1 : -1].float() / temperature                # (B, T, vocab): predicts reply tokens
        logprobs = logits.log_softmax(-1).gather(-1, ids[:, width:, None]).squeeze(-1)
        hidden = out.hidden_states[-1][:, width - 1 : -1] if value_head is not None else None
    if value_head is None:
        return logprobs, None
    return logprobs, value_head(hidden.float()).squeeze(-1)


def make_optimizer(name: str, params: list, lr: float, weight_decay: float):
    if name == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
