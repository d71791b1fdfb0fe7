"""Every check that needs a GPU, in one run that fits a device lease (15 minutes in all, 10 a command): the code
paths written for GPUs and never run on the CPU machines (bf16 training, packed rows under sdpa and FlashAttention,
QLoRA with bitsandbytes, Liger's fused loss, torch.compile, FSDP and DeepSpeed with resume, the planner against
torch.cuda.max_memory_allocated). Run through bench/gpu/run.sh, which installs what bench/gpu/prepare.sh carried.

    python3 bench/gpu/checks.py [--out DIR] [--budget 480] [--only NAME,...] [--list]

Checks run in the order below, each in its own process with a time limit, until the budget is spent; the rest are
listed as not run (run them next time with --only). Writes gpu_checks.md (a table: check, result, figures),
gpu_checks.json and gpu_checks.log (every command's output) into --out. A check that fails says why and the run
goes on. Correctness runs use stories260K (a real pretrained Llama, 260K parameters); speed runs a randomly
initialised model of Qwen2.5-0.5B's shape (from the config shipped for planning, with stories260K's tokenizer),
since throughput and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORIES = Path(os.environ.get("TUNESMITH_STORIES", ROOT.parent / "shared" / "models" / "stories260K"))
LIGER = os.environ.get("TUNESMITH_LIGER_SITE", "/tmp/site-liger")  # run.sh installs Liger there, off the default path
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
DPO = ROOT / "recipes" / "dpo_tickets.yaml"
DEVICE = os.environ.get("TUNESMITH_CHECKS_DEVICE", "cuda")  # cpu: a dry run of the checks' own code, here
ON_STORIES = [f"model.path={STORIES}", "data.template=chatml", "data.eval=[]", "train.logging_steps=1"]


class Session:
    """The work folder, the deadline, the log and the results of one run of the checks."""

    def __init__(self, out: Path, budget: float):
        self.out, self.deadline = out, time.monotonic() + budget
        self.work = Path(tempfile.mkdtemp(prefix="gpu-checks-"))
        self.log = (out / "gpu_checks.log").open("w", encoding="utf-8")
        self.results: list[dict] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def command(self, name: str, argv: list[str], timeout: float, liger: bool = False) -> subprocess.CompletedProcess:
        """Run argv from the repository root with at most `timeout` seconds (and no more than the budget left)."""
        env = dict(os.environ)
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != LIGER]
        env["PYTHONPATH"] = os.pathsep.join(parts + ([LIGER] if liger else []))  # Liger is used wherever importable
        limit = max(5.0, min(timeout, self.left()))
        self.log.write(f"\n===== {name}: {' '.join(argv)}\n")
        self.log.flush()
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as err:
            text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            proc = subprocess.CompletedProcess(argv, 124, text, f"timed out after {limit:.0f} s")
        self.log.write(proc.stdout + proc.stderr + f"\n----- rc {proc.returncode}, {time.monotonic() - started:.1f} s\n")
        self.log.flush()
        return proc

    def child(self, name: str, timeout: float, liger: bool = False) -> tuple[object, str]:
        """(what `--child NAME` printed after RESULT, or None; the tail of its errors)."""
        proc = self.command(name, [sys.executable, __file__, "--child", name], timeout, liger)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        return (json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else None), proc.stderr[-1500:]

    def train(self, name: str, recipe: Path, overrides: list[str], timeout: float = 150, liger: bool = False,
              nproc: int | None = None, resume: bool = False, output: Path | None = None) -> dict:
        """`tunesmith train` as a user runs it; the run's figures from its metrics.jsonl."""
        output = output or self.work / name
        argv = [sys.executable, "-m", "tunesmith", "train", str(recipe), *overrides, f"output_dir={output}"]
        argv += ["--nproc", str(nproc)] if nproc else []
        argv += ["--resume"] if resume else []
        proc = self.command(name, argv, timeout, liger)
        run = {"rc": proc.returncode, "output": output, "tail": (proc.stderr or proc.stdout)[-1500:]}
        metrics = output / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
        steps = [r for r in records if "loss" in r and "step" in r]
        run["losses"] = [r["loss"] for r in steps]
        speeds = [r["tokens_per_s"] for r in steps[3:] if "tokens_per_s" in r]  # after the first steps' warm-up
        run["tokens_per_s"] = statistics.median(speeds) if speeds else None
        run["output_text"] = proc.stdout + proc.stderr
        return run


