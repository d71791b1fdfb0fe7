"""back-translation and paraphrase: the method's logic with a fake translator whose mapping is known, and the real
transformers path on tiny models built in-process (a seq2seq model with SmolLM2's tokenizer, a tiny Llama)."""

import json
from pathlib import Path

import pytest

import tunesmith.curate.seq2seq as seq2seq
from tunesmith.cli import main

TO_EN = {"배송이 늦어요": "The delivery is late", "환불해 주세요": "Please refund me", "좋아요": "Good"}
BACK = {"The delivery is late": ["배송이 늦네요", "배송이 늦어요", "배달이 늦어요"], "Please refund me": ["환불 부탁드려요", "", "환불해 주세요"],
        "Good": ["좋아요", "좋아요", "좋아요"]}


class Fake:
    """A translator whose outputs are known: the first num_return entries of its table for each text."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, texts, num_return=1, batch_size=16, temperature=0.0, seed=0):
        self.calls.append(list(texts))
        return [([self.table[t]] if isinstance(self.table[t], str) else self.table[t])[:num_return] for t in texts]


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_back_translation_goes_through_the_pivot_and_keeps_only_new_nonempty_variants(tmp_path, monkeypatch):
    loaded = {}

    def load(name, src=None, tgt=None, prefix="", max_new_tokens=256):
        loaded[(src, tgt)] = name
        return Fake(TO_EN if (src, tgt) == ("ko", "en") else BACK)

    monkeypatch.setattr(seq2seq.Seq2Seq, "load", staticmethod(load))
    rows = [{"id": "a", "prompt": "배송이 늦어요", "completion": "shipping"}, {"id": "b", "prompt": "환불해 주세요", "completion": "refund"},
            {"id": "c", "prompt": "좋아요", "completion": "praise"}]
    out = tmp_path / "grown.jsonl"
    assert main(["data", "augment", "back-translation", str(write(tmp_path / "t.jsonl", rows)), "--per-row", "2", "--out", str(out)]) == 0
    assert loaded == {("ko", "en"): "Helsinki-NLP/opus-mt-ko-en", ("en", "ko"): "Helsinki-NLP/opus-mt-tc-big-en-ko"}
    grown = read(out)
    variants = [(r["augmented_from"], r["prompt"], r["completion"]) for r in grown if "augmented_from" in r]
    # a: its copy of the original is left out; b: the empty output is; c: every output is the original
    assert variants == [("a", "배송이 늦네요", "shipping"), ("a", "배달이 늦어요", "shipping"), ("b", "환불 부탁드려요", "refund")]
    assert all(r["augmentation"] == "back-translation" for r in grown if "augmented_from" in r)
    counters = json.loads((tmp_path / "grown.jsonl.report.json").read_text(encoding="utf-8"))["counters"]
    assert counters["variants left out: unchanged or repeated"] == 5 and counters["variants left out: empty"] == 1
    assert counters["texts translated"] == 3 and counters["variants written"] == 3


def test_settings_of_another_method_are_refused(tmp_path, capsys):
    source = write(tmp_path / "t.jsonl", [{"prompt": "좋아요", "completion": "x"}])
    assert main(["data", "augment", "obfuscate-ko", str(source), "--per-row", "1", "--model", "m", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err == "error: augment obfuscate-ko: --model belong to another method\n"
    assert main(["data", "augment", "paraphrase", str(source), "--per-row", "1", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "augment paraphrase: give --model" in capsys.readouterr().err


def test_back_translation_and_paraphrase_run_real_seq2seq_models(tiny_seq2seq, tmp_path):
    rows = [{"id": str(i), "prompt": text, "completion": "x"} for i, text in enumerate(["배송이 늦어요", "환불해 주세요", "좋아요", "감사합니다"])]
    source = write(tmp_path / "t.jsonl", rows)
    for method, flags in (("back-translation", ["--translator-to", str(tiny_seq2seq), "--translator-back", str(tiny_seq2seq)]),
                          ("paraphrase", ["--model", str(tiny_seq2seq), "--prefix", "paraphrase: "])):
        out = tmp_path / f"{method}.jsonl"
        assert main(["data", "augment", method, str(source), "--per-row", "2", "--max-new-tokens", "6", "--batch-size", "3", "--out", str(out), *flags]) == 0
        report = json.loads((tmp_path / f"{method}.jsonl.report.json").read_text(encoding="utf-8"))
        c = report["counters"]
        assert c["variants written"] <= 8 and c["train rows augmented"] == 4
        assert report["written"]["out"] == 4 + c["variants written"]
        assert report["settings"]["back_model" if method == "back-translation" else "model"] == str(tiny_seq2seq)


def test_paraphrase_with_a_causal_lm_samples_one_answer_per_variant(tiny_llama_words, tmp_path):
    source = write(tmp_path / "t.jsonl", [{"id": "a", "question": "Where is my parcel?", "answer": "shipping"}])
    out = tmp_path / "p.jsonl"
    args = ["data", "augment", "paraphrase", str(source), "--model", str(tiny_llama_words), "--per-row", "2", "--temperature", "0.9",
            "--max-new-tokens", "5", "--pairs"]
    assert main([*args, "--out", str(out)]) == 0
    pairs = read(out)
    assert [p["completion"] for p in pairs] == ["Where is my parcel?"] * len(pairs) and 1 <= len(pairs) <= 2
    assert all(p["prompt"] and p["prompt"] != p["completion"] for p in pairs)
    assert main([*args, "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()  # seeded sampling


def test_a_text_longer_than_the_models_window_is_refused_not_cut(tiny_seq2seq):
    from tunesmith.curate.seq2seq import Seq2Seq
    from tunesmith.errors import TunesmithError

    model = Seq2Seq.load(str(tiny_seq2seq), max_new_tokens=4)
    model.tokenizer.model_max_length = 8
    assert len(model(["short"])[0]) == 1
    with pytest.raises(TunesmithError, match="tokens is longer than the 8 this model reads"):
        model(["a much longer text than eight tokens of this tiny model, surely"])
