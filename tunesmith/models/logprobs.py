"""Per-token log-probabilities of the next token without the [tokens × vocab] logits, for the methods that score
replies by their log-probability (DPO and its reference, GRPO, PPO): only the scored positions go through the output
layer, a chunk of tokens at a time (tunesmith.losses.CHUNK_LOGITS logits per chunk, whatever the vocabulary).

`token_logprobs` is the pure part, with its own gradient; `head_logprobs` applies it to a model's output layer;
`sequence_logprobs` runs a causal LM on padded rows or
packed rows (position_ids restarting at 0 for every sequence, tunesmith.data.batching.Collator) and sums the scored
tokens' log-probs per sequence; `check` compares it, on the loaded model, with the model's own logits.
"""

from __future__ import annotations

import torch

from tunesmith.losses import CHUNK_LOGITS
from tunesmith.models.lm_loss import base_of


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                   softcap: float | None = None, temperature: float = 1.0) -> torch.Tensor:
    """(N,) log softmax(softcap(hidden @ weight.T + bias) / temperature)[target] for hidden (N, H), weight (V, H),
    bias (V,) or None, targets (N,): the plain computation's values and gradients (float32 logits), a chunk at a time.
    softcap: Gemma 2's final_logit_softcapping, cap * tanh(logits / cap); temperature: PPO's and GRPO's sampling one."""
    grads = torch.is_grad_enabled()
    needs = (grads and hidden.requires_grad, grads and weight.requires_grad, grads and bias is not None and bias.requires_grad)
    return _TokenLogprobs.apply(hidden, weight, bias, targets, (softcap, temperature), needs)


def _logits(h, w, b, transform):
    """(C, V) float32 logits of a chunk, capped and divided by the temperature, and tanh(logits / cap) when capped
    (its derivative needs it)."""
    softcap, temperature = transform
    z = (h @ w.T if b is None else torch.addmm(b, h, w.T)).float()
    capped = None
    if softcap is not None:
        capped = torch.tanh(z / softcap)
        z = capped * softcap
    return (z if temperature == 1 else z / temperature), capped


class _TokenLogprobs(torch.autograd.Function):
    """d log p_y / dz = onehot(y) - softmax(z). When only `hidden` needs a gradient (LoRA: the output layer is
    frozen), the forward already computes (onehot - softmax) @ W per token, the same work as the plain backward, and
    the backward only scales it: no logits are recomputed. When the output layer trains too, the backward recomputes
    each chunk's logits (its gradient needs the incoming per-token gradients)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, transform, needs):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype  # as lm_head computes
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        chunk = max(1, CHUNK_LOGITS // weight.shape[0])
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lses = torch.empty_like(out)
        precompute = needs[0] and not (needs[1] or needs[2])
        direction = torch.empty_like(hidden) if precompute else None  # (N, H): d log p / d hidden
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(dtype)                  # (C, H)
            y = targets[start : start + chunk]                           # (C,)
            z, capped = _logits(h, w, b, transform)                      # (C, V)
            lse = torch.logsumexp(z, dim=-1)                             # (C,)
            out[start : start + chunk] = z.gather(1, y[:, None])[:, 0] - lse
            lses[start : start + chunk] = lse
            if precompute:
                g = _logits_grad(z, capped, lse, y, transform, None)
                direction[start : start + chunk] = (g.to(dtype) @ w).to(hidden.dtype)
        ctx.transform, ctx.needs, ctx.dtype, ctx.chunk = transform, needs, dtype, chunk
        if precompute:
            ctx.save_for_backward(direction)
        else:
            ctx.save_for_backward(hidden, weight, bias, targets, lses)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.needs[0] and not (ctx.needs[1] or ctx.needs[2]):
            (direction,) = ctx.saved_tensors
            return (direction * grad_out[:, None].to(direction.dtype)), None, None, None, None, None
        hidden, weight, bias, targets, lses = ctx.saved_tensors
        dtype, transform = ctx.dtype, ctx.transform
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if ctx.needs[2] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[start : start + ctx.chunk].to(dtype)
            z, capped = _logits(h, w, b, transform)
            g = _logits_grad(z, capped, lses[start : start + ctx.chunk], targets[start : start + ctx.chunk], transform,
                             grad_out[start : start + ctx.chunk].float())
            if grad_hidden is not None:
                grad_hidden[start : start + ctx.chunk] = (g.to(dtype) @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(g.T, h.float())
            if grad_bias is not None:
                grad_bias += g.sum(0)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _logits_grad(z, capped, lse, y, transform, scale):
    """(C, V) gradient of the chunk's log-probs with respect to its raw logits, each row times `scale` (C,) if
    given; overwrites z."""
    softcap, temperature = transform
    g = z.sub_(lse[:, None]).exp_().neg_()                 # -softmax, in place of the logits
    g[torch.arange(len(y), device=g.device), y] += 1       # onehot(y) - softmax
    if scale is not None:
        g.mul_(scale[:, None])
    if temperature != 1:
        g.div_(temperature)
    if softcap is not None:
        g.mul_(1 - capped * capped)                        # d(cap * tanh(x / cap))/dx
    return g


def sequence_index(inputs: dict) -> torch.Tensor:
    """(B, T) the sequence each token belongs to: its row in a padded batch; in a packed row (batch of one, with
    position_ids), a new sequence wherever the position restarts at 0."""
    ids = inputs["input_ids"]
    if "attention_mask" in inputs or "position_ids" not in inputs:
        return torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)
    return (inputs["position_ids"] == 0).long().cumsum(-1) - 1


def head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(...) log-probs of `targets` (...) under the model's output layer applied to `hidden` (..., H), the last
    hidden states of the positions before them, without their logits (token_logprobs)."""
    base = base_of(model)
    head = base.get_output_embeddings()
    softcap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)  # Gemma 2 and 3
    flat = token_logprobs(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias, targets.reshape(-1), softcap, temperature)
    return flat.view(targets.shape)


