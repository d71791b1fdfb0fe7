import json
from pathlib import Path

import tunesmith.curate.seq2seq as seq2seq
from tunesmith.cli import main

KO_EN = {"배송이 늦어요": "The delivery is late", "빨리 보내 주세요": "Please send it quickly", "알겠습니다": "Understood",
         "상담원입니다": "This is the agent", "shipping": "배송"}


class Fake:
    def __init__(self):
        self.calls = []

    def __call__(self, texts, num_return=1, batch_size=16, temperature=0.0, seed=0, num_beams=1):
        self.calls.append(list(texts))
        return [[KO_EN[t]] for t in texts]


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def fake_translator(monkeypatch):
    fake, loaded = Fake(), []
    monkeypatch.setattr(seq2seq.Seq2Seq, "load", staticmethod(lambda name, src=None, tgt=None, **kw: loaded.append((name, src, tgt)) or fake))
    return fake, loaded


def test_conversations_translate_turn_by_turn_and_other_columns_are_kept(tmp_path, monkeypatch):
    fake, loaded = fake_translator(monkeypatch)
    chat = {"id": 7, "messages": [{"role": "system", "content": "상담원입니다"}, {"role": "user", "content": "배송이 늦어요"},
                                  {"role": "assistant", "content": "알겠습니다"}, {"role": "user", "content": ""}], "lang": "ko"}
    source = tmp_path / "chats.jsonl"
    source.write_text(json.dumps(chat, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "chats.en.jsonl"
    assert main(["data", "translate", str(source), "--src", "ko", "--tgt", "en", "--out", str(out)]) == 0
    assert loaded == [("Helsinki-NLP/opus-mt-ko-en", "ko", "en")]
    row, = read(out)
    assert [m["content"] for m in row["messages"]] == ["This is the agent", "The delivery is late", "Understood", ""]
    assert row["id"] == 7 and row["lang"] == "ko" and [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user"]
    assert fake.calls == [["상담원입니다", "배송이 늦어요", "알겠습니다"]]  # the empty turn is not sent
    report = json.loads((tmp_path / "chats.en.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["counters"] == {"rows translated": 1, "texts translated": 3}


def test_a_label_stays_as_it_is_when_field_leaves_it_out(tmp_path, monkeypatch):
    fake_translator(monkeypatch)
    source = tmp_path / "t.jsonl"
    source.write_text(json.dumps({"prompt": "빨리 보내 주세요", "completion": "shipping"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["data", "translate", str(source), "--src", "ko", "--tgt", "en", "--field", "prompt", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert read(tmp_path / "a.jsonl") == [{"prompt": "Please send it quickly", "completion": "shipping"}]
    assert main(["data", "translate", str(source), "--src", "ko", "--tgt", "en", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert read(tmp_path / "b.jsonl") == [{"prompt": "Please send it quickly", "completion": "배송"}]


def test_a_real_seq2seq_model_translates_in_batches(tiny_seq2seq, tmp_path):
    rows = [{"id": i, "text": t} for i, t in enumerate(["배송이 늦어요", "좋아요", "환불해 주세요", ""])]
    source = tmp_path / "t.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "en.jsonl"
    assert main(["data", "translate", str(source), "--src", "ko", "--tgt", "en", "--model", str(tiny_seq2seq), "--max-new-tokens", "5",
                 "--batch-size", "2", "--out", str(out)]) == 0
    translated = read(out)
    assert [r["id"] for r in translated] == [0, 1, 2, 3] and translated[3]["text"] == ""
    assert all(isinstance(r["text"], str) for r in translated)


def test_the_same_language_twice_is_refused(tmp_path, capsys):
    source = tmp_path / "t.jsonl"
    source.write_text('{"text": "a"}\n', encoding="utf-8")
    assert main(["data", "translate", str(source), "--src", "ko", "--tgt", "ko", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err == "error: --src and --tgt are both 'ko': nothing to translate\n"


def test_a_model_not_cached_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = tmp_path / "t.jsonl"
    source.write_text('{"text": "안녕"}\n', encoding="utf-8")
    assert main(["data", "translate", str(source), "--src", "ko", "--tgt", "en", "--model", "nobody/no-such-translator", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err == "error: nobody/no-such-translator: not in the local cache, and the hub is offline (HF_HUB_OFFLINE): give a local model folder\n"


def test_a_long_text_is_translated_sentence_by_sentence_and_put_back_together(tmp_path, monkeypatch):
    fake, _ = fake_translator(monkeypatch)
    long_one = "가나다 " * 60 + "라마"  # one 242-character sentence: cut at a space, no piece over 200 characters
    pieces = {("가나다 " * 50).strip(): "ABC " * 49 + "ABC", ("가나다 " * 10).strip() + " 라마": "tail",
              "배송이 늦어요.": "The delivery is late.", "빨리 보내 주세요!": "Please send it quickly!"}
    for ko, en in pieces.items():
        monkeypatch.setitem(KO_EN, ko, en)
    text = f"배송이 늦어요. 빨리 보내 주세요!\n\n{long_one}"
    source = tmp_path / "long.jsonl"
    source.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "long.en.jsonl"
    assert main(["data", "translate", str(source), "--src", "ko", "--tgt", "en", "--field", "text", "--out", str(out)]) == 0
    assert all(len(piece) <= 200 for call in fake.calls for piece in call) and len(fake.calls[0]) == 4
    assert read(out)[0]["text"] == "The delivery is late. Please send it quickly!\n\n" + "ABC " * 49 + "ABC tail"
    report = json.loads(Path(f"{out}.report.json").read_text(encoding="utf-8"))
    assert "texts translated in several sentences" in json.dumps(report, ensure_ascii=False)
