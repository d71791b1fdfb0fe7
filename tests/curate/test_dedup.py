import json

import pytest

from tunesmith.cli import main
from tunesmith.curate.dedup import ngrams, normalise

CLEAN = [
    "Where is my parcel? It was due on Monday.",
    "I was charged twice for the same order.",
    "How do I change the email on my account?",
    "The app crashes every time I open the camera.",
    "Please cancel my subscription and refund the last payment.",
    "Can I pick up the order at the store instead?",
    "배송이 아직 안 왔어요. 언제 도착하나요?",
    "비밀번호를 바꾸고 싶은데 메뉴가 안 보여요.",
    "결제가 두 번 됐어요. 확인 부탁드립니다.",
    "앱이 자꾸 꺼져서 사용할 수가 없어요.",
    "환불은 며칠 걸리나요?",
    "주소를 잘못 입력했는데 바꿀 수 있을까요?",
]


def write(path, texts, key="prompt"):
    path.write_text("".join(json.dumps({key: t, "completion": "x"}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def report_of(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_normalising_and_ngrams_work_for_korean():
    assert normalise("  Where IS my  parcel?!") == "where is my parcel"
    assert normalise("배송이   언제 오나요?") == "배송이 언제 오나요"
    assert ngrams("배송이", 3) == {"배송이"} and ngrams("ab", 3) == {"ab"}


def test_a_clean_set_has_no_duplicates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "clean.jsonl", CLEAN)
    assert main(["data", "dedup", "clean.jsonl"]) == 0
    report = report_of(tmp_path / "clean.dedup.report.json")
    assert report["extra"]["duplicates"] == [] and report["dropped"] == {} and report["read"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.dedup.report.json", "clean.dedup.report.md", "clean.jsonl"]


def test_planted_exact_and_near_duplicates_are_found_korean_included(tmp_path):
    planted = [*CLEAN,
               "where is my PARCEL?? it was due on monday",                 # 13: exact twin of 1 after normalising
               "배송이 아직 안 왔어요! 언제 도착하나요?",                        # 14: exact twin of 7
               "I was charged twice for the same order, please help.",     # 15: near twin of 2
               "비밀번호를 바꾸고 싶은데 설정 메뉴가 안 보여요."]               # 16: near twin of 8
    source = write(tmp_path / "train.jsonl", planted)
    out = tmp_path / "clean.jsonl"
    assert main(["data", "dedup", str(source), "--write", str(out)]) == 0
    report = report_of(tmp_path / "clean.jsonl.report.json")
    found = {(d["where"].rsplit(":", 1)[1], d["twin"].rsplit(":", 1)[1], d["kind"]) for d in report["extra"]["duplicates"]}
    assert found == {("13", "1", "exact"), ("14", "7", "exact"), ("15", "2", "near"), ("16", "8", "near")}
    assert report["dropped"] == {"exact_duplicate": 2, "near_duplicate": 2} and report["written"] == {"out": 12}
    assert [json.loads(line)["prompt"] for line in out.read_text(encoding="utf-8").splitlines()] == CLEAN
    assert all(d["similarity"] >= 0.7 for d in report["extra"]["duplicates"])
    assert "| near |" in (tmp_path / "clean.jsonl.report.md").read_text(encoding="utf-8")


def test_the_contamination_report_lists_exactly_the_planted_leaks(tmp_path, capsys):
    heldout = ["My tracking number shows nothing since Friday.", "카드 결제가 취소됐는데 돈이 안 들어왔어요.", "Why is the app asking me to log in again?"]
    evals = write(tmp_path / "heldout.jsonl", heldout)
    train = write(tmp_path / "train.jsonl", [*CLEAN, "카드 결제가 취소됐는데 돈이 안 들어왔어요", "my tracking number shows nothing since friday!!"])
    report_file = tmp_path / "r.json"
    assert main(["data", "dedup", str(train), "--against", str(evals), "--report", str(report_file)]) == 0
    leaks = report_of(report_file)["extra"]["contamination"]
    assert [(leak["eval"], [t["where"] for t in leak["twins"]]) for leak in leaks] == [
        (f"{evals}:2", [f"{train}:13"]), (f"{evals}:1", [f"{train}:14"])]
    report = report_of(report_file)
    assert report["counters"]["eval rows found in the input"] == 2 and report["counters"]["eval rows"] == 3
    assert report["dropped"] == {"in_eval_exact (with --write)": 2} and report["written"] == {}
    assert "2 of 3 eval rows found in the input" in capsys.readouterr().err
    md = report_file.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Contamination: eval rows found in the input" in md and f"{evals}:2" in md


def test_conversations_compare_their_user_and_assistant_text(tmp_path):
    def chat(user, reply, system="S"):
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}, {"role": "assistant", "content": reply}]}

    rows = [chat("Hi there", "Hello! How can I help?"), chat("Hi there", "Hello! How can I help?", system="Other"), chat("Hi there", "Go away.")]
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["data", "dedup", str(source), "--report", str(tmp_path / "r.json")]) == 0
    assert [(d["where"][-1], d["kind"]) for d in report_of(tmp_path / "r.json")["extra"]["duplicates"]] == [("2", "exact")]


