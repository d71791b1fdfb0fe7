"""Adapters: which modules LoRA wraps, and wrapping the model for full, LoRA or QLoRA training."""

from __future__ import annotations

from tunesmith.config import PeftConfig
from tunesmith.errors import TunesmithError


def linear_module_names(model) -> list[str]:
    """Leaf names of the model's linear layers (q_proj, c_attn, ...), the valid target_modules entries."""
    import torch
    from transformers.pytorch_utils import Conv1D

    names = set()
    for full_name, module in model.named_modules():
        # bitsandbytes Linear4bit/Linear8bitLt subclass nn.Linear, so QLoRA bases are covered too.
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model, target_modules: list[str] | str, modules_to_save: list[str] = ()) -> None:
    """Every name must match a module the way PEFT matches it (the full name or a dotted suffix), and a LoRA
    target must be a layer LoRA can wrap: PEFT itself ignores an unmatched modules_to_save entry."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    # The layers PEFT's LoRA wraps (bitsandbytes' 4/8-bit layers subclass nn.Linear).
    adaptable = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)
    modules = dict(model.named_modules())

    def matches(target: str) -> list:
        return [module for name, module in modules.items() if name == target or name.endswith("." + target)]

    linear = f"its linear modules are: {', '.join(linear_module_names(model))}"
    if target_modules != "all-linear":
        missing = [t for t in target_modules if not matches(t)]
        if missing:
            raise TunesmithError(f"peft.target_modules: no module of this model is named {' or '.join(map(repr, missing))}; {linear} (or use all-linear)")
        for target in target_modules:
            wrong = sorted({type(m).__name__ for m in matches(target) if not isinstance(m, adaptable)})
            if wrong:
                raise TunesmithError(
                    f"peft.target_modules: {target!r} names {', '.join(wrong)} modules, which LoRA cannot adapt "
                    f"(it takes linear, embedding and convolution layers); {linear}"
                )
    missing = [t for t in modules_to_save if not matches(t)]
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in modules if name and not name.rsplit(".", 1)[-1].isdigit()})
        raise TunesmithError(
            f"peft.modules_to_save: no module of this model is named {' or '.join(map(repr, missing))}; its module names are: {', '.join(leaves)}"
        )


def check_adapter_targets(source_path: str, cfg: PeftConfig, head: str = "causal_lm", trust_remote_code: bool = False) -> None:
    """check_target_modules on the model's skeleton (built from its config on the meta device), so a wrong
    name fails before the weights load, not after."""
    from tunesmith.models.load import model_skeleton

    if cfg.method != "none" and (cfg.target_modules != "all-linear" or cfg.modules_to_save):
        check_target_modules(model_skeleton(source_path, head, trust_remote_code), cfg.target_modules, cfg.modules_to_save)


def lora_config(cfg: PeftConfig, task_type: str = "CAUSAL_LM"):
    """task_type SEQ_CLS (reward models) also trains and saves the new scalar head in full."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save or None,
        use_rslora=cfg.rslora,
        use_dora=cfg.dora,
    )


def prepare_base(model, cfg: PeftConfig, gradient_checkpointing: bool):
    """Check the adapter targets against the model and ready a quantised base for QLoRA."""
    if cfg.method == "none":
        return model
    from peft import prepare_model_for_kbit_training

    check_target_modules(model, cfg.target_modules, cfg.modules_to_save)
    if cfg.method == "qlora":
        # Casts norms to fp32 and enables input grads so checkpointed 4-bit layers backpropagate.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def wrap_model(model, cfg: PeftConfig, gradient_checkpointing: bool, task_type: str = "CAUSAL_LM"):
    """Full fine-tuning returns the model as is; LoRA/QLoRA return a PeftModel with only adapters trainable."""
    if cfg.method == "none":
        return model
    from peft import get_peft_model

    return get_peft_model(prepare_base(model, cfg, gradient_checkpointing), lora_config(cfg, task_type))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total). 4-bit weights are packed into a storage dtype (two per byte); count weights, not elements."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel() * (2 * param.element_size() if param.__class__.__name__ == "Params4bit" else 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
