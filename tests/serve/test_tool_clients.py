"""Real clients against a real HTTP server: tools (plain and streamed), tool_choice, json_schema and logprobs.

Tool use is something a tiny model cannot learn in a test, so the tool-calling server runs a template-driven fake
engine: it reads the rendered prompt (the tools written by the template, the tool results) and answers in
Hermes format, token by token, through the real app, parsers and streaming. json_schema and forced calls run the
real transformers engine on a tiny random Llama, whose output only the constraint makes valid."""

import json
import re
from pathlib import Path

import openai
import pytest

from tests.serve.conftest import LiveServer
from tunesmith.config import ModelConfig
from tunesmith.data.templates import resolve_template
from tunesmith.models.load import ModelSource
from tunesmith.serve.app import build_app
from tunesmith.serve.catalog import Catalog, ServedModel
from tunesmith.serve.engine import Step

TEMPLATE = Path(__file__).with_name("hermes_tools.jinja")
LOOKUP = {"type": "function", "function": {"name": "lookup_order", "description": "Find an order by its id",
          "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "maxLength": 8}}, "required": ["order_id"]}}}


# Calls of one tool, one per order, as each parser family's models write them.
CALLS = {
    "hermes": lambda name, orders: "\n".join(f'<tool_call>\n{{"name": "{name}", "arguments": {{"order_id": "{o}"}}}}\n</tool_call>' for o in orders),
    "qwen": lambda name, orders: "\n".join(f"<tool_call>\n<function={name}>\n<parameter=order_id>\n{o}\n</parameter>\n</function>\n</tool_call>" for o in orders),
    "llama3": lambda name, orders: "<|python_tag|>" + "; ".join(f'{{"name": "{name}", "parameters": {{"order_id": "{o}"}}}}' for o in orders),
    "mistral": lambda name, orders: "[TOOL_CALLS][" + ", ".join(f'{{"name": "{name}", "arguments": {{"order_id": "{o}"}}}}' for o in orders) + "]",
}


class FakeEngine:
    """Answers from the prompt: a call of the first tool the template wrote when the last turn is the user's,
    a sentence about the tool result once one is in the prompt."""

    name, context_length = "fake", 4096

    def __init__(self, tokenizer, family: str = "hermes"):
        self.tokenizer, self.family = tokenizer, family

    async def start(self): ...

    async def stop(self): ...

    def stats(self) -> dict:
        return {"engine": self.name}

    def constrain(self, model, schema):
        raise NotImplementedError

    def reply(self, prompt: str) -> str:
        """One call per order the last user turn names ("order A17 and order B2": two)."""
        results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", prompt, re.S)
        if results:
            return f"Your order: {results[-1]}"
        tools = re.findall(r'\n(\{"type": "function".*)', prompt)
        if not tools:
            return "I have no tools."
        name = json.loads(tools[0])["function"]["name"]
        orders = re.findall(r"order (\w+)", prompt.rsplit("<|im_start|>user", 1)[-1])
        return f"Let me look.\n{CALLS[self.family](name, orders)}"

    async def stream(self, request):
        ids = self.tokenizer(self.reply(self.tokenizer.decode(request.prompt_ids)), add_special_tokens=False)["input_ids"]
        for n, token in enumerate(ids[: request.sampling.max_tokens], 1):
            yield Step([token], None, n)
        yield Step([], "stop" if len(ids) < request.sampling.max_tokens else "length", min(len(ids) + 1, request.sampling.max_tokens))


def fake_server(tokenizer, base, family: str = "hermes", tool_parser: str | None = None, template_file: Path = TEMPLATE) -> LiveServer:
    template = resolve_template(str(template_file), tokenizer)
    catalog = Catalog(ModelConfig(path=str(base)), ModelSource("local", str(base), str(base)),
                      {"tickets": ServedModel("tickets", template)}, default="tickets")
    return LiveServer(build_app(FakeEngine(tokenizer, family), catalog, tokenizer, tool_parser=tool_parser), None, catalog)


@pytest.fixture(scope="module")
def fake(smol_tokenizer, tiny_llama):
    with fake_server(smol_tokenizer, tiny_llama) as server:
        yield server


@pytest.fixture(scope="module")
def client(fake):
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="none", max_retries=0)


USER = [{"role": "user", "content": "Where is order A17?"}]


def test_openai_client_gets_tool_calls_and_sends_results_back(client):
    reply = client.chat.completions.create(model="tickets", messages=USER, tools=[LOOKUP])
    [choice] = reply.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    [call] = choice.message.tool_calls
    assert call.function.name == "lookup_order" and json.loads(call.function.arguments) == {"order_id": "A17"}
    history = USER + [choice.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "shipped on Monday"}]
    answer = client.chat.completions.create(model="tickets", messages=history, tools=[LOOKUP])
    assert answer.choices[0].message.content == "Your order: shipped on Monday" and answer.choices[0].finish_reason == "stop"


