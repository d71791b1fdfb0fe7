"""Loss masks under the chat templates of real model families (tests/fixtures/templates), each on a
tokenizer with the family's special tokens: SmolLM2's byte-level BPE with tokens added."""

import copy
import datetime
import json
from dataclasses import dataclass, field

import pytest

from tunesmith.config import DataConfig
from tunesmith.data.preflight import render_markdown
from tunesmith.data.prepare import prepare_data
from tunesmith.data.templates import TemplateError, install_template, merging_system, prompt_ids, resolve_template

from tests.conftest import FIXTURES, write_jsonl

TEMPLATES = FIXTURES / "templates"
MERGE = {"system_prompt_mode": "merge"}
SPLIT = {"multi_turn": "split"}
# The pre-tokenizer of Qwen and Llama 3: runs of newlines are one pre-token, so "\n\n" is one token where SmolLM2 writes two.
GPT4_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


@dataclass
class Family:
    file: str
    end: str                                   # the token that ends an assistant turn
    trained: str = "{reply}{end}"              # exactly what is trained for a reply
    content: str = "{reply}"                   # the reply as the data holds it
    bos: str | None = None
    eos: str | None = None
    specials: list[str] = field(default_factory=list)
    plain: list[str] = field(default_factory=list)   # added tokens that are not special (<think>)
    gpt4_split: bool = False                  # the GPT-4-style pre-tokenizer of Qwen and Llama 3
    data: dict = field(default_factory=dict)   # the data settings this family trains with


FAMILIES = {
    "chatml": Family("chatml", "<|im_end|>"),
    # A Qwen base model: EOS <|endoftext|>, turns end with <|im_end|>, which only the template says.
    "chatml-base-eos": Family("chatml", "<|im_end|>", eos="<|endoftext|>", gpt4_split=True),
    "qwen2.5": Family("qwen2.5", "<|im_end|>", gpt4_split=True),
    "qwen3": Family("qwen3", "<|im_end|>", trained="<think>\n\n</think>\n\n{reply}{end}", plain=["<think>", "</think>"], gpt4_split=True, data=SPLIT),
    "mistral-v0.1": Family("mistral-v0.1", "</s>", bos="<s>", eos="</s>", data=MERGE),
    "mistral-v0.3": Family("mistral-v0.3", "</s>", trained=" {reply}{end}", bos="<s>", eos="</s>", specials=["[INST]", "[/INST]"], data=MERGE),
    "deepseek-r1": Family(
        "deepseek-r1", "<｜end▁of▁sentence｜>",
        content="<think>\nThe answer: {reply}\n</think>\n\n{reply}", trained="The answer: {reply}\n</think>\n\n{reply}{end}",
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", specials=["<｜User｜>", "<｜Assistant｜>"], plain=["<think>", "</think>"],
        data=SPLIT,
    ),
    "phi-3": Family("phi-3", "<|end|>", eos="<|endoftext|>", specials=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], data=SPLIT),
    "llama-3.1": Family("llama-3.1", "<|eot_id|>", bos="<|begin_of_text|>", eos="<|eot_id|>", specials=["<|start_header_id|>", "<|end_header_id|>"], gpt4_split=True),
    "llama-3.2": Family("llama-3.2", "<|eot_id|>", bos="<|begin_of_text|>", eos="<|eot_id|>", specials=["<|start_header_id|>", "<|end_header_id|>"], gpt4_split=True),
    "smollm3": Family("smollm3", "<|im_end|>"),
    "gemma": Family("gemma", "<end_of_turn>", bos="<bos>", eos="<eos>", specials=["<start_of_turn>", "<end_of_turn>"], data=MERGE),
}

EXCHANGES = [
    ("What is the capital of France?", "Paris.", "And of Korea?", "서울 (Seoul)."),
    ("Add 2 and 3.", "5", "Now double it.", "10"),
    ("Say hi.", "Hi!", "In Korean?", "안녕하세요!"),
]


def family_tokenizer(smol_tokenizer, family: Family):
    from tokenizers import Regex, pre_tokenizers

    tok = copy.deepcopy(smol_tokenizer)
    named = {key: value for key, value in (("bos_token", family.bos), ("eos_token", family.eos)) if value}
    tok.add_special_tokens({**named, "additional_special_tokens": family.specials})
    tok.add_tokens(family.plain)
    if family.gpt4_split:
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(GPT4_SPLIT), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    return tok


