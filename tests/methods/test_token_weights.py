"""train.token_weights: the logged loss is the weighted cross-entropy computed by hand, whichever loss path and
batching compute it, and the preflight shows what is weighted."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from tunesmith.config import validate
from tunesmith.data.prepare import prepare_data
from tunesmith.data.templates import resolve_template
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.methods import sft

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Korea", "Seoul"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]


@pytest.fixture(scope="module")
def weighted_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "capitals.jsonl"
    rows = [{"question": f"Capital of {c}?", "answer": f"The capital of {c} is {a}, {a} in {k + 2} words.", "w": 0.5 + k % 3}
            for k, (c, a) in enumerate(CAPITALS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def recipe(model, data_file, out, weights, **train):
    return validate({
        "name": "w",
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": str(data_file), "max_length": 128, "template": "chatml"},
        "peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 1, "lr": 1e-2, "warmup": 0, "scheduler": "constant", "logging_steps": 1, "save_steps": 5,
                  "token_weights": weights, **train},
        "output_dir": str(out),
    })


def by_hand(model_path, r, weigh, model=None) -> float:
    """sum(w * ce) / sum(w) over every trained token of every example, each example run alone through the base
    model (LoRA starts as the identity), or through `model`; weigh(ids, labels, k) gives example k's weight per token."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows, _, _ = prepare_data(r.data, tokenizer, resolve_template("chatml", tokenizer), seed=r.train.seed)
    model = model or AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    total = weight = 0.0
    with torch.no_grad():
        for k, row in enumerate(rows):
            ids = torch.tensor([row["input_ids"]])
            logprobs = model(input_ids=ids).logits[0, -len(ids[0]):-1].log_softmax(-1)  # prompt tuning's begin with its virtual tokens'
            w = weigh(row["input_ids"], row["labels"], int(row["where"].rsplit(":", 1)[1]) - 1)
            for t in range(1, len(ids[0])):
                if row["labels"][t] != -100:
                    total += -logprobs[t - 1, row["labels"][t]].item() * w[t]
                    weight += w[t]
    return total / weight


def word_weights(tokenizer, word, up):
    """up where the ids of " word" (SentencePiece writes the space) occur among trained labels, else 1. In this
    data every match is a whole word after a space, where these ids are exactly the tokens that overlap the word."""
    seqs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (word, " " + word)]

    def weigh(ids, labels, k):
        w = [1.0] * len(ids)
        for seq in seqs:
            for at in range(len(ids) - len(seq) + 1):
                if ids[at : at + len(seq)] == seq and -100 not in labels[at : at + len(seq)]:
                    w[at : at + len(seq)] = [up] * len(seq)
        return w

    return weigh


def first_loss(run):
    return next(r["loss"] for r in run.metrics() if "loss" in r)


@pytest.mark.parametrize("train", [{"max_tokens_per_batch": 4096}, {"packing": False, "group_by_length": False, "batch_size": 8}, {"max_tokens_per_batch": 200, "grad_accum": 8}],
                         ids=["one-packed-row", "one-padded-batch", "packed-rows-accumulated"])
def test_the_logged_loss_is_the_hand_computed_weighted_cross_entropy(stories_path, weighted_file, tmp_path, train):
    weights = {"words": ["Seoul", "capital of"], "weight": 3.0, "column": "w"}
    r = recipe(stories_path, weighted_file, tmp_path / "run", weights, **train)
    run = sft.train(r)
    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    seoul, capital = word_weights(tokenizer, "Seoul", 3.0), word_weights(tokenizer, "capital of", 3.0)
    column = [0.5 + k % 3 for k in range(len(CAPITALS))]

    def weigh(ids, labels, k):
        return [column[k] * max(a, b) for a, b in zip(seoul(ids, labels, k), capital(ids, labels, k))]

    expected = by_hand(stories_path, r, weigh)
    assert first_loss(run) == pytest.approx(expected, abs=1e-5)
    unweighted = by_hand(stories_path, r, lambda ids, labels, k: [1.0] * len(ids))
    assert abs(expected - unweighted) > 1e-3  # the weights changed the loss: the test sees them

    report = json.loads((run.path / "data_report.json").read_text())["token_weights"]
    assert report["words"]["Seoul"] == 2 and report["words"]["capital of"] == len(CAPITALS)
    assert report["share"] == 1.0  # every row's weight is not 1 (0.5, 1.5, 2.5 times the words' 3)
    text = (run.path / "data_report.md").read_text()
    assert "## Token weights" in text and "⟪" in text