def record(session: Session, name: str, status: str, figures: dict | None = None, detail: str = "") -> None:
    session.results.append({"check": name, "status": status, "figures": figures or {}, "detail": detail})
    print(f"{name}: {status} {json.dumps(figures or {})} {detail[:300]}", flush=True)


def trained(run: dict) -> tuple[str, str]:
    """(status, detail) of a training run: it finished and its loss fell."""
    if run["rc"] != 0:
        return "fail", f"rc {run['rc']}: {run['tail']}"
    losses = run["losses"]
    if len(losses) < 2:
        return "fail", "fewer than 2 logged losses"
    if not all(map(math.isfinite, losses)):
        return "fail", f"a loss is not finite: {losses}"
    return ("pass", "") if losses[-1] < losses[0] else ("fail", f"loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")


def summary(run: dict) -> dict:
    losses = run["losses"]
    return {"first_loss": round(losses[0], 4) if losses else None, "last_loss": round(losses[-1], 4) if losses else None,
            "tokens_per_s": round(run["tokens_per_s"]) if run["tokens_per_s"] else None}


# ---- the checks, in the order they run -------------------------------------------------------------------------

def check_env(s: Session) -> None:
    figures, errors = s.child("env", 120)
    if figures is None:
        return record(s, "env", "fail", detail=errors)
    gpu = figures.get("cuda") or DEVICE == "cpu"
    record(s, "env", "pass" if gpu else "fail", figures, "" if gpu else "torch sees no GPU")


def check_packed_exact(s: Session) -> None:
    """Each packed example's log-probs equal its own alone, under each attention (float32 and bfloat16), and the
    check training runs before step 1 (a planted-leak detector) passes on the GPU."""
    rows, errors = s.child("packed_exact", 180)
    if rows is None:
        return record(s, "packed_exact", "fail", detail=errors)
    bad = [r for r in rows if r.get("status") == "fail"]
    record(s, "packed_exact", "fail" if bad else "pass", {"rows": rows}, f"{len(bad)} rows off" if bad else "")


def check_liger_kernel(s: Session) -> None:
    """Liger's fused linear cross-entropy against tunesmith's chunked one and the plain full-logits loss: loss and
    gradients, time and peak memory of a forward and backward (SmolLM2's vocabulary, 8k tokens)."""
    if not Path(LIGER).is_dir():
        return record(s, "liger_kernel", "skip", detail=f"Liger not installed at {LIGER} (bench/gpu/run.sh installs it)")
    rows, errors = s.child("liger_kernel", 180, liger=True)
    if rows is None:
        return record(s, "liger_kernel", "fail", detail=errors)
    bad = [r for r in rows if r["status"] == "fail"]
    record(s, "liger_kernel", "fail" if bad else "pass", {"rows": rows})


def speed_model(s: Session) -> Path:
    folder = s.work / "qwen05"
    if not folder.is_dir():
        proc = s.command("build qwen05", [sys.executable, __file__, "--child", "build_qwen05", "--folder", str(folder)], 180)
        if proc.returncode:
            raise RuntimeError(f"building the Qwen2.5-0.5B-shaped model failed: {proc.stderr[-800:]}")
    return folder


SPEED = ["data.template=chatml", "data.eval=[]", "train.logging_steps=1", "train.max_steps=24", "model.dtype=bfloat16"]


