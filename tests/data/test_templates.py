import json

import pytest

from tunesmith.data.masks import tokenize_conversation, tokenize_text
from tunesmith.data.templates import ChatTemplate, TemplateError, prompt_ids, resolve_template

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "안녕하세요?"},
    {"role": "assistant", "content": "네, 안녕하세요."},
]


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_multiturn_mask_trains_exactly_the_assistant_turns_and_their_eos(smol_tokenizer):
    tok = smol_tokenizer
    template = resolve_template("model", tok)
    # Built independently from the chatml pieces: (text, trained?). The newline after <|im_end|> is never
    # generated (generation stops at <|im_end|>), so it is not trained.
    pieces = [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello!<|im_end|>", True),
        ("\n<|im_start|>user\n안녕하세요?<|im_end|>\n<|im_start|>assistant\n", False),
        ("네, 안녕하세요.<|im_end|>", True),
        ("\n", False),
    ]
    expected_ids, expected_labels = [], []
    for text, trained in pieces:
        piece = ids(tok, text)
        expected_ids += piece
        expected_labels += piece if trained else [-100] * len(piece)

    result = tokenize_conversation(template, tok, CONVERSATION)

    assert result.input_ids == expected_ids
    assert result.labels == expected_labels
    assert result.problem is None
    eos = tok.eos_token_id
    assert eos == tok.pad_token_id  # SmolLM2: the case where masking padding by id would erase EOS
    assert [label for label in result.labels if label == eos] == [eos, eos]  # one per assistant turn
    assert template.stop_token_ids == [eos]


def test_train_on_prompt_trains_every_token(smol_tokenizer):
    template = resolve_template("model", smol_tokenizer)
    result = tokenize_conversation(template, smol_tokenizer, CONVERSATION, train_on_prompt=True)
    assert result.labels == result.input_ids


def test_eos_survives_collation_when_pad_equals_eos(smol_tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    template = resolve_template("model", smol_tokenizer)
    short = tokenize_conversation(template, smol_tokenizer, CONVERSATION[:3])
    long = tokenize_conversation(template, smol_tokenizer, CONVERSATION)
    batch = DataCollatorForLanguageModeling(pad_token_id=smol_tokenizer.pad_token_id)(
        [{"input_ids": r.input_ids, "labels": r.labels} for r in (short, long)]
    )
    n = len(short.input_ids)
    assert batch["labels"][0, :n].tolist() == short.labels  # its EOS (== pad id) is still a label
    assert (batch["labels"][0, n:] == -100).all()  # padding, also id 2, is not
    assert batch["input_ids"][0, n:].eq(smol_tokenizer.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(long.input_ids) - n)


def test_prompt_ids_are_the_training_prefix(smol_tokenizer):
    template = resolve_template("model", smol_tokenizer)
    result = tokenize_conversation(template, smol_tokenizer, CONVERSATION)
    first_trained = result.spans[0][0]
    assert prompt_ids(template, smol_tokenizer, CONVERSATION[:2]) == result.input_ids[:first_trained]


def test_chatml_on_a_tokenizer_without_im_end_ends_turns_with_eos(stories_tokenizer):
    tok = stories_tokenizer
    template = resolve_template("chatml", tok)
    assert template.stop_token_ids == [tok.eos_token_id]
    assert template.stop_texts == ["<|im_end|>"]  # marker text: every engine cuts replies there
    result = tokenize_conversation(template, tok, CONVERSATION)
    assert result.input_ids[0] == tok.bos_token_id  # this tokenizer uses BOS; the template writes it
    for start, end in result.spans:
        assert result.labels[end - 1] == tok.eos_token_id or tok.eos_token_id in result.labels[start:end]
    assert sum(label == tok.eos_token_id for label in result.labels) == 2


def test_chatml_uses_the_real_im_end_token_when_there_is_one(smol_tokenizer):
    template = resolve_template("chatml", smol_tokenizer)
    assert "<|im_end|><|im_end|>" not in template.render(smol_tokenizer, CONVERSATION)
    assert template.stop_token_ids == [smol_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_alpaca_template_renders_instruction_blocks(stories_tokenizer):
    template = resolve_template("alpaca", stories_tokenizer)
    text = template.render(stories_tokenizer, [{"role": "user", "content": "Add 2 and 2."}, {"role": "assistant", "content": "4"}])
    assert text == "<s>Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd 2 and 2.\n\n### Response:\n4</s>\n\n"
    result = tokenize_conversation(template, stories_tokenizer, [{"role": "user", "content": "Add 2 and 2."}, {"role": "assistant", "content": "4"}])
    assert result.problem is None
    assert stories_tokenizer.decode([label for label in result.labels if label != -100]).startswith("4")


def test_model_template_missing_is_a_clear_error(stories_tokenizer):
    with pytest.raises(TemplateError, match="no chat template"):
        resolve_template("model", stories_tokenizer)


def test_custom_jinja_file(tmp_path, smol_tokenizer):
    path = tmp_path / "t.jinja"
    path.write_text(
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\nA:' }}"
        "{% else %}{{ m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
    )
    template = resolve_template(str(path), smol_tokenizer)
    result = tokenize_conversation(template, smol_tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " yo"}])
    assert smol_tokenizer.decode([x for x in result.labels if x != -100]) == " yo<|im_end|>"


