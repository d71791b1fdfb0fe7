import re

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from tunesmith.config import PeftConfig
from tunesmith.errors import TunesmithError
from tunesmith.models.peft import check_target_modules, count_parameters, linear_module_names, peft_config, wrap_model

LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]
GPT2_LINEAR = ["c_attn", "c_fc", "c_proj", "lm_head"]


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    return LlamaForCausalLM(config)


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def test_linear_module_names_llama():
    assert linear_module_names(tiny_llama()) == LLAMA_LINEAR


def test_linear_module_names_gpt2_includes_conv1d():
    model = tiny_gpt2()
    assert linear_module_names(model) == GPT2_LINEAR
    conv1d_leaves = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, Conv1D)}
    assert conv1d_leaves == {"c_attn", "c_fc", "c_proj"}


def test_check_target_modules_accepts_existing_and_all_linear():
    model = tiny_llama()
    assert check_target_modules(model, ["q_proj", "v_proj"]) is None
    assert check_target_modules(model, "all-linear") is None
    # A dotted suffix names one module path, not just a leaf.
    assert check_target_modules(model, ["self_attn.q_proj"]) is None


def test_check_target_modules_names_the_missing_one():
    with pytest.raises(TunesmithError) as info:
        check_target_modules(tiny_llama(), ["q_proj", "nope"])
    message = str(info.value)
    assert "'nope'" in message
    assert "'q_proj'" not in message
    assert ", ".join(LLAMA_LINEAR) in message


def test_check_target_modules_rejects_partial_names():
    # "proj" is a substring of every projection but matches no module name or suffix.
    with pytest.raises(TunesmithError, match="'proj'"):
        check_target_modules(tiny_llama(), ["proj"])


def lora_targets(model) -> set[str]:
    return {name.removesuffix(".lora_A") for name, _ in model.named_modules() if name.endswith(".lora_A")}


@pytest.mark.parametrize("arch", MODELS)
def test_lora_all_linear_wraps_every_linear_but_the_head(arch):
    base = MODELS[arch]()
    expected = {
        name
        for name, module in base.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and not name.endswith("lm_head")
    }
    assert expected  # sanity: the tiny model has linear layers
    wrapped = wrap_model(base, PeftConfig(method="lora"), gradient_checkpointing=False)
    targets = {name.removeprefix("base_model.model.") for name in lora_targets(wrapped)}
    assert targets == expected
    assert not any("lm_head" in name for name, _ in wrapped.named_modules() if "lora_" in name)

    trainable = [name for name, param in wrapped.named_parameters() if param.requires_grad]
    assert trainable
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert len(trainable) == 2 * len(expected)


def test_lora_with_explicit_targets_wraps_only_those():
    wrapped = wrap_model(tiny_llama(), PeftConfig(method="lora", target_modules=["q_proj", "v_proj"]), False)
    leaves = {name.rsplit(".", 1)[-1] for name in lora_targets(wrapped)}
    assert leaves == {"q_proj", "v_proj"}
    assert len(lora_targets(wrapped)) == 4  # 2 layers x 2 modules


def test_lora_rank_sets_adapter_shapes():
    wrapped = wrap_model(tiny_llama(), PeftConfig(method="lora", r=4, target_modules=["q_proj"]), False)
    q = wrapped.base_model.model.model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.shape == (4, 16)  # (r, in)
    assert q.lora_B["default"].weight.shape == (16, 4)  # (out, r)


def test_wrap_model_checks_targets_first():
    with pytest.raises(TunesmithError, match="'nope'"):
        wrap_model(tiny_llama(), PeftConfig(method="lora", target_modules=["nope"]), False)


def test_full_fine_tuning_leaves_model_untouched_and_trainable():
    model = tiny_llama()
    wrapped = wrap_model(model, PeftConfig(method="none"), gradient_checkpointing=False)
    assert wrapped is model
    assert all(param.requires_grad for param in wrapped.parameters())
    trainable, total = count_parameters(wrapped)
    assert trainable == total > 0


