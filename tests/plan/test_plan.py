"""tunesmith plan: exact byte counts on a tiny config, the fit advice, one-line errors, and no weights read."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.config import ModelConfig, PeftConfig
from tunesmith.errors import TunesmithError
from tunesmith.plan import estimate as est
from tunesmith.plan.cli import parse_memory, parse_target, parse_world
from tunesmith.plan.profile import measure, read_config

# H=8, I=16, 2 layers, 2 heads of 4, vocab 32, tied: hand-countable.
TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 32, "tie_word_embeddings": True,
        "max_position_embeddings": 64}
LAYER = 4 * 8 * 8 + 3 * 8 * 16 + 2 * 8  # q, k, v, o; gate, up, down; two norms
PARAMS = 32 * 8 + 2 * LAYER + 8          # embeddings (tied head), layers, final norm


@pytest.fixture
def config_only(tmp_path) -> Path:
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    return folder


def tiny_config(folder):
    return read_config(ModelConfig(path=str(folder)))[0]


def test_full_fine_tuning_counts_every_byte(config_only):
    p = measure(tiny_config(config_only), "float32")
    assert p.parameters == PARAMS
    assert p.weight_bytes == 4 * PARAMS
    assert sum(n for n, _, _ in p.trainable) == PARAMS and p.adapter_bytes == 0 and p.head_trainable
    s = est.Setup(tokens=64, seq=64, checkpointing=False, optimizer="adamw", cuda=False)
    e = est.estimate(p, s)
    assert e.part("weights") == 4 * PARAMS
    assert e.part("gradients") == 4 * PARAMS
    assert e.part("optimizer") == 8 * PARAMS  # two float32 AdamW states
    assert e.part("activations") == est.activation_bytes(p, s)


def test_lora_adapters_are_r_times_in_plus_out(config_only):
    p = measure(tiny_config(config_only), "bfloat16", peft=PeftConfig(method="lora", r=2))
    # every linear of a layer: r * (in + out), kept in float32 by PEFT
    per_layer = 2 * ((8 + 8) * 4 + (8 + 16) * 2 + (16 + 8))
    assert p.adapter_bytes == 4 * 2 * per_layer
    assert p.weight_bytes == 2 * PARAMS and not p.head_trainable


def test_lora_dropout_keeps_a_one_byte_mask_per_adapter_input_unless_the_method_turns_it_off(config_only, monkeypatch):
    from tunesmith.plan import profile

    config = tiny_config(config_only)
    plain, dropped, off = (measure(config, "float32", peft=PeftConfig(method="lora", r=2, dropout=p), dropout=on)
                           for p, on in ((0.0, True), (0.1, True), (0.1, False)))
    monkeypatch.setattr(profile, "_dropout_as_trained", lambda model, on: None)  # torch's dropout: a float32 mask
    float_masks = measure(config, "float32", peft=PeftConfig(method="lora", r=2, dropout=0.1))
    # each adapter draws its own dropout over its layer's input: q, k, v, o, gate, up see 8 values a token, down 16
    inputs = 6 * 8 + 16
    assert float_masks.act_layer - dropped.act_layer == inputs * (4 - 1)
    assert dropped.act_layer > plain.act_layer  # the dropped copies lora_A keeps, and the masks
    assert off.act_layer == plain.act_layer  # TRL's disable_dropout: p = 0, nothing kept


def test_4bit_weights_with_and_without_double_quant(config_only):
    config = tiny_config(config_only)
    linear = 4 * 8 * 8 + 3 * 8 * 16  # per layer, quantised; embeddings and norms stay (in float32 after prepare_model_for_kbit_training)
    rest = PARAMS - 2 * linear
    for double, constants in ((False, lambda n: 4 * -(-n // 64)), (True, lambda n: -(-n // 64) + 4)):
        p = measure(config, "bfloat16", "4bit", double, PeftConfig(method="qlora", r=2))
        quantized = 2 * (4 * (32 + constants(64)) + 3 * (64 + constants(128)))
        assert p.weight_bytes == quantized + 4 * rest
    assert est.quantized_bytes(4096, "4bit", False) == 2048 + 4 * 64


def test_optimizer_states():
    tensors = ((8192, 64, 2), (100, 1, 2))
    assert est.optimizer_bytes("adamw", tensors) == 2 * 2 * 8292
    assert est.optimizer_bytes("adamw_8bit", tensors) == 2 * (8192 + 4 * 32) + 8 * 100  # small tensors keep 32-bit states
    assert est.optimizer_bytes("sgd", tensors) == 0
    assert est.optimizer_bytes("adafactor", tensors) == 2 * (64 + 128) + 2 * 100


def test_checkpointing_keeps_only_layer_inputs(config_only):
    p = measure(tiny_config(config_only), "float32")
    plain = est.Setup(tokens=1000, seq=1000, checkpointing=False, optimizer="adamw")
    ckpt = est.Setup(tokens=1000, seq=1000, checkpointing=True, optimizer="adamw")
    assert p.act_input == 8 * 4
    assert est.activation_per_token(p, ckpt) == p.act_outside + 2 * p.act_input + p.act_layer
    assert est.activation_per_token(p, plain) == p.act_outside + 2 * p.act_layer  # two layers, nothing more in backward
    assert est.activation_bytes(p, ckpt) < est.activation_bytes(p, plain)


def test_world_size_shards_what_each_engine_shards(config_only):
    p = measure(tiny_config(config_only), "float32")
    one = est.estimate(p, est.Setup(tokens=64, seq=64, checkpointing=False, optimizer="adamw"))
    parts = {d: est.estimate(p, est.Setup(tokens=64, seq=64, checkpointing=False, optimizer="adamw", world_size=4, distributed=d))
             for d in ("ddp", "deepspeed_zero2", "fsdp")}
    assert parts["ddp"].part("optimizer") == one.part("optimizer") and parts["ddp"].part("weights") == one.part("weights")
    assert parts["deepspeed_zero2"].part("optimizer") == one.part("optimizer") // 4
    assert parts["deepspeed_zero2"].part("weights") == one.part("weights")
    assert parts["fsdp"].part("weights") == one.part("weights") // 4


def test_chunked_loss_never_holds_the_logits(config_only):
    p = measure(tiny_config(config_only), "float32", peft=PeftConfig(method="lora"))
    tokens = 2**20
    chunked = est.loss_bytes(p, est.Setup(tokens=tokens, seq=512, checkpointing=False, optimizer="adamw"))
    full = est.loss_bytes(p, est.Setup(tokens=tokens, seq=512, checkpointing=False, optimizer="adamw", loss="logits"))
    assert chunked[1] == (2**24 // 32) * 32 * 4  # one chunk of float32 logits
    assert sum(full[:2]) > 2 * tokens * 32 * 4 > sum(chunked[:2])


def recipe(tmp_path, model, **train) -> Path:
    lines = "".join(f"  {k}: {v}\n" for k, v in train.items())
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "r.yaml"
    path.write_text(f"model: {{path: {model}}}\ndata: {{train: {tmp_path / 'train.jsonl'}, max_length: 1024}}\n"
                    f"peft: {{method: none}}\ntrain:\n{lines}")
    return path


def test_a_config_only_folder_plans_without_opening_weights(config_only, tmp_path, capsys, monkeypatch):
    (config_only / "model.safetensors").write_bytes(b"not weights")
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: spy(self, *a, **k))
    main(["plan", str(recipe(tmp_path, config_only, batch_size=2, packing="false", group_by_length="false")), "--device", "cpu"])
    out = capsys.readouterr().out
    assert not [f for f in opened if "safetensors" in f]
    assert f"{PARAMS / 1e6:,.1f}M parameters" in out and "fits" in out
    assert "micro-batch: 2 x 1 sequence of up to 1,024 tokens = 2,048 tokens" in out


def test_advice_when_it_does_not_fit(config_only, tmp_path, capsys):
    # FlashAttention: no (T x T) mask, which at 2**20 packed tokens would outweigh everything else
    main(["plan", str(recipe(tmp_path, config_only, max_tokens_per_batch=2**20)), "model.attn_implementation=flash_attention_2", "--memory", "1.75GiB"])
    out = capsys.readouterr().out
    assert "does not fit" in out
    assert "largest that fits: train.max_tokens_per_batch=" in out
    advice = out.split("what to change")[1]
    for change in ("train.gradient_checkpointing=true", "train.optimizer=adamw_8bit", "peft.method=lora", "peft.method=qlora",
                   "data.max_length=512 train.max_tokens_per_batch=524288", "all of the above"):
        assert change in advice
    checkpointed = next(line for line in advice.splitlines() if "gradient_checkpointing" in line)
    assert checkpointed.rstrip().endswith("fits") and "does not" not in checkpointed


@pytest.mark.parametrize("argv, message", [
    (["--device", "h100"], "--device 'h100': not one of h100-80gb"),
    (["--memory", "24 gigs"], "--memory '24 gigs': expected a size such as 24GiB"),
    (["--memory", "0GiB"], "--memory '0GiB'"),
    (["--world-size", "0"], "--world-size: 0 is not a whole number > 0"),
    (["--distributed", "fsdp"], "give --world-size"),
])
def test_bad_targets_are_one_line_errors(argv, message, config_only, tmp_path, capsys):
    assert main(["plan", str(recipe(tmp_path, config_only)), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_parsers():
    assert parse_memory("24GiB") == parse_memory("24G") == 24 * 2**30
    assert parse_memory("16GB") == 16 * 10**9 and parse_memory("40960MiB") == 40 * 2**30
    assert parse_target("t4", None) == (15360 * 2**20, "t4")
    assert parse_world(4, None) == (4, "ddp")
    with pytest.raises(TunesmithError):
        parse_memory("-3GiB")


def test_unknown_hub_model_offline_names_the_shipped_configs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TunesmithError, match="meta-llama/Llama-2-7b-hf"):
        read_config(ModelConfig(path="nobody/no-such-model"))


def test_the_table_plans_7b_from_the_shipped_config(capsys):
    main(["plan", "--table", "--model", "meta-llama/Llama-2-7b-hf", "--device", "a100-40gb", "--max-length", "512"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("meta-llama/Llama-2-7b-hf"))
    full, lora, qlora = (float(cell.rstrip("G*")) for cell in row.split()[2:5])
    assert "6.74B" in row and qlora < lora < full
    assert row.split()[2].endswith("*") and not row.split()[4].endswith("*")  # full does not fit 40 GB; QLoRA does


def test_the_recipes_engine_is_planned_for_unless_the_flags_say_otherwise(config_only, tmp_path, capsys):
    path = recipe(tmp_path, config_only, distributed="fsdp")
    assert main(["plan", str(path), "--device", "cpu"]) == 2
    assert "the recipe's train.distributed fsdp: shards across processes; give --world-size" in capsys.readouterr().err
    main(["plan", str(path), "--device", "cpu", "--world-size", "4"])
    assert "4 processes (fsdp)" in capsys.readouterr().out
    main(["plan", str(path), "--device", "cpu", "--world-size", "4", "--distributed", "ddp"])
    assert "4 processes (ddp)" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["adapter", "ia3", "prefix", "oft"])
def test_every_peft_method_is_planned_with_its_own_parameters(method, config_only, tmp_path, capsys):
    # a bottleneck adapter's default reduction factor (16) leaves no unit of this model's 8 hidden values
    keys = {"reduction_factor": 2} if method == "adapter" else {}
    p = measure(tiny_config(config_only), "float32", peft=PeftConfig(method=method, **keys))
    assert 0 < sum(n for n, _, _ in p.trainable) < PARAMS and p.adapter_bytes > 0
    assert p.weight_bytes == 4 * PARAMS  # the base alone: the adapter's parameters are counted apart
    path = recipe(tmp_path, config_only)
    extra = "".join(f", {k}: {v}" for k, v in keys.items())
    path.write_text(path.read_text().replace("peft: {method: none}", f"peft: {{method: {method}{extra}}}"))
    assert main(["plan", str(path), "--device", "cpu"]) == 0
    assert f"(method sft, peft.method {method})" in capsys.readouterr().out


def test_packed_rows_count_the_mask_transformers_builds(config_only, tmp_path):
    """transformers builds a (T x T) block-diagonal mask for a packed row under eager attention (three of them at
    once while building it), which bench/plan_vs_measured.py measured as the peak of stories260K's 16,384-token
    rows; under sdpa tunesmith's packed sdpa attends one example at a time and skips it (tunesmith.models.attention),
    unless the model's remote code may keep its attention from being switched."""
    from tunesmith.config import load_recipe
    from tunesmith.plan.cli import case_of, setup_of

    path = recipe(tmp_path, config_only, max_tokens_per_batch=8192, packing="true")
    case = case_of(load_recipe(path, check_files=False))
    assert setup_of(case, "cpu", 1, "none").mask == 0
    remote = case_of(load_recipe(path, ["model.trust_remote_code=true"], check_files=False))
    assert setup_of(remote, "cpu", 1, "none").mask == 8192 * 8192
    eager = case_of(load_recipe(path, ["model.attn_implementation=eager", "model.dtype=float32"], check_files=False))
    assert setup_of(eager, "cpu", 1, "none").mask == 4 * 8192 * 8192  # an additive float mask
    flash = case_of(load_recipe(path, ["model.attn_implementation=flash_attention_2"], check_files=False))
    assert setup_of(flash, "cpu", 1, "none").mask == 0
    padded = case_of(load_recipe(path, ["train.packing=false", "train.max_tokens_per_batch=null"], check_files=False))
    assert setup_of(padded, "cpu", 1, "none").mask > 0  # sdpa's padded batches keep theirs
    p = measure(tiny_config(config_only), "float32")
    s = setup_of(remote, "cpu", 1, "none")
    e = est.estimate(p, s)
    assert e.part("attention mask") == 8192**2
    assert e.peak >= e.part("weights") + e.part("optimizer") + 3 * 8192**2 + est.CPU_RUNTIME
    assert est.estimate(p, setup_of(case, "cpu", 1, "none")).peak < e.peak - 2 * 8192**2