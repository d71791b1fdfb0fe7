import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli import main

REPO = Path(__file__).resolve().parents[2]
REVIEWS = REPO / "examples" / "data" / "korean_reviews"
TEXTS = ["화장실이 너무 작아요.", "직원이 친절했어요.", "배송이 빨라서 좋았어요.", "음식이 짜요.", "방이 깨끗해요.", "다시 올게요.",
         "주차가 불편해요.", "커피가 맛있어요.", "가격이 비싸요.", "소리가 작아요."]


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def reviews(tmp_path):
    return write(tmp_path / "reviews.jsonl", [{"id": f"r{i}", "text": t, "rating": i % 5 + 1} for i, t in enumerate(TEXTS)])


def test_variants_keep_the_other_columns_and_name_their_source(reviews, tmp_path):
    out = tmp_path / "grown.jsonl"
    assert main(["data", "augment", "obfuscate-ko", str(reviews), "--field", "text", "--per-row", "2", "--out", str(out)]) == 0
    rows = read(out)
    originals = [r for r in rows if "augmented_from" not in r]
    variants = [r for r in rows if "augmented_from" in r]
    assert [r["text"] for r in originals] == TEXTS and len(variants) == 20
    by_id = {r["id"]: r for r in originals}
    for v in variants:
        source = by_id[v["augmented_from"]]
        assert v["augmentation"] == "obfuscate-ko" and v["rating"] == source["rating"] and v["id"] == source["id"]
        assert v["text"] != source["text"] and len(v["text"]) == len(source["text"])
    report = json.loads((tmp_path / "grown.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["written"] == {"out": 30} and report["counters"]["variants written"] == 20
    assert {k for k in report["counters"] if k.startswith("rule ")} <= {f"rule {r}" for r in ("liaison", "similar_initial", "similar_medial", "similar_final", "add_final")}


def test_pairs_are_trainable_prompt_completion_rows(reviews, tmp_path):
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "augment", "obfuscate-ko", str(reviews), "--field", "text", "--pairs", "--ratio", "1.5", "--out", str(out)]) == 0
    pairs = read(out)
    assert len(pairs) == 15  # one per row, a second for a seeded half
    assert all(set(p) == {"prompt", "completion", "augmented_from", "augmentation"} and p["completion"] in TEXTS and p["prompt"] != p["completion"] for p in pairs)
    from tunesmith.data.load import load_examples

    examples, _ = load_examples(out, "prompt_completion")
    assert len(examples) == 15


def test_eval_rows_and_their_variants_never_reach_train(tmp_path):
    rows = [{"id": f"r{i}", "text": t, "split": "test" if i in (2, 7) else "train"} for i, t in enumerate(TEXTS)]
    source = write(tmp_path / "all.jsonl", rows)
    out, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    assert main(["data", "augment", "obfuscate-ko", str(source), "--field", "text", "--per-row", "3", "--out", str(out)]) == 2
    assert main(["data", "augment", "obfuscate-ko", str(source), "--field", "text", "--per-row", "3", "--out", str(out), "--eval-out", str(held)]) == 0
    train, evals = read(out), read(held)
    assert {r["id"] for r in evals} == {"r2", "r7"} and len(evals) == 8
    assert not {r["id"] for r in train} & {"r2", "r7"} and len(train) == 32
    assert not {r["text"] for r in train} & {r["text"] for r in evals}


