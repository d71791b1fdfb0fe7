"""Tool use in the training formats: rows with tools, tool calls and tool results are read, checked and
rendered (natively, or in the built-in Hermes format), and only the assistant's turns are trained."""

import copy
import json

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.formats import DataError, to_example
from tunesmith.data.load import load_examples
from tunesmith.data.preflight import render_markdown
from tunesmith.data.prepare import prepare_data
from tunesmith.data.templates import TemplateError, prompt_ids, resolve_template, supports_tools

from tests.conftest import write_jsonl
from tests.data.test_real_templates import FAMILIES, TEMPLATES, family_tokenizer, trained_runs

W = "train.jsonl:3"
REFUND = {"type": "function", "function": {
    "name": "refund", "description": "Refund part or all of an order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
                   "required": ["order_id", "amount"], "additionalProperties": False},
}}
LOOKUP = {"type": "function", "function": {
    "name": "lookup_order", "description": "Status of an order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
}}


def call(name, arguments, call_id=None):
    return {**({"id": call_id} if call_id else {}), "type": "function", "function": {"name": name, "arguments": arguments}}


def refund_row(**changes):
    row = {"tools": [LOOKUP, REFUND], "messages": [
        {"role": "user", "content": "주문 A-1001 환불해 주세요, 20달러요."},
        {"role": "assistant", "content": None, "tool_calls": [call("refund", '{"order_id": "A-1001", "amount": 20}', "call_1")]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "refunded"}'},
        {"role": "assistant", "content": "환불했습니다: 20달러가 돌아갑니다."},
    ]}
    row.update(changes)
    return row


def test_openai_tool_use_becomes_normalised_messages():
    example = to_example(refund_row(), "messages", {}, W)
    assert example.tools == [LOOKUP, REFUND]
    assert example.messages[1] == {"role": "assistant", "content": "", "tool_calls": [call("refund", {"order_id": "A-1001", "amount": 20}, "call_1")]}
    assert example.messages[2] == {"role": "tool", "content": '{"status": "refunded"}', "tool_call_id": "call_1", "name": "refund"}


