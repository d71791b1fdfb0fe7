"""GLiNER through the `gliner` library: loaded from a hub id or a local folder, run in batches on the model's
device (a GPU when there is one), and a text longer than the model's window labelled window by window, never cut.

    ner = Gliner.load("urchade/gliner_multi-v2.1")
    ner(["김민수 님이 갤럭시 S24를 주문했어요"], ["person", "product"], threshold=0.5, batch_size=8)
    # [[{"start": 0, "end": 3, "text": "김민수", "label": "person", "score": 0.93}, ...]]

A GLiNER model reads at most config.max_len words (384 for the v2.1 models) behind a prompt of the labels,
and its encoder a bounded number of subword tokens; gliner itself cuts a longer text with a warning at most.
Here a text is split into windows of whole words that fit both, overlapping by the widest entity the model
finds (config.max_width words), so that every entity lies whole in some window; the entities of overlapping
windows are merged as GLiNER's flat decoding merges spans: highest score first, no two overlapping.
Offsets are characters of the text given, and `text` is always `text[start:end]`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tunesmith.curate.seq2seq import not_loaded
from tunesmith.errors import TunesmithError

DEFAULT_MODEL = "urchade/gliner_multi-v2.1"   # multilingual, Korean included
UNBOUNDED = 100_000  # a tokenizer's model_max_length above this means "no limit set"


@dataclass
class Gliner:
    model: object
    name: str
    split: int = 0      # texts that took more than one window, for the report

    @classmethod
    def load(cls, name: str) -> Gliner:
        import torch
        from gliner import GLiNER

        try:
            model = GLiNER.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise not_loaded(name, err, "GLiNER model") from None
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        return cls(model, name)

    def __call__(self, texts: list[str], labels: list[str], threshold: float, batch_size: int) -> list[list[dict]]:
        """The entities of each text, sorted by start."""
        spans = [(i, start, end) for i, text in enumerate(texts) for start, end in self.windows(text, labels)]
        self.split += sum(1 for n in Counter(i for i, _, _ in spans).values() if n > 1)
        found = self.model.inference([texts[i][s:e] for i, s, e in spans], labels, threshold=threshold, batch_size=batch_size) if spans else []
        entities = [[] for _ in texts]
        for (i, offset, _), window in zip(spans, found):
            for e in window:
                start, end = offset + e["start"], offset + e["end"]
                entities[i].append({"start": start, "end": end, "text": texts[i][start:end], "label": e["label"], "score": round(float(e["score"]), 4)})
        return [flat(found) for found in entities]

    def windows(self, text: str, labels: list[str]) -> list[tuple[int, int]]:
        """(start, end) character spans of whole words that the model reads uncut, overlapping by max_width words."""
        processor, config = self.model.data_processor, self.model.config
        tokenizer = processor.transformer_tokenizer
        words = [(start, end) for _, start, end in processor.words_splitter(text)]
        if not words:
            return []
        prompt, _ = processor.prepare_inputs([[]], labels)
        limit = min(tokenizer.model_max_length if tokenizer.model_max_length < UNBOUNDED else UNBOUNDED,
                    config.encoder_config.max_position_embeddings)
        room = limit - len(tokenizer(prompt[0], is_split_into_words=True)["input_ids"])
        if room <= 0:
            raise TunesmithError(f"{self.name}: the labels alone fill the model's {limit} tokens; give fewer or shorter labels")
        pieces = [len(ids) for ids in tokenizer([text[s:e] for s, e in words], add_special_tokens=False)["input_ids"]]
        spans, first = [], 0
        while True:
            last, used = first, 0
            while last < len(words) and last - first < config.max_len and used + pieces[last] <= room:
                used += pieces[last]
                last += 1
            last = max(last, first + 1)  # a single word longer than the window still goes alone
            spans.append((words[first][0], words[last - 1][1]))
            if last == len(words):
                return spans
            first = max(last - config.max_width, first + 1)


def flat(entities: list[dict]) -> list[dict]:
    """No two entities overlapping: the higher score wins (as GLiNER's flat_ner decoding), then sorted by start."""
    kept = []
    for e in sorted(entities, key=lambda e: (-e["score"], e["start"], e["end"])):
        if all(e["end"] <= k["start"] or k["end"] <= e["start"] for k in kept):
            kept.append(e)
    return sorted(kept, key=lambda e: (e["start"], e["end"]))
