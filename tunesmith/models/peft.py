"""Adapters: which modules they wrap, wrapping the model for training (full, PEFT's methods, or tunesmith's
bottleneck adapters), LoRA+'s optimizer, and loading a saved adapter of any kind back onto its base.

PEFT's methods go through PEFT (`peft_config` maps each peft.method to its config); `adapter` is ours
(tunesmith.models.bottleneck), since the AdapterHub library pins transformers 4.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

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


# Methods that put adapters on named layers (the others add virtual tokens, or wrap whole decoder layers).
LAYER_METHODS = ("lora", "qlora", "ia3", "loha", "lokr", "vera", "oft")
# Why merge cannot fold a method into the base weights.
UNMERGEABLE = {
    "adapter": "a bottleneck adapter is a non-linear block (down-projection, activation, up-projection) added to each layer's output, not a change of any weight",
    "prefix": "prefix tuning adds learned keys and values to every attention layer, not a change of any weight",
    "prompt": "prompt tuning adds learned embeddings before every sequence, not a change of any weight",
}
# What a virtual-token method cannot do with tunesmith's packed rows.
VIRTUAL_TOKENS = ("prefix", "prompt")


def check_adapters(source_path: str, cfg: PeftConfig, method: str = "sft", trust_remote_code: bool = False) -> None:
    """Put the adapters on the model's skeleton (its modules built from its config on the meta device, no weights
    read) as training method `method` will, so what does not fit fails before the weights load: a target name the
    model lacks, a layer type the method cannot take (GPT-2's Conv1D under loha, lokr and oft), IA3 without
    feedforward modules, bottleneck adapters on a model without named attention and MLP blocks, ..."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tunesmith.models.load import model_skeleton

    if cfg.method not in (*LAYER_METHODS, "adapter"):
        return
    head = "reward" if method == "reward" else "causal_lm"
    skeleton = model_skeleton(source_path, head, trust_remote_code)
    if cfg.method == "adapter":
        from tunesmith.models import bottleneck

        bottleneck.bottleneck_size(cfg, skeleton.config.get_text_config().hidden_size)
        bottleneck.blocks(skeleton, cfg.placement)
        return
    check_target_modules(skeleton, cfg.target_modules, cfg.modules_to_save)
    # The layers, not the initialisation: PiSSA's and OLoRA's decompositions need the weights.
    config = peft_config(cfg.model_copy(update={"init": "default"}), skeleton, "SEQ_CLS" if head == "reward" else "CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what PEFT only warns about is refused below
        wrapped = peft_wrap(skeleton, config, cfg, low_cpu_mem_usage=True)
    if cfg.method == "oft":
        check_oft_blocks(wrapped, cfg.block_size)
    if rewrites_base(cfg):
        check_decomposition_rank(wrapped, cfg)
    if method == "sft" and isinstance(wrapped.get_output_embeddings(), BaseTunerLayer):
        # TRL's SFTTrainer refuses it once the model is loaded: its loss reads the output layer's weight itself
        raise TunesmithError(
            "peft.target_modules: the output layer cannot take an adapter with method sft (TRL computes the loss from its "
            "weight directly, so the adapter would never train); leave it out, or train it in full: peft.modules_to_save: [lm_head]"
        )


def check_prompt_init(cfg: PeftConfig, tokenizer) -> None:
    """PEFT initialises prompt tuning's virtual tokens from prompt_init_text's tokens (as its tokenizer call counts
    them, special tokens included), repeated to num_virtual_tokens, and cuts a longer text without a word."""
    if cfg.method != "prompt" or cfg.prompt_init_text is None:
        return
    tokens = len(tokenizer(cfg.prompt_init_text)["input_ids"])
    if tokens > cfg.num_virtual_tokens:
        raise TunesmithError(
            f"peft.prompt_init_text: its {tokens} tokens are more than peft.num_virtual_tokens ({cfg.num_virtual_tokens}), and only the "
            f"first {cfg.num_virtual_tokens} would be used; raise num_virtual_tokens to {tokens}, or shorten the text"
        )


def check_oft_blocks(model, block_size: int) -> None:
    """PEFT quietly changes the block size of a layer whose input size it does not divide (with a warning): refused."""
    import math

    from peft.tuners.oft.layer import OFTLayer

    inputs = {name: m.in_features for name, m in model.named_modules() if isinstance(m, OFTLayer)}
    odd = {name: n for name, n in inputs.items() if n % block_size}
    if odd:
        common = math.gcd(*inputs.values())
        fits = max(d for d in range(1, min(block_size, common) + 1) if common % d == 0)
        name, n = next(iter(odd.items()))
        raise TunesmithError(
            f"peft.block_size: {block_size} does not divide the input size of {len(odd)} adapted layers (e.g. {name}: {n}); "
            f"use a divisor of {common}, the input sizes' greatest common divisor (e.g. {fits}), or leave those layers out of peft.target_modules"
        )


def check_decomposition_rank(model, cfg: PeftConfig) -> None:
    """PiSSA and OLoRA take r singular vectors (QR columns) of each adapted weight, at most its smaller side: with a
    larger r, training ran and saving the adapter at the end failed (the initial adapter, of the smaller rank,
    no longer fits the configured one)."""
    from peft.tuners.lora import LoraLayer

    sides = {name: (m.out_features, m.in_features) for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    small = {name: shape for name, shape in sides.items() if min(shape) < cfg.r}
    if small:
        name, (rows, columns) = min(small.items(), key=lambda item: min(item[1]))
        raise TunesmithError(
            f"peft.r: {cfg.r} is more than the rank of the adapted weight {name} ({rows} x {columns}); init {cfg.init} takes r "
            f"components of each weight: use r <= {min(rows, columns)}, leave such layers out of peft.target_modules, or use init default or gaussian"
        )


def peft_wrap(model, config, cfg: PeftConfig, **kwargs):
    """PEFT's get_peft_model, its refusals (a layer type or shape the method cannot take) as one line."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, config, **kwargs)
    except (ValueError, TypeError) as err:
        raise TunesmithError(
            f"peft.method {cfg.method!r}: PEFT cannot wrap this model: {err} (name layers it takes in peft.target_modules, or use another peft.method)"
        ) from None


LORA_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def peft_config(cfg: PeftConfig, model, task_type: str = "CAUSAL_LM"):
    """PEFT's config for cfg.method. task_type SEQ_CLS (reward models) also trains and saves the new scalar head in full."""
    import peft

    if cfg.method not in PEFT_CONFIGS:
        raise TunesmithError(
            f"peft.method {cfg.method!r} is tunesmith's own, not PEFT's, and trains with method sft only; "
            f"use a PEFT method ({', '.join(PEFT_CONFIGS)}) here"
        )
    layers = dict(target_modules=cfg.target_modules, modules_to_save=cfg.modules_to_save or None)
    built = {
        "lora": lambda: peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora, use_dora=cfg.dora,
            init_lora_weights=LORA_INIT[cfg.init], **layers,
        ),
        "ia3": lambda: peft.IA3Config(**ia3_modules(cfg, model), modules_to_save=cfg.modules_to_save or None),
        "prefix": lambda: peft.PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens),
        "prompt": lambda: peft.PromptTuningConfig(
            num_virtual_tokens=cfg.num_virtual_tokens,
            **(dict(prompt_tuning_init="TEXT", prompt_tuning_init_text=cfg.prompt_init_text, tokenizer_name_or_path=model.name_or_path)
               if cfg.prompt_init_text else {}),
        ),
        "loha": lambda: peft.LoHaConfig(r=cfg.r, alpha=cfg.alpha, **layers),
        "lokr": lambda: peft.LoKrConfig(r=cfg.r, alpha=cfg.alpha, **layers),
        "vera": lambda: peft.VeraConfig(r=cfg.r, vera_dropout=cfg.dropout, **layers),
        "oft": lambda: peft.OFTConfig(r=0, oft_block_size=cfg.block_size, module_dropout=cfg.dropout, **layers),
    }[PEFT_CONFIGS[cfg.method]]()
    built.task_type = task_type
    return built


# The MLP's down-projection by its usual names, for IA3 on architectures PEFT has no list for (Phi-3, OLMo 2, ...).
DOWN_PROJECTIONS = ("down_proj", "mlp.c_proj", "dense_4h_to_h", "fc2", "w2", "fc_out")


def ia3_modules(cfg: PeftConfig, model) -> dict:
    """IA3's targets and, among them, its feedforward modules. PEFT expands all-linear into full module paths but
    keeps its default feedforward list as written, and its reloaded config then fails its own subset check: so the
    targets are leaf names, and a dotted feedforward name (GPT-2's mlp.c_proj, beside attn.c_proj) joins them."""
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD
    from peft.utils.constants import SEQ_CLS_HEAD_NAMES

    names = [name for name, _ in model.named_modules()]

    def matched(key: str) -> set[str]:  # as PEFT matches a target: the full name or a dotted suffix
        return {name for name in names if name == key or name.endswith("." + key)}

    # all-linear leaves out the output layer: a language model's head, or a reward model's score (which PEFT trains in full)
    heads = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is model.get_output_embeddings()} or set(SEQ_CLS_HEAD_NAMES)
    targets = [n for n in linear_module_names(model) if n not in heads] if cfg.target_modules == "all-linear" else cfg.target_modules
    targeted = set().union(*map(matched, targets))
    known = FEEDFORWARD.get(model.config.model_type) or DOWN_PROJECTIONS  # PEFT's list for the architecture, else the usual names
    feedforward = cfg.feedforward_modules or [n for n in known if matched(n) & targeted]
    if not feedforward:
        raise TunesmithError(
            f"peft.feedforward_modules: no MLP down-projection of this {model.config.model_type!r} model is known among "
            f"{', '.join(targets)} (PEFT's list for it, or {', '.join(DOWN_PROJECTIONS)}); name it (IA3 scales its input, the others' output)"
        )
    outside = [n for n in feedforward if not matched(n) or not matched(n) <= targeted]
    if outside:
        raise TunesmithError(f"peft.feedforward_modules: {', '.join(outside)} must name modules among peft.target_modules ({', '.join(targets)})")
    return dict(target_modules=list(dict.fromkeys([*targets, *feedforward])), feedforward_modules=feedforward)