def test_peft_config_lora_passes_every_field():
    cfg = PeftConfig(r=8, alpha=16, dropout=0.1, target_modules=["q_proj"], modules_to_save=["lm_head"], rslora=True, dora=True)
    config = peft_config(cfg, tiny_llama())
    assert config.use_rslora is True
    assert config.use_dora is True
    assert config.r == 8
    assert config.lora_alpha == 16
    assert config.lora_dropout == 0.1
    assert set(config.target_modules) == {"q_proj"}
    assert list(config.modules_to_save) == ["lm_head"]
    assert config.task_type == "CAUSAL_LM"


def test_peft_config_lora_defaults():
    config = peft_config(PeftConfig(), tiny_llama())
    assert config.use_rslora is False
    assert config.use_dora is False
    assert config.target_modules == "all-linear"
    assert config.modules_to_save is None


def test_rslora_changes_scaling():
    wrapped = wrap_model(tiny_llama(), PeftConfig(r=4, alpha=8, rslora=True, target_modules=["q_proj"]), False)
    q = wrapped.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / 4**0.5)


@pytest.mark.parametrize("arch", MODELS)
def test_count_parameters_matches_manual_sum(arch):
    wrapped = wrap_model(MODELS[arch](), PeftConfig(method="lora"), False)
    trainable, total = count_parameters(wrapped)
    assert total == sum(p.numel() for p in wrapped.parameters())
    assert trainable == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert 0 < trainable < total


def _params4bit_module(storage):
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import quantize_4bit

    weight = torch.randn(32, 64)  # (out, in): 2048 parameters
    packed, state = quantize_4bit(weight, quant_type="nf4", quant_storage=storage)
    module = torch.nn.Module()
    module.weight = bnb.nn.Params4bit(
        packed, requires_grad=False, quant_state=state, quant_type="nf4", quant_storage=storage, bnb_quantized=True
    )
    return module, weight.numel()


def test_count_parameters_unpacks_4bit_uint8():
    module, n = _params4bit_module(torch.uint8)
    assert count_parameters(module) == (0, n)


def test_count_parameters_unpacks_4bit_bf16_storage():
    module, n = _params4bit_module(torch.bfloat16)
    assert count_parameters(module) == (0, n)


@pytest.mark.parametrize("target, kind", [("input_layernorm", "LlamaRMSNorm"), ("self_attn", "LlamaAttention"), ("mlp", "LlamaMLP")])
def test_check_target_modules_refuses_layers_lora_cannot_adapt(target, kind):
    with pytest.raises(TunesmithError) as info:
        check_target_modules(tiny_llama(), ["q_proj", target])
    assert str(info.value) == (
        f"peft.target_modules: {target!r} names {kind} modules, which LoRA cannot adapt (it takes linear, embedding and "
        f"convolution layers); its linear modules are: {', '.join(LLAMA_LINEAR)}"
    )


def test_check_target_modules_takes_embeddings_and_conv1d():
    assert check_target_modules(tiny_llama(), ["embed_tokens", "lm_head"]) is None
    assert check_target_modules(tiny_gpt2(), ["c_attn", "wte"]) is None


def test_modules_to_save_must_name_modules():
    model = tiny_llama()
    assert check_target_modules(model, "all-linear", ["lm_head", "model.norm"]) is None
    with pytest.raises(TunesmithError) as info:
        check_target_modules(model, "all-linear", ["lm_head", "no_such_head", "head"])
    message = str(info.value)
    # 'head' is a substring of lm_head, which PEFT's own plain endswith would take: a name must be a whole one.
    assert message.startswith("peft.modules_to_save: no module of this model is named 'no_such_head' or 'head'; its module names are: ")
    assert "embed_tokens" in message and "lm_head" in message


