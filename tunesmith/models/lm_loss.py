"""How a causal LM computes its training loss in tunesmith, and the checks, on the loaded model, that this is exact.

`add_chunked_loss` lets `model(..., labels=labels, chunked_loss=True)` compute the loss from the last hidden states
with tunesmith.losses.linear_cross_entropy: only at trained positions, and without the [tokens × vocab] logits that
dominate memory for large vocabularies (SmolLM2 49k, Llama 3 128k, Gemma 256k).

`check` runs the model on a few tiny inputs before step 1 and reports what it cannot do exactly:
  - keep packed examples apart: an example's log-probs must not change when another example is packed before it
    (they would if the attention ignored position_ids, as ALiBi models and some remote code do), and must equal
    those of the example alone;
  - the chunked loss: it must equal the loss of the model's own logits (a model that scales or caps its logits in
    a way linear_cross_entropy does not know would differ).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tunesmith.losses import linear_cross_entropy


def base_of(model):
    """The transformers model under a PEFT wrapper (PEFT's LoRA layers live inside it)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def add_chunked_loss(model) -> str | None:
    """Patch the model's forward as above; returns why not (and patches nothing) when its output layer is not a
    plain Linear, or None once patched."""
    from transformers.modeling_outputs import CausalLMOutput

    base = base_of(model)
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:  # an adapter or a quantized layer computes more than weight @ hidden
        return f"its output layer is a {type(head).__name__}, not a plain Linear"
    softcap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)  # Gemma 2 and 3
    forward = base.forward

    def chunked_forward(self, *args, chunked_loss=False, labels=None, num_items_in_batch=None, token_weights=None, **kwargs):
        if not chunked_loss:
            return forward(*args, labels=labels, num_items_in_batch=num_items_in_batch, **kwargs)
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]  # (B, T-1, H): position t predicts label t+1
        targets = labels[:, 1:].to(hidden.device)
        trained = targets != -100
        if token_weights is not None and token_weights.shape[1] < labels.shape[1]:
            # prompt tuning: PEFT put its virtual tokens (labels -100) before the labels, not before the weights
            token_weights = torch.nn.functional.pad(token_weights, (labels.shape[1] - token_weights.shape[1], 0))
        weights = None if token_weights is None else token_weights[:, 1:].to(hidden.device)[trained]  # (N,)
        out = self.get_output_embeddings()
        total = linear_cross_entropy(hidden[trained], out.weight, out.bias, targets[trained], softcap, weights)
        if num_items_in_batch is None:  # evaluation: this batch's own trained tokens (or their weights)
            num_items_in_batch = trained.sum().clamp(min=1) if weights is None else weights.sum().clamp(min=torch.finfo(torch.float32).tiny)
        return CausalLMOutput(loss=total / num_items_in_batch)

    base.forward = types.MethodType(chunked_forward, base)
    return None


@dataclass
class Checked:
    packing: str | None   # why packed examples would not train exactly, or None
    chunked: str | None   # why the chunked loss would not equal the model's own, or None


def check(model, collator, sample: list[int], chunked: bool, packing: bool = True) -> Checked:
    """The checks above, on `sample` (token ids of a training example) and random contexts packed before it.
    `collator` packs (tunesmith.data.batching.Collator); `chunked`: whether add_chunked_loss patched the model.
    packing=False (a model that will not train on packed rows): the chunked loss alone, on `sample` alone."""
    weight = base_of(model).get_input_embeddings().weight  # (vocab, H); the layer itself may be PEFT's LoRA wrapper
    vocab, dtype = weight.shape[0], weight.dtype
    generator = torch.Generator().manual_seed(0)
    contexts = [torch.randint(vocab, (24,), generator=generator).tolist() for _ in range(2)]
    b = (sample + contexts[0])[: max(len(sample), 8)][:32]  # a very short example is lengthened, to have tokens to compare
    close = 1e-3 if dtype == torch.float32 else 5e-2
    device = next(model.parameters()).device
    with no_dropout(model), torch.no_grad():
        packed = [to(collator([item(a, b) if packing else item(b)]), device) for a in contexts]
        packing_why = None
        if packing:
            after = [token_logprobs(model, inputs)[0, len(contexts[0]):] for inputs in packed]
            alone, logits = token_logprobs(model, to(collator([item(b)]), device), with_logits=True)
            alone = alone[0]
            apart = close
            if dtype != torch.float32:
                # Half precision rounds a packed row otherwise than the example alone, and each logit by up to half
                # its spacing (bfloat16: 0.0625 at 16); a leak or a position shift changes log-probs by far more.
                apart = max(close, 2 * torch.finfo(dtype).eps * logits.abs().max().item())
            if (after[0] - after[1]).abs().max() > 1e-3:  # the same example, after two different ones: bit for bit, if apart
                packing_why = "an example's log-probs change with the example packed before it: its attention ignores position_ids"
            elif (after[0] - alone).abs().max() > apart:
                packing_why = "an example's log-probs differ packed and alone: it does not restart positions per example"
        chunked_why = None
        if chunked:
            own = model(**packed[0], use_cache=False).loss
            ours = model(**packed[0], use_cache=False, chunked_loss=True).loss
            if (own - ours).abs() > close * own.abs().clamp(min=1):
                chunked_why = f"the chunked loss {ours.item():.6f} differs from the model's own {own.item():.6f} (its logits are scaled or capped)"
    return Checked(packing_why, chunked_why)


def item(*examples: list[int]) -> dict:
    """A batch of `examples`, every token trained, as tunesmith.data.batching.batches_dataset holds it."""
    return {"input_ids": list(examples), "labels": list(examples)}


def to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def token_logprobs(model, inputs: dict, with_logits: bool = False):
    """(1, T-1) log-probability of each next token, from the model's own logits (and those logits, with_logits)."""
    # As in training: with a cache, transformers would not read packed sequences from position_ids.
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits.float()
    ids = inputs["input_ids"]
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    return (logprobs, logits) if with_logits else logprobs


@contextmanager
def no_dropout(model):
    """Training mode with the dropout layers off, for the checks: bitsandbytes repacks 4-bit weights for CPU
    inference the first time a layer runs in eval mode, which training would then inherit."""
    was = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    try:
        yield
    finally:
        model.train(was)