def accumulated(chunks) -> tuple[str, list[dict], list[str]]:
    """Content, tool calls and finish reasons out of stream chunks, joined as OpenAI's clients join them."""
    content, calls, reasons = "", [], []
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                if d.id:
                    assert d.index == len(calls) and d.type == "function" and d.function.arguments == ""
                    calls.append({"id": d.id, "name": d.function.name, "arguments": ""})
                else:
                    assert d.id is None and d.function.name is None
                calls[d.index]["arguments"] += d.function.arguments or ""
            reasons += [choice.finish_reason] if choice.finish_reason else []
    return content, calls, reasons


@pytest.mark.parametrize("question, max_tokens", [
    ("Where is order A17?", None),
    ("Where are order A17 and order B2?", None),   # two calls in one answer
    ("Where is order A17?", 29),                    # cut inside the call's arguments
])
def test_streamed_tool_calls_join_to_the_plain_reply(client, question, max_tokens):
    messages = [{"role": "user", "content": question}]
    plain = client.chat.completions.create(model="tickets", messages=messages, tools=[LOOKUP], max_tokens=max_tokens, seed=3).choices[0]
    chunks = list(client.chat.completions.create(model="tickets", messages=messages, tools=[LOOKUP], max_tokens=max_tokens, seed=3, stream=True))
    content, calls, reasons = accumulated(chunks)
    assert content == plain.message.content == "Let me look."
    assert [(c["name"], c["arguments"]) for c in calls] == [(c.function.name, c.function.arguments) for c in plain.message.tool_calls]
    assert reasons == [plain.finish_reason] == ["tool_calls" if max_tokens is None else "length"]
    # Token by token: each call's arguments came in several chunks, none of them markup.
    pieces = [d.function.arguments for c in chunks for d in c.choices[0].delta.tool_calls or [] if c.choices and not d.id]
    assert len(pieces) > 2 * len(calls) and not any("tool_call" in p for p in pieces)
    if max_tokens is None:
        assert [json.loads(c["arguments"]) for c in calls] == [{"order_id": o} for o in re.findall(r"order (\w+)", question)]
    else:   # what a cut call is: its name and the part of its arguments that was written
        [call] = calls
        assert call["name"] == "lookup_order" and '{"order_id": "A17"}'.startswith(call["arguments"]) and call["arguments"] != '{"order_id": "A17"}'


@pytest.mark.parametrize("family", ["qwen", "llama3", "mistral"])
def test_every_parser_streams_calls_that_join_to_the_plain_reply(smol_tokenizer, tiny_llama, family):
    """The server with --tool-parser FAMILY, its fake model writing that family's calls (hermes: the tests above)."""
    with fake_server(smol_tokenizer, tiny_llama, family, tool_parser=family) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "Where are order A17 and order B2?"}]
        plain = client.chat.completions.create(model="tickets", messages=messages, tools=[LOOKUP]).choices[0]
        chunks = list(client.chat.completions.create(model="tickets", messages=messages, tools=[LOOKUP], stream=True))
    content, calls, reasons = accumulated(chunks)
    assert content == plain.message.content == "Let me look." and reasons == [plain.finish_reason] == ["tool_calls"]
    assert [(c["name"], c["arguments"]) for c in calls] == [(c.function.name, c.function.arguments) for c in plain.message.tool_calls]
    assert [json.loads(c["arguments"]) for c in calls] == [{"order_id": "A17"}, {"order_id": "B2"}]
    pieces = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or [] if not d.id]
    assert len(pieces) > 2 * len(calls)


def test_tool_choice_none_leaves_the_tools_out(client):
    reply = client.chat.completions.create(model="tickets", messages=USER, tools=[LOOKUP], tool_choice="none")
    assert reply.choices[0].message.content == "I have no tools." and not reply.choices[0].message.tool_calls


def test_models_by_id(client):
    assert client.models.retrieve("tickets").id == "tickets"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.fixture(scope="module")
