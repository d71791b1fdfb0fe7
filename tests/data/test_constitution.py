"""Constitutional self-critique data: verdict parsing, input checks, the critique/revise loop (driven by a
scripted stand-in for the model, so every branch is deterministic), and the datasets it writes."""

import json
import math

import pytest

from tunesmith.data.constitution import (
    Decoding,
    build_datasets,
    load_inputs,
    load_principles,
    parse_verdict,
    produce,
    read_prompts,
    render_summary,
    self_critique,
)
from tunesmith.data.formats import DataError
from tunesmith.data.load import load_examples
from tunesmith.errors import TunesmithError

PRINCIPLES = """\
- name: direct
  critique: Does the reply answer the question?
  revision: Answer it in the first sentence.
- name: kind
  critique: Is the reply polite?
  revision: Be polite.
"""


@pytest.mark.parametrize(
    "critique, verdict",
    [
        ("NO_PROBLEM", "no_problem"),
        ("no problem.\nThe reply is fine.", "no_problem"),
        ("\n\n  **NO_PROBLEM**  \nfine", "no_problem"),
        ("Verdict: No-problems found", "no_problem"),
        ("`NO_PROBLEM`", "no_problem"),
        ("PROBLEM: it dodges the question", "problem"),
        ("## Problem - too long", "problem"),
        ("Verdict: **PROBLEM**: rude", "problem"),
        ("problems: two of them", "problem"),
        ("The reply is fine.\nNO_PROBLEM", "unparsed"),   # the verdict must come first
        ("Problematic in places", "unparsed"),            # a whole word, not a prefix
        ("Yes", "unparsed"),
        ("", "unparsed"),
        ("  \n **  \n", "unparsed"),
    ],
)
def test_parse_verdict(critique, verdict):
    assert parse_verdict(critique) == verdict


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- name: a\n  critique: c\n  revison: r\n", r"\[0\]\.revison: unknown key \(allowed: name, critique, revision\)"),
        ("- name: a\n  critique: c\n  revision: r\n- name: b\n  revision: r\n", r"\[1\]\.critique: required key is missing"),
        ("- name: a\n  critique: c\n  revision: r\n- name: b\n  critique: 12\n  revision: r\n", r"\[1\]\.critique: 12: Input should be a valid string"),
        ("- name: a\n  critique: '  '\n  revision: r\n", r"\[0\]\.critique: empty"),
        ("- name: a\n  critique: c\n  revision: r\n- name: a\n  critique: d\n  revision: s\n", r"\[1\]\.name: 'a' is already the name of \[0\]"),
        ("name: a\ncritique: c\n", r"expected a non-empty list of principles.*found an object"),
        ("[]\n", r"found an empty list"),
        ("- be nice\n", r"\[0\]: 'be nice': expected a mapping with keys name, critique, revision"),
        ("- name: [a\n", r"not valid YAML"),
    ],
)
def test_principles_file_errors_name_the_file_the_key_and_the_value(tmp_path, text, message):
    path = write(tmp_path, "principles.yaml", text)
    with pytest.raises(TunesmithError, match=message) as info:
        load_principles(path)
    assert str(info.value).startswith(f"{path}: ")


def test_principles_load_and_strip(tmp_path):
    principles = load_principles(write(tmp_path, "p.yaml", PRINCIPLES.replace("name: kind", "name: ' kind '")))
    assert [(p.name, p.critique) for p in principles] == [("direct", "Does the reply answer the question?"), ("kind", "Is the reply polite?")]
    with pytest.raises(TunesmithError, match="principles file not found"):
        load_principles(tmp_path / "absent.yaml")