def conversation(family: Family, exchange: tuple[str, str, str, str]) -> list[dict]:
    q1, a1, q2, a2 = exchange
    return [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": q1},
        {"role": "assistant", "content": family.content.format(reply=a1)},
        {"role": "user", "content": q2},
        {"role": "assistant", "content": family.content.format(reply=a2)},
    ]


def template_for(cfg: DataConfig, tokenizer):
    template = resolve_template(cfg.template, tokenizer)
    return merging_system(template) if cfg.system_prompt_mode == "merge" else template


def trained_runs(row: dict) -> list[tuple[int, int]]:
    """[start, end) of every run of trained labels."""
    runs, labels = [], row["labels"]
    for i, label in enumerate(labels):
        if label != -100 and (i == 0 or labels[i - 1] == -100):
            runs.append([i, i + 1])
        elif label != -100:
            runs[-1][1] = i + 1
    return [tuple(run) for run in runs]


def chats_file(tmp_path, conversations: list[list[dict]]) -> str:
    return str(write_jsonl(tmp_path / "chats.jsonl", [{"messages": m} for m in conversations]))


def family_data(smol_tokenizer, tmp_path, name: str, **data):
    """(tokenizer, data config) for the family's conversations of EXCHANGES under its template."""
    family = FAMILIES[name]
    path = chats_file(tmp_path, [conversation(family, e) for e in EXCHANGES])
    return family_tokenizer(smol_tokenizer, family), DataConfig(train=[path], template=str(TEMPLATES / f"{family.file}.jinja"), **data)


def refusal(tokenizer, cfg: DataConfig) -> str:
    with pytest.raises(TemplateError) as err:
        prepare_data(cfg, tokenizer, template_for(cfg, tokenizer), seed=0)
    return str(err.value)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_real_template_trains_each_reply_and_its_end_of_turn_and_nothing_else(name, smol_tokenizer, tmp_path):
    family = FAMILIES[name]
    tok, cfg = family_data(smol_tokenizer, tmp_path, name, **family.data)
    conversations = [conversation(family, e) for e in EXCHANGES]
    template = template_for(cfg, tok)
    end = tok.convert_tokens_to_ids(family.end)
    assert end in template.stop_token_ids

    train, _, report = prepare_data(cfg, tok, template, seed=0)

    runs = [(row, start, stop) for row in train for start, stop in trained_runs(row)]
    texts = [tok.decode(row["input_ids"][a:b], clean_up_tokenization_spaces=False) for row, a, b in runs]
    assert texts == [family.trained.format(reply=e[i], end=family.end) for e in EXCHANGES for i in (1, 3)]
    assert all(row["input_ids"][b - 1] == end for row, _, b in runs)
    # What comes before each trained reply is exactly the prompt inference gives the model for it.
    prompts = [prompt_ids(template, tok, c[:k]) for c in conversations for k in (2, 4)]
    assert [row["input_ids"][:a] for row, a, _ in runs] == prompts
    assert f"{family.end} (" in render_markdown(report)


def test_mistral_v01_does_not_train_the_next_turns_bracket(smol_tokenizer, tmp_path):
    # `eos_token + ' '` then `[INST]`: byte-level BPE writes " [" as one token, which starts inside the
    # finished turn and runs into the next one. Training stops at </s>, so it is context, never trained.
    family = FAMILIES["mistral-v0.1"]
    tok = family_tokenizer(smol_tokenizer, family)
    cfg = DataConfig(train=[chats_file(tmp_path, [conversation(family, EXCHANGES[0])])], template=str(TEMPLATES / "mistral-v0.1.jinja"), **MERGE)
    [row], _, _ = prepare_data(cfg, tok, template_for(cfg, tok), seed=0)
    eos, bracket = tok.eos_token_id, tok.convert_tokens_to_ids("Ġ[")
    first_end = row["input_ids"].index(eos)
    assert row["input_ids"][first_end + 1] == bracket and row["labels"][first_end + 1] == -100
    assert [label for label in row["labels"] if label == eos] == [eos, eos]


def qa_rows(n: int, planted: dict[int, str]) -> list[dict]:
    return [{"question": f"What is {i} plus {i}?", "answer": planted.get(i, f"It is {2 * i}.")} for i in range(1, n + 1)]


