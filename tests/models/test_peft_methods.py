"""Every peft.method end to end on stories260K (a real tiny Llama): a few sft steps lower the loss and change only
the adapter's parameters; the saved adapter reloads with the logits the trained model had; the server's
per-request path gives the tokens transformers' own generate gives; merge folds what PEFT can fold and says why
not elsewhere."""

import asyncio
import json

import pytest
import torch
from transformers import TrainerCallback

from tests.conftest import Snapshot
from tunesmith.config import validate
from tunesmith.errors import TunesmithError

# stories260K: hidden 64, 5 layers, 8 heads (4 key/value heads of 8 dims).
METHODS = {
    "adapter": {"method": "adapter", "reduction_factor": 4, "dropout": 0.0},
    "adapter-houlsby": {"method": "adapter", "placement": "houlsby", "bottleneck": 8, "activation": "gelu", "dropout": 0.0},
    "ia3": {"method": "ia3"},
    "prefix": {"method": "prefix", "num_virtual_tokens": 4},
    "prompt": {"method": "prompt", "num_virtual_tokens": 4, "prompt_init_text": "Once upon"},  # 3 tokens (with <s>), repeated to 4
    "loha": {"method": "loha", "r": 4, "alpha": 8},
    "lokr": {"method": "lokr", "r": 4, "alpha": 8},
    "vera": {"method": "vera", "r": 8, "dropout": 0.0},
    "oft": {"method": "oft", "block_size": 4, "dropout": 0.0},  # divides 64 and the MLP's 172
    "lora-pissa": {"method": "lora", "init": "pissa", "r": 4, "alpha": 4, "dropout": 0.0},
    "lora-olora": {"method": "lora", "init": "olora", "r": 4, "alpha": 4, "dropout": 0.0},
    "lora-embedding": {"method": "lora", "target_modules": ["embed_tokens", "q_proj"], "r": 4, "alpha": 8, "dropout": 0.0},  # failed before step 1
    "lora-variants": {"method": "lora", "init": "gaussian", "use_rslora": True, "dora": True, "lora_plus_ratio": 16, "r": 4, "alpha": 8, "dropout": 0.0},
}
# Learning rates at which a handful of steps visibly lower the loss (scaling vectors and virtual tokens move slowly).
LR = {"ia3": 0.3, "vera": 0.3, "prefix": 0.1, "prompt": 0.3, "oft": 0.05, "lora-olora": 0.01}
# PiSSA and OLoRA are saved against the original base (trained minus initial adapter, rank 2r): recomputing W from
# W_residual + BA rounds in float32.
ATOL = {"lora-pissa": 1e-4, "lora-olora": 1e-4}
IDS = torch.tensor([[1, 403, 261, 378, 504, 300, 301, 77, 88]])


class LogitsAtEnd(TrainerCallback):
    """The trained model's logits on IDS, in eval mode, as training ends."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=IDS.to(model.device)).logits
        model.train()


def train_method(folder, stories_path, peft: dict, lr: float, steps: int = 4):
    from tunesmith.methods.sft import train

    rows = [{"question": f"Tell me a story about {w}.", "answer": f"Once upon a time there was a {w}."} for w in
            ("cat", "dog", "bird", "fish", "tree", "king", "girl", "boy")]
    data = folder.parent / f"{folder.name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = validate({
        "name": folder.name,
        "model": {"path": str(stories_path), "dtype": "float32"},
        "data": {"train": str(data), "template": "chatml", "max_length": 256},
        "peft": peft,
        "train": {"max_steps": steps, "lr": lr, "batch_size": 8, "warmup": 0, "scheduler": "constant", "logging_steps": 1},
        "output_dir": str(folder),
    })
    snapshot, logits = Snapshot(), LogitsAtEnd()
    run = train(recipe, callbacks=[snapshot, logits])
    return run, snapshot, logits.logits


@pytest.fixture(scope="module")
def trained(stories_path, tmp_path_factory):
    """name -> (run, snapshot, logits at the end of training), trained once per module, on demand."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp("methods") / name
            cache[name] = train_method(folder, stories_path, METHODS[name], LR.get(name, 0.05))
        return cache[name]

    return get