def test_wrap_model_refuses_modules_to_save_that_peft_would_ignore():
    with pytest.raises(TunesmithError, match="'no_such_head'"):
        wrap_model(tiny_llama(), PeftConfig(method="lora", modules_to_save=["no_such_head"]), False)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"method": "ia3", "r": 8}, "peft.r: applies to peft.method lora, qlora, loha, lokr, vera, not to 'ia3'; remove peft.r"),
        ({"method": "prompt", "dora": True}, "peft.dora: applies to peft.method lora, qlora, not to 'prompt'"),
        ({"method": "lora", "num_virtual_tokens": 8}, "peft.num_virtual_tokens: applies to peft.method prefix, prompt, not to 'lora'"),
        ({"method": "adapter", "target_modules": ["q_proj"]}, "peft.target_modules: applies to peft.method lora, qlora, ia3, loha, lokr, vera, oft, not to 'adapter'"),
        ({"method": "adapter", "bottleneck": 8, "reduction_factor": 4}, "peft.bottleneck and peft.reduction_factor both size the adapter"),
        ({"method": "qlora", "init": "pissa"}, "peft.init: 'pissa' rewrites the base weights"),
        # saved converted to the original base, DoRA's magnitudes left out: it reloaded 1.7 logits away from the trained model
        ({"method": "lora", "init": "pissa", "dora": True}, "peft.dora: DoRA cannot be saved against the original base after peft.init 'pissa'"),
        ({"method": "lora", "init": "olora", "dora": True}, "use init default or gaussian with dora, or dora: false"),
        ({"method": "oft", "blocksize": 8}, "Extra inputs are not permitted"),
    ],
)
def test_keys_of_another_method_are_refused_not_ignored(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PeftConfig.model_validate(values)


def test_use_rslora_is_rslora():
    assert PeftConfig.model_validate({"use_rslora": True}).rslora is True


def test_peft_config_builds_each_method_with_its_keys():
    from peft import IA3Config, LoraConfig, OFTConfig, PrefixTuningConfig, VeraConfig

    model = tiny_llama()
    lora = peft_config(PeftConfig(method="lora", init="olora", lora_plus_ratio=16), model)
    assert isinstance(lora, LoraConfig) and lora.init_lora_weights == "olora"
    ia3 = peft_config(PeftConfig(method="ia3"), model)
    assert isinstance(ia3, IA3Config) and ia3.feedforward_modules == {"down_proj"} and "lm_head" not in ia3.target_modules
    assert isinstance(peft_config(PeftConfig(method="prefix", num_virtual_tokens=7), model), PrefixTuningConfig)
    vera = peft_config(PeftConfig(method="vera", r=8, dropout=0.1), model)
    assert isinstance(vera, VeraConfig) and (vera.r, vera.vera_dropout) == (8, 0.1)
    oft = peft_config(PeftConfig(method="oft", block_size=8), model)
    assert isinstance(oft, OFTConfig) and (oft.r, oft.oft_block_size) == (0, 8)


def test_bottleneck_and_virtual_tokens_train_with_sft_only():
    """Refused by the recipe itself, so `tunesmith check` and `plan` say so too, not only `train`."""
    from tunesmith.config import validate
    from tunesmith.errors import ConfigError

    def recipe(method, peft):
        return {"method": method, "model": {"path": "m"}, "data": {"train": "d.jsonl"}, "peft": {"method": peft}}

    for method in ("adapter", "prefix", "prompt"):
        with pytest.raises(ConfigError, match=f"peft.method '{method}' trains with method sft only, not dpo; use one of lora, qlora, ia3"):
            validate(recipe("dpo", method))
    assert validate(recipe("dpo", "ia3")).peft.method == "ia3"


def test_prefix_tuning_with_gradient_checkpointing_is_refused():
    """Checkpointed layers drop the cache in training, and with it the prefix: attention then failed on the mask."""
    from tunesmith.config import validate
    from tunesmith.errors import ConfigError

    raw = {"model": {"path": "m"}, "data": {"train": "d.jsonl"}, "peft": {"method": "prefix"}, "train": {"gradient_checkpointing": True}}
    with pytest.raises(ConfigError, match="train.gradient_checkpointing: prefix tuning hands its keys and values to every layer as a cache"):
        validate(raw)
    assert validate(raw | {"peft": {"method": "prompt"}}).train.gradient_checkpointing


def test_lora_plus_puts_b_matrices_in_a_faster_group():
    from types import SimpleNamespace

    from tunesmith.models.peft import use_lora_plus

    model = wrap_model(tiny_llama(), PeftConfig(r=4, target_modules=["q_proj"], lora_plus_ratio=16), False)
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(learning_rate=1e-3, weight_decay=0.0),
                              get_optimizer_cls_and_kwargs=lambda args, model: (torch.optim.AdamW, {"lr": 1e-3}))
    use_lora_plus(trainer, PeftConfig(lora_plus_ratio=16))
    rates = {}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            rates[param.data_ptr()] = group["lr"]
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert rates[q.lora_A["default"].weight.data_ptr()] == 1e-3
    assert rates[q.lora_B["default"].weight.data_ptr()] == 16e-3