# peft.method -> the PEFT config family that builds it (qlora is LoRA on a quantised base).
PEFT_CONFIGS = {"lora": "lora", "qlora": "lora", "ia3": "ia3", "prefix": "prefix", "prompt": "prompt",
                "loha": "loha", "lokr": "lokr", "vera": "vera", "oft": "oft"}


def prepare_base(model, cfg: PeftConfig, gradient_checkpointing: bool):
    """Check the adapter targets against the model and ready a quantised base for QLoRA."""
    if cfg.method == "none":
        return model
    from peft import prepare_model_for_kbit_training

    if cfg.method in LAYER_METHODS:
        check_target_modules(model, cfg.target_modules, cfg.modules_to_save)
    if cfg.method == "qlora":
        # Casts norms to fp32 and enables input grads so checkpointed 4-bit layers backpropagate.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def wrap_model(model, cfg: PeftConfig, gradient_checkpointing: bool, task_type: str = "CAUSAL_LM", reference: bool = False):
    """Full fine-tuning returns the model as is; `adapter` adds tunesmith's bottleneck adapters to it; the other
    methods return a PeftModel. Only the adapter's parameters are left trainable. `reference`: the model's
    adapters-off self serves as the reference (see add_reference_adapter)."""
    if cfg.method == "none":
        return model
    if cfg.method == "adapter":
        from tunesmith.models import bottleneck

        if task_type != "CAUSAL_LM":
            raise TunesmithError("peft.method 'adapter' trains language models (method sft); a reward model takes a PEFT method, e.g. lora")
        return bottleneck.add_adapters(model, cfg, gradient_checkpointing)
    config = peft_config(cfg, model, task_type)
    wrapped = peft_wrap(prepare_base(model, cfg, gradient_checkpointing), config, cfg)
    if cfg.method == "prefix":
        check_prefix_fits(wrapped)
    if rewrites_base(cfg):
        keep_initial_adapter(wrapped)
        if reference:
            add_reference_adapter(wrapped)
    return wrapped


