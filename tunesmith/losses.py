"""Pure tensor functions of the losses: the language-model loss without its logits (SFT), and the RL methods'
(PPO) advantages, whitening and clipped losses.

No model, no I/O; every function is unit-tested against hand-computed values or the plain computation. Shapes:
N tokens, H hidden size, V vocabulary; B rollouts, T response tokens; `mask` is 1 on real response tokens and 0 on
padding after a reply ended.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where mask is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (optional) and unit variance over the masked positions; padding stays as it is."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, values)


def token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards (B, T): minus kl_coef times the log-ratio to the reference at every token (the KL
    penalty of Ziegler et al. 2019, arXiv:1909.08593), plus the sequence's score (B,) on its last token."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = mask.sum(1).long().clamp(min=1) - 1                                   # (B,) index of each last token
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, arXiv:1506.02438): (advantages, returns), both (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the value after a reply's
    last token is 0 (the episode ends there). returns = advantages + values, the value targets."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), as a loss to minimise:
    mean of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)). Returns (loss, share of clipped tokens)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float) -> torch.Tensor:
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped within clip of the rollout's V."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


# Logits per chunk of linear_cross_entropy: 2**24 float32 values (64 MiB), whatever the vocabulary.
CHUNK_LOGITS = 2**24


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                         softcap: float | None = None, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over N tokens of -log softmax(softcap(hidden @ weight.T + bias))[target], the cross-entropy of an output
    layer, without ever holding the (N, V) logits: a chunk of tokens at a time, whose logits become their gradient
    at once. Same loss and gradients as the plain computation (float32 logits), up to summation order.
    hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) with no ignored entries; softcap: Gemma 2's
    final_logit_softcapping, cap * tanh(logits / cap); token_weights (N,): each token's term is multiplied by its
    weight (train.token_weights). On CUDA with Liger Kernel installed, its fused kernel does the same
    (arXiv:2410.10989); it has no per-token weights, so weighted tokens take the chunked path there too."""
    if hidden.is_cuda and token_weights is None:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            pass
        else:
            return LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=softcap)(weight, hidden, targets, bias)
    grads = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, softcap, token_weights,
                                     (grads and hidden.requires_grad, grads and weight.requires_grad, grads and bias is not None and bias.requires_grad))


class _LinearCrossEntropy(torch.autograd.Function):
    """Computes the gradients during the forward pass, chunk by chunk (the loss is a sum, so they only need scaling
    by the incoming gradient later): the logits of one chunk are all that is held at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, token_weights, needs):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype  # as lm_head computes
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_hidden = torch.empty_like(hidden) if needs[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        chunk = max(1, CHUNK_LOGITS // weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(dtype)                                     # (C, H)
            y = targets[start : start + chunk]                                              # (C,)
            z = (h @ w.T if b is None else torch.addmm(b, h, w.T)).float()                  # (C, V)
            if softcap is not None:
                capped = torch.tanh(z / softcap)
                z = capped * softcap
            lse = torch.logsumexp(z, dim=-1)                                                # (C,)
            tw = None if token_weights is None else token_weights[start : start + chunk].float()  # (C,)
            ce = lse - z.gather(1, y[:, None])[:, 0]                                        # (C,)
            total += (ce if tw is None else ce * tw).sum()
            if not any(needs):
                continue
            g = z.sub_(lse[:, None]).exp_()                      # softmax, in place of the logits
            g[torch.arange(len(y), device=g.device), y] -= 1     # d(lse - z_y)/dz = softmax - onehot(y)
            if softcap is not None:
                g.mul_(1 - capped * capped)                      # d(cap * tanh(x / cap))/dx
            if tw is not None:
                g.mul_(tw[:, None])
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = (g.to(dtype) @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(g.T, h.float())
            if grad_bias is not None:
                grad_bias += g.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        scaled = [None if g is None else (g * grad_total).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return scaled[0], scaled[1], scaled[2], None, None, None, None


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
    """Sum over trained positions of weight * -log softmax(logits)[next label]: the weighted loss from a model's
    own logits, for models the chunked loss does not serve. logits (B, T, V), labels (B, T) with -100 where not
    trained, token_weights (B, T); position t predicts label t + 1, whose weight it takes."""
    targets, weights = labels[:, 1:], token_weights[:, 1:].float()
    trained = targets != -100
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][trained].float(), targets[trained], reduction="none")
    return (ce * weights[trained]).sum()