def check_sft_speed(s: Session) -> None:
    """bf16 LoRA SFT on the 0.5B-shaped model: packed (the default), length-grouped padded batches, packed with
    Liger's fused loss (used wherever Liger is importable on CUDA: tunesmith.losses), and packed with checkpointing;
    tokens/s of each and the loss of each falling."""
    model = speed_model(s)
    variants = [("packed", [], False), ("padded_grouped", ["train.packing=false"], False), ("packed_liger", [], True),
                ("packed_ckpt", ["train.gradient_checkpointing=true"], False)]
    figures, failed = {}, []
    for label, extra, liger in variants:
        if s.left() < 60:
            figures[label] = "not run (budget)"
            continue
        run = s.train(f"sft_speed_{label}", QUICKSTART, [f"model.path={model}", *SPEED, *extra], liger=liger)
        status, detail = trained(run)
        figures[label] = {**summary(run), "status": status}
        if status != "pass":
            failed.append(f"{label}: {detail}")
    record(s, "sft_speed_bf16", "fail" if failed else "pass", figures, "; ".join(failed))


def check_qlora(s: Session) -> None:
    model = speed_model(s)
    run = s.train("qlora_bf16", QUICKSTART, [f"model.path={model}", *SPEED, "peft.method=qlora"])
    status, detail = trained(run)
    record(s, "qlora_4bit", status, summary(run), detail)


def check_full_bf16(s: Session) -> None:
    run = s.train("full_bf16", QUICKSTART, [*ON_STORIES, "peft.method=none", "model.dtype=bfloat16", "train.max_steps=12", "train.lr=1e-4"])
    status, detail = trained(run)
    record(s, "full_bf16", status, summary(run), detail)


def check_compile(s: Session) -> None:
    model = speed_model(s)
    run = s.train("compile", QUICKSTART, [f"model.path={model}", *SPEED, "train.compile=true"], timeout=240)
    status, detail = trained(run)
    record(s, "torch_compile", status, summary(run), detail)


def check_dpo(s: Session) -> None:
    on_stories = [o for o in ON_STORIES if o != "data.eval=[]"]  # the recipe evaluates on its held-out pairs
    run = s.train("dpo_bf16", DPO, [*on_stories, "model.dtype=bfloat16", "train.max_steps=8"])
    status = "pass" if run["rc"] == 0 and len(run["losses"]) >= 2 and all(map(math.isfinite, run["losses"])) else "fail"
    record(s, "dpo_packed_bf16", status, summary(run), "" if status == "pass" else run["tail"])


def check_resume(s: Session, engine: str, peft: str) -> None:
    """Train 4 steps on one process under `engine` (checkpoints at 2 and 4); then, as if killed after step 2 (its
    final weights and last checkpoint gone), resume: the resumed run must end where the uninterrupted one did."""
    name = f"{engine}_{peft}_resume"
    if importlib.util.find_spec("deepspeed") is None and engine.startswith("deepspeed"):
        return record(s, name, "skip", detail="deepspeed is not importable")
    overrides = [*ON_STORIES, f"train.distributed={engine}", f"peft.method={peft}", "train.max_steps=4", "train.save_steps=2",
                 "train.scheduler=constant", "train.warmup=0", "model.dtype=float32"]
    output = s.work / name
    first = s.train(name, QUICKSTART, overrides, nproc=1, output=output, timeout=180)
    if first["rc"] != 0:
        return record(s, name, "fail", detail=f"first run: rc {first['rc']}: {first['tail']}")
    final = output / ("adapter" if peft != "none" else "model")
    reference = _weights(final)
    shutil.rmtree(final)
    shutil.rmtree(output / "checkpoints" / "checkpoint-4", ignore_errors=True)
    second = s.train(name + "_resumed", QUICKSTART, overrides, nproc=1, resume=True, output=output, timeout=180)
    if second["rc"] != 0:
        return record(s, name, "fail", detail=f"resumed run: rc {second['rc']}: {second['tail']}")
    resumed = _weights(final)
    diff = max((resumed[k].float() - reference[k].float()).abs().max().item() for k in reference) if resumed.keys() == reference.keys() else None
    figures = {"losses_first_run": [round(x, 5) for x in first["losses"]], "losses_after_resume": [round(x, 5) for x in second["losses"]],
               "max_weight_difference": diff, "resumed_from": "resuming from" in second["output_text"]}
    ok = diff is not None and diff <= 1e-4 and figures["resumed_from"]
    record(s, name, "pass" if ok else "fail", figures, "" if ok else "the resumed run does not end where the uninterrupted one did")


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def check_plan(s: Session) -> None:
    """tunesmith plan's estimate against torch.cuda.max_memory_allocated (bench/plan_vs_measured.py --device cuda)."""
    rows = "qwen05-full,qwen05-lora,qwen05-qlora,qwen05-lora-ckpt,qwen05-full-ckpt,qwen05-qlora-ckpt"
    proc = s.command("plan_vs_measured", [sys.executable, str(ROOT / "bench" / "plan_vs_measured.py"), "--device", "cuda", "--rows", rows], 300)
    table = [line for line in proc.stdout.splitlines() if line.strip()]
    status = "pass" if proc.returncode == 0 and any("within the 15% target" in line for line in table) else "fail"
    record(s, "plan_vs_cuda", status, {"table": table}, proc.stderr[-800:] if proc.returncode else "")