def tiny(tiny_llama, start_server):
    with start_server(tiny_llama, template=str(TEMPLATE), max_tokens=16) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


ORDER = {"type": "object", "properties": {"status": {"enum": ["open", "shipped"]}, "items": {"type": "integer", "minimum": 1, "maximum": 9}},
         "required": ["status", "items"], "additionalProperties": False}


def test_json_schema_and_forced_calls_on_a_random_model(tiny):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("xgrammar")
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER, "strict": True}}
    for seed in range(3):
        reply = tiny.chat.completions.create(model="tiny_llama0", messages=USER, response_format=fmt, temperature=1.0, seed=seed, max_tokens=60)
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), ORDER)
    named = {"type": "function", "function": {"name": "lookup_order"}}
    for choice in ("required", named):
        # One call: unbounded, a random model goes on adding calls to the list until max_tokens.
        reply = tiny.chat.completions.create(model="tiny_llama0", messages=USER, tools=[LOOKUP], tool_choice=choice, max_tokens=80,
                                             temperature=0, parallel_tool_calls=False)
        assert reply.choices[0].message.tool_calls, reply.choices[0]
        [call] = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup_order"
        jsonschema.validate(json.loads(call.function.arguments), LOOKUP["function"]["parameters"])


def test_response_format_on_completions_as_on_chat(tiny):
    """vLLM takes response_format on /v1/completions too: a raw prompt's continuation decoded under the schema."""
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("xgrammar")
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER, "strict": True}}
    plain = tiny.completions.create(model="tiny_llama0", prompt="Order B42:", temperature=0, max_tokens=60)
    with pytest.raises(json.JSONDecodeError):   # unconstrained, the random model writes no JSON
        json.loads(plain.choices[0].text)
    answers = set()
    for seed in range(3):
        completion = tiny.completions.create(model="tiny_llama0", prompt="Order B42:", temperature=1.0, seed=seed, max_tokens=60,
                                             extra_body={"response_format": fmt})
        assert completion.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(completion.choices[0].text), ORDER)
        answers.add(completion.choices[0].text)
    assert len(answers) > 1   # sampled under the schema, not one fixed answer
    # Streamed, n=2, and json_object (any object): every choice parses.
    chunks = list(tiny.completions.create(model="tiny_llama0", prompt="Order B42:", temperature=1.0, seed=5, max_tokens=60, n=2, stream=True,
                                          extra_body={"response_format": fmt}))
    texts = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(2)]
    for text in texts:
        jsonschema.validate(json.loads(text), ORDER)
    anything = tiny.completions.create(model="tiny_llama0", prompt="Order B42:", temperature=0, max_tokens=120,
                                       extra_body={"response_format": {"type": "json_object"}}).choices[0]
    assert anything.text.startswith("{") and (anything.finish_reason == "length" or isinstance(json.loads(anything.text), dict))


def test_bad_schemas_are_the_same_400_on_chat_and_completions(tiny):
    pytest.importorskip("xgrammar")
    fmt = {"type": "json_schema", "json_schema": {"name": "broken", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}
    errors = []
    for call in (lambda: tiny.chat.completions.create(model="tiny_llama0", messages=USER, response_format=fmt),
                 lambda: tiny.completions.create(model="tiny_llama0", prompt="Order", extra_body={"response_format": fmt})):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        errors.append((caught.value.param, caught.value.body["message"]))
    assert errors[0] == errors[1] and errors[0][0] == "response_format" and "cannot be used for decoding" in errors[0][1]
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        tiny.completions.create(model="tiny_llama0", prompt="Order", extra_body={"response_format": {"type": "json_schema"}})
    assert caught.value.param == "response_format.json_schema"
    # A tool whose (valid) schema xgrammar cannot use: a 400 on tools when the call is forced under it; with
    # tool_choice auto the schema only goes into the prompt, so the request is answered.
    odd = {"type": "function", "function": {"name": "odd", "parameters": fmt["json_schema"]["schema"]}}
    with pytest.raises(openai.BadRequestError) as caught:
        tiny.chat.completions.create(model="tiny_llama0", messages=USER, tools=[odd], tool_choice="required")
    assert caught.value.param == "tools" and "cannot be used for decoding" in caught.value.body["message"]
    assert tiny.chat.completions.create(model="tiny_llama0", messages=USER, tools=[odd], max_tokens=4).choices[0].finish_reason in ("stop", "length")


def test_logprobs_through_the_client(tiny):
    reply = tiny.chat.completions.create(model="tiny_llama0", messages=USER, logprobs=True, top_logprobs=3, max_tokens=5, temperature=0)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob == t.top_logprobs[0].logprob for t in content)   # greedy: the chosen token is the most likely
    completion = tiny.completions.create(model="tiny_llama0", prompt="Once", logprobs=2, max_tokens=4, temperature=0)
    assert len(completion.choices[0].logprobs.token_logprobs) == 4 and all(len(t) <= 2 for t in completion.choices[0].logprobs.top_logprobs)