def base_model(stories_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()


def base_logits(stories_path):
    with torch.no_grad():
        return base_model(stories_path)(input_ids=IDS).logits


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_only_its_parameters_and_reloads_with_the_same_logits(name, trained, stories_path):
    from tunesmith.eval.generate import load_for_inference

    run, snapshot, logits = trained(name)
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert losses[-1] < losses[0], losses
    changed = {n for n in snapshot.before if not torch.equal(snapshot.before[n], snapshot.after[n])}
    assert changed and changed <= snapshot.trainable  # something trained, and only what was trainable
    frozen = set(snapshot.before) - snapshot.trainable
    assert not (frozen & changed)  # the base stayed as it was
    # ... and it is all of the base: every base weight is frozen, what trains is the adapter's alone
    assert sum(snapshot.before[n].numel() for n in frozen) == sum(p.numel() for p in base_model(stories_path).parameters())

    loaded = load_for_inference(str(run.path))
    with torch.no_grad():
        reloaded = loaded.model(input_ids=IDS).logits
    torch.testing.assert_close(reloaded, logits, atol=ATOL.get(name, 1e-5), rtol=1e-4)
    tokens = reloaded[:, -IDS.shape[1]:]  # prompt tuning's logits begin with its virtual tokens'
    assert (tokens - base_logits(stories_path)).abs().max() > 1e-4  # the adapter is on


def test_bottleneck_adapter_starts_as_the_base_model_on_llama_and_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from tunesmith.config import PeftConfig
    from tunesmith.models import bottleneck
    from tunesmith.models.peft import count_parameters, wrap_model

    torch.manual_seed(0)
    models = {
        "qwen2": Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)),
        "gpt2": GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=64, n_positions=32)),
    }
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    for arch, model in models.items():
        model.eval()
        with torch.no_grad():
            before = model(input_ids=ids).logits
        layers = 2 if arch == "qwen2" else 3
        wrapped = wrap_model(model, PeftConfig(method="adapter", placement="houlsby", bottleneck=4), gradient_checkpointing=False)
        assert len(bottleneck.sites(wrapped)) == 2 * layers  # after attention and after the MLP of every layer
        trainable, _ = count_parameters(wrapped)
        assert trainable == 2 * layers * (32 * 4 + 4 + 4 * 32 + 32)
        with torch.no_grad():
            torch.testing.assert_close(wrapped(input_ids=ids).logits, before, atol=0, rtol=0)  # up-projection at zero
            for site in bottleneck.sites(wrapped):
                torch.nn.init.normal_(site.adapters["default"].up.weight)
            assert (wrapped(input_ids=ids).logits - before).abs().max() > 1e-3  # the hooks are on the forward path
            with bottleneck.active(wrapped, None):
                torch.testing.assert_close(wrapped(input_ids=ids).logits, before, atol=0, rtol=0)


def test_pfeiffer_places_adapters_after_the_mlp_only():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.config import PeftConfig
    from tunesmith.models import bottleneck
    from tunesmith.models.peft import wrap_model

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
    wrapped = wrap_model(model, PeftConfig(method="adapter", reduction_factor=8), gradient_checkpointing=False)
    names = [n for n, m in wrapped.named_modules() if isinstance(m, bottleneck.Site)]
    assert names == ["model.layers.0.mlp.bottleneck", "model.layers.1.mlp.bottleneck"]
    assert wrapped.model.layers[0].mlp.bottleneck.adapters["default"].down.out_features == 4  # 32 / 8


def test_a_model_without_named_blocks_is_refused_clearly():
    from tunesmith.config import PeftConfig
    from tunesmith.models.bottleneck import add_adapters

    class Odd(torch.nn.Module):
        _no_split_modules = ["Block"]
        config = type("C", (), {"get_text_config": lambda self: type("T", (), {"hidden_size": 8})()})()

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(8, 8)

    with pytest.raises(TunesmithError, match="found no decoder layer with an attention block .* use a PEFT method"):
        add_adapters(Odd(), PeftConfig(method="adapter", reduction_factor=2), False)


