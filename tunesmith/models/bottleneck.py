"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2020, arXiv:2005.00247), peft.method adapter.

In each decoder layer, on the output h of the attention block (placement houlsby) and of the MLP (both placements),
before the layer adds its residual:

    h + up(activation(down(h)))      down: hidden -> bottleneck, up: bottleneck -> hidden

`up` starts at zero, so at step 0 the model computes exactly what its base does. The AdapterHub `adapters` library
pins transformers 4, so this is ours: forward hooks on the attention and MLP modules of every decoder layer (the
classes the model names in `_no_split_modules`, their children found by the names in ATTENTION and MLP), which fits
any architecture that names its blocks so (Llama, Qwen2, Mistral, Gemma, GPT-2, ...). The adapters are submodules of
the blocks they follow, so the Trainer's checkpoints hold them; several named ones can sit on one base (the server
picks one per request with `active`).

Saved as adapter_model.safetensors (the adapter weights alone) and adapter_config.json, marked
{"tunesmith_adapter": "bottleneck"}: PEFT cannot load it, and `tunesmith merge` refuses it (a non-linear block
cannot be folded into a weight); `merge --adapter-only` exports it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from tunesmith.config import PeftConfig
from tunesmith.errors import TunesmithError

ATTENTION = ("self_attn", "attn", "attention", "self_attention")
MLP = ("mlp", "feed_forward", "ffn")
PLACES = {"houlsby": ("attention", "mlp"), "pfeiffer": ("mlp",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
KIND = "bottleneck"
INFIX = ".bottleneck.adapters."  # in the state-dict keys of every adapter's weights: model.layers.0.mlp.bottleneck.adapters.default.up.weight
WEIGHTS = "adapter_model.safetensors"


class Bottleneck(nn.Module):
    """h + up(act(down(h))), computed in the adapter's dtype (float32) whatever the base computes in."""

    def __init__(self, hidden: int, size: int, activation: str, dropout: float):
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)  # step 0 is the base model
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, H)
        x = h.to(self.down.weight.dtype)
        return h + self.up(self.dropout(self.act(self.down(x)))).to(h.dtype)


class Site(nn.Module):
    """The adapters after one attention or MLP block: one per name, at most one active."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: str | None = None

    def hook(self, module, args, output):
        if self.active is None:
            return output
        adapter = self.adapters[self.active]
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (adapter(output[0]), *output[1:])
        return adapter(output)


def add_adapters(model, cfg: PeftConfig, gradient_checkpointing: bool, name: str = "default"):
    """Freeze `model` and put a zero-initialised adapter (trainable) after the blocks cfg.placement names."""
    for param in model.parameters():
        param.requires_grad_(False)
    hidden = model.config.get_text_config().hidden_size
    size = bottleneck_size(cfg, hidden)
    attach(model, cfg.placement, name, lambda: Bottleneck(hidden, size, cfg.activation, cfg.dropout))
    if gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed layers need an input that requires grad to backpropagate
    return model


def bottleneck_size(cfg: PeftConfig, hidden: int) -> int:
    """Units of the bottleneck: peft.bottleneck, or hidden // reduction_factor; at least 1 and at most `hidden`."""
    if cfg.bottleneck is not None and cfg.bottleneck > hidden:
        raise TunesmithError(f"peft.bottleneck: {cfg.bottleneck} is more than this model's hidden size, {hidden}: an adapter projects down; use at most {hidden}")
    if cfg.bottleneck is None and cfg.reduction_factor > hidden:
        raise TunesmithError(
            f"peft.reduction_factor: {cfg.reduction_factor} leaves no bottleneck unit of this model's hidden size, {hidden}; use at most {hidden}"
        )
    return cfg.bottleneck or hidden // cfg.reduction_factor


def attach(model, placement: str, name: str, build) -> None:
    device = next(model.parameters()).device
    for block in blocks(model, placement):
        if not isinstance(dict(block.named_children()).get("bottleneck"), Site):
            block.bottleneck = Site()
            block.register_forward_hook(block.bottleneck.hook)
        block.bottleneck.adapters[name] = build().to(device)
        block.bottleneck.active = name


def blocks(model, placement: str) -> list[nn.Module]:
    """The attention and/or MLP modules of every decoder layer, in order."""
    layer_classes = set(model._no_split_modules or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    found = []
    for layer in layers:
        children = dict(layer.named_children())
        attention = next((children[n] for n in ATTENTION if n in children), None)
        mlp = next((children[n] for n in MLP if n in children), None)
        if attention is None or mlp is None:
            continue  # not a decoder layer (a vision block of a multimodal model, say)
        found += [attention] * ("attention" in PLACES[placement]) + [mlp]
    if not found:
        raise TunesmithError(
            f"peft.method 'adapter': found no decoder layer with an attention block (named {' or '.join(ATTENTION)}) and an MLP "
            f"(named {' or '.join(MLP)}) in {type(model).__name__}; use a PEFT method (lora, ia3, ...) for this model"
        )
    return found


def sites(model) -> list[Site]:
    return [m for m in model.modules() if isinstance(m, Site)]


@contextlib.contextmanager
def active(model, name: str | None):
    """Run with adapter `name` (None: the base model) inside the block."""
    places = sites(model)
    before = [site.active for site in places]
    for site in places:
        site.active = name
    try:
        yield
    finally:
        for site, was in zip(places, before, strict=True):
            site.active = was


def adapter_state(model, name: str) -> dict[str, torch.Tensor]:
    """The weights of adapter `name`, keyed by where they sit (its name left out, so another name can load them)."""
    infix = f"{INFIX}{name}."
    return {key.replace(infix, ".bottleneck."): value.detach().contiguous() for key, value in model.state_dict().items() if infix in key}


def save(model, folder: Path, cfg: PeftConfig, base_path: str, name: str = "default") -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = adapter_state(model, name)
    some = next(v for k, v in state.items() if k.endswith(".down.weight"))  # (bottleneck, hidden)
    config = {
        "tunesmith_adapter": KIND,
        "base_model_name_or_path": base_path,
        "placement": cfg.placement,
        "hidden_size": some.shape[1],
        "bottleneck": some.shape[0],
        "activation": cfg.activation,
        "dropout": cfg.dropout,
    }
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load(model, folder: Path, name: str = "default"):
    """The adapter saved in `folder` put on `model` under `name` (and made active), for inference."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    hidden = model.config.get_text_config().hidden_size
    if config["hidden_size"] != hidden:
        raise TunesmithError(
            f"{folder}: this bottleneck adapter was trained on a model of hidden size {config['hidden_size']}, "
            f"not on this base ({hidden}); load it on the base it was trained on ({config['base_model_name_or_path']})"
        )
    attach(model, config["placement"], name, lambda: Bottleneck(hidden, config["bottleneck"], config["activation"], config["dropout"]))
    saved = load_file(str(folder / WEIGHTS))
    infix = f"{INFIX}{name}."
    expected = {key.replace(infix, ".bottleneck."): key for key in model.state_dict() if infix in key}
    if set(saved) != set(expected):
        missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        raise TunesmithError(
            f"{folder / WEIGHTS}: does not fit this base ({len(missing)} adapter weights missing, e.g. {missing[:1]}; "
            f"{len(extra)} unknown, e.g. {extra[:1]}): it was trained on {config['base_model_name_or_path']}"
        )
    model.load_state_dict({expected[key]: value for key, value in saved.items()}, strict=False)
    for param in model.parameters():
        param.requires_grad_(False)
    return model