def test_ia3_on_gpt2_scales_the_mlp_projection_on_its_input_and_the_attention_one_on_its_output():
    """PEFT names GPT-2's feedforward module mlp.c_proj, beside attn.c_proj: once refused as 'no feedforward modules'."""
    from peft import PeftModel

    model = wrap_model(tiny_gpt2(), PeftConfig(method="ia3"), False)
    layer = model.base_model.model.transformer.h[0]
    assert layer.mlp.c_proj.is_feedforward and not layer.attn.c_proj.is_feedforward and not layer.mlp.c_fc.is_feedforward
    assert layer.mlp.c_proj.ia3_l["default"].shape == (1, 4 * 16)  # scales the input (d_ff) of the down-projection
    assert layer.attn.c_proj.ia3_l["default"].shape == (16, 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ia3_l" in name:
                param.normal_()
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # its saved config passes PEFT's own checks on reload
        model.save_pretrained(folder)
        reloaded = PeftModel.from_pretrained(tiny_gpt2(), folder).eval()
        ids = torch.tensor([[1, 5, 9, 3]])
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_ia3_feedforward_modules_must_name_targeted_modules():
    with pytest.raises(TunesmithError, match=r"peft.feedforward_modules: mlp.no_such must name modules among peft.target_modules"):
        wrap_model(tiny_gpt2(), PeftConfig(method="ia3", feedforward_modules=["mlp.no_such"]), False)
    with pytest.raises(TunesmithError, match=r"peft.feedforward_modules: down_proj must name modules among peft.target_modules \(q_proj, v_proj\)"):
        wrap_model(tiny_llama(), PeftConfig(method="ia3", target_modules=["q_proj", "v_proj"], feedforward_modules=["down_proj"]), False)


@pytest.mark.parametrize(
    "config, peft, message",
    [
        (GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64), {"method": "loha"},
         "peft.method 'loha': PEFT cannot wrap this model: Target module of type <class 'transformers.pytorch_utils.Conv1D'> not supported"),
        (GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64), {"method": "oft", "block_size": 8}, "peft.method 'oft': PEFT cannot wrap this model: Target module Conv1D"),
        # PEFT would quietly use block size 4 for 16 inputs, and 6 for the down-projection's 24
        (LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4), {"method": "oft", "block_size": 5},
         "peft.block_size: 5 does not divide the input size of 14 adapted layers (e.g. base_model.model.model.layers.0.self_attn.q_proj: 16); "
         "use a divisor of 8, the input sizes' greatest common divisor (e.g. 4)"),
        (LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4), {"method": "lora", "target_modules": ["c_attn"]},
         "peft.target_modules: no module of this model is named 'c_attn'"),
        ("opt", {"method": "adapter"}, "peft.method 'adapter': found no decoder layer with an attention block"),
        # trained, then failed to save at the end (the initial adapter had rank 16, the config 32)
        (LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4), {"method": "lora", "init": "pissa", "r": 32},
         "peft.r: 32 is more than the rank of the adapted weight base_model.model.model.layers.0.self_attn.q_proj (16 x 16); init pissa takes r "
         "components of each weight: use r <= 16"),
        (LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
         {"method": "lora", "init": "olora", "r": 12}, "peft.r: 12 is more than the rank of the adapted weight base_model.model.model.layers.0.self_attn.k_proj (8 x 16)"),
        # TRL's SFTTrainer refused it once the model had loaded
        (GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64), {"method": "lora", "target_modules": ["c_attn", "lm_head"]},
         "peft.target_modules: the output layer cannot take an adapter with method sft"),
        (GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64), {"method": "adapter", "bottleneck": 64},
         "peft.bottleneck: 64 is more than this model's hidden size, 16: an adapter projects down; use at most 16"),
        # was quietly a bottleneck of one unit
        (GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64), {"method": "adapter", "reduction_factor": 32},
         "peft.reduction_factor: 32 leaves no bottleneck unit of this model's hidden size, 16; use at most 16"),
    ],
    ids=["gpt2-loha", "gpt2-oft", "oft-block-size", "missing-target", "opt-adapter", "pissa-rank", "olora-rank", "lora-on-the-head", "bottleneck-size",
         "reduction-factor"],
)
def test_what_does_not_fit_the_model_fails_on_its_config_before_any_weight_loads(config, peft, message, tmp_path):
    """A folder with a config.json and no weights: the check builds the model's skeleton from its config alone."""
    from transformers import OPTConfig

    from tunesmith.models.peft import check_adapters

    if config == "opt":  # fc1/fc2 sit in the decoder layer itself, no MLP module to follow
        config = OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=16)
    config.save_pretrained(tmp_path)
    with pytest.raises(TunesmithError, match=re.escape(message)):
        check_adapters(str(tmp_path), PeftConfig(**peft))