def test_llama_factory_sharegpt_function_call_and_observation_map_onto_the_same():
    row = {
        "tools": json.dumps([{"name": "refund", "description": "Refund part or all of an order", "parameters": REFUND["function"]["parameters"]}]),
        "conversations": [
            {"from": "human", "value": "Refund A-1001, $20."},
            {"from": "function_call", "value": json.dumps({"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}})},
            {"from": "observation", "value": "refunded"},
            {"from": "gpt", "value": "Done."},
        ],
    }
    example = to_example(row, "sharegpt", {}, W)
    assert example.tools == [REFUND]
    assert [m["role"] for m in example.messages] == ["user", "assistant", "tool", "assistant"]
    assert example.messages[1]["tool_calls"] == [call("refund", {"order_id": "A-1001", "amount": 20})]
    assert example.messages[2] == {"role": "tool", "content": "refunded", "name": "refund"}


def test_results_without_ids_answer_the_calls_in_order():
    row = refund_row()
    row["messages"][1:3] = [
        {"role": "assistant", "content": "Checking both.", "tool_calls": [call("lookup_order", {"order_id": "A-1"}), call("refund", {"order_id": "A-1", "amount": 5})]},
        {"role": "tool", "content": "shipped"},
        {"role": "tool", "content": "refunded"},
    ]
    messages = to_example(row, "messages", {}, W).messages
    assert [m.get("name") for m in messages[2:4]] == ["lookup_order", "refund"]


def test_a_conversation_may_end_on_the_call_the_model_should_make():
    row = refund_row()
    row["messages"] = row["messages"][:2]
    assert to_example(row, "messages", {}, W).messages[-1]["tool_calls"][0]["function"]["name"] == "refund"


def _set(path, value):
    def change(row):
        *head, last = path
        target = row
        for key in head:
            target = target[key]
        target[last] = value
    return change


BAD_ROWS = [
    ("unknown tool", _set(["messages", 1, "tool_calls", 0, "function", "name"], "cancel"), "unknown_tool",
     "messages[1].tool_calls[0].function.name: unknown tool 'cancel'; the row's tools: lookup_order, refund"),
    ("arguments not JSON", _set(["messages", 1, "tool_calls", 0, "function", "arguments"], '{"order_id": "A-1001", amount: 20}'),
     "invalid_tool_arguments", "messages[1].tool_calls[0].function.arguments: not valid JSON"),
    ("arguments not an object", _set(["messages", 1, "tool_calls", 0, "function", "arguments"], "[1, 2]"),
     "invalid_tool_arguments", "messages[1].tool_calls[0].function.arguments: expected a JSON object of arguments, found a list"),
    ("argument of the wrong type", _set(["messages", 1, "tool_calls", 0, "function", "arguments"], {"order_id": 1001, "amount": 20}),
     "tool_arguments_mismatch", "messages[1].tool_calls[0].function.arguments.order_id: does not match the parameters of tool refund: 1001 is not of type 'string'"),
    ("required argument missing", _set(["messages", 1, "tool_calls", 0, "function", "arguments"], {"order_id": "A-1001"}),
     "tool_arguments_mismatch", "messages[1].tool_calls[0].function.arguments: does not match the parameters of tool refund: 'amount' is a required property"),
    ("result for another call", _set(["messages", 2, "tool_call_id"], "call_9"), "unmatched_tool_result",
     "messages[2].tool_call_id: 'call_9' matches no call awaiting a result (awaiting: 'call_1')"),
    ("result without any call", lambda row: row["messages"].insert(1, {"role": "tool", "content": "x"}), "unmatched_tool_result",
     "messages[1].role: a tool message without a matching call"),
    ("duplicate call ids", lambda row: row["messages"][1]["tool_calls"].append(call("lookup_order", {"order_id": "A-1001"}, "call_1")),
     "duplicate_tool_call_id", "messages[1].tool_calls[1].id: call id 'call_1' is used twice"),
    ("call left without a result", lambda row: row["messages"].pop(2), "unanswered_tool_call",
     "messages[2].role: the tool calls before this message have no result"),
    ("a user turn after the results", _set(["messages", 3, "role"], "user"), "bad_turn_order",
     "messages[3].role: after tool results the assistant answers, found user"),
    ("no tools in the row", lambda row: row.pop("tools"), "unknown_tool", "the row's tools: none: the row has no tools"),
    ("tools not a list", _set(["tools"], {"name": "refund"}), "invalid_tools", "tools: expected a list of tools, found an object"),
    ("a tool without a name", _set(["tools", 0, "function", "name"], ""), "invalid_tools", "tools[0].function.name"),
    ("a tool defined twice", _set(["tools", 0], REFUND), "invalid_tools", "tools[1].function.name: tool 'refund' is defined twice"),
    ("a schema that is no schema", _set(["tools", 1, "function", "parameters"], {"type": "object", "properties": {"amount": {"type": "money"}}}),
     "invalid_tools", "tools[1].function.parameters.properties.amount.type: not a valid JSON schema"),
    # NaN and Infinity are Python's, not JSON: a template would write them back as they are.
    ("NaN in arguments text", _set(["messages", 1, "tool_calls", 0, "function", "arguments"], '{"order_id": "A-1001", "amount": NaN}'),
     "invalid_tool_arguments", "messages[1].tool_calls[0].function.arguments: not valid JSON: NaN is not JSON"),
    ("Infinity in arguments", _set(["messages", 1, "tool_calls", 0, "function", "arguments"], {"order_id": "A-1001", "amount": float("inf")}),
     "invalid_tool_arguments", "messages[1].tool_calls[0].function.arguments: holds NaN or Infinity"),
    ("parameters that are no object", _set(["tools", 1, "function", "parameters"], {"type": "string"}), "invalid_tools",
     "tools[1].function.parameters.type: \"string\": a call's arguments are an object"),
    ("tools given as broken JSON", _set(["tools"], '[{"name": "refund"'), "invalid_tools", "tools: not valid JSON"),
    ("tool calls on a user message", _set(["messages", 0, "tool_calls"], [call("refund", {})]), "invalid_tool_call",
     "messages[0].tool_calls: only assistant messages call tools, this one is user"),
]


@pytest.mark.parametrize("change, reason, message", [pytest.param(*case[1:], id=case[0]) for case in BAD_ROWS])
def test_bad_tool_rows_are_errors_naming_the_field(change, reason, message):
    row = copy.deepcopy(refund_row())
    change(row)
    with pytest.raises(DataError) as err:
        to_example(row, "messages", {}, W)
    assert err.value.reason == reason
    assert str(err.value).startswith(f"{W}: ") and message in str(err.value)


def test_bad_tool_rows_are_counted_drops_with_on_bad_row_drop(tmp_path):
    bad = copy.deepcopy(refund_row())
    bad["messages"][1]["tool_calls"][0]["function"]["name"] = "cancel"
    worse = copy.deepcopy(refund_row())
    worse["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{oops"
    path = write_jsonl(tmp_path / "tools.jsonl", [refund_row(), bad, worse])
    examples, report = load_examples(path, on_bad_row="drop")
    assert len(examples) == 1 and report.dropped == {"unknown_tool": 1, "invalid_tool_arguments": 1}
    assert report.first_errors[0].startswith(f"{path}:2: messages[1].tool_calls[0].function.name")
    with pytest.raises(DataError, match=r"tools.jsonl:2: messages\[1\].tool_calls\[0\].function.name: unknown tool"):
        load_examples(path)


def test_preference_data_refuses_tool_calls_instead_of_ignoring_them():
    from tunesmith.data.preference import PAIR_CONVERTERS

    row = {"prompt": [{"role": "user", "content": "Refund A-1"}, {"role": "assistant", "content": "", "tool_calls": [call("refund", {})]},
                      {"role": "user", "content": "?"}], "chosen": "Yes.", "rejected": "No."}
    with pytest.raises(DataError, match=r"prompt\[1\].tool_calls: tool use is read in the SFT formats"):
        PAIR_CONVERTERS["preference"](row, {}, W, None)


# Templates: (family of test_real_templates, template file, renders tools itself, the trained call as the model writes it)
TOOL_TEMPLATES = {
    "qwen2.5": ("qwen2.5", "qwen2.5-tools.jinja", True,
                '<tool_call>\n{"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}}\n</tool_call><|im_end|>'),
    "llama-3.1": ("llama-3.1", "llama-3.1-tools.jinja", True,
                  '{"name": "refund", "parameters": {"order_id": "A-1001", "amount": 20}}<|eot_id|>'),
    # Hermes-2-Pro: the arguments before the name, a space after </tool_call>, results written with their function's name.
    "hermes-2-pro": ("chatml", "hermes-2-pro-tools.jinja", True,
                     '<tool_call>\n{ "arguments": {"order_id": "A-1001", "amount": 20}, "name": "refund"}\n</tool_call> <|im_end|>'),
    # Phi-4-mini prints the arguments as they are: they must be JSON text there, not an object written as Python's {'order_id': ...}.
    "phi-4-mini": ("phi-3", "phi-4-mini-tools.jinja", True, '{"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}}<|end|>'),
    # Qwen3-Coder: XML parameters, each written as text.
    "qwen3-coder": ("qwen2.5", "qwen3-coder-tools.jinja", True,
                    "<tool_call>\n<function=refund>\n<parameter=order_id>\nA-1001\n</parameter>\n<parameter=amount>\n20\n</parameter>\n"
                    "</function>\n</tool_call><|im_end|>"),
    "chatml (built-in Hermes)": ("chatml", "chatml.jinja", False,
                                 '<tool_call>\n{"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}}\n</tool_call><|im_end|>'),
    "alpaca (built-in Hermes)": ("chatml", "alpaca", False,
                                 '<tool_call>\n{"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}}\n</tool_call><|im_end|>'),
}


def tool_setup(smol_tokenizer, tmp_path, name, rows=None):
    family, file, _, _ = TOOL_TEMPLATES[name]
    tok = family_tokenizer(smol_tokenizer, FAMILIES[family])
    source = file if file == "alpaca" else str(TEMPLATES / file)
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "tools.jsonl", rows or [refund_row()]))], template=source)
    return tok, cfg, resolve_template(source, tok)