def check_prefix_fits(model) -> None:
    """PEFT shapes the prefix's keys and values from the model's config (heads, key/value heads, head size); an
    attention shaped otherwise (Falcon's multi-query attention, which its config does not name as key/value heads)
    fails in the first forward. One forward of two tokens says so before training."""
    import torch

    from tunesmith.models.load import one_line

    was_training = model.training
    model.eval()  # no dropout: the forward draws nothing from the RNG training will use
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=next(model.parameters()).device))
    except RuntimeError as err:
        raise TunesmithError(
            f"peft.method 'prefix': PEFT's prefix keys and values do not fit the attention of {type(model.get_base_model()).__name__} "
            f"({one_line(err)}); use peft.method prompt, lora or another method for this model"
        ) from None
    finally:
        model.train(was_training)


def keep_initial_adapter(model) -> None:
    """PiSSA and OLoRA move part of each base weight into the adapter. The adapter is saved against the original
    base (rank 2r: trained minus initial), which PEFT computes from the initial adapter kept here."""
    import tempfile

    config = model.peft_config["default"]
    folder = tempfile.TemporaryDirectory(prefix="tunesmith-initial-adapter-")
    init, config.init_lora_weights = config.init_lora_weights, True  # reloaded as plain LoRA, not decomposed again
    model.save_pretrained(folder.name)
    config.init_lora_weights = init
    model.initial_adapter = folder  # deleted with the model


