"""Tool-call accuracy: calls read out of each family's output exactly as the server reads them, the scores, the
marker tokens of Mistral and Llama 3 kept through decoding, and `tunesmith eval` on a tiny model before and after
it is fine-tuned to call a tool."""

import json
from dataclasses import replace

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.eval.tool_calls import read_reply, tool_call_scores
from tunesmith.serve.tools import FAMILIES

from tests.conftest import write_jsonl
from tests.eval.conftest import train_tiny_run

LOOKUP = {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "description": "Status of an order",
                                           "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]


@pytest.mark.parametrize("family, text", [
    ("hermes", '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}\n</tool_call>'),       # Hermes, Qwen2.5
    ("qwen", "<tool_call>\n<function=lookup_order>\n<parameter=order_id>\nA-1001\n</parameter>\n</function>\n</tool_call>"),  # Qwen3-Coder
    ("llama3", '{"name": "lookup_order", "parameters": {"order_id": "A-1001"}}'),                                # Llama 3.1, custom tools
    ("llama3", 'Let me look.<|python_tag|>{"name": "lookup_order", "parameters": {"order_id": "A-1001"}}'),
    ("mistral", '[TOOL_CALLS] [{"name": "lookup_order", "arguments": {"order_id": "A-1001"}, "id": "a1b2c3d4e"}]'),  # Mistral v0.3
    ("mistral", '[TOOL_CALLS]lookup_order[ARGS]{"order_id": "A-1001"}'),                                          # Mistral v11+
])
def test_calls_are_read_as_each_family_writes_them(family, text):
    reply = read_reply(text, FAMILIES[family], TOOLS)
    assert reply.calls == [LOOKUP] and reply.valid


def test_a_call_in_another_family_s_format_is_no_call():
    mistral = '[TOOL_CALLS] [{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}]'
    assert read_reply(mistral, FAMILIES["hermes"]).calls == [] and read_reply(mistral, FAMILIES["mistral"]).calls == [LOOKUP]


def test_broken_json_in_a_tool_call_block_is_not_a_valid_call():
    # The server returns a call once its name and the start of its arguments are in: here with arguments that are no JSON.
    broken = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1001"\n</tool_call>'
    reply = read_reply(broken, FAMILIES["hermes"])
    assert reply.calls == [{"name": "lookup_order", "arguments": '{"order_id": "A-1001"\n'}] and not reply.valid
    cut = read_reply('<tool_call>\n{"name": "refund", "arguments": {"order_id": "A-1', FAMILIES["hermes"])   # max_new_tokens ran out
    assert cut.calls == [{"name": "refund", "arguments": '{"order_id": "A-1'}] and not cut.valid
    # Before that point, a block that is no call goes back as content: the calls before it stand, the reply is not valid.
    nameless = '<tool_call>\n{"nme": "lookup_order", "arguments": {}}\n</tool_call>'
    half = read_reply('<tool_call>\n{"name": "refund", "arguments": {}}\n</tool_call>\n' + nameless, FAMILIES["hermes"])
    assert half.calls == [{"name": "refund", "arguments": {}}] and half.rejected == 1 and not half.valid
    markup = read_reply('<tool_call> is the tag. <tool_call>\n{"name": "refund", "arguments": {}}\n</tool_call>', FAMILIES["hermes"])
    assert markup.calls == [] and markup.rejected == 1 and not markup.valid


def test_scores_name_exact_valid_and_none():
    refund = {"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}}
    outputs = [
        '<tool_call>\n{"name": "refund", "arguments": {"amount": 20.0, "order_id": "A-1001"}}\n</tool_call>',  # exact: order, 20.0
        '<tool_call>\n{"name": "refund", "arguments": {"order_id": "A-1001", "amount": "20"}}\n</tool_call>',  # right name, "20"
        '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}\n</tool_call>',           # wrong function
        "I will refund it.",                                                                                   # no call at all
        "Our hours are 9 to 6.",                                                                               # text, as expected
        '<tool_call>\n{"name": "lookup_order", "arguments": {}}\n</tool_call>',                               # a call where text was due
    ]
    expected = [[refund], [refund], [refund], [refund], None, None]
    assert tool_call_scores(outputs, expected) == {"tool_call_valid": 0.75, "tool_call_name": 0.5, "tool_call_exact": 0.25, "tool_call_none": 0.5}


def test_generation_eval_scores_tool_call_exact():
    from tunesmith.methods.common import generation_score

    outputs = ['<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}\n</tool_call>', "No idea."]
    assert generation_score("tool_call_exact", outputs, ["", ""], [[LOOKUP], [LOOKUP]]) == 0.5


def test_parallel_calls_compare_as_a_multiset():
    a, b = {"name": "lookup_order", "arguments": {"order_id": "A-1"}}, {"name": "lookup_order", "arguments": {"order_id": "B-2"}}
    out = "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>\n" for c in (b, a))
    assert tool_call_scores([out, out], [[a, b], [a, a]]) == {"tool_call_valid": 1.0, "tool_call_name": 1.0, "tool_call_exact": 0.5}


REFUND = {"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}}
BOTH_TOOLS = [*TOOLS, {"type": "function", "function": {"name": "refund", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}}}}]