def test_bottleneck_adapter_saves_safetensors_and_a_config_next_to_the_tokenizer(trained):
    run, _, _ = trained("adapter")
    folder = run.path / "adapter"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["tunesmith_adapter"] == "bottleneck" and config["placement"] == "pfeiffer"
    assert (config["hidden_size"], config["bottleneck"]) == (64, 16)
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter_model.safetensors")
    assert sorted(weights)[:4] == [f"model.layers.0.mlp.bottleneck.{p}" for p in ("down.bias", "down.weight", "up.bias", "up.weight")]
    assert len(weights) == 5 * 4  # four tensors per layer, nothing of the base
    assert (folder / "tokenizer_config.json").is_file() and (run.path / "template.json").is_file()


@pytest.mark.parametrize("name", ["adapter", "prefix", "prompt", "ia3", "lora-pissa"])
def test_served_per_request_like_transformers_generate(name, trained):
    """The server's own decoding loop (left-padded batches, KV cache, per-request adapter) against PEFT's
    generate: prompt and prefix tuning's virtual tokens, bottleneck hooks, PEFT layers, the base beside them."""
    from tunesmith.eval.generate import generate_ids, load_for_inference
    from tunesmith.serve.catalog import build_catalog
    from tunesmith.serve.engine import Request, TransformersEngine
    from tunesmith.serve.sampling import Sampling

    run, _, _ = trained(name)
    loaded = load_for_inference(str(run.path))
    prompts = [[1, 403, 261, 378, 504], [1, 300, 301, 77, 88, 99, 111]]
    expected = [generate_ids(loaded, [p], 8, 1, False, [], {}) for p in prompts]
    catalog = build_catalog(str(run.path))
    engine = TransformersEngine.load(catalog)
    served = catalog.models[run.path.name]
    base = next(m for m in catalog.models.values() if m.adapter is None)

    async def main():
        await engine.start()
        try:
            async def tokens(model, prompt):
                return [t async for step in engine.stream(Request(model, prompt, Sampling(8, temperature=0.0))) for t in step.token_ids]

            return await asyncio.gather(*[tokens(served, p) for p in prompts], tokens(base, prompts[0]))
        finally:
            await engine.stop()

    *adapted, from_base = asyncio.run(main())
    stop = set(served.template.stop_token_ids)
    for got, want in zip(adapted, expected, strict=True):
        assert got and loaded.tokenizer.decode(got, skip_special_tokens=True) == want[0].text
    assert adapted[0] != from_base  # the adapter's request did not run on the base, nor the base's on the adapter
    with torch.no_grad():
        greedy = base_model(catalog.base_path).generate(torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False)[0, 5:].tolist()
    assert from_base == [t for t in greedy if t not in stop][: len(from_base)]


@pytest.mark.parametrize("name", ["adapter", "prefix", "prompt"])
def test_merge_refuses_what_cannot_be_merged_and_points_at_adapter_only(name, trained, tmp_path):
    from tunesmith.models.merge import export_adapter, merge_run

    run, _, _ = trained(name)
    with pytest.raises(TunesmithError, match=rf"peft.method '{name}', which cannot be merged: .*--adapter-only"):
        merge_run(run.path, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    out = export_adapter(run.path, tmp_path / "exported")
    assert (out / "adapter_model.safetensors").is_file() and (out / "template.json").is_file()


@pytest.mark.parametrize("name", ["ia3", "oft", "lora-pissa"])
def test_merge_folds_peft_methods_that_change_weights(name, trained, tmp_path):
    from tunesmith.models.merge import merge_run

    run, _, logits = trained(name)
    result = merge_run(run.path, tmp_path / "merged", dtype="float32")
    assert result.passed
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, logits, atol=1e-4, rtol=1e-4)


