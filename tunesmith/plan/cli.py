"""`tunesmith plan`: will this recipe fit, and what to change when it does not.

    tunesmith plan RECIPE.yaml [--device h100-80gb | --memory 24GiB] [--world-size 8 --distributed fsdp] [key=value ...]
    tunesmith plan --table [--model ID ...] [--max-length 2048 --batch-size 1]

Reads the model's config only (tunesmith.plan.profile); the arithmetic is tunesmith.plan.estimate's.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, replace
from pathlib import Path

from tunesmith.errors import TunesmithError

# Memory a training process can use on each device, as nvidia-smi reports the total (MiB).
DEVICES = {"h100-80gb": 81559, "a100-80gb": 81920, "a100-40gb": 40960, "l40s": 46068, "rtx-4090": 24564, "rtx-3090": 24576,
           "a10g": 23028, "l4": 23034, "t4": 15360, "cpu": None}
DISTRIBUTED = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
# The 7B/13B/70B table: one family with all three sizes.
TABLE_MODELS = ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf")
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20, "g": 2**30, "gb": 10**9,
         "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def add_parser(sub) -> None:
    from tunesmith.cli import command

    p = command(sub, "plan", "will a recipe fit? its peak memory from the config",
                "tunesmith plan recipes/quickstart.yaml --device rtx-4090\n"
                "tunesmith plan recipes/sft_full.yaml train.batch_size=4 --memory 24GiB\n"
                "tunesmith plan recipes/sft_full.yaml --device h100-80gb --world-size 8 --distributed fsdp\n"
                "tunesmith plan --table --model meta-llama/Llama-3.1-8B --max-length 4096",
                "Estimates the peak training memory of a recipe from the model's config alone (no weights are read): "
                "weights, adapters, gradients, optimizer states, activations and the loss, for the recipe's batch and "
                "length; whether it fits the device, the largest micro-batch that does, and what to change. With --table: "
                "full, LoRA and QLoRA for 7B, 13B and 70B models (or the --model ones).")
    p.add_argument("recipe", nargs="?", help="the recipe to plan")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for train: train.batch_size=4")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--device", help=f"the device to fit: {', '.join(DEVICES)} (default: this machine's GPU, else cpu: its RAM)")
    where.add_argument("--memory", help="memory of the GPU to fit, e.g. 24GiB, 16GB, 40960MiB")
    p.add_argument("--world-size", type=int, default=None, help="GPUs (processes) training together (default 1)")
    p.add_argument("--distributed", choices=DISTRIBUTED,
                   help="how they share the model: ddp replicates everything; deepspeed_zero2 shards gradients and optimizer "
                   "states; fsdp and deepspeed_zero3 shard the weights too (default: ddp when --world-size > 1)")
    p.add_argument("--table", action="store_true", help="print full / LoRA / QLoRA peaks for 7B, 13B and 70B models, or the --model ones")
    p.add_argument("--model", action="append", default=[], metavar="ID",
                   help="with --table: a hub id, model folder or .gguf file (repeatable); offline, shipped configs: "
                   "see tunesmith/plan/configs")
    p.add_argument("--max-length", type=int, default=2048, help="with --table: tokens per example (default: 2048)")
    p.add_argument("--batch-size", type=int, default=1, help="with --table: examples per micro-batch (default: 1)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="with --table: whether training recomputes activations (default: True)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> None:
    capacity, device = parse_target(args.device, args.memory)
    world, distributed = parse_world(args.world_size, args.distributed)
    if args.table or args.model:
        if args.recipe:
            raise TunesmithError("plan: give a recipe, or --table [--model ID ...], not both")
        for flag, value in (("--max-length", args.max_length), ("--batch-size", args.batch_size)):
            if value <= 0:
                raise TunesmithError(f"plan {flag}: {value} is not a whole number > 0")
        print(table(args.model or list(TABLE_MODELS), device, capacity, args.max_length, args.batch_size,
                    args.gradient_checkpointing, world, distributed))
        return
    if not args.recipe:
        raise TunesmithError("plan: give a recipe (tunesmith plan recipes/quickstart.yaml), or --table")
    from tunesmith.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides, check_files=False)
    if args.distributed is None and recipe.train.distributed != "none":
        world, distributed = parse_world(args.world_size, recipe.train.distributed, "the recipe's train.distributed")
    print(plan_recipe(recipe, args.recipe, device, capacity, world, distributed))


def parse_memory(text: str) -> int:
    """'24GiB' -> bytes. G, M, K without i are binary too (GiB, MiB, KiB), as nvidia-smi and free use them."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if unit not in UNITS or float(match.group(1)) <= 0:
        raise TunesmithError(f"--memory {text!r}: expected a size such as 24GiB, 16GB or 40960MiB")
    return int(float(match.group(1)) * UNITS[unit])