def test_every_example_is_checked_not_only_the_first_500(smol_tokenizer, tmp_path):
    # Qwen2.5: a reply that starts with a newline merges with the generation prompt's "\n" into one "\n\n"
    # token, so inference would see other tokens than training. Row 550 is the only such row.
    tok = family_tokenizer(smol_tokenizer, FAMILIES["qwen2.5"])
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(600, {550: "\nIt is 1100."}))
    cfg = DataConfig(train=[str(path)], template=str(TEMPLATES / "qwen2.5.jinja"))
    with pytest.raises(TemplateError) as err:
        prepare_data(cfg, tok, template_for(cfg, tok), seed=0)
    message = str(err.value)
    assert "1 of 600 examples, first " in message and "qa.jsonl:550: the prompt at inference ends in tokens" in message
    assert "'\\n' but" not in message and "'\\n\\n'" in message  # the tokens, decoded: "\n" at inference, "\n\n" in training


def test_every_preference_pair_is_checked(smol_tokenizer, tmp_path):
    tok = family_tokenizer(smol_tokenizer, FAMILIES["qwen2.5"])
    pairs = [{"prompt": f"Is {i} even?", "chosen": "Yes." if i % 2 == 0 else "No.", "rejected": "Maybe."} for i in range(1, 601)]
    pairs[549]["chosen"] = "\nNo."
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "pairs.jsonl", pairs))], template=str(TEMPLATES / "qwen2.5.jinja"))
    with pytest.raises(TemplateError, match=r"1 of 600 examples, first .*pairs.jsonl:550: the prompt at inference"):
        prepare_data(cfg, tok, template_for(cfg, tok), seed=0, method="dpo")


def test_a_dropped_system_message_is_an_error_with_the_merge_remedy(smol_tokenizer, tmp_path):
    message = refusal(*family_data(smol_tokenizer, tmp_path, "mistral-v0.3"))
    assert "3 of 3 examples, first " in message and "chats.jsonl:1: the system message messages[0] ('Answer briefly.')" in message
    assert "data.system_prompt_mode: merge" in message


def test_data_system_prompt_dropped_by_the_template_is_an_error_too(smol_tokenizer, tmp_path):
    tok = family_tokenizer(smol_tokenizer, FAMILIES["mistral-v0.3"])
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(4, {}))
    cfg = DataConfig(train=[str(path)], template=str(TEMPLATES / "mistral-v0.3.jinja"), system_prompt="Answer with a number.")
    with pytest.raises(TemplateError, match=r"4 of 4 examples, first .*qa.jsonl:1: the system message messages\[0\]"):
        prepare_data(cfg, tok, template_for(cfg, tok), seed=0)
    merged = cfg.model_copy(update={"system_prompt_mode": "merge"})
    train, _, report = prepare_data(merged, tok, template_for(merged, tok), seed=0)
    assert tok.decode(train[0]["input_ids"]).startswith("<s>[INST] Answer with a number.\n\nWhat is 1 plus 1?[/INST]")
    assert "system messages are merged into the first user turn" in render_markdown(report)


def test_reasoning_the_template_strips_is_an_error_until_split(smol_tokenizer, tmp_path):
    tok, cfg = family_data(smol_tokenizer, tmp_path, "deepseek-r1")
    message = refusal(tok, cfg)
    assert "3 of 3 examples, first " in message and "chats.jsonl:1: the reply messages[2] ('<think>\\nThe answer: Paris." in message
    assert "data.multi_turn: split" in message
    _, _, report = prepare_data(cfg.model_copy(update=SPLIT), tok, template_for(cfg, tok), seed=0)
    assert report.train.rebuilt == 6
    assert "6 replies rebuilt" in render_markdown(report)


@pytest.mark.parametrize("name", ["qwen3", "phi-3"])
def test_templates_that_render_earlier_turns_differently_need_split(name, smol_tokenizer, tmp_path):
    tok, cfg = family_data(smol_tokenizer, tmp_path, name)
    message = refusal(tok, cfg)
    assert "3 of 3 examples, first " in message and "chats.jsonl:1: assistant turn messages[2]: " in message
    assert "set data.multi_turn: split" in message
    train, _, report = prepare_data(cfg.model_copy(update=SPLIT), tok, template_for(cfg, tok), seed=0)
    assert len(train) == 6
    assert "data.multi_turn: split: train 3 conversations became 6 examples" in render_markdown(report)