def test_prefix_and_prompt_tuning_turn_packing_off_and_say_so(trained, capsys):
    run, _, _ = trained("prompt")
    report = json.loads((run.path / "data_report.json").read_text())
    assert report["batching"]["note"].startswith("packing is off: peft.method 'prompt' puts its virtual tokens before every row")
    assert report["batching"]["mode"] == "grouped"


@pytest.mark.parametrize("name", ["adapter", "prefix", "ia3"])
def test_the_model_card_of_a_pushed_adapter_says_how_to_load_it(name, trained, stories_path, tmp_path, monkeypatch):
    """It said 'a LoRA adapter', AutoPeftModelForCausalLM (which cannot load a bottleneck adapter), merge_and_unload
    for virtual tokens, and r, alpha and dropout for methods that have none."""
    from tunesmith.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run, _, logits = trained(name)
    out = tmp_path / "upload"
    assert main(["push", str(run.path), "--repo", "me/x", "--dry-run", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "This is an adapter" in card and "LoRA" not in card.split("## Training")[0]
    adapter_row = next(line for line in card.splitlines() if line.startswith("| adapter |"))
    if name == "adapter":
        assert "library_name" not in card.split("---")[1] and "AutoPeftModel" not in card
        assert "from tunesmith.models.bottleneck import load" in card and "cannot be merged" in card
        assert adapter_row == "| adapter | adapter, placement=pfeiffer, reduction_factor=4, activation=relu, dropout=0 |"
        assert "; method: sft, adapter (placement=pfeiffer, reduction_factor=4, activation=relu, dropout=0)\n" in (run.path / "report.md").read_text()
        from tunesmith.models.bottleneck import load  # the card's own lines, on the uploaded folder

        with torch.no_grad():
            torch.testing.assert_close(load(base_model(stories_path), out)(input_ids=IDS).logits, logits, atol=1e-5, rtol=1e-4)
    elif name == "prefix":
        assert "library_name: peft" in card and "virtual tokens cannot be merged" in card and "merge_and_unload" not in card
        assert adapter_row == "| adapter | prefix, num_virtual_tokens=4 |"
    else:
        assert "merge_and_unload" in card and adapter_row == "| adapter | ia3, target_modules=all-linear |"


@pytest.mark.parametrize("name", ["prompt", "prefix"])
def test_generate_answers_a_prompt_the_same_alone_and_in_a_batch(name, trained):
    """eval, generate and chat batch their prompts left-padded: PEFT's prompt tuning put its virtual tokens before a
    shorter prompt's padding and numbered positions through it, so that prompt answered otherwise in a batch."""
    from tunesmith.eval.generate import generate_ids, load_for_inference

    loaded = load_for_inference(str(trained(name)[0].path))
    prompts = [[1, 403, 261, 378, 504], [1, 300, 301, 77, 88, 99, 111, 120, 130]]
    alone = [generate_ids(loaded, [p], 10, 1, False, [], {})[0] for p in prompts]
    assert generate_ids(loaded, prompts, 10, 2, False, [], {}) == alone


def test_perplexity_of_a_prompt_tuned_run_scores_the_text_after_its_virtual_tokens(trained):
    """Its logits begin with the virtual tokens': perplexity read them as the text's, and gave a wrong number."""
    from tunesmith.data.formats import Example
    from tunesmith.eval.generate import load_for_inference
    from tunesmith.eval.perplexity import nll_sums

    loaded = load_for_inference(str(trained("prompt")[0].path))
    texts = ["Once upon a time there was a cat.", "The dog ran to the big tree in the park."]
    sums, counts = nll_sums(loaded, [Example(messages=None, text=t, where=f"t:{i}") for i, t in enumerate(texts)], batch_size=2)
    for text, total, n in zip(texts, sums, counts):
        ids = loaded.tokenizer(loaded.template.bos_text + text + loaded.template.eos_text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -len(ids):]
        expected = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
        assert n == len(ids) - 1 and total == pytest.approx(expected, rel=1e-4)