def parse_target(device: str | None, memory: str | None) -> tuple[int, str]:
    """(bytes available, the device's name) for --device or --memory; neither: this machine's GPU, else its RAM."""
    if memory is not None:
        return parse_memory(memory), "gpu"
    if device is None:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
        device = "cpu"
    if device not in DEVICES:
        raise TunesmithError(f"--device {device!r}: not one of {', '.join(DEVICES)} (or give --memory 24GiB)")
    return (DEVICES[device] * 2**20 if DEVICES[device] else ram()), device


def ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise TunesmithError("--device cpu: cannot read the memory size from /proc/meminfo; give --memory")


def parse_world(world_size: int | None, distributed: str | None, named: str = "--distributed") -> tuple[int, str]:
    if world_size is not None and world_size <= 0:
        raise TunesmithError(f"--world-size: {world_size} is not a whole number > 0")
    world = world_size or 1
    if distributed and world == 1:
        raise TunesmithError(f"{named} {distributed}: shards across processes; give --world-size (the number of GPUs)")
    return world, distributed or ("ddp" if world > 1 else "none")


def native_bf16_cpu() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(name: str, device: str) -> str:
    """model.dtype as tunesmith.models.load resolves it on that device: auto is bfloat16 on GPUs (emulated on a T4,
    as torch reports it supported) and on CPUs with native bf16, float32 elsewhere."""
    if name != "auto":
        return name
    return "bfloat16" if device != "cpu" or native_bf16_cpu() else "float32"


@dataclass
class Case:
    """One recipe, as the planner varies it."""

    method: str
    peft: object           # tunesmith.config.PeftConfig
    model: object          # tunesmith.config.ModelConfig
    batch_size: int
    grad_accum: int
    max_length: int
    budgeted: bool              # sft packed or grouped: micro-batches of a token budget, not of batch_size examples
    tokens_budget: int | None   # that budget (train.max_tokens_per_batch); None: batch_size x max_length, the most it can be
    checkpointing: bool
    optimizer: str
    reference: str
    extra_tokens: int = 0       # ppo/grpo: the generated tokens after each prompt

    @property
    def quantization(self) -> str:
        return self.model.quantization


def case_of(recipe) -> Case:
    from tunesmith.methods.steps import reference_mode

    t = recipe.train
    budgeted = recipe.method == "sft" and (t.packing or t.group_by_length)
    section = recipe.method_config
    extra = section.max_new_tokens if recipe.method in ("ppo", "grpo") else 0
    if recipe.method in ("dpo", "kto", "ppo"):
        reference = reference_mode(recipe)
    elif recipe.method == "grpo":
        reference = "none" if section.beta == 0 else ("copy" if recipe.peft.method == "none" else "adapters_off")
    else:
        reference = "none"
    return Case(recipe.method, recipe.peft, recipe.model, t.batch_size, t.grad_accum, recipe.data.max_length, budgeted,
                t.max_tokens_per_batch if budgeted else None, t.gradient_checkpointing, t.optimizer, reference, extra)


# Sequences per example each method runs forward: a pair's two replies; kto's completion and its KL counterpart.
SEQUENCES = {"sft": 1, "dpo": 2, "kto": 2, "reward": 2, "ppo": 1, "grpo": 1}


def setup_of(case: Case, device: str, world: int, distributed: str):
    from tunesmith.plan.estimate import Setup

    per_example = (case.max_length + case.extra_tokens) * SEQUENCES[case.method]
    tokens = case.tokens_budget if case.tokens_budget else case.batch_size * per_example
    packed = case.budgeted and case.tokens_budget is not None
    loss = "chunked" if case.method == "sft" else "head" if case.method == "reward" else "logits"
    seq = case.max_length + case.extra_tokens
    return Setup(tokens=tokens, seq=tokens if packed and case.model.attn_implementation == "eager" else seq,
                 checkpointing=case.checkpointing, optimizer=case.optimizer, grad_accum=case.grad_accum, loss=loss,
                 reference=case.reference, world_size=world, distributed=distributed, cuda=device != "cpu",
                 mask=mask_bytes(case, tokens, tokens if packed else seq, device, packed))


def mask_bytes(case: Case, tokens: int, span: int, device: str, packed: bool = False) -> int:
    """The attention mask transformers builds before the first layer: a boolean per query and key for sdpa, the
    compute dtype's additive mask for eager, none for FlashAttention, and none for a packed row under sdpa, which
    tunesmith's packed sdpa attends one example at a time without it (tunesmith.models.attention; a model with
    remote code may not let its attention be switched, and is counted with the mask). `span`: the keys each query
    is masked against (a packed row's whole length, a padded batch's width). A padded batch without padding needs
    none; it is counted anyway, as the batch with the most padding has one."""
    attention = case.model.attn_implementation
    if attention == "flash_attention_2" or (packed and attention in (None, "sdpa") and not case.model.trust_remote_code):
        return 0
    size = 1 if attention != "eager" else {"float32": 4}.get(compute_dtype(case, device), 2)
    return tokens * span * size