def test_methods_that_fit_pass_the_check_on_the_config(tmp_path):
    from tunesmith.models.peft import check_adapters

    GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=64).save_pretrained(tmp_path)
    for peft in ({"method": "lora", "dora": True}, {"method": "lora", "init": "pissa"}, {"method": "ia3"}, {"method": "vera"},
                 {"method": "adapter", "placement": "houlsby"}, {"method": "prefix"}):
        check_adapters(str(tmp_path), PeftConfig(**peft))


def test_prefix_tuning_that_does_not_fit_the_attention_is_refused_before_training():
    """Falcon's multi-query attention has one key/value head, which its config does not say: PEFT's prefix has four."""
    from transformers import FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    falcon = FalconForCausalLM(FalconConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4))
    with pytest.raises(TunesmithError, match=r"peft.method 'prefix': PEFT's prefix keys and values do not fit the attention of FalconForCausalLM \(.*\); use peft.method prompt"):
        wrap_model(falcon, PeftConfig(method="prefix", num_virtual_tokens=3), False)
    llama = wrap_model(tiny_llama().train(), PeftConfig(method="prefix", num_virtual_tokens=3), False)
    assert llama.training  # the check leaves the mode as it found it


def test_a_prompt_init_text_longer_than_the_virtual_tokens_is_refused(stories_tokenizer):
    """PEFT keeps the first num_virtual_tokens of its tokens (<s> counted) and drops the rest without a word."""
    from tunesmith.models.peft import check_prompt_init

    with pytest.raises(TunesmithError, match=r"peft.prompt_init_text: its 5 tokens are more than peft.num_virtual_tokens \(4\), and only the first 4"):
        check_prompt_init(PeftConfig(method="prompt", num_virtual_tokens=4, prompt_init_text="Once upon a time"), stories_tokenizer)
    check_prompt_init(PeftConfig(method="prompt", num_virtual_tokens=5, prompt_init_text="Once upon a time"), stories_tokenizer)