@pytest.mark.parametrize("name", list(TOOL_TEMPLATES))
def test_tool_calls_are_trained_and_tool_results_are_not(name, smol_tokenizer, tmp_path):
    tok, cfg, template = tool_setup(smol_tokenizer, tmp_path, name)
    assert supports_tools(template, tok) is TOOL_TEMPLATES[name][2]
    [row], _, report = prepare_data(cfg, tok, template, seed=0)
    trained = [tok.decode(row["input_ids"][a:b]) for a, b in trained_runs(row)]
    end = FAMILIES[TOOL_TEMPLATES[name][0]].end
    assert trained == [TOOL_TEMPLATES[name][3], f"환불했습니다: 20달러가 돌아갑니다.{end}"]
    untrained = tok.decode([i for i, label in zip(row["input_ids"], row["labels"]) if label == -100])
    assert "refunded" in untrained and "Refund part or all of an order" in untrained  # the result and the tools: context
    # Before each trained turn: exactly the prompt inference gives the model, tools included.
    example = to_example(refund_row(), "messages", {}, W)
    starts = [a for a, _ in trained_runs(row)]
    assert [row["input_ids"][:a] for a in starts] == [prompt_ids(template, tok, example.messages[:k], example.tools) for k in (1, 3)]
    assert "1 examples use tools" in render_markdown(report)