def test_template_that_renders_turns_differently_from_the_prompt_is_rejected(smol_tokenizer):
    # The generation prompt says "assistant\n" but finished turns are written "assistant: ".
    source = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] }}{% if m['role'] == 'assistant' %}{{ ': ' }}"
        "{% else %}{{ '\\n' }}{% endif %}{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    template = ChatTemplate(name="planted", source=source, stop_token_ids=[2])
    result = tokenize_conversation(template, smol_tokenizer, CONVERSATION[1:5])
    assert result.problem.kind == "inconsistent"
    assert result.problem.detail.startswith("assistant turn messages[1]: the prompt at inference reads")
    assert "<|im_start|>assistant\\n' where the finished turn reads" in result.problem.detail
    assert "<|im_start|>assistant: Hello!" in result.problem.detail


def test_prompt_ending_in_a_space_fails_the_token_prefix_check(smol_tokenizer):
    # Text-level prefix holds, but "A: " + "Paris" tokenises as "A:" + " Paris" in training,
    # while the inference prompt ends with a lone " " token: train/serve skew the check must catch.
    source = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\nA: ' }}"
        "{% else %}{{ m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
    )
    template = ChatTemplate(name="planted", source=source, stop_token_ids=[2])
    result = tokenize_conversation(
        template, smol_tokenizer, [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    )
    assert result.problem.kind == "prefix"
    assert "ends in tokens '\\n' 'A' ':' ' ', but training has '\\n' 'A' ':' ' Paris'" in result.problem.detail


def test_plain_text_gets_bos_and_eos(stories_tokenizer, smol_tokenizer):
    stories = tokenize_text(resolve_template("alpaca", stories_tokenizer), stories_tokenizer, "Once upon a time")
    assert stories.input_ids[0] == stories_tokenizer.bos_token_id and stories.input_ids[-1] == stories_tokenizer.eos_token_id
    assert stories.labels == stories.input_ids
    smol = tokenize_text(resolve_template("model", smol_tokenizer), smol_tokenizer, "Once upon a time")
    assert smol.input_ids == ids(smol_tokenizer, "Once upon a time") + [smol_tokenizer.eos_token_id]


def test_template_round_trips_through_json(tmp_path, smol_tokenizer):
    template = resolve_template("model", smol_tokenizer, generation_eos=[2, 7])
    assert template.stop_token_ids == [2, 7]
    template.save(tmp_path / "template.json")
    assert ChatTemplate.load(tmp_path / "template.json") == template


def test_context_turns_before_trained_from_are_not_trained(smol_tokenizer):
    # A prompt-completion row whose prompt holds an earlier exchange: only the completion is trained.
    template = resolve_template("model", smol_tokenizer)
    result = tokenize_conversation(template, smol_tokenizer, CONVERSATION, trained_from=4)
    trained = smol_tokenizer.decode([x for x in result.labels if x != -100])
    assert trained == "네, 안녕하세요.<|im_end|>"
    assert len(result.spans) == 1


def test_a_template_json_written_before_the_turn_analysis_still_loads(tmp_path):
    old = {"name": "model", "source": "{{ messages[0]['content'] }}", "stop_token_ids": [2], "bos_text": "", "eos_text": "<|im_end|>"}
    (tmp_path / "template.json").write_text(json.dumps(old))
    template = ChatTemplate.load(tmp_path / "template.json")
    assert (template.stop_token_ids, template.stop_texts, template.turn_end, template.frozen_date) == ([2], [], None, None)