CHECKS = {
    "env": check_env,
    "packed_exact": check_packed_exact,
    "liger_kernel": check_liger_kernel,
    "sft_speed_bf16": check_sft_speed,
    "qlora_4bit": check_qlora,
    "fsdp_lora_resume": lambda s: check_resume(s, "fsdp", "lora"),
    "deepspeed_zero3_full_resume": lambda s: check_resume(s, "deepspeed_zero3", "none"),
    "plan_vs_cuda": check_plan,
    "full_bf16": check_full_bf16,
    "dpo_packed_bf16": check_dpo,
    "torch_compile": check_compile,
    "deepspeed_zero2_lora_resume": lambda s: check_resume(s, "deepspeed_zero2", "lora"),
}


# ---- children: run in their own process ----------------------------------------------------------------------

def child_env() -> dict:
    import torch

    found = {}
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed", "flash_attn", "vllm", "xgrammar"):
        try:
            found[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 (a missing or broken package is what this reports)
            found[name] = f"not importable ({err.__class__.__name__})"
    return {"torch": torch.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(), **found}


def child_packed_exact() -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.data.batching import Collator
    from tunesmith.models import attention, lm_loss

    g = torch.Generator().manual_seed(0)
    examples = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (9, 17, 5, 30)]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for implementation in ("sdpa", attention.NAME, "flash_attention_2"):
            row = {"attention": implementation, "dtype": str(dtype).removeprefix("torch.")}
            if implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
                rows.append({**row, "status": "skip", "why": "flash_attn is not installed"})
                continue
            model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=dtype, attn_implementation="sdpa" if implementation == attention.NAME else implementation).to(DEVICE)
            if implementation == attention.NAME and not attention.use_packed_sdpa(model):
                rows.append({**row, "status": "fail", "why": "use_packed_sdpa refused the model"})
                continue
            collate = Collator(pad_token_id=0, packed=True, varlen=implementation != "sdpa")
            with torch.no_grad():
                packed = lm_loss.token_logprobs(model, lm_loss.to(collate([lm_loss.item(*examples)]), DEVICE))[0]
                worst, at = 0.0, 0
                for ids in examples:
                    alone = lm_loss.token_logprobs(model, lm_loss.to(collate([lm_loss.item(ids)]), DEVICE))[0]
                    worst = max(worst, (packed[at : at + len(ids) - 1] - alone).abs().max().item())
                    at += len(ids)
            found = lm_loss.check(model, collate, examples[0], chunked=lm_loss.add_chunked_loss(model) is None)
            # float32: packed and alone agree to 1e-4; half precision rounds them apart, and what counts is the
            # verdict of the check training runs (its tolerance grows with the logits: lm_loss.check)
            limit = 1e-4 if dtype == torch.float32 else None
            ok = (limit is None or worst <= limit) and found == lm_loss.Checked(None, None)
            rows.append({**row, "status": "pass" if ok else "fail", "max_logprob_difference": worst, "limit": limit,
                         "pre_step_check": [found.packing, found.chunked]})
    return rows