def compute_dtype(case: Case, device: str) -> str:
    m = case.model
    return resolve_dtype(m.compute_dtype if case.quantization == "4bit" and m.compute_dtype != "auto" else m.dtype, device)


# Methods that train with every dropout at p = 0: TRL's DPO, KTO and reward trainers (disable_dropout, on by default
# and left on), tunesmith's PPO (methods/ppo.py). SFT and GRPO keep the model's and LoRA's dropout.
DROPOUT_OFF = ("dpo", "kto", "reward", "ppo")


class Profiles:
    """Profiles of one model config, measured once per (dtype, quantisation, adapters)."""

    def __init__(self, config, device: str):
        self.config, self.device, self.cache = config, device, {}

    def __call__(self, case: Case):
        from tunesmith.plan.profile import measure

        m = case.model
        dtype = compute_dtype(case, self.device)
        dropout = case.method not in DROPOUT_OFF
        key = (dtype, case.quantization, m.double_quant, case.peft.model_dump_json(), m.attn_implementation, case.method == "reward", dropout)
        if key not in self.cache:
            self.cache[key] = measure(self.config, dtype, case.quantization, m.double_quant, case.peft, m.attn_implementation,
                                      "reward" if case.method == "reward" else "causal_lm", dropout)
        return self.cache[key], dtype


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def plan_recipe(recipe, path: str, device: str, capacity: int, world: int, distributed: str) -> str:
    from tunesmith.plan.estimate import estimate
    from tunesmith.plan.profile import read_config

    config, where = read_config(recipe.model)
    profiles = Profiles(config, device)
    case = case_of(recipe)
    profile, dtype = profiles(case)
    setup = setup_of(case, device, world, distributed)
    result = estimate(profile, setup)
    trainable = sum(n for n, _, _ in profile.trainable)
    adapters = {"none": "full fine-tuning", "lora": f"LoRA r={case.peft.r}", "qlora": f"QLoRA r={case.peft.r}"}.get(case.peft.method, f"peft.method {case.peft.method}")
    weights = dtype if case.quantization == "none" else f"{case.quantization} ({case.model.quant_type if case.quantization == '4bit' else 'LLM.int8'}), computing in {dtype}"
    lines = [
        f"plan: {path} (method {recipe.method}, {adapters})",
        f"  model: {recipe.model.path}, read from {where} (no weights read)",
        f"  {profile.parameters / 1e6:,.1f}M parameters, {trainable / 1e6:,.2f}M trainable; weights {weights}",
        f"  {micro_batch(case, setup)}",
        f"  device: {device}, {gib(capacity)}" + (f" each, {world} processes ({distributed})" if world > 1 else ""),
        "",
    ]
    for name, size, how in result.parts:
        lines.append(f"  {name:16} {gib(size):>11}  {how}")
    if recipe.method == "ppo":
        lines.append("  (ppo: the reward and value models, and generation's KV cache, come on top)")
    elif recipe.method == "grpo":
        lines.append("  (grpo: generation's KV cache comes on top)")
    verdict = "fits" if result.peak <= capacity else "does not fit"
    lines += ["", f"  peak {gib(result.peak)} of {gib(capacity)}: {verdict}"
              + (f" ({gib(capacity - result.peak)} to spare)" if result.peak <= capacity else f" ({gib(result.peak - capacity)} over)")]
    lines.append("  " + largest(profile, case, setup, capacity, device, world, distributed))
    if result.peak > capacity:
        lines += ["", "  what to change (each alone, then together):"]
        lines += [f"    {change:58} peak {gib(peak):>11}  {'fits' if peak <= capacity else 'does not fit'}"
                  for change, peak in changes(profiles, case, device, capacity, world, distributed)]
    return "\n".join(lines)


def micro_batch(case: Case, setup) -> str:
    if case.tokens_budget:
        return f"micro-batch: {setup.tokens:,} tokens (train.max_tokens_per_batch), x{case.grad_accum} accumulated"
    if case.budgeted:
        return (f"micro-batch: up to {setup.tokens:,} tokens (train.batch_size {case.batch_size} x data.max_length {case.max_length}: the "
                f"most tunesmith plans without train.max_tokens_per_batch), x{case.grad_accum} accumulated")
    seqs = SEQUENCES[case.method]
    return (f"micro-batch: {case.batch_size} x {seqs} sequence{'s' if seqs > 1 else ''} of up to {case.max_length + case.extra_tokens:,} "
            f"tokens = {setup.tokens:,} tokens, x{case.grad_accum} accumulated")


