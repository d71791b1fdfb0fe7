"""Tool-call accuracy: parsing calls out of each family's output, the scores, and `tunesmith eval` on a tiny
model before and after it is fine-tuned to call a tool."""

import json

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.eval.tool_calls import parse_calls, tool_call_scores, valid_calls

from tests.conftest import write_jsonl
from tests.eval.conftest import train_tiny_run

LOOKUP = {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1001"}}\n</tool_call>',       # Hermes, Qwen2.5
    '{"name": "lookup_order", "parameters": {"order_id": "A-1001"}}',                                  # Llama 3.1
    '[TOOL_CALLS] [{"name": "lookup_order", "arguments": {"order_id": "A-1001"}, "id": "a1b2c3d4e"}]',  # Mistral
    'Let me check. {"type": "function", "function": {"name": "lookup_order", "arguments": "{\\"order_id\\": \\"A-1001\\"}"}}',
])
def test_calls_are_read_from_every_family_s_output(text):
    assert parse_calls(text) == [LOOKUP] and valid_calls(text)


def test_broken_json_in_a_tool_call_block_is_not_a_valid_call():
    broken = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A-1001"\n</tool_call>'
    assert parse_calls(broken) == [] and not valid_calls(broken)
    half = broken + '\n<tool_call>\n{"name": "refund", "arguments": {}}\n</tool_call>'
    assert parse_calls(half) == [{"name": "refund", "arguments": {}}] and not valid_calls(half)


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


TOOLS = [{"type": "function", "function": {"name": "lookup_order", "description": "Status of an order",
                                           "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]
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


def test_batch_generation_gives_each_row_its_tools(tmp_path):
    from tunesmith.eval.batch import generate_file
    from tunesmith.eval.engines import Decoding

    class Recorder:
        system_prompt = None

        def complete(self, conversations, decoding, batch_size=8, progress=True, tools=None):
            self.tools = tools
            return [type("C", (), {"text": "ok"})() for _ in conversations]

    rows = [{"prompt": "Where is A-1001?", "tools": TOOLS}, {"prompt": "Hi"}]
    engine = Recorder()
    generate_file(engine, str(write_jsonl(tmp_path / "in.jsonl", rows)), str(tmp_path / "out.jsonl"), Decoding(), 2, None)
    assert engine.tools == [TOOLS, None]
    with pytest.raises(Exception, match=r"in.jsonl:1: tools: expected a list of tools, found a number"):
        generate_file(engine, str(write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x", "tools": 3}])), str(tmp_path / "o.jsonl"), Decoding(), 2, None)