def test_the_preflight_says_the_built_in_format_is_used(smol_tokenizer, tmp_path):
    tok, cfg, template = tool_setup(smol_tokenizer, tmp_path, "chatml (built-in Hermes)")
    _, _, report = prepare_data(cfg, tok, template, seed=0)
    text = render_markdown(report)
    assert "rendered in the built-in Hermes format" in text and "tool calls are trained, tool results are not" in text
    assert "⟦<tool_call>" in text and "<tool_response>\n{\"status\": \"refunded\"}\n</tool_response>" in text


@pytest.mark.parametrize("name", ["qwen2.5", "hermes-2-pro"])
def test_a_served_request_renders_as_the_training_row_did(name, smol_tokenizer, tmp_path):
    # As OpenAI clients send them: arguments as a JSON string, content null, a tool result with only its call's id
    # (Hermes-2-Pro writes the function's name into the result, and raises without one).
    from tunesmith.serve.protocol import ChatRequest, conversation

    tok, _, template = tool_setup(smol_tokenizer, tmp_path, name)
    example = to_example(refund_row(), "messages", {}, W)
    request = ChatRequest(model="m", messages=copy.deepcopy(refund_row()["messages"][:3]), tools=[LOOKUP, REFUND])
    assert "name" not in request.messages[2].as_dict()
    served = template.render(tok, conversation(request.messages), add_generation_prompt=True, tools=[t.model_dump(exclude_none=True) for t in request.tools])
    assert served == template.render(tok, example.messages[:3], add_generation_prompt=True, tools=example.tools)


def test_a_template_that_drops_tool_calls_is_reported(smol_tokenizer, tmp_path):
    # Renders the tool list (so it counts as tool-aware for the list) but never an assistant's calls.
    source = (TEMPLATES / "qwen2.5-tools.jinja").read_text().replace("{%- for call in message.tool_calls -%}", "{%- for call in [] -%}")
    broken = tmp_path / "broken.jinja"
    broken.write_text(source)
    tok = family_tokenizer(smol_tokenizer, FAMILIES["qwen2.5"])
    template = resolve_template(str(broken), tok)
    assert not supports_tools(template, tok)  # the probe sees no call: the built-in format is used instead
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "tools.jsonl", [refund_row()]))], template=str(broken))
    [row], _, _ = prepare_data(cfg, tok, template, seed=0)
    assert '"name": "refund", "arguments"' in tok.decode(row["input_ids"])


def test_xml_arguments_are_checked_name_by_name(smol_tokenizer, tmp_path):
    # Qwen3-Coder writes no JSON for the arguments: each parameter must be there, its value after its name. Planted:
    # a template that leaves out numbers (the probe's string argument passes, refund's amount 20 does not).
    source = (TEMPLATES / "qwen3-coder-tools.jinja").read_text()
    broken = tmp_path / "broken.jinja"
    broken.write_text(source.replace("{%- for name, value in call.arguments | items -%}",
                                     "{%- for name, value in call.arguments | items if value is not number -%}"))
    tok = family_tokenizer(smol_tokenizer, FAMILIES["qwen2.5"])
    template = resolve_template(str(broken), tok)
    assert supports_tools(template, tok)
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "tools.jsonl", [refund_row()]))], template=str(broken))
    with pytest.raises(TemplateError, match=r"the arguments of tool call messages\[1\].tool_calls\[0\] \('\{\"order_id\": \"A-1001\", \"amount\": 20\}'\) is not"):
        prepare_data(cfg, tok, template, seed=0)