def largest(profile, case: Case, setup, capacity: int, device: str, world: int, distributed: str) -> str:
    from tunesmith.plan.estimate import largest_tokens

    if case.budgeted:
        tokens = largest_tokens(profile, setup, capacity, 64)
        if tokens < case.max_length:
            return f"largest that fits: no micro-batch of one {case.max_length}-token example (under {tokens:,} tokens fit)"
        return f"largest that fits: train.max_tokens_per_batch={tokens:,} ({tokens // case.max_length} examples of data.max_length)"
    per_example = setup.tokens // case.batch_size
    tokens = largest_tokens(profile, setup, capacity, per_example)
    if not tokens:
        return "largest that fits: none, not even train.batch_size=1"
    return f"largest that fits: train.batch_size={tokens // per_example}"


def changes(profiles: Profiles, case: Case, device: str, capacity: int, world: int, distributed: str) -> list[tuple[str, int]]:
    """The usual ways to save memory that apply to this case, each with its peak, then all of them together."""
    from tunesmith.plan.estimate import estimate

    options = []
    if not case.checkpointing:
        options.append(("train.gradient_checkpointing=true", {"checkpointing": True}))
    if case.optimizer in ("adamw", "paged_adamw_32bit"):
        options.append(("train.optimizer=adamw_8bit", {"optimizer": "adamw_8bit"}))
    if case.reference == "copy":
        options.append((f"{case.method}.precompute_reference=true", {"reference": "precomputed"}))
    if case.peft.method == "none":
        options.append(("peft.method=lora", {"peft": case.peft.model_copy(update={"method": "lora"})}))
    if case.peft.method != "qlora":
        model = case.model.model_copy(update={"quantization": "4bit"})
        options.append(("peft.method=qlora", {"peft": case.peft.model_copy(update={"method": "qlora"}), "model": model}))
    if case.max_length > 256:
        half = case.max_length // 2
        update = {"max_length": half}
        if case.tokens_budget:
            update["tokens_budget"] = max(half, case.tokens_budget // 2)
        options.append((f"data.max_length={half}" + (f" train.max_tokens_per_batch={update['tokens_budget']}" if case.tokens_budget else ""), update))
    if case.batch_size > 1 and not case.tokens_budget:
        accum = case.grad_accum * case.batch_size
        options.append((f"train.batch_size=1 train.grad_accum={accum}", {"batch_size": 1, "grad_accum": accum}))

    def peak(changed: Case) -> int:
        profile, _ = profiles(changed)
        return estimate(profile, setup_of(changed, device, world, distributed)).peak

    rows = [(text, peak(replace(case, **update))) for text, update in options]
    together: dict = {}
    for _, update in options:
        together |= update
    if len(options) > 1:
        rows.append(("all of the above", peak(replace(case, **together))))
    return rows


def table(models: list[str], device: str, capacity: int, max_length: int, batch_size: int, checkpointing: bool,
          world: int, distributed: str) -> str:
    """Peak memory of full fine-tuning, LoRA and QLoRA (AdamW, bf16, r=16 on all linear layers, NF4) per model."""
    from tunesmith.config import ModelConfig, PeftConfig
    from tunesmith.plan.estimate import estimate
    from tunesmith.plan.profile import read_config

    methods = {"full": ("none", "adamw"), "LoRA": ("lora", "adamw"), "QLoRA": ("qlora", "adamw")}
    header = (f"peak training memory, {batch_size} x {max_length} tokens, {'with' if checkpointing else 'without'} gradient "
              f"checkpointing, AdamW, bf16 (QLoRA: NF4, double quant), LoRA r=16 on all linear layers"
              + (f", {world} GPUs ({distributed})" if world > 1 else "") + f"; fits {device} ({gib(capacity)})? *: no")
    lines = [header, "", f"{'model':36} {'parameters':>11} " + " ".join(f"{name:>11}" for name in methods)]
    for model_id in models:
        model = ModelConfig(path=model_id, dtype="bfloat16")
        config, _ = read_config(model)
        profiles = Profiles(config, "gpu" if device == "cpu" else device)
        cells, parameters = [], 0
        for peft_method, optimizer in methods.values():
            quantized = model.model_copy(update={"quantization": "4bit" if peft_method == "qlora" else "none"})
            case = Case("sft", PeftConfig(method=peft_method), quantized, batch_size, 1, max_length, False, None, checkpointing,
                        optimizer, "none")
            profile, _ = profiles(case)
            parameters = parameters or profile.parameters
            peak = estimate(profile, setup_of(case, device, world, distributed)).peak
            cells.append(f"{peak / 2**30:9.1f}G{'*' if peak > capacity else ' '}")
        lines.append(f"{model_id:36} {parameters / 1e9:10.2f}B " + " ".join(cells))
    return "\n".join(lines)