def sequence_logprobs(model, inputs: dict, sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S,) summed log-probs of the scored tokens (labels != -100) of each of `sequences` sequences, and (S,) how many
    tokens each has scored. `inputs` hold input_ids and labels (B, T) and either attention_mask (padded rows) or
    position_ids (packed rows); model is a causal LM, with or without PEFT adapters."""
    model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids") or k.startswith(("cu_seq_lens", "max_length"))}
    hidden = last_hidden_state(model, model_inputs)[:, :-1]  # (B, T-1, H): t predicts t+1
    targets = inputs["labels"][:, 1:]
    scored = targets != -100
    values = head_logprobs(ddp_unwrapped(model), hidden[scored], targets[scored])
    which = sequence_index(inputs)[:, 1:][scored]
    sums = torch.zeros(sequences, dtype=values.dtype, device=values.device).index_add(0, which, values)
    counts = torch.zeros(sequences, dtype=torch.long, device=values.device).index_add(0, which, torch.ones_like(which))
    return sums, counts


def last_hidden_state(model, inputs: dict, then=None) -> torch.Tensor:
    """(B, T, H) the decoder's output, without the logits, or `then` of it (a head of the caller's, such as a reward
    model's score, run inside the same forward). Under DDP it runs through the wrapper's forward, with the wrapped
    model's forward stood in for by its decoder's (and `then`): DDP all-reduces the gradients of what its own forward
    ran, and nothing of a forward that goes around it."""
    inner = ddp_unwrapped(model)

    def forward(**kwargs):
        hidden = base_of(inner).base_model(**kwargs, use_cache=False).last_hidden_state
        return hidden if then is None else then(hidden)

    if inner is model:
        return forward(**inputs)
    patched = inner.__dict__.pop("forward", None)  # tunesmith.models.lm_loss's chunked loss patches it so
    inner.forward = forward
    try:
        return model(**inputs)
    finally:
        del inner.forward
        if patched is not None:
            inner.forward = patched


def ddp_unwrapped(model):
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def check(model, inputs: dict, sequences: int) -> str | None:
    """Why sequence_logprobs would not be the model's own log-probs on `inputs` (padded rows), or None: a model
    that scales its logits (Cohere's logit_scale, Granite's logits_scaling) or whose output layer is not a plain
    Linear (a quantized or adapted head) computes more than hidden @ W.T."""
    head = base_of(model).get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return f"its output layer is a {type(head).__name__}, not a plain Linear"
    with torch.no_grad():
        ours, _ = sequence_logprobs(model, inputs, sequences)
        logits = model(**{k: inputs[k] for k in ("input_ids", "attention_mask")}, use_cache=False).logits.float()
        targets = inputs["labels"][:, 1:]
        per_token = logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        own = (per_token * (targets != -100)).sum(-1)
    close = 1e-3 if head.weight.dtype == torch.float32 else 5e-2
    if ((ours - own).abs() > close * own.abs().clamp(min=1)).any():
        return f"the chunked log-probs {ours.tolist()} differ from the model's own {own.tolist()} (its logits are scaled or capped)"
    return None