def rewrites_base(cfg: PeftConfig) -> bool:
    """PiSSA and OLoRA: the base weights become W - B0 A0 (B0 A0: the initial adapter), so the model with its
    adapters off is no longer the model training started from."""
    return cfg.method in ("lora", "qlora") and cfg.init in ("pissa", "olora")


def add_reference_adapter(model) -> None:
    """The initial adapter again, frozen, as adapter "ref": base + ref is the original model. TRL's trainers (and
    tunesmith's DPO and PPO) take the reference from the "ref" adapter when a PeftModel has one, and from the
    model with its adapters off otherwise, which under PiSSA/OLoRA is the residual W - B0 A0."""
    model.load_adapter(model.initial_adapter.name, adapter_name="ref", is_trainable=False)
    model.set_adapter("default")


def original_reference(model, cfg: PeftConfig) -> None:
    """For a model TRL wrapped from peft_config (it knows nothing of tunesmith's keep_initial_adapter): under
    PiSSA/OLoRA, keep the initial adapter for saving, and make the reference the original model."""
    if rewrites_base(cfg):
        keep_initial_adapter(model)
        add_reference_adapter(model)


def save_adapter(model, folder, cfg: PeftConfig, base_path: str, state_dict: dict | None = None) -> None:
    """The adapter's weights and config, pointing at `base_path` (the hub id, or the local converted folder).
    `state_dict`: the whole model's weights gathered from the ranks that each hold a shard (FSDP, ZeRO-3)."""
    if cfg.method == "adapter":
        from tunesmith.models import bottleneck

        if state_dict is not None:
            raise TunesmithError("peft.method adapter does not train sharded (train.distributed fsdp or deepspeed_zero3); use ddp or deepspeed_zero2")
        bottleneck.save(model, folder, cfg, base_path)
        return
    model.peft_config["default"].base_model_name_or_path = base_path
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    extra["selected_adapters"] = ["default"]  # not the frozen "ref" adapter a preference method may carry
    if rewrites_base(cfg):
        model.save_pretrained(folder, path_initial_model_for_weight_conversion=model.initial_adapter.name, **extra)
    else:
        model.save_pretrained(folder, **extra)