def test_the_models_own_logits_give_the_same_weighted_loss(stories_path, weighted_file, tmp_path, monkeypatch):
    weights = {"regex": r"[A-Z][a-z]+", "weight": 4.0}
    chunked = sft.train(recipe(stories_path, weighted_file, tmp_path / "chunked", weights, max_tokens_per_batch=4096))
    monkeypatch.setattr(sft.lm_loss, "add_chunked_loss", lambda model: "planted")
    own = sft.train(recipe(stories_path, weighted_file, tmp_path / "own", weights, max_tokens_per_batch=4096))
    assert first_loss(own) == pytest.approx(first_loss(chunked), abs=1e-5)
    report = json.loads((own.path / "data_report.json").read_text())["token_weights"]
    assert 0 < report["share"] < 1
    # The capitalised words of the first example's reply, and nothing else, are marked.
    marked = report["first_example"]
    assert "⟪The⟫×4" in marked.replace(" ", "") or "⟪▁The⟫×4" in marked


def test_a_regex_weighs_the_tokens_that_overlap_its_matches(smol_tokenizer):
    from tunesmith.config import TokenWeights
    from tunesmith.data.token_weights import weigh_rows

    text = "Answer: 1234 apples"
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = [-100, -100] + ids[2:]  # "Answer:" untrained
    row = {"input_ids": ids, "labels": labels, "where": "x.jsonl:1"}
    weigh_rows(TokenWeights(regex=r"\d+", weight=5.0), smol_tokenizer, [], [row])
    pieces = [smol_tokenizer.decode([i]) for i in ids]
    digits = [k for k, p in enumerate(pieces) if any(c.isdigit() for c in p)]
    assert digits and all(row["weights"][k] == 5.0 for k in digits)
    assert [w for k, w in enumerate(row["weights"]) if k not in digits] == [0.0, 0.0] + [1.0] * (len(ids) - 2 - len(digits))


def test_a_row_without_a_weight_in_the_column_is_refused_with_its_line(stories_path, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "a?", "answer": "b", "w": 1}) + "\n" + json.dumps({"question": "c?", "answer": "d"}) + "\n")
    with pytest.raises(TunesmithError, match=r"d.jsonl:2: w: train.token_weights.column: expected a number >= 0, found None"):
        sft.train(recipe(stories_path, data, tmp_path / "run", {"column": "w"}))


@pytest.mark.parametrize("weights, message", [
    ({}, "train.token_weights: give words, regex or column"),
    ({"regex": "("}, "is not a valid regular expression"),
    ({"regex": "x*"}, "matches the empty string"),
    ({"column": "w", "weight": 3.0}, "train.token_weights.weight: applies to the tokens words or regex match"),
    ({"words": ["Seoul", " refund"]}, "train.token_weights.words: ' refund' begins or ends with white space"),  # would miss it at a reply's start
])
def test_token_weights_that_weigh_nothing_are_refused(weights, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        recipe("m", "d.jsonl", tmp_path, weights)


def test_token_weights_belong_to_sft(tmp_path):
    with pytest.raises(ConfigError, match="train.token_weights: weighs the sft loss, but method is 'dpo'"):
        validate({"name": "w", "method": "dpo", "model": {"path": "m"}, "data": {"train": "d.jsonl"},
                  "train": {"token_weights": {"words": ["x"]}}, "output_dir": str(tmp_path)})


def test_compile_belongs_to_sft_and_reaches_the_trainer(stories_path, weighted_file, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="train.compile: applies to method sft for now, but method is 'dpo'"):
        validate({"name": "w", "method": "dpo", "model": {"path": "m"}, "data": {"train": "d.jsonl"},
                  "train": {"compile": True}, "output_dir": str(tmp_path)})
    class Built(Exception):
        pass

    def fit(trainer, s):  # the trainer is built; training itself (compiling on CPU) takes minutes
        raise Built(trainer.args.torch_compile)

    monkeypatch.setattr(sft, "fit", fit)
    with pytest.raises(Built) as built:
        sft.train(recipe(stories_path, weighted_file, tmp_path / "run", {"words": ["Seoul"]}, compile=True))
    assert built.value.args == (True,)


def test_the_multi_process_filler_carries_a_zero_weight_beside_weighted_rows():
    from tunesmith.data.batching import Collator, batches_dataset
    from tunesmith.methods.sft import filler_like

    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "weights": [0.0, 2.0, 1.0]}]
    data = batches_dataset([*rows, filler_like(rows)], [[0], [1]])
    packed = Collator(pad_token_id=0, packed=True)([data[1]])
    assert packed["weights"].tolist() == [[0.0]] and packed["labels"].tolist() == [[-100]]
    assert "weights" not in filler_like([{"input_ids": [5], "labels": [5]}])


