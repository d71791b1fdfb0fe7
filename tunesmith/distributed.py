"""Training on several processes (GPUs): the same `tunesmith train`, under torchrun or accelerate launch.

    tunesmith train recipe.yaml --nproc 4                          # spawns torchrun on this machine
    torchrun --nproc_per_node 4 -m tunesmith.cli train recipe.yaml
    accelerate launch --config_file recipes/distributed/fsdp.yaml -m tunesmith.cli train recipe.yaml

Every process runs the whole command; `train.distributed` picks the engine (DDP, FSDP, DeepSpeed ZeRO-2/3, with
the configs under recipes/distributed/), or an accelerate config file does. What differs by rank:

- rank 0 alone opens the run directory, reads and checks the data and plans the batches (the preflight), and
  hands the tokenized rows and the plan to the others, so every rank trains on the same rows;
- rank 0 alone writes: metrics.jsonl, progress.json, the data report, checkpoints' shared files, the final
  weights and report.md; the progress bar and the terminal lines are its own too;
- each rank trains on a disjoint share of every step's batches: sft's planned batches are dealt out round-robin
  (accelerate's BatchSamplerShard), the last step of an epoch topped up with empty fillers (no trained token)
  rather than with repeated batches, so that N processes train on exactly the batches of one process with
  N times the gradient accumulation, and the loss is divided by the global count of the step's trained tokens.

Environment variables set by the launcher (RANK, WORLD_SIZE) say which process this is; nothing here imports
torch until a process group is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tunesmith.errors import ConfigError, TunesmithError

T = TypeVar("T")

# The shipped engine configs (recipes/distributed/), for TrainingArguments.
CONFIGS = {
    "fsdp": "recipes/distributed/fsdp.json",
    "deepspeed_zero2": "recipes/distributed/zero2.json",
    "deepspeed_zero3": "recipes/distributed/zero3.json",
}
# Methods whose trainers accelerate distributes; ppo runs a loop of its own on one process.
METHODS = ("sft", "dpo", "kto", "reward", "grpo")

# The item an sft rank trains on when the epoch has no batch left for it: one token, no label.
FILLER = {"input_ids": [0], "labels": [-100]}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def engine(recipe, processes: int | None = None) -> str:
    """The engine this run uses: train.distributed, or what `accelerate launch --config_file` selected, or ddp
    for several processes (none for one). Refuses a recipe and a launcher that disagree, a method that cannot run
    distributed, and an engine this machine cannot run. `processes`: the run's, when this is not one of them yet
    (train --nproc, before it launches them)."""
    processes = world_size() if processes is None else processes
    chosen, launched = recipe.train.distributed, launcher_engine()
    if launched and chosen != "none" and not chosen.startswith(launched):
        raise ConfigError(
            f"train.distributed: {chosen!r}, but the accelerate config this was launched with selects {launched}; "
            "keep one of them (train.distributed: none follows the accelerate config)"
        )
    if chosen == "none" or launched:
        chosen = launched or ("ddp" if processes > 1 else "none")
    if chosen != "none" and recipe.method not in METHODS:
        raise ConfigError(
            f"train.distributed: method {recipe.method!r} trains on one process only (its own loop, not a Trainer "
            f"accelerate distributes); run it without a launcher, or use one of {', '.join(METHODS)}"
        )
    if chosen in ("fsdp", "deepspeed_zero3") and recipe.peft.method == "adapter":
        # tunesmith's bottleneck adapters are saved from the model on rank 0, which sharding leaves without them
        raise ConfigError(
            f"train.distributed: {chosen!r} shards the weights, which peft.method 'adapter' (tunesmith's bottleneck adapters) "
            "cannot be saved from; use ddp or deepspeed_zero2, or a PEFT method such as lora"
        )
    if chosen.startswith(("fsdp", "deepspeed")) and not accelerators_present():
        # accelerate sets FSDP and DeepSpeed up on GPUs (and other accelerators) only: on CPU processes it would
        # train DDP under a run that says fsdp
        raise ConfigError(
            f"train.distributed: {chosen!r} needs GPUs, and this machine has none: accelerate runs FSDP and DeepSpeed on "
            "accelerators only, and on CPU processes would train DDP instead; use train.distributed: ddp (or none) here"
        )
    if chosen == "ddp" and processes == 1:
        raise ConfigError(
            "train.distributed: 'ddp' needs several processes, and this is one: run tunesmith train ... --nproc N "
            "(or torchrun --nproc_per_node N -m tunesmith.cli train ...), or set train.distributed: none"
        )
    return chosen


def accelerators_present() -> bool:
    """Whether torch sees a GPU or another accelerator that accelerate distributes over (Apple's MPS is not one)."""
    import torch

    return torch.accelerator.is_available() and torch.accelerator.current_accelerator().type != "mps"


def launcher_engine() -> str | None:
    """fsdp or deepspeed[_zeroN] when an accelerate config file chose it (accelerate launch passes it on in the
    environment), else None."""
    on = ("1", "true", "yes")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in on:
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in on:
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return f"deepspeed_zero{stage}" if stage else "deepspeed"
    return None


def trainer_arguments(recipe) -> dict:
    """What TrainingArguments needs for train.distributed: the shipped FSDP or DeepSpeed config. Nothing for
    DDP, which accelerate sets up from the launcher's environment (gloo on CPUs, nccl on GPUs), nor under an
    accelerate config file that chose the engine: transformers reads that one from the environment."""
    from tunesmith.shipped import locate

    name = engine(recipe)
    if launcher_engine() or name not in CONFIGS:
        return {}
    path = locate(CONFIGS[name])
    if name == "fsdp":
        return {"fsdp": True, "fsdp_config": json.loads(open(path, encoding="utf-8").read())}
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise TunesmithError(f"train.distributed: {name!r} needs DeepSpeed: pip install deepspeed (on a machine with CUDA)")
    return {"deepspeed": path}


def describe(recipe) -> str | None:
    """The line the run starts with when it runs on several processes (None on one)."""
    name = engine(recipe)
    if name == "none":
        return None
    from accelerate import PartialState

    return f"distributed: {name} over {world_size()} processes ({PartialState().backend})"


def shards_weights(trainer) -> bool:
    """Whether each rank holds a shard of the weights only (FSDP, ZeRO-3): the final model must then be gathered
    from all of them before rank 0 saves it."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return trainer.is_fsdp_enabled or (trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled())


def init() -> None:
    """The process group, as accelerate (and so the Trainer) will use it: created once, from the launcher's environment."""
    import torch
    from accelerate import PartialState
    from transformers.utils import logging

    PartialState(cpu=not torch.cuda.is_available())  # the Trainer's use_cpu, so that it finds the same state
    if not is_main():
        logging.disable_progress_bar()  # loading bars: rank 0 shows its own


def on_main(work: Callable[[], T], shared: Callable[[T], object] = lambda value: value) -> T:
    """work() on rank 0 alone; every other rank gets shared(its result) instead, or stops when it failed (rank 0
    says why)."""
    if world_size() == 1:
        return work()
    import torch.distributed as dist

    init()
    if is_main():
        try:
            value = work()
        except BaseException:
            dist.broadcast_object_list([("failed", None)], src=0)
            raise
        dist.broadcast_object_list([("done", shared(value))], src=0)
        return value
    box = [None]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "failed":
        raise TunesmithError(f"rank {rank()}: stopped, as rank 0 did (its error is above)")
    return value


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank: so that every rank stops (and saves) at the same step."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def topped_up(order: list[int], shards: int, filler: int) -> list[int]:
    """`order` followed by as many `filler`s as make its length a multiple of `shards` (processes × items per
    micro-batch), so the round-robin deal gives every process a micro-batch at every step, and repeats nothing."""
    return order + [filler] * (-len(order) % shards)


def launch(nproc: int, argv: list[str]) -> int:
    """`tunesmith train ARGV` on `nproc` processes of this machine, through torchrun; its exit code."""
    if world_size() > 1:
        raise TunesmithError("train --nproc: this already runs under a launcher (WORLD_SIZE is set); leave out --nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "tunesmith.cli", "train", *argv]
    with tempfile.TemporaryDirectory(prefix="tunesmith-launch-") as folder:
        status = Path(folder) / "status"
        # torchrun gives the ranks 30 s after a signal before it kills them: too short to end a step and save a
        # large model's checkpoint.
        variables = {NPROC: str(nproc), STATUS: str(status),
                     "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "900")}
        code = run_launcher(command, os.environ | variables)
        # torchrun exits 1 when its ranks stopped, whatever their codes; rank 0 says when they stopped with a
        # checkpoint, so that this ends as a one-process run would (130: interrupted, continue with --resume).
        return 130 if code and status.is_file() and status.read_text() == "interrupted" else code


NPROC = "TUNESMITH_NPROC"  # set by launch() for its ranks: how to say "continue with ... --nproc N --resume"
STATUS = "TUNESMITH_LAUNCH_STATUS"  # set by launch(): the file rank 0 writes "interrupted" into when it stopped saved


def interrupted_under_launch() -> None:
    """In a rank launch() started, once training stopped at a signal with its checkpoint saved."""
    if rank() == 0 and (status := os.environ.get(STATUS)):
        Path(status).write_text("interrupted", encoding="utf-8")


def run_launcher(command: list[str], env: dict[str, str] | None = None) -> int:
    """Runs torchrun and waits for it, passing SIGTERM on: torchrun hands it to every rank, which saves a checkpoint
    at the end of its step and stops (`kill`, a scheduler or a queue worker signal this process alone; left at its
    default, this process would die and leave torchrun training on, orphaned). Ctrl-C reaches torchrun from the
    terminal by itself: here it is not passed on again, as a second one would stop the ranks without saving. A
    SIGKILL'd launcher takes torchrun down with a SIGTERM (the parent-death signal), so the ranks still save."""
    from tunesmith.experiments.worker import die_with_parent

    process = subprocess.Popen(command, env=env, preexec_fn=die_with_parent)
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum)),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
