"""Seq2seq models for the data verbs (translators: MarianMT, NLLB, M2M100; paraphrasers: T5, BART), loaded
through transformers from a hub id or a local folder and run in batches on the model's device (a GPU when
there is one).

    to_en = Seq2Seq.load("Helsinki-NLP/opus-mt-ko-en")
    to_en(["배송이 늦어요"], num_return=1)                       # [["The delivery is late."]]
    nllb = Seq2Seq.load("facebook/nllb-200-distilled-600M", src="ko", tgt="en")

NLLB and M2M100 translate between many languages: the source language is set on the tokenizer and the target
language token is forced as the first generated token, so they need --src and --tgt. A Marian model is one
language pair and needs neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError

# Marian models per language pair (ISO 639-1), the default translators.
MARIAN = {("ko", "en"): "Helsinki-NLP/opus-mt-ko-en", ("en", "ko"): "Helsinki-NLP/opus-mt-tc-big-en-ko"}
# NLLB's language codes, for the languages our users translate between most.
NLLB_CODES = {
    "ko": "kor_Hang", "en": "eng_Latn", "ja": "jpn_Jpan", "zh": "zho_Hans", "vi": "vie_Latn", "th": "tha_Thai",
    "id": "ind_Latn", "es": "spa_Latn", "fr": "fra_Latn", "de": "deu_Latn", "ru": "rus_Cyrl", "ar": "arb_Arab",
}


def not_loaded(name: str, err: Exception, what: str = "model") -> TunesmithError:
    """The one line for a model that would not load: offline and not cached, or the loader's reason."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") and not Path(name).exists():
        return TunesmithError(f"{name}: not in the local cache, and the hub is offline (HF_HUB_OFFLINE): give a local model folder")
    return TunesmithError(f"{name}: cannot load this {what} ({' '.join(str(err).split())[:300]})")


def default_translator(src: str, tgt: str) -> str:
    return MARIAN.get((src, tgt), f"Helsinki-NLP/opus-mt-{src}-{tgt}")


@dataclass
class Seq2Seq:
    model: object
    tokenizer: object
    name: str
    forced_bos: int | None = None     # NLLB / M2M100: the target language's token
    prefix: str = ""                  # put before every input (T5 paraphrasers: 'paraphrase: ')
    max_new_tokens: int = 256

    @classmethod
    def load(cls, name: str, src: str | None = None, tgt: str | None = None, prefix: str = "", max_new_tokens: int = 256) -> Seq2Seq:
        import torch
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(name)
            if not config.is_encoder_decoder:
                raise TunesmithError(f"{name}: not a seq2seq model (its config says {config.model_type}); a translator is one")
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForSeq2SeqLM.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise not_loaded(name, err) from None
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        forced_bos = None
        if config.model_type in ("m2m_100", "nllb-moe") or "nllb" in name.lower():
            if not (src and tgt):
                raise TunesmithError(f"{name} translates between many languages: give --src and --tgt (e.g. --src ko --tgt en)")
            codes = NLLB_CODES if "nllb" in name.lower() or config.model_type == "nllb-moe" else {src: src, tgt: tgt}
            if src not in codes or tgt not in codes:
                raise TunesmithError(f"{name}: no language code known for {src if src not in codes else tgt}; known: {', '.join(codes)}")
            tokenizer.src_lang = codes[src]
            forced_bos = tokenizer.convert_tokens_to_ids(codes[tgt] if codes is NLLB_CODES else f"__{tgt}__")
        return cls(model, tokenizer, name, forced_bos, prefix, max_new_tokens)

    def __call__(self, texts: list[str], num_return: int = 1, batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
                 num_beams: int = 1) -> list[list[str]]:
        """num_return outputs per text: beam search (at least num_beams) returning that many beams, or sampling at
        `temperature`."""
        import torch

        outputs = []
        for start in range(0, len(texts), batch_size):
            batch = [self.prefix + t for t in texts[start : start + batch_size]]
            self.check_window(batch)
            inputs = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.model.device)
            kwargs = {"max_new_tokens": self.max_new_tokens, "num_return_sequences": num_return}
            if temperature > 0:
                torch.manual_seed(seed + start)  # each batch from the seed and its place: resumable runs draw alike
                kwargs |= {"do_sample": True, "temperature": temperature}
            else:
                kwargs |= {"num_beams": max(num_return, num_beams)}
            if self.forced_bos is not None:
                kwargs["forced_bos_token_id"] = self.forced_bos
            with torch.no_grad():
                generated = self.model.generate(**inputs, **kwargs)
            decoded = [t.strip() for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
            outputs += [decoded[i : i + num_return] for i in range(0, len(decoded), num_return)]
        return outputs

    def check_window(self, batch: list[str]) -> None:
        """A text longer than the model reads would be cut short: refused, never truncated silently."""
        window = self.tokenizer.model_max_length
        if window is None or window > 1_000_000:  # no limit recorded
            return
        longest = max(len(ids) for ids in self.tokenizer(batch)["input_ids"])
        if longest > window:
            raise TunesmithError(
                f"{self.name}: a text of {longest} tokens is longer than the {window} this model reads, and would be cut "
                f"short; split long texts (e.g. a sentence per row) first"
            )