def test_a_template_that_drops_the_tool_list_points_to_merge(smol_tokenizer, tmp_path):
    # Mistral v0.3 keeps the system message only in the last user turn; the built-in format puts the tools there.
    tok = family_tokenizer(smol_tokenizer, FAMILIES["mistral-v0.3"])
    row = refund_row()
    row["messages"] = row["messages"][:2]
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "tools.jsonl", [row, row]))], template=str(TEMPLATES / "mistral-v0.3.jinja"))
    template = resolve_template(cfg.template, tok)
    with pytest.raises(TemplateError) as err:
        prepare_data(cfg, tok, template, seed=0)
    assert "2 of 2 examples, first " in str(err.value) and "the name of tools[0] ('lookup_order') is not in the rendered text" in str(err.value)
    assert "data.system_prompt_mode: merge" in str(err.value)


def test_llama_3_1_refuses_parallel_calls_with_the_row_named(smol_tokenizer, tmp_path):
    row = refund_row()
    row["messages"][1]["tool_calls"].append(call("lookup_order", {"order_id": "A-1001"}, "call_2"))
    row["messages"].insert(3, {"role": "tool", "tool_call_id": "call_2", "content": "shipped"})
    tok, cfg, template = tool_setup(smol_tokenizer, tmp_path, "llama-3.1", rows=[row])
    with pytest.raises(TemplateError, match=r"tools.jsonl:1: template .* cannot render this conversation: This model only supports single tool-calls"):
        prepare_data(cfg, tok, template, seed=0)


def test_split_turns_keep_the_tools(smol_tokenizer, tmp_path):
    tok, cfg, template = tool_setup(smol_tokenizer, tmp_path, "qwen2.5")
    train, _, _ = prepare_data(cfg.model_copy(update={"multi_turn": "split"}), tok, template, seed=0)
    assert len(train) == 2 and all("Refund part or all of an order" in tok.decode(row["input_ids"]) for row in train)


def test_the_bundled_tool_tickets_load_and_pass_the_checks_under_smollm2(smol_tokenizer):
    import subprocess
    import sys

    from tests.conftest import ROOT

    demo = ROOT / "examples" / "data" / "tool_tickets"
    assert subprocess.run([sys.executable, str(ROOT / "examples/data/make_tool_tickets.py"), "--check"]).returncode == 0
    train, report = load_examples(demo / "train.jsonl")
    assert (report.read, report.kept) == (240, 240)
    assert {json.loads(line)["lang"] for line in (demo / "train.jsonl").read_text(encoding="utf-8").splitlines()} == {"en", "ko"}
    called = {c["function"]["name"] for e in train for m in e.messages for c in m.get("tool_calls", ())}
    assert called == {"lookup_order", "refund", "cancel_order", "change_address", "create_ticket"}
    assert any(len(m.get("tool_calls", ())) == 2 for e in train for m in e.messages)  # parallel calls
    assert any(not m.get("tool_calls") for e in train for m in e.messages[-1:])      # answers in text
    cfg = DataConfig(train=[str(demo / "train.jsonl")], eval=[str(demo / "heldout.jsonl")], template="model", max_length=1024)
    rows, evals, prepared = prepare_data(cfg, smol_tokenizer, resolve_template("model", smol_tokenizer), seed=0)
    assert (len(rows), len(evals)) == (240, 60) and prepared.train.with_tools == 240


def mistral_setup(smol_tokenizer, tmp_path, rows):
    from dataclasses import replace

    family = FAMILIES["mistral-v0.3"]
    controls = ["[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]
    tok = family_tokenizer(smol_tokenizer, replace(family, specials=family.specials + controls))
    source = str(TEMPLATES / "mistral-v0.3-tools.jinja")
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "tools.jsonl", rows))], template=source)
    return tok, cfg, resolve_template(source, tok)


def mistral_row(call_id="a1b2c3d4e"):
    row = refund_row()
    row["messages"][1]["tool_calls"][0]["id"] = call_id
    row["messages"][2]["tool_call_id"] = call_id
    return row


