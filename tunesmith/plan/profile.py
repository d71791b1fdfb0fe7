"""A model's config, read without its weights, and what the model holds (a Profile), measured on the model built
from that config on the meta device: tensors with shapes and dtypes but no storage, so a 70B model costs nothing.

Counted, not modelled: the parameters (and which of them 4/8-bit quantisation converts: every linear layer but
the output head, as transformers' bitsandbytes integration picks them), the adapters PEFT adds for the recipe's
peft section, and the activations autograd saves for backward, caught by a saved-tensors hook during a forward
pass of the decoder (norms upcast to float32, LoRA's dropout copies and all). Dropout keeps a one-byte mask, as
training does on every device (torch's fused kernel on a GPU, tunesmith.models.dropout on CPU; torch's own dropout
on the meta device would keep a float one), or is off, as TRL's DPO, KTO and reward trainers and tunesmith's PPO
turn it off. Attention runs through a stand-in
that saves what the memory-efficient kernels (sdpa, FlashAttention) save, linear in the sequence length;
eager attention runs as it is and saves its (heads x T x T) scores.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from tunesmith.config import ModelConfig, PeftConfig, looks_local
from tunesmith.errors import TunesmithError
from tunesmith.plan.estimate import Profile, quantized_bytes

# Configs of well-known models (config.json as the hub has it), for planning offline: named org--name.json.
SHIPPED = Path(__file__).parent / "configs"

# The attention the planner builds models with: a memory-efficient kernel's stand-in, or eager attention itself.
STAND_IN, EAGER = "tunesmith_plan_memory_efficient", "tunesmith_plan_eager"


def shipped_ids() -> list[str]:
    return sorted(file.stem.replace("--", "/") for file in SHIPPED.glob("*.json"))


def read_config(cfg: ModelConfig):
    """(the model's transformers config, where it was read), from the config alone: a folder's config.json, a GGUF
    file's metadata, a run's base, a config shipped with tunesmith, the Hugging Face cache or hub (config.json only),
    or the GGUF a package ships for the demo model."""
    from transformers import AutoConfig

    from tunesmith.models.load import packaged_gguf
    from tunesmith.runs import RunDir, is_run_dir

    path = Path(cfg.path).expanduser()
    if is_run_dir(path):
        run = RunDir(path)
        if (run.path / "model" / "config.json").is_file():
            return read_config(ModelConfig(path=str(run.path / "model"), trust_remote_code=cfg.trust_remote_code))
        config, where = read_config(run.recipe().model)
        return config, f"{where}, the base of run {cfg.path}"
    if path.suffix == ".gguf" or (path.is_dir() and cfg.gguf_file):
        file = path / cfg.gguf_file if cfg.gguf_file else path
        return gguf_config(file), f"the metadata of {file}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunesmithError(f"model.path: {path} has no config.json (not a transformers model folder)")
        return _auto_config(str(path), cfg), str(path / "config.json")
    if looks_local(cfg.path):
        raise TunesmithError(f"model.path: {cfg.path} does not exist (a model folder, a .gguf file, a run or a hub id)")
    shipped = SHIPPED / f"{cfg.path.replace('/', '--')}.json"
    if shipped.is_file() and cfg.revision is None:
        return AutoConfig.from_pretrained(str(shipped)), f"the config of {cfg.path} shipped with tunesmith"
    try:
        return AutoConfig.from_pretrained(cfg.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code), f"{cfg.path}'s config.json"
    except OSError as err:
        packaged = packaged_gguf(cfg.path)
        if packaged is not None:
            return gguf_config(packaged), f"the metadata of {packaged.name} (the GGUF shipped for {cfg.path})"
        raise TunesmithError(
            f"model {cfg.path!r}: no config.json in the Hugging Face cache and the hub cannot be reached "
            f"({err.__class__.__name__}); give a local folder with its config.json, or one of the configs shipped for "
            f"planning offline: {', '.join(shipped_ids())}"
        ) from None
    except ValueError as err:
        raise TunesmithError(f"model {cfg.path!r}: {' '.join(str(err).split())}") from None


def _auto_config(path: str, cfg: ModelConfig):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise TunesmithError(f"{Path(path) / 'config.json'}: {' '.join(str(err).split())}") from None


def gguf_config(file: Path):
    """The transformers config a GGUF file's metadata describes (its header only: the tensors are not read)."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    if not file.is_file():
        raise TunesmithError(f"model.path: GGUF file not found: {file}")
    with file.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise TunesmithError(f"{file}: not a GGUF file (a GGUF file starts with the bytes 'GGUF')")
    try:
        values = load_gguf_checkpoint(str(file), return_tensors=False)["config"]
        values.pop("_model_name_or_path", None)
        return AutoConfig.for_model(**values)
    except Exception as err:  # an architecture or a version of the format transformers cannot read
        raise TunesmithError(f"{file}: cannot read this GGUF file's metadata: {err.__class__.__name__}: {' '.join(str(err).split())}") from None


def measure(config, dtype: str, quantization: str = "none", double_quant: bool = True, peft: PeftConfig | None = None,
            attention: str | None = None, head: str = "causal_lm", dropout: bool = True) -> Profile:
    """The Profile of this model loaded in `dtype` (the compute dtype under quantisation), quantised, and wrapped in
    the adapters of `peft` (None or method none: full fine-tuning); attention: the recipe's model.attn_implementation;
    dropout: False where the method trains with every dropout at p = 0."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    _register_stand_in()
    torch_dtype = getattr(torch, dtype)
    config = copy.deepcopy(config)
    if head == "reward":
        config.num_labels = 1
    auto = AutoModelForSequenceClassification if head == "reward" else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            model = auto.from_config(config, dtype=torch_dtype, attn_implementation=EAGER if attention == "eager" else STAND_IN)
    except (ValueError, KeyError, TypeError) as err:
        raise TunesmithError(f"cannot build a {config.model_type} model from its config: {' '.join(str(err).split())}") from None
    quantized = _quantized_linears(model) if quantization != "none" else {}
    for module in quantized.values():
        module.__class__ = _QuantizedLinear  # still an nn.Linear, so PEFT wraps it as it wraps bitsandbytes' layers
    if quantization != "none" and torch_dtype != torch.float32:
        # peft.prepare_model_for_kbit_training casts every weight bitsandbytes left alone to float32.
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[0] not in quantized:
                param.data = param.data.float()
    quantized_weights = {id(m.weight) for m in quantized.values()}
    base_weights = 0
    for param in model.parameters():
        if id(param) in quantized_weights:
            base_weights += quantized_bytes(param.numel(), quantization, double_quant)
        else:
            base_weights += param.numel() * param.element_size()
    adapters = peft is not None and peft.method != "none"
    wrapped = adapters and peft.method != "adapter"  # a PeftModel; tunesmith's bottleneck adapters hook the model itself
    if adapters:
        from peft import get_peft_model

        from tunesmith.models.peft import check_target_modules, peft_config

        model.requires_grad_(False)
        if peft.method == "adapter":
            from tunesmith.models import bottleneck

            model = bottleneck.add_adapters(model, peft, False)
        else:
            check_target_modules(model, peft.target_modules, peft.modules_to_save)
            shapes_only = peft.model_copy(update={"init": "default"})  # pissa/olora's SVD needs the weights; the shapes are LoRA's
            model = get_peft_model(model, peft_config(shapes_only, model, "SEQ_CLS" if head == "reward" else "CAUSAL_LM"))
    model.train()
    _dropout_as_trained(model, dropout)
    params = list(model.parameters())
    trainable = tuple((p.numel(), p.shape[0] if p.dim() > 1 else 1, p.element_size()) for p in params if p.requires_grad)
    body = model.get_base_model().base_model if wrapped else model.base_model
    text = config.get_text_config()
    layers = _decoder_layers(body, text.num_hidden_layers)
    short, long = (_saved_per_token(body, layers, params, tokens) for tokens in (32, 64))
    per_seq = (long[0] - short[0]) / 32  # eager attention's scores grow with the sequence; everything else does not
    head_module = model.get_output_embeddings() if head != "reward" else None
    return Profile(
        parameters=sum(p.numel() for p in params),
        weight_bytes=base_weights,
        trainable=trainable,
        adapter_bytes=sum(n * size for n, _, size in trainable) if adapters else 0,
        dtype_bytes=torch_dtype.itemsize,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        layers=len(layers),
        head_trainable=head_module is not None and head_module.weight.requires_grad,
        act_layer=short[0] - per_seq * 32,
        act_layer_per_seq=per_seq,
        act_input=short[1],
        act_outside=short[2],
        largest_quantized=max((m.weight.numel() for m in quantized.values()), default=0),
    )


def _saved_per_token(body, layers, params, tokens: int) -> tuple[float, float, float]:
    """(bytes saved per token inside one decoder layer, of one layer's input, outside the layers), from one forward
    pass of `tokens` tokens through the decoder on the meta device."""

    owned = {p.untyped_storage()._cdata for p in params}
    saved: dict[int, tuple[int, bool]] = {}
    inputs: list[int] = []
    inside = [False]

    def pack(tensor):
        key = tensor.untyped_storage()._cdata
        if key not in owned and key not in saved:
            saved[key] = (tensor.untyped_storage().nbytes(), inside[0])
        return tensor

    def enter(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs.append(hidden.numel() * hidden.element_size())
        inside[0] = True

    def leave(module, args, kwargs, output):
        inside[0] = False

    hooks = [layer.register_forward_pre_hook(enter, with_kwargs=True) for layer in layers]
    hooks += [layer.register_forward_hook(leave, with_kwargs=True) for layer in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
            embeds = body.get_input_embeddings()(ids)
            if not embeds.requires_grad:
                embeds.requires_grad_(True)  # as enable_input_require_grads makes it under adapters and checkpointing
            body(inputs_embeds=embeds, attention_mask=torch.ones(1, tokens, dtype=torch.long, device="meta"), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    within = sum(size for size, in_layer in saved.values() if in_layer)
    outside = sum(size for size, in_layer in saved.values() if not in_layer)
    return within / len(layers) / tokens, inputs[0] / tokens, outside / tokens


class _PlannedDropout(torch.nn.Dropout):
    """Dropout saving a one-byte mask for backward, on the meta device too."""

    def forward(self, x):
        from tunesmith.models.dropout import _Dropout

        return _Dropout.apply(x, self.p) if self.training else x


def _dropout_as_trained(model, on: bool) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Dropout and 0 < child.p < 1:
                if on:
                    setattr(parent, name, _PlannedDropout(child.p).train(child.training))
                else:
                    child.p = 0.0  # as trl.trainer.utils.disable_dropout_in_model


def _decoder_layers(body, count: int):
    for module in body.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    raise TunesmithError(f"cannot find the {count} decoder layers of this {type(body).__name__} (num_hidden_layers)")


def _quantized_linears(model) -> dict:
    """The linear layers bitsandbytes would quantise, by name: all but the output head (and tied weights)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    keep = set(get_keys_to_not_convert(model))
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not any(name == k or name.startswith(k + ".") for k in keep)}


class _QuantizedLinear(torch.nn.Linear):
    """A 4/8-bit layer as it computes: its input cast to the compute dtype, its weight dequantised to it."""

    def forward(self, x):
        return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias)


class _MemoryEfficient(torch.autograd.Function):
    """What FlashAttention and sdpa's memory-efficient kernels keep for backward: q, k, v, the output and a float32
    log-sum-exp per head and query. (B, heads, T, d) in, (B, T, heads, d) out."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
        lse = query.new_empty(query.shape[:3], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("the planner's stand-in attention only counts memory")


def _attend(module, query, key, value, attention_mask, **kwargs):
    return _MemoryEfficient.apply(query, key, value), None


def _eager(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Eager attention as the modeling files write it: key and value repeated to every head, the (T x T) scores
    softmaxed in float32 and cast back."""
    repeat = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _register_stand_in() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(STAND_IN, _attend)
    AttentionInterface.register(EAGER, _eager)
    # No mask: building one reads values, which meta tensors have none of; the memory kept does not depend on it.
    for name in (STAND_IN, EAGER):
        AttentionMaskInterface.register(name, _no_mask)


def _no_mask(*args, **kwargs):
    return None