def test_logprobs_with_n_and_with_streamed_tools(tiny):
    """Combinations a client may send: each choice of n gets its own logprobs, and a stream with tools and logprobs
    carries the same tokens, logprobs and calls as the plain reply of the same seed."""
    reply = tiny.chat.completions.create(model="tiny_llama0", messages=USER, logprobs=True, top_logprobs=2, n=2, max_tokens=6, temperature=1.0, seed=4)
    tokens = [[t.token for t in c.logprobs.content] for c in reply.choices]
    assert [len(t) for t in tokens] == [6, 6] and tokens[0] != tokens[1] and reply.usage.completion_tokens == 12
    completion = tiny.completions.create(model="tiny_llama0", prompt="Once", logprobs=1, n=2, max_tokens=4, temperature=1.0, seed=4)
    assert [len(c.logprobs.token_logprobs) for c in completion.choices] == [4, 4]
    assert [c.text for c in completion.choices] == ["".join(c.logprobs.tokens) for c in completion.choices]
    for choice in ("auto", "required"):
        ask = dict(model="tiny_llama0", messages=USER, tools=[LOOKUP], tool_choice=choice, parallel_tool_calls=False, logprobs=True, top_logprobs=1,
                   max_tokens=40, temperature=1.0, seed=2)
        plain = tiny.chat.completions.create(**ask).choices[0]
        chunks = list(tiny.chat.completions.create(**ask, stream=True))
        content, calls, reasons = accumulated(chunks)
        streamed = [(t.token, t.logprob) for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        assert streamed == [(t.token, t.logprob) for t in plain.logprobs.content] and streamed
        assert content == (plain.message.content or "") and reasons == [plain.finish_reason]
        assert [(c["name"], c["arguments"]) for c in calls] == [(c.function.name, c.function.arguments) for c in plain.message.tool_calls or []]
        if choice == "required":   # a forced call streams as it is decoded, too
            assert [c["name"] for c in calls] == ["lookup_order"]
            assert sum(1 for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or [] if not d.id) > 3


def test_langchain_bind_tools_and_with_structured_output(fake, tiny):
    pytest.importorskip("langchain_openai")
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    def lookup_order(order_id: str) -> str:
        """Find an order by its id."""
        return "shipped"

    chat = ChatOpenAI(model="tickets", base_url=fake.url + "/v1", api_key="none", max_retries=0)
    message = chat.bind_tools([lookup_order]).invoke("Where is order B42?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("lookup_order", {"order_id": "B42"})]
    # Streamed: LangChain's tool-call chunks, joined, give the same calls.
    chunks = list(chat.bind_tools([lookup_order]).stream("Where are order B42 and order C9?"))
    joined = chunks[0]
    for chunk in chunks[1:]:
        joined += chunk
    assert [(c["name"], c["args"]) for c in joined.tool_calls] == [("lookup_order", {"order_id": "B42"}), ("lookup_order", {"order_id": "C9"})]
    assert sum(len(c.tool_call_chunks) for c in chunks) > 4 and joined.response_metadata["finish_reason"] == "tool_calls"

    class Order(BaseModel):
        status: str = Field(json_schema_extra={"enum": ["open", "shipped"]})
        items: int = Field(ge=1, le=9)

    structured = ChatOpenAI(model="tiny_llama0", base_url=str(tiny.base_url), api_key="none", max_retries=0, max_tokens=60, temperature=0)
    order = structured.with_structured_output(Order, method="json_schema").invoke("Describe order B42")
    assert isinstance(order, Order) and order.status in ("open", "shipped") and 1 <= order.items <= 9


def test_openai_agents_sdk_runs_a_one_tool_agent_loop(fake):
    pytest.importorskip("agents")
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    looked_up = []

    @function_tool
    def lookup_order(order_id: str) -> str:
        """Find an order by its id."""
        looked_up.append(order_id)
        return f"order {order_id} shipped on Monday"

    model = OpenAIChatCompletionsModel(model="tickets", openai_client=openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="none", max_retries=0))
    agent = Agent(name="support", instructions="Help with orders.", tools=[lookup_order], model=model)
    result = Runner.run_sync(agent, "Where is order C7?")
    assert looked_up == ["C7"]
    assert result.final_output == "Your order: order C7 shipped on Monday"


# DeepSeek-V3's way of writing a call, which none of the parsers reads.
DEEPSEEK_V3_CALLS = (
    "{{ bos_token }}{% if tools %}{{ '# Tools\\n<tools>' }}{% for t in tools %}{{ '\\n' + t | tojson }}{% endfor %}{{ '\\n</tools>\\n\\n' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] + '<｜Assistant｜>' }}"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}{{ m['content'] + '<｜tool▁calls▁begin｜>' }}{% for c in m['tool_calls'] %}"
    "{{ '<｜tool▁call▁begin｜>function<｜tool▁sep｜>' + c['function']['name'] + '\\n```json\\n' + c['function']['arguments'] | tojson + '\\n```<｜tool▁call▁end｜>' }}"
    "{% endfor %}{{ '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + '<｜end▁of▁sentence｜>' }}"
    "{% elif m['role'] == 'tool' %}{{ '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + m['content'] + '<｜tool▁output▁end｜><｜tool▁outputs▁end｜>' }}"
    "{% endif %}{% endfor %}"
)