def test_mistral_trains_its_tool_call_and_wants_nine_character_ids(smol_tokenizer, tmp_path):
    tok, cfg, template = mistral_setup(smol_tokenizer, tmp_path, [mistral_row()])
    assert supports_tools(template, tok)
    [row], _, _ = prepare_data(cfg, tok, template, seed=0)
    trained = [tok.decode(row["input_ids"][a:b]) for a, b in trained_runs(row)]
    assert trained == ['[TOOL_CALLS] [{"name": "refund", "arguments": {"order_id": "A-1001", "amount": 20}, "id": "a1b2c3d4e"}]</s>',
                       " 환불했습니다: 20달러가 돌아갑니다.</s>"]
    assert '[TOOL_RESULTS] {"content": "{\\"status\\": \\"refunded\\"}"' in tok.decode(row["input_ids"])  # escaped, not dropped
    tok, cfg, template = mistral_setup(smol_tokenizer, tmp_path, [mistral_row("call_1")])
    with pytest.raises(TemplateError, match=r"tools.jsonl:1: .*Tool call IDs should be alphanumeric strings with length 9"):
        prepare_data(cfg, tok, template, seed=0)


def test_tools_that_move_to_the_last_user_turn_need_split(smol_tokenizer, tmp_path):
    # Mistral writes the tools before the last user message: an earlier turn's prompt changes once a user speaks again.
    row = mistral_row()
    row["messages"][:1] = [{"role": "user", "content": "Refund A-1001, please."}, {"role": "assistant", "content": "How much?"},
                           {"role": "user", "content": "$20."}]
    tok, cfg, template = mistral_setup(smol_tokenizer, tmp_path, [row])
    with pytest.raises(TemplateError) as err:
        prepare_data(cfg, tok, template, seed=0)
    assert "tools.jsonl:1: assistant turn messages[1]: " in str(err.value) and "set data.multi_turn: split" in str(err.value)
    train, _, _ = prepare_data(cfg.model_copy(update={"multi_turn": "split"}), tok, template, seed=0)
    assert len(train) == 3


def test_empty_tool_fields_of_api_exports_mean_no_tool_use():
    row = {"messages": [{"role": "user", "content": "Hi", "tool_calls": None, "tool_call_id": None},
                        {"role": "assistant", "content": "Hello!", "tool_calls": [], "tool_call_id": None}]}
    assert to_example(row, "messages", {}, W).messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    with pytest.raises(DataError, match=r"messages\[1\].content: expected a string, found null"):
        to_example({"messages": [row["messages"][0], {"role": "assistant", "content": None, "tool_calls": []}]}, "messages", {}, W)


def test_the_data_verbs_read_the_text_of_tool_rows_and_leave_calls_and_results_alone():
    from tunesmith.curate.rows import TextFields

    row = refund_row()
    slots = TextFields([], {}).slots(row, W)
    assert [path for path, _ in slots] == [("messages", 0, "content"), ("messages", 3, "content")]
    sharegpt = {"conversations": [{"from": "human", "value": "Refund A-1"}, {"from": "function_call", "value": '{"name": "refund", "arguments": {}}'},
                                  {"from": "observation", "value": "ok"}, {"from": "gpt", "value": "Done."}]}
    assert [text for _, text in TextFields([], {}).slots(sharegpt, W)] == ["Refund A-1", "Done."]


def test_tools_keep_every_key_so_a_served_request_renders_as_training_did(smol_tokenizer, tmp_path):
    strict = {"type": "function", "function": {**REFUND["function"], "strict": True}}
    example = to_example(refund_row(tools=[strict]), "messages", {}, W)
    assert example.tools == [strict]
    tok, _, template = tool_setup(smol_tokenizer, tmp_path, "chatml (built-in Hermes)")
    assert '"strict": true' in template.render(tok, example.messages[:1], add_generation_prompt=True, tools=example.tools)


def test_the_saved_tokenizer_renders_tool_use_as_the_run_did(smol_tokenizer, tmp_path):
    # Plain transformers users (and other servers) of a run on a template without tools get the Hermes format too.
    import copy as copying

    from tunesmith.data.templates import install_template

    tok, _, template = tool_setup(smol_tokenizer, tmp_path, "chatml (built-in Hermes)")
    example = to_example(refund_row(), "messages", {}, W)
    saved = copying.deepcopy(tok)
    install_template(template, saved)
    for k in (1, 3, 4):
        plain = saved.apply_chat_template(template.template_messages(example.messages[:k]), tools=example.tools, tokenize=False,
                                          add_generation_prompt=k < 4)
        assert plain == template.render(tok, example.messages[:k], add_generation_prompt=k < 4, tools=example.tools)
    no_tools = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert saved.apply_chat_template(no_tools, tokenize=False) == template.render(tok, no_tools)
