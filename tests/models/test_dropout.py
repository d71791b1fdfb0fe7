"""tunesmith.models.dropout: torch's CPU dropout bit for bit, with a boolean mask kept for backward."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.models.dropout import BoolMaskDropout, use_bool_mask_dropout


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_same_mask_output_and_gradient_as_torch(p):
    x = torch.randn(300, 64, requires_grad=True)
    upstream = torch.randn(300, 64)
    results, kept = [], []
    for dropout in (torch.nn.Dropout(p), BoolMaskDropout(p)):
        torch.manual_seed(3)
        y = dropout(x)
        kept.append(y.grad_fn._saved_other.dtype if dropout.__class__ is torch.nn.Dropout else y.grad_fn.saved_tensors[0].dtype)
        (grad,) = torch.autograd.grad(y, x, upstream)
        results.append((y, grad, torch.rand(1)))  # the random stream after the draw, too
    (y0, g0, r0), (y1, g1, r1) = results
    assert torch.equal(y0, y1) and torch.equal(g0, g1) and torch.equal(r0, r1)
    assert 0 < (y1 == 0).float().mean() < 1
    assert kept == [torch.float32, torch.bool]


def test_eval_mode_and_no_grad_pass_through():
    x = torch.randn(10, 8)
    assert torch.equal(BoolMaskDropout(0.5).eval()(x), x)
    with torch.no_grad():
        y = BoolMaskDropout(0.5)(x)
    assert ((y == 0) | torch.isclose(y, 2 * x)).all()


def test_a_lora_model_trains_bit_for_bit_as_before(stories_path):
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    model.train()
    ids = torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(0))

    def step():
        torch.manual_seed(7)
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    before = step()
    layers = sum(1 for name, _ in model.named_modules() if name.endswith("lora_dropout.default"))
    assert use_bool_mask_dropout(model) == layers > 0
    assert all(type(m) is BoolMaskDropout for name, m in model.named_modules() if name.endswith("lora_dropout.default"))
    after = step()
    assert torch.equal(before[0], after[0]) and all(torch.equal(a, b) for a, b in zip(before[1], after[1]))
    assert use_bool_mask_dropout(model) == 0  # already replaced
