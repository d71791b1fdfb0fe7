"""Shared fixtures: a real tokenizer with a chat template (SmolLM2's, pad == eos), the pretrained
stories260K model from ../shared, and tiny random models built in-process. Nothing touches the network."""

import os
from pathlib import Path

import pytest
from transformers import TrainerCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SMOL_TOKENIZER = FIXTURES / "smollm2_tokenizer"
STORIES = Path(os.environ.get("TUNESMITH_SHARED", ROOT.parent / "shared")) / "models" / "stories260K"


# Ticket classification rows with Korean ones, for tests that need labelled conversations.
TICKETS = [
    ("Where is my parcel?", "shipping"), ("I want my money back", "refund"), ("Why was I charged twice?", "billing"),
    ("배송이 언제 오나요?", "shipping"), ("환불해 주세요", "refund"), ("청구서가 이상해요", "billing"),
    ("My order is late", "shipping"), ("Refund my order please", "refund"), ("Invoice is wrong", "billing"),
    ("택배가 안 왔어요", "shipping"), ("돈을 돌려주세요", "refund"), ("결제가 두 번 됐어요", "billing"),
]


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tickets_file(tmp_path_factory):
    rows = [{"id": f"k{i}", "prompt": p, "completion": c} for i, (p, c) in enumerate(TICKETS)]
    return write_jsonl(tmp_path_factory.mktemp("tickets") / "tickets.jsonl", rows)


class Snapshot(TrainerCallback):
    """Copies of every parameter (by name) when training starts and ends, and which were trainable."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread: with several, every small matmul pays a thread handoff,
    and a busy machine turns that into seconds. The slow end-to-end tests keep every thread."""
    if "slow" in request.keywords:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smol_tokenizer():
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(str(SMOL_TOKENIZER))


@pytest.fixture(scope="session")
def stories_path() -> Path:
    if not (STORIES / "config.json").is_file():
        pytest.fail(f"stories260K not found at {STORIES} (set TUNESMITH_SHARED to the shared/ folder)")
    return STORIES


@pytest.fixture(scope="session")
def stories_tokenizer(stories_path):
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(str(stories_path))


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer (vocab 49152, chat template, pad == eos)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    for file in SMOL_TOKENIZER.iterdir():
        shutil.copy2(file, folder / file.name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_llama_words(tmp_path_factory) -> Path:
    """Like tiny_llama, but greedy generation writes a repeated word, where seed 0's model writes only
    newlines: for tests that need non-empty generations."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama_words"), seed=1)


@pytest.fixture(scope="session")
def reward_run(stories_path, tmp_path_factory):
    """A reward run on stories260K trained for a few steps: good enough to score, which is all the plumbing
    that uses reward models (PPO, GRPO rewards) needs."""
    import json

    from tunesmith.config import validate
    from tunesmith.methods.reward import train as train_reward

    folder = tmp_path_factory.mktemp("reward")
    pairs = [{"prompt": f"Capital of {c}?", "chosen": "The capital is nice.", "rejected": "No."} for c in ("France", "Japan", "Italy", "Spain", "Egypt", "Peru", "Kenya", "Chile")]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    recipe = validate({
        "name": "rm", "method": "reward",
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": str(folder / "pairs.jsonl"), "template": "chatml", "max_length": 128},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 3, "lr": 1e-2, "batch_size": 8, "warmup": 0},
        "output_dir": str(folder / "run"),
    })
    return str(train_reward(recipe).path)


def make_lora_run(folder: Path, base: Path, seed: int = 0, steps: int = 3, **sections) -> Path:
    """A finished tiny LoRA run (a few steps on 16 question/answer rows, eval data included) in `folder`."""
    import json

    from tunesmith.config import validate
    from tunesmith.methods.sft import train

    pairs = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]
    data = folder.parent / f"{folder.name}-data.jsonl"
    data.write_text("".join(json.dumps({"question": f"Capital of {c}?", "answer": a}) + "\n" for c, a in pairs), encoding="utf-8")
    raw = {
        "name": folder.name,
        "model": {"path": str(base), "dtype": "float32"},
        "data": {"train": str(data), "eval": str(data), "max_length": 64, "system_prompt": "Name the capital."},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": steps, "lr": 5e-2, "batch_size": 8, "warmup": 0, "scheduler": "constant", "seed": seed},
        "output_dir": str(folder),
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    train(validate(raw))
    return folder


@pytest.fixture(scope="session")
def lora_run(tiny_llama, tmp_path_factory) -> Path:
    """A tiny finished LoRA run on `tiny_llama`, shared by the merge, publish, chat and serve tests."""
    return make_lora_run(tmp_path_factory.mktemp("runs") / "capitals", tiny_llama)


@pytest.fixture(scope="session")
def lora_run_factory():
    """`make_lora_run` for tests that need a run of their own (another base, seed or method)."""
    return make_lora_run