# Calls as each family's models write them.
WRITE = {
    "hermes": lambda calls: "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls),
    "qwen": lambda calls: "\n".join(f"<tool_call>\n<function={c['name']}>\n"
                                    + "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in c["arguments"].items())
                                    + "</function>\n</tool_call>" for c in calls),
    "llama3": lambda calls: "<|python_tag|>" + "; ".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls),
    "mistral": lambda calls: "[TOOL_CALLS]" + json.dumps(calls),
}
MARKER = {"hermes": "<tool_call>", "qwen": "<tool_call>", "llama3": "<|python_tag|>", "mistral": "[TOOL_CALLS]"}


def replies(family: str) -> list[str]:
    write, one = WRITE[family], WRITE[family]([LOOKUP])
    return [
        one,                                                   # a call
        "Let me check that. " + one,                           # text, then the call
        one + "\nI will tell you once I know.",                 # the call, then text
        write([LOOKUP, REFUND]),                               # two parallel calls
        malformed(family, one),                                # a call section that is no call
        one + "\n" + malformed(family, write([REFUND])),        # a good call, then a malformed one
        f"I write {MARKER[family]} before a call.",            # markup inside text
        one[: one.index("A-1001") + 3],                        # cut off by max_new_tokens, inside the arguments
        "Our hours are 9 to 6.",                               # text only
    ]


def malformed(family: str, text: str) -> str:
    """The call with its function name written wrong: unquoted in JSON, without '=' in Qwen3-Coder's XML."""
    return text.replace("<function=", "<function ", 1) if family == "qwen" else text.replace('": "', '": ', 1)


def server_calls(family: str, text: str) -> list[dict]:
    """The tool_calls of the server's chat reply for this text (tool_choice auto), streamed to it in pieces."""
    from tunesmith.serve.chat import Choice, Plan

    choice = Choice(Plan(BOTH_TOOLS, FAMILIES[family]), tokenizer=None, logprobs=None)
    for i in range(0, len(text), 3):
        choice.add(text[i : i + 3], [])
    choice.finish("stop")
    calls = [c["function"] for c in choice.message().get("tool_calls", [])]
    return [{"name": c["name"], "arguments": read_json(c["arguments"])} for c in calls]


def read_json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@pytest.mark.parametrize("family", list(FAMILIES))
def test_eval_reads_every_reply_as_the_server_does(family):
    """Every family's parser on every family's replies (good, malformed, text around calls, parallel, markup in
    prose, cut off): eval's calls are the server's, name for name and argument for argument."""
    texts = [text for writer in WRITE for text in replies(writer)]
    for text in texts:
        assert read_reply(text, FAMILIES[family], BOTH_TOOLS).calls == server_calls(family, text), text
    # The replies in the family's own format cover calls and no calls, valid and not.
    own = [read_reply(text, FAMILIES[family], BOTH_TOOLS) for text in replies(family)]
    assert [r.valid for r in own] == [True, True, True, True, False, False, False, False, False], family
    assert [len(r.calls) for r in own][:4] == [1, 1, 1, 2] and own[-1].calls == [] and own[-3].calls == []