def test_a_bad_row_is_named_or_counted(tmp_path, capsys):
    source = tmp_path / "t.jsonl"
    source.write_text('{"prompt": "a", "completion": "b"}\n{"text_": 1}\n', encoding="utf-8")
    assert main(["data", "dedup", str(source), "--report", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {source}:2: cannot tell the format from the keys [text_]")
    assert main(["data", "dedup", str(source), "--field", "prompt", "--on-bad-row", "drop", "--report", str(tmp_path / "r.json")]) == 0
    assert report_of(tmp_path / "r.json")["dropped"] == {"missing_field": 1}


@pytest.mark.parametrize("flags, message", [
    (["--threshold", "0"], "--threshold: 0.0 is not a Jaccard similarity in (0, 1]"),
    (["--ngram", "0"], "--ngram: 0 is not a whole number > 0"),
    (["--report", "r.md"], "--report r.md: the report is JSON"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, flags, message):
    source = write(tmp_path / "t.jsonl", CLEAN[:2])
    assert main(["data", "dedup", str(source), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1


def test_a_missing_extra_is_one_line_with_the_install_command(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasketch" else real(name, *a))
    assert main(["data", "dedup", str(write(tmp_path / "t.jsonl", CLEAN[:2]))]) == 2
    assert capsys.readouterr().err == "error: data dedup needs datasketch: pip install 'tunesmith[data]'\n"


@pytest.mark.parametrize("held_out", ["file", "share"])
def test_a_recipe_is_checked_against_its_own_eval_data(tmp_path, monkeypatch, held_out):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "train.jsonl", [*CLEAN, "환불은 며칠 걸리나요!"])  # row 13 repeats row 11
    write(tmp_path / "heldout.jsonl", ["How do I change the email on my account?", "A question nobody asked before today."])
    data = "  eval: heldout.jsonl\n" if held_out == "file" else "  eval_split: 0.25\n"
    (tmp_path / "r.yaml").write_text(f"model:\n  path: org/m\ndata:\n  train: train.jsonl\n{data}train:\n  seed: 1\n", encoding="utf-8")
    assert main(["data", "dedup", "r.yaml", "--report", "rep.json"]) == 0
    report = report_of(tmp_path / "rep.json")
    if held_out == "file":
        assert [leak["eval"] for leak in report["extra"]["contamination"]] == ["heldout.jsonl:1"] and report["counters"]["eval rows"] == 2
        assert [(d["where"], d["twin"]) for d in report["extra"]["duplicates"]] == [("train.jsonl:13", "train.jsonl:11")]
    else:  # the rows training would hold out (3 of 13, by the recipe's seed) are the eval rows
        from tunesmith.data.prepare import split_eval

        kept, held = split_eval(list(range(1, 14)), 0.25, 1)
        assert report["counters"]["eval rows"] == len(held) == 3 and report["read"] == 10
        expected = [f"train.jsonl:{11 if 11 in held else 13}"] if (11 in held) != (13 in held) else []
        assert [leak["eval"] for leak in report["extra"]["contamination"]] == expected
    assert main(["data", "dedup", "r.yaml", "--field", "prompt"]) == 2