def test_qwen3_trains_the_reasoning_field_in_the_last_turn(smol_tokenizer, tmp_path):
    tok = family_tokenizer(smol_tokenizer, FAMILIES["qwen3"])
    rows = [{"messages": [
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "5", "reasoning": "Two plus three is five."},
        {"role": "user", "content": "Double it?"},
        {"role": "assistant", "content": "10", "reasoning": "Five doubled is ten."},
    ]}]
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "r.jsonl", rows))], template=str(TEMPLATES / "qwen3.jinja"), **SPLIT)
    train, _, _ = prepare_data(cfg, tok, template_for(cfg, tok), seed=0)
    trained = [tok.decode(row["input_ids"][a:b]) for row in train for a, b in trained_runs(row)]
    assert trained == ["<think>\nTwo plus three is five.\n</think>\n\n5<|im_end|>", "<think>\nFive doubled is ten.\n</think>\n\n10<|im_end|>"]
    # The second prompt holds the first turn as inference renders history: without its thinking.
    assert "Two plus three" not in tok.decode(train[1]["input_ids"][: trained_runs(train[1])[0][0]])


def test_reasoning_a_template_does_not_read_is_reported(smol_tokenizer, tmp_path):
    tok = family_tokenizer(smol_tokenizer, FAMILIES["chatml"])
    rows = [{"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5", "reasoning": "Two plus three is five."}]}]
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "r.jsonl", rows))], template=str(TEMPLATES / "chatml.jinja"))
    with pytest.raises(TemplateError, match=r"the reasoning messages\[1\] \('Two plus three is five.'\) is not in the rendered text"):
        prepare_data(cfg, tok, template_for(cfg, tok), seed=0)


@pytest.mark.parametrize("name, shown", [("llama-3.2", "Today Date: 02 Jan 2025"), ("smollm3", "Today Date: 02 January 2025")])
def test_a_date_the_template_writes_is_frozen_into_the_run_template(name, shown, smol_tokenizer, tmp_path):
    tok = family_tokenizer(smol_tokenizer, FAMILIES[name])
    template = resolve_template(str(TEMPLATES / f"{name}.jinja"), tok, today=datetime.date(2025, 1, 2))
    assert template.frozen_date == "2025-01-02" and "strftime_now(" not in template.source
    messages = [{"role": "user", "content": "Hi"}]
    assert shown in template.render(tok, messages, add_generation_prompt=True)
    template.save(tmp_path / "template.json")
    served = type(template).load(tmp_path / "template.json")  # another day, another process: the same prompt
    assert served.render(tok, messages, add_generation_prompt=True) == template.render(tok, messages, add_generation_prompt=True)
    install_template(template, tok)  # plain transformers users of the saved tokenizer get it too
    assert shown in tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_the_preflight_says_where_stop_tokens_come_from(smol_tokenizer, tmp_path):
    family = FAMILIES["chatml-base-eos"]
    tok = family_tokenizer(smol_tokenizer, family)
    cfg = DataConfig(train=[chats_file(tmp_path, [conversation(family, EXCHANGES[0])])], template=str(TEMPLATES / "chatml.jinja"))
    template = template_for(cfg, tok)
    assert template.stop_token_ids == sorted([tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")])
    _, _, report = prepare_data(cfg, tok, template, seed=0)
    text = render_markdown(report)
    assert "stop tokens: <|endoftext|> (EOS), <|im_end|> (ends assistant turns in the template)" in text
    assert "assistant replies end with '<|im_end|>\\n': trained through <|im_end|>" in text
    assert json.loads(json.dumps(report.to_dict()))["template_notes"] == report.template_notes


def test_qwen3_re_spacing_think_in_the_content_is_not_a_drop(smol_tokenizer, tmp_path):
    # Qwen3 reads <think>...</think> out of the content and writes it back re-spaced: nothing is lost, so
    # the template's own rendering is trained, not a rebuilt reply.
    tok = family_tokenizer(smol_tokenizer, FAMILIES["qwen3"])
    rows = [{"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "<think>Two plus three.</think>5"}]}]
    cfg = DataConfig(train=[str(write_jsonl(tmp_path / "r.jsonl", rows))], template=str(TEMPLATES / "qwen3.jinja"))
    [row], _, report = prepare_data(cfg, tok, template_for(cfg, tok), seed=0)
    [(a, b)] = trained_runs(row)
    assert tok.decode(row["input_ids"][a:b]) == "<think>\nTwo plus three.\n</think>\n\n5<|im_end|>"
    assert report.train.rebuilt == 0


def test_a_template_that_refuses_system_messages_points_to_merge(smol_tokenizer, tmp_path):
    message = refusal(*family_data(smol_tokenizer, tmp_path, "gemma"))
    assert "chats.jsonl:1: template" in message and "cannot render this conversation: System role not supported" in message
    assert "data.system_prompt_mode: merge" in message
