"""Peak training memory, from what a model holds (a Profile, measured on the meta device by tunesmith.plan.profile)
and how a recipe trains it (a Setup). Pure arithmetic: no torch.

The peak of a training step, in the order PyTorch allocates it:
  weights (+ a frozen reference copy) and optimizer states live throughout (states from the first step on);
  forward: transformers builds the attention mask first (eager, and sdpa on padded batches: one (T x T) entry per
  query and key of a row, several copies while it is built; none for a packed row under tunesmith's packed sdpa),
  then the activations autograd saves for backward pile up, layer by layer, and the loss adds its own; backward: each layer frees its activations as its parameters' gradients
  appear (measured on CPU: backward never rose above the end of the forward pass), so with one micro-batch per
  step the peak is the largest of (the mask being built), (the mask + activations + the loss + the output layer's
  gradient, which comes first) and (all gradients + the optimizer's temporaries at its step). With gradient accumulation the gradients of the earlier
  micro-batches are held during the next forward: both add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

MiB = 2**20
GiB = 2**30

# Elements of the logits the chunked loss (tunesmith.losses.linear_cross_entropy) holds at a time: 64 MiB of float32.
CHUNK_LOGITS = 2**24


@dataclass(frozen=True)
class Profile:
    """What the model holds, as loaded and wrapped for one way of training it (dtype, quantisation, adapters)."""

    parameters: int                  # every weight of the model (adapters included)
    weight_bytes: int                # the loaded base weights, quantised where they would be
    trainable: tuple[tuple[int, int, int], ...]  # (elements, rows or 1, bytes per element) of each trainable tensor
    adapter_bytes: int               # the adapters' weights (in trainable too), 0 for full fine-tuning
    dtype_bytes: int                 # bytes per element the model computes in
    hidden: int
    vocab: int
    layers: int
    head_trainable: bool             # whether the output layer gets a gradient (full fine-tuning)
    act_layer: float                 # bytes autograd saves per token inside one decoder layer ...
    act_layer_per_seq: float         # ... plus this times the sequence length (attention scores under eager)
    act_input: float                 # bytes per token of one layer's input: what gradient checkpointing keeps
    act_outside: float               # bytes per token saved outside the layers (embeddings, final norm)
    largest_quantized: int           # elements of the largest 4/8-bit layer, dequantised at each use (0: none)


@dataclass(frozen=True)
class Setup:
    """How a recipe trains, as far as memory goes."""

    tokens: int                      # tokens of one micro-batch's forward, padding included
    seq: int                         # longest sequence within it (what attention spans)
    checkpointing: bool
    optimizer: str                   # train.optimizer
    grad_accum: int = 1
    loss: str = "chunked"            # chunked: tunesmith's SFT loss; logits: the full (tokens x vocab) logits; head: a scalar head
    reference: str = "none"          # none, copy (a second frozen model), adapters_off, precomputed
    world_size: int = 1
    distributed: str = "none"        # none, ddp, fsdp, deepspeed_zero2, deepspeed_zero3
    cuda: bool = True                # the CUDA context and the foreach optimizer step (CPU steps one tensor at a time)
    mask: int = 0                    # bytes of the (rows x T x T) attention mask the model builds for the forward pass


# What the CUDA context and the caching allocator take beyond the tensors (nvidia-smi against max_memory_allocated).
CUDA_RUNTIME = 1 * GiB
# What a CPU process's resident memory holds after the first training step beyond the tensors: PyTorch's kernels
# paged in, the autograd and OpenMP threads, the Trainer and PEFT set up (measured by bench/plan_vs_measured.py's
# rows of the tiny model and stories260K, whose tensors are a few MiB: 141-155 MiB).
CPU_RUNTIME = 144 * MiB
# Building the mask of a packed row (masking_utils.sdpa_mask over a block-diagonal mask function) holds three
# (T x T) booleans at once: measured 771 MiB at T=16,384 (T x T = 256 MiB), 256 MiB kept through the forward pass.
MASK_BUILD = 3


@dataclass
class Estimate:
    parts: list[tuple[str, int, str]] = field(default_factory=list)  # (what, bytes, how it was counted)
    peak: int = 0

    def part(self, name: str) -> int:
        return sum(b for n, b, _ in self.parts if n == name)


def quantized_bytes(elements: int, quantization: str, double_quant: bool) -> int:
    """Bytes of one linear layer's weight under bitsandbytes: 4-bit packs two weights a byte plus one absmax per
    block of 64 (float32, or 8-bit with a float32 per 256 blocks under double quantisation); 8-bit (LLM.int8) keeps
    an int8 weight and a float32 scale per output row (counted here as per 4096 weights, rows being unknown)."""
    if quantization == "4bit":
        blocks = math.ceil(elements / 64)
        constants = blocks + 4 * math.ceil(blocks / 256) if double_quant else 4 * blocks
        return math.ceil(elements / 2) + constants
    return elements + 4 * math.ceil(elements / 4096)


def optimizer_bytes(optimizer: str, tensors: tuple[tuple[int, int, int], ...]) -> int:
    """States of the optimizer for these trainable tensors (elements, rows, bytes per element). torch's AdamW keeps
    two states in the parameter's dtype; bitsandbytes' 8-bit ones a byte per state and a float32 absmax per block
    of 256, but 32-bit states for tensors under 4096 elements; paged_adamw_32bit two float32 states; Adafactor
    (transformers) a row and a column vector per matrix, a full second moment for vectors; sgd (no momentum) none."""
    total = 0
    for elements, rows, size in tensors:
        if optimizer == "adamw":
            total += 2 * elements * size
        elif optimizer == "paged_adamw_32bit" or (optimizer in ("adamw_8bit", "paged_adamw_8bit") and elements < 4096):
            total += 8 * elements
        elif optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            total += 2 * (elements + 4 * math.ceil(elements / 256))
        elif optimizer == "adafactor":
            total += size * (rows + elements // rows if rows > 1 else elements)
    return total


def estimate(p: Profile, s: Setup) -> Estimate:
    """The peak memory of one training process of `s` on the model of `p`, part by part."""
    e = Estimate()
    sharded_weights = s.distributed in ("fsdp", "deepspeed_zero3")
    sharded_states = sharded_weights or s.distributed == "deepspeed_zero2"
    n = s.world_size
    share = f" (a 1/{n} shard)" if n > 1 else ""

    weights = p.weight_bytes // n if sharded_weights else p.weight_bytes
    e.parts.append(("weights", weights, share if sharded_weights else ""))
    adapters = p.adapter_bytes // n if sharded_weights else p.adapter_bytes
    if p.adapter_bytes:
        e.parts.append(("adapters", adapters, share if sharded_weights else ""))
    if s.reference == "copy":
        e.parts.append(("reference", weights, "a frozen copy of the starting model" + (share if sharded_weights else "")))

    grads = sum(elements * size for elements, _, size in p.trainable)
    states = optimizer_bytes(s.optimizer, p.trainable)
    if sharded_states:
        grads, states = grads // n, states // n
    e.parts.append(("gradients", grads, share if sharded_states else ""))
    e.parts.append(("optimizer", states, s.optimizer + (share if sharded_states else "")))

    activations = activation_bytes(p, s)
    e.parts.append(("activations", activations, f"{activation_per_token(p, s) / MiB:.3g} MiB per token x {s.tokens:,} tokens"
                    + (", gradient checkpointing" if s.checkpointing else "")))
    loss_saved, loss_transient, how = loss_bytes(p, s)
    e.parts.append(("loss", loss_saved + loss_transient, how))
    head_grad = p.vocab * p.hidden * p.dtype_bytes if p.head_trainable else 0
    # The largest layer's full weights, gathered for its forward and backward (FSDP/ZeRO-3), or dequantised (4/8-bit).
    per_layer = (p.weight_bytes + p.adapter_bytes) // max(p.layers, 1)
    gathered = 2 * per_layer if sharded_weights and n > 1 else 0
    dequantised = p.largest_quantized * p.dtype_bytes
    transient = max(gathered, dequantised)
    if transient:
        e.parts.append(("layer buffers", transient, "a gathered layer (FSDP/ZeRO-3 prefetches the next)" if gathered >= dequantised
                        else "a 4/8-bit layer dequantised for its matmul"))
    # foreach AdamW (torch's default on CUDA) computes over all parameters at once: one temporary of their size.
    step = grads if s.cuda and s.optimizer == "adamw" else max((el * size for el, _, size in p.trainable), default=0)
    if s.mask:
        e.parts.append(("attention mask", s.mask, f"the (T x T) mask transformers builds for the forward pass ({MASK_BUILD}x while building it)"))
    forward = max(MASK_BUILD * s.mask, s.mask + activations + loss_saved + loss_transient + head_grad)
    if s.grad_accum > 1:
        dynamic = grads + forward
    else:
        dynamic = max(forward, grads + step)
    # The gradients are inside `dynamic`: with one micro-batch they never coexist with all the activations.
    e.peak = weights + adapters + states + transient + (weights if s.reference == "copy" else 0) + dynamic
    if s.cuda:
        e.parts.append(("CUDA runtime", CUDA_RUNTIME, "context and allocator slack (outside max_memory_allocated)"))
        e.peak += CUDA_RUNTIME
    else:
        e.parts.append(("CPU runtime", CPU_RUNTIME, "kernels paged in and threads started by the first step"))
        e.peak += CPU_RUNTIME
    return e


def activation_per_token(p: Profile, s: Setup) -> float:
    """Bytes per token at the end of the forward pass: what backward starts from. Backward frees a layer's saved
    tensors as it goes, faster than the gradients of its intermediates appear (measured on CPU: its resident memory
    never rose above the end of the forward pass)."""
    layer = p.act_layer + p.act_layer_per_seq * s.seq
    if s.checkpointing:
        # Each layer's input is kept; backward recomputes one layer at a time, holding its activations once (measured
        # on CPU: their gradients fit in what the layer's backward frees as it goes).
        return p.act_outside + p.layers * p.act_input + layer
    return p.act_outside + p.layers * layer


def activation_bytes(p: Profile, s: Setup) -> int:
    return math.ceil(activation_per_token(p, s) * s.tokens)


def loss_bytes(p: Profile, s: Setup) -> tuple[int, int, str]:
    """(saved for backward, transient at the loss, how). The chunked loss computes its gradients in the forward
    pass: it keeps the gradient of the hidden states (and, training the output layer, a float32 gradient of its
    weight) and holds the float32 logits of one chunk of tokens at a time. The full logits: the lm_head's output,
    its float32 copy and log-softmax, and their gradients in backward."""
    if s.loss == "head":
        return 0, 0, "a scalar head: no vocabulary logits"
    if s.loss == "chunked":
        rows = min(s.tokens, max(1, CHUNK_LOGITS // p.vocab))
        saved = s.tokens * p.hidden * p.dtype_bytes + (p.vocab * p.hidden * 4 if p.head_trainable else 0)
        transient = rows * p.vocab * (4 + (p.dtype_bytes if p.dtype_bytes != 4 else 0))
        full = s.tokens * p.vocab * 4
        return saved, transient, f"chunked: {rows:,} tokens' logits at a time, never the {s.tokens:,} x {p.vocab:,} logits ({full / MiB:,.0f} MiB)"
    logits = s.tokens * p.vocab
    saved = logits * (p.dtype_bytes + 4 + (4 if p.dtype_bytes != 4 else 0))
    return saved, 2 * logits * 4, f"the full {s.tokens:,} x {p.vocab:,} logits, float32 log-softmax and its gradient"


def fits(p: Profile, s: Setup, capacity: int) -> bool:
    return estimate(p, s).peak <= capacity


def largest_tokens(p: Profile, s: Setup, capacity: int, step: int) -> int:
    """The most tokens per micro-batch, in multiples of `step` (a row or an example), whose peak fits; 0: none."""
    if not fits(p, replace(s, tokens=step), capacity):
        return 0
    low, high = 1, 2
    while fits(p, replace(s, tokens=high * step), capacity) and high < 2**24:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(p, replace(s, tokens=mid * step), capacity) else (low, mid)
    return low * step
