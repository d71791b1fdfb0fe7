"""Every peft.method on tiny random models of other families, built in-process: Qwen2 (tied embeddings, grouped
key/value heads), Gemma 3 (sliding windows, norms after each block), Phi-3 (fused qkv_proj and gate_up_proj),
GPT-NeoX (query_key_value, parallel residual), GPT-2 (Conv1D layers, attention returning a tuple), OPT (fc1/fc2 in
the decoder layer, no MLP module) and Falcon (multi-query attention). A few steps lower the loss and change only the
adapter's parameters; the saved adapter reloads with the trained logits; what cannot apply to a family is refused
with a message that says so, before the weights load where the config alone tells."""

import re

import pytest
import torch
import transformers as T

from tunesmith.config import PeftConfig
from tunesmith.errors import TunesmithError
from tunesmith.models.peft import check_adapters, load_adapter, save_adapter, wrap_model

V = 96
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
FAMILIES = {
    "qwen2": (T.Qwen2ForCausalLM, lambda: T.Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True)),
    "gemma3": (T.Gemma3ForCausalLM, lambda: T.Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "phi3": (T.Phi3ForCausalLM, lambda: T.Phi3Config(**SMALL, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1)),
    "gpt_neox": (T.GPTNeoXForCausalLM, lambda: T.GPTNeoXConfig(**SMALL)),
    "gpt2": (T.GPT2LMHeadModel, lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64, bos_token_id=1, eos_token_id=1)),
    "opt": (T.OPTForCausalLM, lambda: T.OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                                  word_embed_proj_dim=32, max_position_embeddings=64)),
    "falcon": (T.FalconForCausalLM, lambda: T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)),
}
METHODS = {
    "lora": {"method": "lora", "r": 4, "dropout": 0.0},
    "lora-dora-rslora": {"method": "lora", "r": 4, "dora": True, "rslora": True, "dropout": 0.0},
    "lora-pissa": {"method": "lora", "r": 4, "init": "pissa", "dropout": 0.0},
    "adapter": {"method": "adapter", "bottleneck": 8, "dropout": 0.0},
    "adapter-houlsby": {"method": "adapter", "placement": "houlsby", "bottleneck": 8, "dropout": 0.0},
    "ia3": {"method": "ia3"},
    "prefix": {"method": "prefix", "num_virtual_tokens": 3},
    "prompt": {"method": "prompt", "num_virtual_tokens": 3},
    "loha": {"method": "loha", "r": 4},
    "lokr": {"method": "lokr", "r": 4},
    "vera": {"method": "vera", "r": 8, "dropout": 0.0},
    "oft": {"method": "oft", "block_size": 8, "dropout": 0.0},
}
LR = {"ia3": 0.3, "vera": 0.3, "prefix": 0.1, "prompt": 0.3, "oft": 0.05}
# What cannot apply, and what the refusal says.
REFUSED = {
    ("gpt2", "loha"): "peft.method 'loha': PEFT cannot wrap this model: Target module of type <class 'transformers.pytorch_utils.Conv1D'> not supported",
    ("gpt2", "lokr"): "peft.method 'lokr': PEFT cannot wrap this model: Target module of type <class 'transformers.pytorch_utils.Conv1D'> not supported",
    ("gpt2", "oft"): "peft.method 'oft': PEFT cannot wrap this model: Target module Conv1D",
    ("opt", "adapter"): "peft.method 'adapter': found no decoder layer with an attention block",
    ("opt", "adapter-houlsby"): "peft.method 'adapter': found no decoder layer with an attention block",
    ("falcon", "prefix"): "peft.method 'prefix': PEFT's prefix keys and values do not fit the attention of FalconForCausalLM",
}
IDS = torch.tensor([[1, 5, 9, 3, 7, 11, 13, 2, 4, 6]])


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """family -> the folder of its tiny random model (config.json and weights)."""
    folders = {}
    for family, (cls, config) in FAMILIES.items():
        torch.manual_seed(0)
        folders[family] = tmp_path_factory.mktemp(family)
        cls(config()).save_pretrained(folders[family])
    return folders


def load(family, folder):
    return FAMILIES[family][0].from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_method_trains_saves_and_reloads_on_each_family_or_is_refused_clearly(family, method, bases, tmp_path):
    cfg = PeftConfig(**METHODS[method])
    refusal = REFUSED.get((family, method))
    if refusal and method != "prefix":  # the config alone tells: refused before any weight loads
        with pytest.raises(TunesmithError, match=re.escape(refusal)):
            check_adapters(str(bases[family]), cfg)
        return
    check_adapters(str(bases[family]), cfg)
    base = load(family, bases[family])
    with torch.no_grad():
        base_logits = base(input_ids=IDS).logits
    if refusal:
        with pytest.raises(TunesmithError, match=re.escape(refusal)):
            wrap_model(base, cfg, False)
        return
    model = wrap_model(base, cfg, False).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR.get(method, 0.01))
    losses = []
    for _ in range(4):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable  # the adapter trained, the base did not
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=IDS).logits

    save_adapter(model, tmp_path / "adapter", cfg, str(bases[family]))
    reloaded = load_adapter(load(family, bases[family]), tmp_path / "adapter").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=IDS).logits
    torch.testing.assert_close(logits, trained, atol=1e-5, rtol=1e-4)
    assert (logits[:, -IDS.shape[1]:] - base_logits).abs().max() > 1e-3  # and it is on