def adapter_kind(folder) -> str:
    """'bottleneck' for tunesmith's adapters, else PEFT's type (LORA, IA3, PREFIX_TUNING, ...)."""
    import json
    from pathlib import Path

    config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    return config.get("tunesmith_adapter") or config["peft_type"]


def load_adapters(base, adapters: dict[str, str]):
    """`base` with the adapters {name: folder} on it, ready for `use_adapter`. Adapters of one kind only: PEFT
    keeps one kind of layer per model (and bottleneck adapters are tunesmith's)."""
    kinds = {name: adapter_kind(folder) for name, folder in adapters.items()}
    if len(set(kinds.values())) > 1:
        raise TunesmithError(
            "adapters of different kinds cannot be served on one base: "
            + ", ".join(f"{name} is {kind.lower()}" for name, kind in kinds.items())
            + "; serve each kind from its own server"
        )
    first, *rest = adapters
    if kinds[first] == "bottleneck":
        from tunesmith.models import bottleneck

        for name, folder in adapters.items():
            bottleneck.load(base, folder, name)
        return base
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, adapters[first], adapter_name=first)
    for name in rest:
        model.load_adapter(adapters[name], adapter_name=name)
    return model


def load_adapter(base, folder):
    """The saved adapter in `folder` (any method) on `base`, for inference."""
    return load_adapters(base, {"default": folder})


def use_adapter(model, name: str | None):
    """A context in which `model` (from load_adapters) runs with adapter `name`, or with none (the base)."""
    import contextlib

    from peft import PeftModel

    from tunesmith.models import bottleneck

    if not isinstance(model, PeftModel):
        return bottleneck.active(model, name)
    if name is None:
        return model.disable_adapter()
    model.set_adapter(name)
    return contextlib.nullcontext()


@dataclass
class VirtualTokens:
    """A prompt or prefix tuning adapter's virtual tokens before a batch of rows, for a decoding loop that runs the
    base model itself (tunesmith.serve.batch): they sit at positions 0..count-1, the rows' tokens from count on."""

    count: int
    embeddings: object = None   # prompt tuning: (B, count, H), put before the rows' token embeddings
    cache: object = None        # prefix tuning: a DynamicCache holding count keys and values per layer


def virtual_tokens(model, name: str | None, rows: int, width: int) -> VirtualTokens | None:
    """What adapter `name` (active: see use_adapter) puts before `rows` rows of `width` tokens; None for an adapter
    without virtual tokens, or for the base (name None)."""
    from peft import PeftModel

    if name is None or not isinstance(model, PeftModel) or not model.peft_config[name].is_prompt_learning:
        return None
    count = model.peft_config[name].num_virtual_tokens
    if model.peft_config[name].peft_type == "PREFIX_TUNING":
        return VirtualTokens(count, cache=model.get_prompt(batch_size=rows, max_cache_len=width + count))
    return VirtualTokens(count, embeddings=model.get_prompt(batch_size=rows))


def use_lora_plus(trainer, cfg: PeftConfig) -> None:
    """LoRA+ (Hayou et al. 2024, arXiv:2402.12354): the optimizer the recipe names, with the B matrices in a group
    at lr × lora_plus_ratio. Set before training, so the Trainer keeps it (and resumes its state)."""
    if cfg.lora_plus_ratio is None:
        return
    from peft.optimizers import create_loraplus_optimizer

    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    kwargs.pop("lr", None)
    trainer.optimizer = create_loraplus_optimizer(
        trainer.model, optimizer_cls, lr=trainer.args.learning_rate, loraplus_lr_ratio=cfg.lora_plus_ratio,
        weight_decay=trainer.args.weight_decay, **kwargs,
    )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total). 4-bit weights are packed into a storage dtype (two per byte); count weights, not elements."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel() * (2 * param.element_size() if param.__class__.__name__ == "Params4bit" else 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