def weighted_runs(tokenizer, prompt, reply, **weights):
    """The texts of the runs of up-weighted tokens when `reply` (trained) follows `prompt` (untrained)."""
    from tunesmith.config import TokenWeights
    from tunesmith.data.token_weights import weigh_rows

    enc = tokenizer(prompt + reply, add_special_tokens=False, return_offsets_mapping=True)  # one text, as a template renders it
    ids, labels = enc["input_ids"], [t if a >= len(prompt) else -100 for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
    row = {"input_ids": ids, "labels": labels, "where": "x.jsonl:1"}
    report = weigh_rows(TokenWeights(**weights), tokenizer, [], [row])
    runs, run = [], []
    for token, w in zip(row["input_ids"], row["weights"]):
        if w > 1:
            run.append(token)
        elif run:
            runs, run = [*runs, tokenizer.decode(run).strip()], []
    return runs + ([tokenizer.decode(run).strip()] if run else []), report


@pytest.mark.parametrize("tokenizer", ["smollm2", "stories260K"])
@pytest.mark.parametrize("prompt, reply, words, expected", [
    # At the start of a reply: SentencePiece writes no space there, so " Seoul"'s tokens were not found.
    ("Capital?\n", "Seoul is the capital. We love Seoul.", ["Seoul"], ["Seoul", "Seoul"]),
    ("Q\n", "(Seoul) is it.", ["Seoul"], ["Seoul"]),
    # Inside a longer word: not that word ("ref"+"und" matched in "nonrefundable", "▁c"+"at" in "catalog").
    ("Q\n", "It is nonrefundable, ask for a refund.", ["refund"], ["refund"]),
    ("Q\n", "The catalog lists one cat.", ["cat"], ["cat"]),
    ("Q\n", "See the refund policy, not the refund.", ["refund policy"], ["refund policy"]),
    # Korean: a word with its particles; in the prompt too, but only the reply trains.
    ("서울에 대해 알려 주세요\n", "서울에서 만나요. 서울은 크다. 불서울", ["서울"], ["서울", "서울"]),
    ("Q\n", "환불해 주세요. 환불 정책은 7일입니다.", ["환불 정책"], ["환불 정책"]),
    # Written without spaces: anywhere.
    ("Q\n", "私は東京に行きます。", ["東京"], ["東京"]),
], ids=["reply-start", "punctuation", "inside-a-word", "prefix-of-a-word", "phrase", "korean-particles", "korean-phrase", "japanese"])
def test_words_are_whole_words_of_the_trained_text_whatever_the_tokenizer(tokenizer, prompt, reply, words, expected, smol_tokenizer, stories_path):
    tok = smol_tokenizer if tokenizer == "smollm2" else AutoTokenizer.from_pretrained(stories_path)
    runs, report = weighted_runs(tok, prompt, reply, words=words, weight=3.0)
    assert runs == expected
    assert report["words"] == {words[0]: len(expected)}


def test_every_byte_token_of_a_korean_word_is_weighted(smol_tokenizer):
    """Byte-level BPE spells 서울 in six tokens, none a whole character: all six are weighted, nothing else."""
    runs, report = weighted_runs(smol_tokenizer, "Q\n", "서울에서 만나요.", words=["서울"], weight=3.0)
    assert runs == ["서울"] and report["weighted_tokens"] == len(smol_tokenizer("서울", add_special_tokens=False)["input_ids"])


def test_a_step_of_rows_that_all_weigh_0_trains_nothing_and_does_not_stop_the_run(stories_path, tmp_path):
    """Seven rows of weight 0 and one of 1, four rows a step: one of the first two steps has nothing to learn. Its
    loss was 0/0, NaN, and the run stopped as 'diverged'."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"Capital of {c}?", "answer": f"It is {a}.", "w": int(k == 0)}) + "\n"
                            for k, (c, a) in enumerate(CAPITALS)))
    run = sft.train(recipe(stories_path, data, tmp_path / "run", {"column": "w"}, max_steps=2, packing=False, group_by_length=False, batch_size=4))
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert sorted(losses)[0] == 0.0 and sorted(losses)[1] > 0  # the empty step, and the step with the row of weight 1
    assert "7 training rows have weight 0 in the column: they train nothing" in (run.path / "data_report.md").read_text()


def test_rows_that_all_weigh_0_are_refused(stories_path, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": "a?", "answer": "b", "w": 0}) + "\n" for _ in range(3)))
    with pytest.raises(ConfigError, match="train.token_weights.column: every training row has weight 0 in column 'w', so nothing would train"):
        sft.train(recipe(stories_path, data, tmp_path / "run", {"column": "w"}))


def test_byte_tokens_are_weighted_when_the_span_does_not_tokenise_back(stories_path):
    """stories260K spells 서울 in byte tokens; a span that begins after the untrained '▁' decodes to a text that does
    not tokenise back to it, and the offsets come from decoding token by token: every byte of a character holds it
    (the first two bytes of each held nothing, and were not weighted)."""
    from tunesmith.config import TokenWeights
    from tunesmith.data.token_weights import weigh_rows

    tok = AutoTokenizer.from_pretrained(stories_path)
    ids = tok("The 서울", add_special_tokens=False)["input_ids"]
    start = ids.index(tok.convert_tokens_to_ids("<0xEC>"))
    row = {"input_ids": ids, "labels": [-100] * start + ids[start:], "where": "x.jsonl:1"}
    assert tok(tok.decode(ids[start:]), add_special_tokens=False)["input_ids"] != ids[start:]  # the fallback path
    for weights in ({"regex": "서울"}, {"words": ["서울"]}):
        weigh_rows(TokenWeights(**weights, weight=3.0), tok, [], [row])
        assert row["weights"] == [0.0] * start + [3.0] * 6


def test_a_weight_column_of_a_csv_file_is_read_as_numbers(stories_path, tmp_path):
    """Every CSV cell is text: '2.5' was refused as not a number, so no CSV file could carry weights."""
    data = tmp_path / "d.csv"
    data.write_text("question,answer,w\nCapital of France?,Paris,2.5\nCapital of Peru?,Lima,0.5\n", encoding="utf-8")
    run = sft.train(recipe(stories_path, data, tmp_path / "run", {"column": "w"}))
    assert json.loads((run.path / "data_report.json").read_text())["token_weights"]["share"] == 1.0  # every trained token weighs 2.5 or 0.5
    data.write_text("question,answer,w\nCapital of France?,Paris,2.5\nCapital of Peru?,Lima,heavy\n", encoding="utf-8")
    with pytest.raises(TunesmithError, match=r"d.csv:3: w: train.token_weights.column: expected a number >= 0, found 'heavy'"):
        sft.train(recipe(stories_path, data, tmp_path / "again", {"column": "w"}))


class ModelAtStart(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import copy

        self.model = copy.deepcopy(model).eval()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-loss", "models-own-logits"])
def test_prompt_tuning_weighs_the_tokens_after_its_virtual_tokens(stories_path, weighted_file, tmp_path, monkeypatch, chunked):
    """PEFT puts the virtual tokens before the labels, not before the weights: step 1 stopped with an IndexError."""
    if not chunked:
        monkeypatch.setattr(sft.lm_loss, "add_chunked_loss", lambda model: "planted")
    r = recipe(stories_path, weighted_file, tmp_path / "run", {"words": ["Seoul"], "weight": 3.0}, packing=False, group_by_length=False, batch_size=8)
    r = r.model_copy(update={"peft": r.peft.model_validate({"method": "prompt", "num_virtual_tokens": 4})})
    start = ModelAtStart()
    run = sft.train(r, callbacks=[start])
    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    expected = by_hand(stories_path, r, word_weights(tokenizer, "Seoul", 3.0), model=start.model)
    assert first_loss(run) == pytest.approx(expected, abs=1e-5)