class OneReply:
    """A model that writes the same reply (token ids) to every prompt: what eval decodes is then known."""

    device = "cpu"

    def __init__(self, reply: list[int]):
        self.reply = reply

    def generate(self, input_ids, max_new_tokens, **kwargs):
        import torch

        return torch.cat([input_ids, torch.tensor([self.reply[:max_new_tokens]] * len(input_ids))], dim=1)   # (B, T + reply)


def family_engine(smol_tokenizer, real: str, controls: list[str], template_file: str, reply: str):
    from tests.data.test_real_templates import FAMILIES as REAL, TEMPLATES, family_tokenizer
    from tunesmith.data.templates import resolve_template
    from tunesmith.eval.engines import TransformersEngine
    from tunesmith.eval.generate import Loaded

    tok = family_tokenizer(smol_tokenizer, replace(REAL[real], specials=REAL[real].specials + controls))
    template = resolve_template(str(TEMPLATES / template_file), tok)
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    return TransformersEngine(Loaded(OneReply(ids), tok, template, real)), ids


@pytest.mark.parametrize("real, controls, template_file, reply, parser", [
    ("mistral-v0.3", ["[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], "mistral-v0.3-tools.jinja",
     '[TOOL_CALLS] [{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}]</s>', "mistral"),
    ("llama-3.1", ["<|python_tag|>", "<|eom_id|>"], "llama-3.1-tools.jinja",
     'Let me look that up.<|python_tag|>{"name": "lookup_order", "parameters": {"order_id": "A-1001"}}<|eot_id|>', "llama3"),
])
def test_a_marker_that_is_a_special_token_is_kept_and_the_call_scored(smol_tokenizer, tmp_path, real, controls, template_file, reply, parser):
    from tunesmith.eval.engines import Decoding
    from tunesmith.eval.evaluate import evaluate_model, load_eval_data, plan_scoring
    from tunesmith.eval.generate import generate

    engine, ids = family_engine(smol_tokenizer, real, controls, template_file, reply)
    marker = MARKER[parser]
    assert engine.tokenizer.convert_tokens_to_ids(marker) in ids and marker not in engine.tokenizer.decode(ids, skip_special_tokens=True)
    data = load_eval_data(str(write_jsonl(tmp_path / "tools.jsonl", tool_rows()[:2])))
    scoring = plan_scoring(data, ["tool_calls"], None, None, None, "lenient", "response")
    result = evaluate_model(engine, data, scoring, Decoding(max_new_tokens=64), 2, None)
    assert result.details["tool_parser"] == parser and marker in result.outputs[0]
    assert result.metrics == {"tool_call_valid": 1.0, "tool_call_name": 1.0, "tool_call_exact": 1.0}
    assert generate(engine.loaded, data.prompts(None), 64, progress=False, tools=data.tools, family=FAMILIES[parser]) == result.outputs
    # Planted defects: the marker dropped in decoding, or the replies read by another family's parser.
    dropped = [c.text for c in engine.complete(data.prompts(None), Decoding(max_new_tokens=64), tools=data.tools)]
    assert tool_call_scores(dropped, data.expected_calls, FAMILIES[parser])["tool_call_exact"] == 0.0
    hermes = plan_scoring(data, ["tool_calls"], None, None, None, "lenient", "response", tool_parser="hermes")
    assert evaluate_model(engine, data, hermes, Decoding(max_new_tokens=64), 2, None).metrics["tool_call_exact"] == 0.0
    # generation_eval during training reads them as eval does, and batch generation writes the calls serve returns
    assert generation_eval_score(engine, data) == 1.0
    from tunesmith.eval.batch import generate_file

    generate_file(engine, str(write_jsonl(tmp_path / "in.jsonl", [{"prompt": PROMPTS[0], "tools": TOOLS}])), str(tmp_path / "out.jsonl"), Decoding(max_new_tokens=64), 1, None)
    written = json.loads((tmp_path / "out.jsonl").read_text())
    assert marker in written["output"] and written["tool_calls"] == [LOOKUP]


def generation_eval_score(engine, data) -> float:
    """eval_tool_call_exact as GenerationEval logs it at an evaluation of a model that writes the engine's reply."""
    from types import SimpleNamespace

    from tunesmith.methods.common import GenerationEval

    model = engine.loaded.model
    model.training, model.eval, model.train = False, lambda: None, lambda mode=True: None
    logged = []
    callback = GenerationEval(SimpleNamespace(append_metrics=logged.append), "tool_call_exact", engine.loaded.template, data, 64)
    metrics = {}
    callback.on_evaluate(SimpleNamespace(per_device_eval_batch_size=2), SimpleNamespace(is_world_process_zero=True, global_step=3, epoch=1.0),
                         None, model=model, processing_class=engine.tokenizer, metrics=metrics)
    assert logged == [{"step": 3, "epoch": 1.0, "eval_tool_call_exact": metrics["eval_tool_call_exact"]}]
    return metrics["eval_tool_call_exact"]


def test_eval_s_tool_parser_option_reaches_the_scoring_and_is_checked(monkeypatch, tmp_path):
    from tunesmith import cli
    from tunesmith.eval import evaluate

    assert cli.TOOL_PARSERS == tuple(sorted(FAMILIES))
    given = {}
    monkeypatch.setattr(evaluate, "run_eval", lambda *args, **kwargs: given.update(kwargs))
    args = cli.build_parser().parse_args(["eval", "runs/x", "--data", "d.jsonl", "--tool-parser", "llama3"])
    args.func(args)
    assert given["tool_parser"] == "llama3"
    data = evaluate.load_eval_data(str(write_jsonl(tmp_path / "tools.jsonl", tool_rows()[:1])))
    assert evaluate.plan_scoring(data, None, None, None, None, "lenient", "response", tool_parser="llama3").tool_parser == "llama3"
    with pytest.raises(TunesmithError, match=r"--tool-parser: 'json' is not one of hermes, qwen, llama3, mistral"):
        evaluate.plan_scoring(data, None, None, None, None, "lenient", "response", tool_parser="json")
    plain = evaluate.load_eval_data(str(write_jsonl(tmp_path / "plain.jsonl", [{"messages": tool_rows()[0]["messages"][:1]
                                                                               + [{"role": "assistant", "content": "Shipped."}]}])))
    with pytest.raises(TunesmithError, match=r"--tool-parser mistral: the rows of .*plain.jsonl have no tools"):
        evaluate.plan_scoring(plain, None, None, None, None, "lenient", "response", tool_parser="mistral")


PROMPTS = ["Where is order A-1001?", "주문 A-1001 어디쯤 왔나요?", "Status of A-1001 please", "A-1001 배송 상태 알려주세요"]


def tool_rows():
    return [{"id": f"r{i}", "tools": TOOLS, "messages": [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}}]},
    ]} for i, prompt in enumerate(PROMPTS)]