def test_a_template_whose_calls_no_parser_reads_is_a_400_on_tools_not_calls_returned_as_text(smol_tokenizer, tiny_llama, tmp_path):
    (tmp_path / "deepseek.jinja").write_text(DEEPSEEK_V3_CALLS)
    with fake_server(smol_tokenizer, tiny_llama, template_file=tmp_path / "deepseek.jinja") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tickets", messages=USER, tools=[LOOKUP])
        assert caught.value.param == "tools" and str(tmp_path) not in caught.value.body["message"]
        assert "<｜tool▁calls▁begin｜>" in caught.value.body["message"] and "--tool-parser" in caught.value.body["message"]
        # Without tools offered, the model is served as ever.
        assert client.chat.completions.create(model="tickets", messages=USER, tools=[LOOKUP], tool_choice="none").choices[0].message.content
    with fake_server(smol_tokenizer, tiny_llama, template_file=tmp_path / "deepseek.jinja", tool_parser="hermes") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        assert client.chat.completions.create(model="tickets", messages=USER, tools=[LOOKUP]).choices[0].finish_reason in ("stop", "tool_calls")


@pytest.mark.parametrize("question", ["Where is order A17?", "Where are order A17 and order B2?"])
def test_the_openai_stream_helpers_accumulate_the_calls_of_the_plain_reply(client, question):
    """The delta shape as the official client accumulates it: ChatCompletionStreamState and
    chat.completions.stream, whose events and parsed arguments need each call's index, id and name up front."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from pydantic import BaseModel

    class LookupOrder(BaseModel):
        """Find an order by its id"""

        order_id: str

    messages = [{"role": "user", "content": question}]
    tool = openai.pydantic_function_tool(LookupOrder, name="lookup_order")
    plain = client.chat.completions.create(model="tickets", messages=messages, tools=[tool]).choices[0]
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(model="tickets", messages=messages, tools=[tool], stream=True):
        state.handle_chunk(chunk)
    joined = state.get_final_completion().choices[0]
    with client.chat.completions.stream(model="tickets", messages=messages, tools=[tool]) as stream:
        done = [(e.index, e.name, e.parsed_arguments) for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion().choices[0]
    orders = re.findall(r"order (\w+)", question)
    assert [(c.function.name, c.function.arguments) for c in joined.message.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in plain.message.tool_calls]
    assert len({c.id for c in joined.message.tool_calls}) == len(orders) and all(c.type == "function" for c in joined.message.tool_calls)
    assert joined.finish_reason == final.finish_reason == "tool_calls" and joined.message.content == final.message.content == "Let me look."
    assert done == [(i, "lookup_order", LookupOrder(order_id=o)) for i, o in enumerate(orders)]
    assert [c.function.parsed_arguments for c in final.message.tool_calls] == [LookupOrder(order_id=o) for o in orders]