def test_prompts_keep_their_form_and_get_ids(tmp_path):
    rows = [
        {"prompt": "Hi?"},
        {"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "안녕?"}]},
        {"id": "x", "prompt": "Why?", "lang": "en"},
    ]
    prompts = read_prompts(write(tmp_path, "p.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)))
    assert [(p.id, p.prompt) for p in prompts] == [("1", "Hi?"), ("7", rows[1]["messages"]), ("x", "Why?")]
    assert prompts[1].where.endswith("p.jsonl:2")


@pytest.mark.parametrize(
    "row, message",
    [
        ('{"question": "a?"}', r"p.jsonl:2: needs prompt \(a string\) or messages.*the row has: question"),
        ('{"prompt": "a", "messages": []}', r"p.jsonl:2: has both prompt and messages"),
        ('{"prompt": 3}', r"p.jsonl:2: prompt: expected a string, found a number"),
        ('{"prompt": " "}', r"p.jsonl:2: prompt: empty prompt"),
        ('{"prompt": "a", "id": [1]}', r"p.jsonl:2: id: expected a string or a number, found a list"),
        ('{"prompt": "a", "id": "first"}', r"p.jsonl:2: id: 'first' is already the id of .*p.jsonl:1"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
         r"p.jsonl:2: messages\[1\]\.role: the last message must be the user turn to answer, found assistant"),
        ('{"messages": [{"role": "bot", "content": "a"}]}', r"p.jsonl:2: messages\[0\]\.role: unknown role 'bot'"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}', r"p.jsonl:2: messages\[1\]\.role: two user turns in a row"),
        ('{"messages": [{"role": "user"}]}', r"p.jsonl:2: messages\[0\]\.content: missing"),
        ('{"prompt": "a"', r"p.jsonl:2: invalid JSON"),
    ],
)
def test_bad_prompt_rows_name_file_line_and_field(tmp_path, row, message):
    path = write(tmp_path, "p.jsonl", '{"id": "first", "prompt": "ok"}\n' + row + "\n")
    with pytest.raises(DataError, match=message):
        read_prompts(path)


class Scripted:
    """Stands in for the model. Answers come from `drafts`: prompt -> [first answer, revision 1, ...]. A
    critique of a draft returns `verdicts[draft]`, a {principle: critique} dict, or one string for every
    principle; default: a problem. Every call is recorded."""

    def __init__(self, drafts: dict[str, list[str]], verdicts: dict | None = None):
        self.drafts, self.verdicts, self.calls = drafts, verdicts or {}, []

    def __call__(self, conversations):
        self.calls.append(conversations)
        return [self.answer(c[-1]["content"]) for c in conversations]

    def answer(self, text):
        prompt = next(p for p in self.drafts if p in text)
        drafts = self.drafts[prompt]
        current = next((d for d in reversed(drafts) if f"Assistant: {d}\n" in text), None)
        if "First line: NO_PROBLEM" in text:
            verdict = self.verdicts.get(current, "PROBLEM: not good enough")
            if isinstance(verdict, dict):
                verdict = next(v for name, v in verdict.items() if name in text)
            return verdict
        if "Rewrite the assistant's last reply" in text:
            return drafts[drafts.index(current) + 1]
        return drafts[0]


def prompts_file(tmp_path, prompts) -> str:
    rows = "".join(json.dumps(p if isinstance(p, dict) else {"prompt": p}, ensure_ascii=False) + "\n" for p in prompts)
    return write(tmp_path, "prompts.jsonl", rows)


def inputs_for(tmp_path, prompts, principles=PRINCIPLES, **templates):
    return load_inputs(prompts_file(tmp_path, prompts), write(tmp_path, "principles.yaml", principles), **templates)


def test_a_prompt_stops_as_soon_as_every_principle_finds_no_problem(tmp_path):
    model = Scripted({"Fine q": ["fine answer"], "Fixable q": ["vague answer", "clear answer"]},
                     {"fine answer": "NO_PROBLEM", "clear answer": "NO_PROBLEM\nAll good."})
    fine, fixable = self_critique(inputs_for(tmp_path, ["Fine q", "Fixable q"]), model, rounds=3, say=lambda _: None)

    assert (fine.final, fine.stop, fine.revisions, len(fine.rounds)) == ("fine answer", "no_problem", 0, 1)
    assert [c["principle"] for c in fine.rounds[0]["critiques"]] == ["direct", "kind"]
    assert (fixable.response, fixable.final, fixable.stop, fixable.revisions) == ("vague answer", "clear answer", "no_problem", 1)
    assert fixable.rounds[0]["revision"] == "clear answer" and fixable.rounds[1]["revision"] is None
    # answer both; critique both (2 x 2); revise one; critique it (1 x 2); nothing left to revise
    assert [len(call) for call in model.calls] == [2, 4, 1, 2]


def test_without_no_problem_a_prompt_gets_exactly_n_rounds(tmp_path):
    model = Scripted({"Hard q": ["v0", "v1", "v2", "v3", "v4"]})
    (trace,) = self_critique(inputs_for(tmp_path, ["Hard q"]), model, rounds=3, say=lambda _: None)
    assert (trace.final, trace.stop, trace.revisions) == ("v3", "max_rounds", 3)
    # the last revision is not critiqued again: 3 rounds of (2 critiques, 1 revision) after the answer
    assert [len(call) for call in model.calls] == [1, 2, 1, 2, 1, 2, 1]


def test_only_the_failing_principles_reach_the_revision_and_unparsed_counts_as_a_problem(tmp_path):
    verdicts = {"v0": {"Does the reply answer": "NO_PROBLEM", "polite": "PROBLEM: curt"}, "w0": "Looks fine to me"}
    model = Scripted({"One q": ["v0", "v1"], "Two q": ["w0", "w1"]}, {**verdicts, "v1": "NO_PROBLEM", "w1": "NO_PROBLEM"})
    one, two = self_critique(inputs_for(tmp_path, ["One q", "Two q"]), model, rounds=2, say=lambda _: None)

    assert [c["verdict"] for c in one.rounds[0]["critiques"]] == ["no_problem", "problem"]
    assert [c["verdict"] for c in two.rounds[0]["critiques"]] == ["unparsed", "unparsed"]
    assert (one.final, two.final) == ("v1", "w1")
    revision_asks = [c[-1]["content"] for c in model.calls[2]]
    one_ask = next(a for a in revision_asks if "One q" in a)
    assert "- kind: PROBLEM: curt" in one_ask and "- direct:" not in one_ask
    two_ask = next(a for a in revision_asks if "Two q" in a)
    assert "- direct: Looks fine to me" in two_ask and "- kind: Looks fine to me" in two_ask


def test_the_run_system_prompt_is_used_for_answers_only(tmp_path):
    model = Scripted({"Q": ["a0"]}, {"a0": "NO_PROBLEM"})
    self_critique(inputs_for(tmp_path, ["Q"]), model, rounds=1, system_prompt="Be brief.", say=lambda _: None)
    assert model.calls[0][0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]
    assert all(len(c) == 1 and c[0]["role"] == "user" for c in model.calls[1])


MIXED = [
    "Passes q",                                                                    # first answer passes
    "Fixed q",                                                                     # revised once, passes
    {"id": "chat", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": "Chat q 안녕?"}]},        # messages, revised
    "Silent q",                                                                    # empty first answer
    "Blank q",                                                                     # empty revision
    "Same q",                                                                      # revised to the same text
]
MIXED_DRAFTS = {
    "Passes q": ["good"], "Fixed q": ["meh", "better"], "Chat q": ["en reply", "한국어 답"], "Silent q": ["  "],
    "Blank q": ["x0", ""], "Same q": ["s0", "s0"],
}
MIXED_VERDICTS = {"good": "NO_PROBLEM", "better": "NO_PROBLEM", "한국어 답": "NO_PROBLEM", "s0": "PROBLEM: no"}


def test_datasets_keep_the_prompt_form_and_count_every_drop(tmp_path):
    traces = self_critique(inputs_for(tmp_path, MIXED), Scripted(MIXED_DRAFTS, MIXED_VERDICTS), rounds=1, say=lambda _: None)
    assert [t.stop for t in traces] == ["no_problem", "max_rounds", "max_rounds", "empty_response", "empty_revision", "max_rounds"]
    data = build_datasets(traces)
    chat = MIXED[2]["messages"]
    assert data.sft == [
        {"prompt": "Passes q", "completion": "good"},
        {"prompt": "Fixed q", "completion": "better"},
        {"prompt": chat, "completion": [{"role": "assistant", "content": "한국어 답"}]},
        {"prompt": "Same q", "completion": "s0"},
    ]
    assert data.preference == [
        {"prompt": "Fixed q", "chosen": "better", "rejected": "meh"},
        {"prompt": chat, "chosen": [{"role": "assistant", "content": "한국어 답"}], "rejected": [{"role": "assistant", "content": "en reply"}]},
    ]
    assert data.sft_dropped == {"empty_response": 1, "empty_revision": 1}
    assert data.preference_dropped == {"no_problem_found": 1, "empty_response": 1, "empty_revision": 1, "revision_identical": 1}


def test_produce_writes_loadable_datasets_a_trace_and_a_report(tmp_path):
    out = tmp_path / "out"
    inputs = inputs_for(tmp_path, MIXED)
    report = produce(inputs, Scripted(MIXED_DRAFTS, MIXED_VERDICTS), out, rounds=2, meta={"model": "scripted"}, say=lambda _: None)

    examples, load_report = load_examples(out / "sft.jsonl")
    assert load_report.format == "prompt_completion" and load_report.kept == load_report.read == 4
    assert examples[2].messages[-2:] == [{"role": "user", "content": "Chat q 안녕?"}, {"role": "assistant", "content": "한국어 답"}]
    assert examples[2].trained_from == 3  # only the new reply is trained, not the earlier assistant turn

    rows = [json.loads(line) for line in (out / "preference.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert list(row) == ["prompt", "chosen", "rejected"]
        if isinstance(row["prompt"], str):
            assert isinstance(row["chosen"], str) and isinstance(row["rejected"], str)
        else:
            for key in ("chosen", "rejected"):
                assert [m["role"] for m in row[key]] == ["assistant"] and isinstance(row[key][0]["content"], str)
        assert row["chosen"] != row["rejected"]

    trace = [json.loads(line) for line in (out / "trace.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [t["id"] for t in trace] == ["1", "2", "chat", "4", "5", "6"]
    same = trace[5]
    assert same["response"] == "s0" and [r["revision"] for r in same["rounds"]] == ["s0", "s0"]
    assert same["rounds"][0]["critiques"][0] == {"principle": "direct", "verdict": "problem", "text": "PROBLEM: no"}

    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report
    assert report["prompts_read"] == 6 and report["revised"] == 4
    assert report["rounds_used"] == {"0": 2, "1": 3, "2": 1}
    assert report["stopped"] == {"no_problem": 3, "max_rounds": 1, "empty_response": 1, "empty_revision": 1}
    assert report["critiques"] == {"total": 16, "no_problem": 6, "problem": 10, "unparsed": 0}
    assert report["sft"] == {"kept": 4, "dropped": {"empty_response": 1, "empty_revision": 1}}
    assert report["preference"]["kept"] == 2 and sum(report["preference"]["dropped"].values()) == 4
    assert report["model"] == "scripted" and report["templates"] == {"critique": "default", "revision": "default"}

    summary = render_summary(report, out)
    assert "revised:      4 of 6" in summary
    assert "rounds used:  0: 2, 1: 3, 2: 1" in summary
    assert "preference.jsonl: 2 kept, 4 dropped (no_problem_found 1, empty_response 1, empty_revision 1, revision_identical 1)" in summary

    with pytest.raises(TunesmithError, match="already holds sft.jsonl, preference.jsonl, trace.jsonl, report.json"):
        produce(inputs, Scripted(MIXED_DRAFTS), out, rounds=1, say=lambda _: None)


def test_sft_dataset_trains_with_the_sft_method(tiny_llama, tmp_path):
    from tunesmith.config import validate
    from tunesmith.methods.sft import train

    out = tmp_path / "out"
    produce(inputs_for(tmp_path, MIXED), Scripted(MIXED_DRAFTS, MIXED_VERDICTS), out, rounds=1, say=lambda _: None)
    recipe = validate({
        "name": "from-constitution",
        "model": {"path": str(tiny_llama), "dtype": "float32"},
        "data": {"train": str(out / "sft.jsonl"), "max_length": 128},
        "peft": {"method": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1},
        "output_dir": str(tmp_path / "run"),
    })
    run = train(recipe)
    report = json.loads((run.path / "data_report.json").read_text())
    assert report["train"]["kept"] == 4 and report["train"]["with_eos"] == 4
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)


def test_preference_dataset_trains_with_the_dpo_method(tiny_llama, tmp_path):
    from tunesmith.config import validate
    from tunesmith.methods.dpo import train

    out = tmp_path / "out"
    produce(inputs_for(tmp_path, MIXED), Scripted(MIXED_DRAFTS, MIXED_VERDICTS), out, rounds=1, say=lambda _: None)
    pairs = [json.loads(line) for line in (out / "preference.jsonl").read_text().splitlines()]
    recipe = validate({
        "name": "dpo-from-constitution", "method": "dpo",
        "model": {"path": str(tiny_llama), "dtype": "float32"},
        "data": {"train": str(out / "preference.jsonl"), "max_length": 128},
        "peft": {"method": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1},
        "output_dir": str(tmp_path / "run"),
    })
    run = train(recipe)
    report = json.loads((run.path / "data_report.json").read_text())
    assert report["kind"] == "preference" and report["train"]["kept"] == len(pairs) > 0
    assert report["train"]["with_eos"] == len(pairs) and report["train"]["problems"] == {}
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_texts_that_hit_the_token_limit_are_dropped_and_counted_or_kept(tmp_path):
    drafts = {"Cut first q": ["long answer…", "short answer"], "Cut final q": ["a0", "rambling…"], "Cut pass q": ["ok…"]}
    model = Scripted(drafts, {"short answer": "NO_PROBLEM", "ok…": "NO_PROBLEM"})
    traces = self_critique(inputs_for(tmp_path, list(drafts)), model, rounds=1, say=lambda _: None, cut=lambda text: text.endswith("…"))
    assert [(t.response_truncated, t.final_truncated) for t in traces] == [(True, False), (False, True), (True, True)]
    assert [r["revision_truncated"] for r in traces[1].rounds] == [True]

    dropped = build_datasets(traces)
    assert dropped.sft == [{"prompt": "Cut first q", "completion": "short answer"}]
    assert dropped.sft_dropped == {"truncated": 2}
    assert dropped.preference == [] and dropped.preference_dropped == {"truncated": 2, "no_problem_found": 1}
    kept = build_datasets(traces, truncated="keep")
    assert len(kept.sft) == 3 and len(kept.preference) == 2 and kept.sft_dropped == {}

    report = produce(inputs_for(tmp_path, list(drafts)), Scripted(drafts, model.verdicts), tmp_path / "out", rounds=1,
                     meta={"model": "scripted"}, say=lambda _: None, cut=lambda text: text.endswith("…"))
    assert report["hit_token_limit"] == {"responses": 2, "revisions": 1}
    assert "token limit:  2 first answers and 1 revisions used up --max-new-tokens" in render_summary(report, tmp_path / "out")
    with pytest.raises(TunesmithError, match="--truncated: 'cut' is not one of drop, keep"):
        produce(inputs_for(tmp_path, ["Q"]), model, tmp_path / "other", rounds=1, truncated="cut")


def test_used_token_limit(smol_tokenizer):
    from tunesmith.data.constitution import used_token_limit

    ids = smol_tokenizer("The cat sat on the mat and looked at the dog", add_special_tokens=False)["input_ids"]
    text = smol_tokenizer.decode(ids)
    assert not used_token_limit(text, smol_tokenizer, len(ids) + 2)
    assert used_token_limit(text, smol_tokenizer, len(ids) + 1)   # one token of slack for re-encoding merges
    assert used_token_limit(text, smol_tokenizer, len(ids))
    assert used_token_limit("서울까지 얼마나 걸려요\ufffd", smol_tokenizer, 500)  # stopped inside a character


def test_template_overrides_are_used(tmp_path):
    critique = write(tmp_path, "critique.jinja", "JUDGE [{{ principle.name }}] {{ prompt }} => {{ response }}\n")
    revision = write(tmp_path, "revision.jinja", "FIX {{ prompt }} => {{ response }} because {% for c in critiques %}{{ c.principle.name }}:{{ c.verdict }};{% endfor %}")
    seen = []

    def reply(ask):
        if ask.startswith("JUDGE"):
            return "NO_PROBLEM" if ask.endswith("second") else "PROBLEM: x"
        return "second" if ask.startswith("FIX") else "first"

    def model(conversations):
        seen.extend(c[-1]["content"] for c in conversations)
        return [reply(c[-1]["content"]) for c in conversations]

    inputs = inputs_for(tmp_path, ["Q"], critique_template=critique, revision_template=revision)
    (trace,) = self_critique(inputs, model, rounds=2, say=lambda _: None)
    assert seen[:4] == ["Q", "JUDGE [direct] Q => first", "JUDGE [kind] Q => first", "FIX Q => first because direct:problem;kind:problem;"]
    assert trace.final == "second" and trace.stop == "no_problem"
    assert inputs.templates.critique_source == critique


@pytest.mark.parametrize(
    "text, message",
    [
        ("{{ principle.nmae }}", r"critique template \(.*critique.jinja\): .*nmae.*; its variables: conversation"),
        ("{{ answer }}", r"'answer' is undefined; its variables"),
        ("line one\n{% for x in %}", r"critique.jinja:2: critique template: "),
        ("{# nothing #}", r"renders to empty text"),
    ],
)
def test_template_errors_show_before_any_generation(tmp_path, text, message):
    with pytest.raises(TunesmithError, match=message):
        inputs_for(tmp_path, ["Q"], critique_template=write(tmp_path, "critique.jinja", text))


def test_a_missing_template_file_is_named(tmp_path):
    with pytest.raises(TunesmithError, match="--revision-template: file not found: nope.jinja"):
        inputs_for(tmp_path, ["Q"], revision_template="nope.jinja")


def test_decoding_options():
    assert Decoding().generate_kwargs() == {"do_sample": False}
    assert Decoding(temperature=0.7, top_p=0.9, repetition_penalty=1.1).generate_kwargs() == {
        "do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1,
    }
    with pytest.raises(TunesmithError, match="--top-p and --top-k shape sampling"):
        Decoding(top_k=5)
    with pytest.raises(TunesmithError, match="--top-p: 1.5"):
        Decoding(temperature=1.0, top_p=1.5)


def test_cli_end_to_end_on_a_tiny_model(tiny_llama_words, tmp_path, capsys):
    from tunesmith.cli import main

    model = tiny_llama_words
    prompts = prompts_file(tmp_path, MIXED[:3])
    principles = write(tmp_path, "principles.yaml", PRINCIPLES)
    out = tmp_path / "out"
    code = main(["constitution", "--model", str(model), "--prompts", prompts, "--principles", principles, "--out", str(out),
                 "--rounds", "1", "--max-new-tokens", "6", "--batch-size", "4", "--system", "Be brief.", "--truncated", "keep"])
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["model"] == str(model) and report["system_prompt"] == "Be brief." and report["decoding"]["max_new_tokens"] == 6
    # A random model never writes a verdict line: every critique is unparsed, so every answer is revised once.
    assert report["critiques"] == {"total": 6, "no_problem": 0, "problem": 0, "unparsed": 6}
    assert report["rounds_used"] == {"0": 0, "1": 3} and report["stopped"]["max_rounds"] == 3
    # 6 tokens of a model that never says EOS: every text is cut off, and counted as such
    assert report["hit_token_limit"] == {"responses": 3, "revisions": 3} and report["truncated"] == "keep"
    trace = [json.loads(line) for line in (out / "trace.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [t["id"] for t in trace] == ["1", "2", "chat"] and all(t["rounds"][0]["revision"] == t["final"] for t in trace)
    examples, load_report = load_examples(out / "sft.jsonl")
    assert load_report.kept == report["sft"]["kept"] == 3
    assert [m["role"] for m in examples[2].messages] == ["user", "assistant", "user", "assistant"]
    preference = (out / "preference.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(preference) == report["preference"]["kept"] and report["preference"]["kept"] + sum(report["preference"]["dropped"].values()) == 3
    assert "constitution: 3 prompts, 2 principles, up to 1 rounds" in capsys.readouterr().out


def test_cli_input_errors_come_before_the_model_loads(tmp_path):
    import subprocess
    import sys

    prompts = write(tmp_path, "prompts.jsonl", '{"prompt": "Q"}\n')
    principles = write(tmp_path, "principles.yaml", "- name: a\n  critique: c\n")
    code = (
        "import sys\nfrom tunesmith.cli import main\n"
        f"code = main(['constitution', '--model', 'no/such-model', '--prompts', {prompts!r}, '--principles', {principles!r}, '--out', 'x'])\n"
        "print('CODE', code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "CODE 2 False"
    assert f"error: {principles}: invalid principles\n  [0].revision: required key is missing" in done.stderr