def child_liger_kernel() -> list[dict]:
    import torch

    from tunesmith import losses

    sys.path.insert(0, LIGER)
    torch.manual_seed(0)
    n, hidden_size, vocab = (8192, 576, 49152) if DEVICE == "cuda" else (256, 64, 1024)
    cuda = torch.cuda if DEVICE == "cuda" else None  # memory and timing figures on the GPU only
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        hidden = (torch.randn(n, hidden_size, device=DEVICE) * 0.5).to(dtype)
        weight = (torch.randn(vocab, hidden_size, device=DEVICE) * 0.02).to(dtype)
        targets = torch.randint(vocab, (n,), device=DEVICE)
        results = {}
        for label in ("plain", "chunked", "liger"):
            h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
            if cuda:
                cuda.synchronize()
                cuda.reset_peak_memory_stats()
            base = cuda.memory_allocated() if cuda else 0
            started = time.perf_counter()
            if label == "plain":
                loss = torch.nn.functional.cross_entropy((h @ w.T).float(), targets, reduction="sum")
            elif label == "chunked":
                loss = losses._LinearCrossEntropy.apply(h, w, None, targets, None, None, (True, True, False))
            else:
                loss = losses.linear_cross_entropy(h, w, None, targets)  # Liger's kernel, importable now
            loss.backward()
            if cuda:
                cuda.synchronize()
            results[label] = {"loss": loss.item(), "grad_h": h.grad.float(), "grad_w": w.grad.float(),
                              "ms": 1000 * (time.perf_counter() - started), "peak_mib": (cuda.max_memory_allocated() - base) / 2**20 if cuda else 0}
        ref = results["plain"]
        for label in ("chunked", "liger"):
            r = results[label]
            rel = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
            grad = max(((r[k] - ref[k]).abs().max() / ref[k].abs().max().clamp(min=1e-12)).item() for k in ("grad_h", "grad_w"))
            limit = 1e-5 if dtype == torch.float32 else 2e-2
            rows.append({"dtype": str(dtype).removeprefix("torch."), "loss": label, "status": "pass" if rel <= limit and grad <= 10 * limit else "fail",
                         "loss_relative_difference": rel, "gradient_relative_difference": grad,
                         "ms": round(r["ms"], 1), "peak_mib": round(r["peak_mib"]), "plain_ms": round(ref["ms"], 1), "plain_peak_mib": round(ref["peak_mib"])})
    return rows


def child_build_qwen05(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import plan_vs_measured

    plan_vs_measured.STORIES = STORIES
    plan_vs_measured.make_qwen05(folder)


def write_report(s: Session, planned: list[str]) -> None:
    ran = {r["check"] for r in s.results}
    for name in planned:
        if name not in ran:
            s.results.append({"check": name, "status": "not run", "figures": {}, "detail": "the time budget ran out; run it with --only"})
    (s.out / "gpu_checks.json").write_text(json.dumps(s.results, indent=1, default=str))
    lines = ["# GPU checks", "", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "", "| check | result | figures | detail |", "|---|---|---|---|"]
    for r in s.results:
        lines.append(f"| {r['check']} | {r['status']} | `{json.dumps(r['figures'], default=str)[:1500]}` | {r['detail'][:400].replace(chr(10), ' ')} |")
    (s.out / "gpu_checks.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu-out")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all checks (default 480)")
    parser.add_argument("--only", help="comma-separated checks (default: all, in order)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        children = {"env": child_env, "packed_exact": child_packed_exact, "liger_kernel": child_liger_kernel}
        if args.child == "build_qwen05":
            return child_build_qwen05(Path(args.folder))
        print("RESULT " + json.dumps(children[args.child]()))
        return
    if args.list:
        print("\n".join(CHECKS))
        return
    planned = args.only.split(",") if args.only else list(CHECKS)
    unknown = [name for name in planned if name not in CHECKS]
    if unknown:
        sys.exit(f"--only: unknown checks {unknown}; checks are {', '.join(CHECKS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = Session(out, args.budget)
    try:
        for name in planned:
            if s.left() < 20:
                break
            try:
                CHECKS[name](s)
            except Exception as err:  # noqa: BLE001 (one check's failure is reported, and the others still run)
                record(s, name, "fail", detail=f"{err.__class__.__name__}: {err}")
    finally:
        write_report(s, planned)
        shutil.rmtree(s.work, ignore_errors=True)
    print(f"wrote {out / 'gpu_checks.md'}")


if __name__ == "__main__":
    main()