def test_eval_share_holds_out_source_rows_before_any_variant(reviews, tmp_path, capsys):
    out, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    assert main(["data", "augment", "obfuscate-ko", str(reviews), "--field", "text", "--pairs", "--per-row", "2",
                 "--eval-share", "0.2", "--out", str(out), "--eval-out", str(held)]) == 0
    train, evals = read(out), read(held)
    assert len({p["augmented_from"] for p in evals}) == 2 and len(evals) == 4
    assert not {p["augmented_from"] for p in train} & {p["augmented_from"] for p in evals}
    assert main(["data", "augment", "obfuscate-ko", str(reviews), "--field", "text", "--per-row", "1", "--out", str(tmp_path / "x.jsonl")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_the_same_seed_gives_the_same_file_and_another_seed_another(reviews, tmp_path):
    def run(name, seed):
        assert main(["data", "augment", "obfuscate-ko", str(reviews), "--field", "text", "--per-row", "2", "--seed", str(seed),
                     "--batch-size", str(1 + seed % 3), "--out", str(tmp_path / name)]) == 0
        return (tmp_path / name).read_bytes()

    assert run("a.jsonl", 0) == run("b.jsonl", 3 * 0) != run("c.jsonl", 1)
    assert run("d.jsonl", 3) == run("e.jsonl", 3)


def test_a_run_killed_half_way_resumes_to_the_file_an_uninterrupted_run_writes(tmp_path):
    source = write(tmp_path / "many.jsonl", [{"id": f"r{i}", "text": TEXTS[i % 10] + f" {i}번"} for i in range(60)])
    args = ["data", "augment", "obfuscate-ko", str(source), "--field", "text", "--per-row", "2", "--chunk-rows", "10", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "whole.jsonl")]) == 0
    kill_at_row_35 = (
        "import os, signal, sys\n"
        "import tunesmith.curate.augment as a\n"
        "real = a.METHODS['obfuscate-ko']\n"
        "def dying(batch, *rest):\n"
        "    if any(texts[0].endswith(' 35번') for texts in batch):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(batch, *rest)\n"
        "a.METHODS['obfuscate-ko'] = dying\n"
        "from tunesmith.cli import main\n"
        f"sys.exit(main({[*args, '--out', str(tmp_path / 'out.jsonl')]!r}))\n"
    )
    killed = subprocess.run([sys.executable, "-c", kill_at_row_35], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    parts = tmp_path / "out.jsonl.parts"
    assert len(list(parts.glob("part-*.out.jsonl"))) == 3 and not (tmp_path / "out.jsonl").exists()
    assert main([*args, "--out", str(tmp_path / "out.jsonl")]) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert not parts.exists()


@pytest.mark.parametrize("flags, message", [
    (["--per-row", "1", "--ratio", "1"], "augment: give --per-row N or --ratio R"),
    (["--per-row", "1", "--rules", "liason=0.5"], "--rules: unknown rule 'liason'; rules: liaison, "),
    (["--per-row", "1", "--rules", "liaison=2"], "--rules liaison=2: give each rule a probability from 0 to 1"),
    (["--per-row", "0"], "--per-row: 0 is not a whole number > 0"),
    (["--per-row", "1", "--eval-share", "1.5", "--eval-out", "e.jsonl"], "--eval-share: 1.5 is not a share between 0 and 1"),
])
def test_bad_settings_are_one_line(reviews, tmp_path, capsys, flags, message):
    assert main(["data", "augment", "obfuscate-ko", str(reviews), "--field", "text", "--out", str(tmp_path / "o.jsonl"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err


def test_english_text_gets_a_note(tmp_path, capsys):
    source = write(tmp_path / "en.jsonl", [{"text": "hello there"}, {"text": "안녕"}])
    assert main(["data", "augment", "obfuscate-ko", str(source), "--field", "text", "--per-row", "1", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "note: only 17% of the text's characters are Hangul syllables" in capsys.readouterr().err


def test_the_shipped_restoration_pairs_are_what_the_documented_command_writes(tmp_path):
    train, held = tmp_path / "restore_train.jsonl", tmp_path / "restore_eval.jsonl"
    assert main(["data", "augment", "obfuscate-ko", str(REVIEWS / "reviews.jsonl"), "--field", "text", "--pairs", "--per-row", "2",
                 "--eval-share", "0.1", "--out", str(train), "--eval-out", str(held)]) == 0
    assert train.read_bytes() == (REVIEWS / "restore_train.jsonl").read_bytes()
    assert held.read_bytes() == (REVIEWS / "restore_eval.jsonl").read_bytes()


def test_training_holds_a_row_out_with_all_its_variants(tmp_path):
    from tunesmith.config import METHOD_FORMATS, DataConfig
    from tunesmith.data.prepare import DataReport, read_mixture

    source = write(tmp_path / "plain.jsonl", [{"prompt": t, "completion": str(i % 3)} for i, t in enumerate(TEXTS)])  # no id column
    grown = tmp_path / "grown.jsonl"
    assert main(["data", "augment", "obfuscate-ko", str(source), "--per-row", "3", "--out", str(grown)]) == 0
    rows = read(grown)
    assert [r["id"] for r in rows if "augmented_from" not in r] == [f"{source}:{i}" for i in range(1, 11)]
    group = {r["prompt"]: r.get("augmented_from") or r["id"] for r in rows}
    for seed in range(5):
        train, evals = read_mixture(DataConfig(train=[str(grown)], eval_split=0.2), DataReport(), seed, METHOD_FORMATS["sft"])
        held = {group[e.messages[0]["content"]] for e in evals}
        assert len(evals) == 8 and len(held) == 2  # two rows, each with its 3 variants
        assert not held & {group[e.messages[0]["content"]] for e in train}