def test_eval_reports_tool_call_accuracy_before_and_after_fine_tuning(tiny_llama, tmp_path, capsys):
    from tunesmith.eval.engines import Decoding
    from tunesmith.eval.evaluate import run_eval

    # The tiny model memorises the rows' call: enough to move every score from the random base's.
    data = write_jsonl(tmp_path / "tools.jsonl", tool_rows())
    sections = {"peft": {"method": "none"}, "data": {"train": str(data), "eval": str(data), "max_length": 512, "template": "chatml"},
                "generation_eval": {"metric": "tool_call_exact", "samples": 4, "max_new_tokens": 40}}
    run = train_tiny_run(tiny_llama, data, tmp_path / "run", sections=sections,
                         max_steps=80, lr=3e-2, scheduler="constant", batch_size=4, eval_steps=80, save_steps=80, logging_steps=5)
    summary = run_eval(str(run), str(data), compare=["base"], decoding=Decoding(max_new_tokens=40), out=str(tmp_path / "e"))
    assert summary["details"]["metrics_requested"] == ["tool_calls", "perplexity"]  # the default for rows that call tools
    after, before = summary["metrics"], summary["compare"]["base"]
    assert after["tool_call_exact"] >= 0.75 and after["tool_call_valid"] >= after["tool_call_exact"]
    assert before == {"tool_call_valid": 0.0, "tool_call_name": 0.0, "tool_call_exact": 0.0, "perplexity": before["perplexity"]}
    assert after["perplexity"] < before["perplexity"]
    # Generation eval during training gives the prompts their tools too: the same score as tunesmith eval.
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["eval_tool_call_exact"] for r in logged if "eval_tool_call_exact" in r] == [after["tool_call_exact"]]
    assert "tool_call_exact" in capsys.readouterr().out
    prediction = json.loads((tmp_path / "e" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert prediction["reference"] == '{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}'


def test_tool_calls_metric_needs_rows_with_tools(tiny_llama, tickets_file):
    from tunesmith.eval.evaluate import run_eval

    with pytest.raises(TunesmithError, match=r"--metrics tool_calls: the rows of .*tickets.jsonl have no tools"):
        run_eval(str(tiny_llama), str(tickets_file), metrics=["tool_calls"])


def test_batch_generation_gives_each_row_its_tools(tmp_path, monkeypatch):
    from tunesmith.eval import batch
    from tunesmith.eval.batch import generate_file
    from tunesmith.eval.engines import Decoding

    monkeypatch.setattr(batch, "tool_family", lambda template, tokenizer: FAMILIES["hermes"])  # a template without tools of its own
    call = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}\n</tool_call>'

    class Recorder:
        system_prompt = template = tokenizer = None

        def complete(self, conversations, decoding, batch_size=8, progress=True, tools=None, family=None):
            self.tools, self.family = tools, family
            return [type("C", (), {"text": text})() for text in (call, "Hello!")]

    rows = [{"prompt": "Where is A-1001?", "tools": TOOLS}, {"prompt": "Hi"}]
    engine = Recorder()
    generate_file(engine, str(write_jsonl(tmp_path / "in.jsonl", rows)), str(tmp_path / "out.jsonl"), Decoding(), 2, None)
    assert engine.tools == [TOOLS, None] and engine.family is FAMILIES["hermes"]
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written[0]["output"] == call and written[0]["tool_calls"] == [LOOKUP] and "tool_calls" not in written[1]
    with pytest.raises(Exception, match=r"in.jsonl:1: tools: expected a list of tools, found a number"):
        generate_file(engine, str(write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x", "tools": 3}])), str(tmp_path / "o.jsonl"), Decoding(), 2, None)


def test_a_template_whose_calls_no_parser_reads_is_an_error_not_zero_scores(smol_tokenizer, tmp_path):
    # Its calls would all come back as text, scoring 0 for a model that calls its tools right.
    from tests.serve.test_tool_clients import DEEPSEEK_V3_CALLS
    from tunesmith.data.templates import resolve_template
    from tunesmith.eval.tool_calls import tool_family

    (tmp_path / "deepseek.jinja").write_text(DEEPSEEK_V3_CALLS)
    template = resolve_template(str(tmp_path / "deepseek.jinja"), smol_tokenizer)
    with pytest.raises(TunesmithError, match=r"writes a tool call as '<｜tool▁calls▁begin｜>.*none of the tool-call parsers .* reads back; choose one with --tool-parser"):
        tool_family(template, smol_tokenizer)
    assert tool_family(template, smol_tokenizer, "hermes") is FAMILIES["hermes"]
