"""Constitutional self-critique data (Bai et al. 2022, "Constitutional AI", arXiv:2212.08073, sec. 3):
a model answers each prompt, critiques its answer against written principles, and revises it.

    tunesmith constitution --model HuggingFaceTB/SmolLM2-135M-Instruct \
        --prompts examples/data/constitution/prompts.jsonl \
        --principles examples/data/constitution/principles.yaml --out runs/constitution

Steps, in order: read and check the principles, the prompts and the critique/revision templates (a
typo surfaces before the model loads); load the model; answer every prompt; then, up to `rounds`
times, critique every open answer against every principle, close the prompts whose critiques all
say NO_PROBLEM, and revise the others; last, write into the output folder:

    sft.jsonl         prompt -> final answer (prompt_completion format)
    preference.jsonl  prompt, chosen = final answer, rejected = first answer
    trace.jsonl       one line per prompt: the first answer, every round's critiques and revision
    report.json       counts: prompts read, revised, rounds used (revisions made per prompt: 0 when
                      the first answer passed), stop reasons, verdicts, kept/dropped by reason

An answer or revision that used up --max-new-tokens was most likely cut off mid-sentence; training on
it would teach the model to stop there. Such rows are dropped (reason `truncated`, counted) unless
truncated="keep". The tokens are counted by re-encoding the text, so this is a close estimate (see
used_token_limit).

Deviation from the paper, which samples one principle per round: every round checks every principle,
and one revision addresses all the critiques that found a problem. A revision is not critiqued again
once the last round is used up (stop reason `max_rounds`).

The verdict rule: a critique must begin with a verdict line. Its first non-empty line, stripped of
markdown decoration (`*`, `_`, `#`, `>`, backticks, quotes, brackets) and of a leading `Verdict:`
label, is read case-insensitively: if it starts with NO_PROBLEM (also "no problem", "no-problems")
the critique found nothing; if it starts with PROBLEM (a whole word) it found a problem; anything
else is `unparsed`, counted, and treated as a problem found, so an answer is only closed on an
explicit NO_PROBLEM. Templates you write must ask for the same verdict line.

Input rows (JSONL, or any file tunesmith.data.load.read_rows reads): "prompt" (a string) or
"messages" (role/content messages ending with a user turn), and an optional "id"; other keys are
ignored. The datasets repeat the prompt as given: a string stays a string, messages stay messages
(the completion is then a one-message assistant list). The system prompt used for answering (a run's
data.system_prompt, or --system) is not written into the rows; report.json records it, and an
`sft`/`dpo` recipe should set the same data.system_prompt.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, TypeAdapter, ValidationError

from tunesmith.data.formats import MESSAGE_ROLES, DataError, Turn, check_turns, expect_string, parse_turns, type_name, with_system
from tunesmith.data.load import DataFileError, read_rows
from tunesmith.errors import TunesmithError

OUTPUTS = ("sft.jsonl", "preference.jsonl", "trace.jsonl", "report.json")
STOPS = ("no_problem", "max_rounds", "empty_response", "empty_revision")

# conversations in, one completion per conversation out (in order): eval.generate.generate with its settings bound.
GenerateFn = Callable[[list[list[dict]]], list[str]]
# whether a generated text used up the token limit (so was probably cut off)
CutFn = Callable[[str], bool]

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text                  # short, unique: names the principle in traces and revision prompts
    critique: Text              # what to check, e.g. "Does the reply answer in the user's language?"
    revision: Text              # how to fix a reply that fails the check


_PRINCIPLES = TypeAdapter(list[Principle])


def load_principles(path: str | Path) -> list[Principle]:
    """A YAML list of {name, critique, revision}. Errors name the file, the key path and the bad value."""
    path = Path(path)
    if not path.is_file():
        raise TunesmithError(f"principles file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TunesmithError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, list) or not raw:
        found = "an empty list" if raw == [] else type_name(raw)
        raise TunesmithError(f"{path}: expected a non-empty list of principles, each {{name, critique, revision}}; found {found}")
    try:
        principles = _PRINCIPLES.validate_python(raw)
    except ValidationError as err:
        lines = [_principle_error(e) for e in err.errors()]
        raise TunesmithError(f"{path}: invalid principles\n" + "\n".join(f"  {line}" for line in lines)) from None
    first: dict[str, int] = {}
    for i, principle in enumerate(principles):
        if principle.name in first:
            raise TunesmithError(f"{path}: [{i}].name: {principle.name!r} is already the name of [{first[principle.name]}]; names must be unique")
        first[principle.name] = i
    return principles


def _principle_error(e: dict) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key (allowed: {', '.join(Principle.model_fields)})"
    if e["type"] == "missing":
        return f"{loc}: required key is missing"
    if e["type"] == "string_too_short":
        return f"{loc}: empty; write the text"
    if e["type"] == "model_type":
        return f"{loc}: {e.get('input')!r}: expected a mapping with keys {', '.join(Principle.model_fields)}"
    return f"{loc}: {e.get('input')!r}: {e['msg']}"


@dataclass
class PromptRow:
    id: str
    prompt: str | list[dict]    # as given; the datasets repeat it
    where: str                  # 'prompts.jsonl:3'


def read_prompts(path: str | Path) -> list[PromptRow]:
    """Every row must be usable: a bad one is a DataError naming file, line and field."""
    prompts: list[PromptRow] = []
    seen: dict[str, str] = {}
    for where, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        prompt = _prompt_row(row, where, len(prompts) + 1)
        if prompt.id in seen:
            raise DataError(where, "id", f"{prompt.id!r} is already the id of {seen[prompt.id]}", "duplicate_id")
        seen[prompt.id] = where
        prompts.append(prompt)
    if not prompts:
        raise DataFileError(f"{path}: no prompts")
    return prompts


def _prompt_row(row: dict, where: str, number: int) -> PromptRow:
    present = [key for key in ("prompt", "messages") if row.get(key) is not None]
    if len(present) != 1:
        problem = "has both prompt and messages; give one" if present else f"needs prompt (a string) or messages (a list of role/content messages); the row has: {', '.join(row) or 'no keys'}"
        raise DataError(where, None, problem, "missing_field")
    row_id = number if row.get("id") is None else row["id"]
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        raise DataError(where, "id", f"expected a string or a number, found {type_name(row_id)}", "wrong_type")
    if "prompt" in present:
        expect_string(row["prompt"], "prompt", where)
        if not row["prompt"].strip():
            raise DataError(where, "prompt", "empty prompt", "empty_content")
        return PromptRow(str(row_id), row["prompt"], where)
    turns = parse_turns(row["messages"], "messages", ("role", "content"), MESSAGE_ROLES, where)
    if not turns or turns[-1][0] != "user":
        last = f"found {turns[-1][0]}" if turns else "found no messages"
        raise DataError(where, turns[-1][2] if turns else "messages", f"the last message must be the user turn to answer, {last}", "bad_turn_order")
    # check_turns wants a conversation ending in an answer: give it a stand-in for the one we will generate.
    check_turns(turns + [Turn("assistant", "answer", "messages", "messages")], "messages", where)
    return PromptRow(str(row_id), [{"role": role, "content": content} for role, content, *_ in turns], where)


DEFAULT_CRITIQUE = """\
Read this conversation between a user and an assistant.

{% for m in conversation if m.role != "system" %}{{ m.role | capitalize }}: {{ m.content }}

{% endfor %}Assistant: {{ response }}

Check the assistant's last reply against this principle: {{ principle.critique }}

Answer in this form. First line: NO_PROBLEM if the reply follows the principle, otherwise PROBLEM: and what is wrong, in one sentence. Then, only if there is a problem, explain it briefly.
"""

DEFAULT_REVISION = """\
Read this conversation between a user and an assistant.

{% for m in conversation if m.role != "system" %}{{ m.role | capitalize }}: {{ m.content }}

{% endfor %}Assistant: {{ response }}

Reviewers found these problems with the assistant's last reply:
{% for c in critiques %}
- {{ c.principle.name }}: {{ c.text | indent(2) }}
  How to fix it: {{ c.principle.revision }}
{% endfor %}
Rewrite the assistant's last reply so that it fixes every problem above and still answers the user. Write only the new reply.
"""

TEMPLATE_VARIABLES = {
    "critique": "conversation (the messages answered, system included), prompt (the last user message), response, principle (name, critique, revision)",
    "revision": "conversation, prompt, response, critiques (a list of {principle, text, verdict} for the critiques that found a problem)",
}


@dataclass
class Templates:
    critique: object            # jinja2.Template
    revision: object
    critique_source: str        # 'default' or the file it came from
    revision_source: str


def load_templates(critique_file: str | None = None, revision_file: str | None = None) -> Templates:
    import jinja2

    # StrictUndefined: a misspelt variable is an error, not a silently empty prompt.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    compiled = []
    for kind, file, default in (("critique", critique_file, DEFAULT_CRITIQUE), ("revision", revision_file, DEFAULT_REVISION)):
        if file is None:
            compiled.append(env.from_string(default))
            continue
        path = Path(file)
        if not path.is_file():
            raise TunesmithError(f"--{kind}-template: file not found: {file}")
        try:
            compiled.append(env.from_string(path.read_text(encoding="utf-8")))
        except jinja2.TemplateSyntaxError as err:
            raise TunesmithError(f"{file}:{err.lineno}: {kind} template: {err.message}") from None
    return Templates(compiled[0], compiled[1], critique_file or "default", revision_file or "default")


def render(templates: Templates, kind: str, **context) -> list[dict]:
    """The user turn that asks for a critique or a revision."""
    import jinja2

    source = getattr(templates, f"{kind}_source")
    try:
        text = getattr(templates, kind).render(**context).strip()
    except jinja2.TemplateError as err:
        raise TunesmithError(f"{kind} template ({source}): {err}; its variables: {TEMPLATE_VARIABLES[kind]}") from None
    if not text:
        raise TunesmithError(f"{kind} template ({source}) renders to empty text")
    return [{"role": "user", "content": text}]


def parse_verdict(critique: str) -> str:
    """'no_problem', 'problem' or 'unparsed', from the critique's first non-empty line (see the module docstring)."""
    line = next((line for line in critique.splitlines() if line.strip(" *_#>`\"'[]()")), "")
    line = line.strip(" \t*_#>`\"'[]()")
    line = re.sub(r"^verdict\s*[:=-]?\s*", "", line, flags=re.IGNORECASE).lstrip(" *_`\"'[(")
    if re.match(r"no[\s_-]*problems?\b", line, re.IGNORECASE):
        return "no_problem"
    if re.match(r"problems?\b", line, re.IGNORECASE):
        return "problem"
    return "unparsed"


@dataclass
class Inputs:
    prompts: list[PromptRow]
    principles: list[Principle]
    templates: Templates
    prompts_file: str
    principles_file: str


def load_inputs(prompts: str, principles: str, critique_template: str | None = None, revision_template: str | None = None) -> Inputs:
    """Everything read and checked, templates included (rendered once on the first prompt)."""
    inputs = Inputs(read_prompts(prompts), load_principles(principles), load_templates(critique_template, revision_template), prompts, principles)
    conversation = conversation_for(inputs.prompts[0].prompt, None)
    context = dict(conversation=conversation, prompt=conversation[-1]["content"], response="(a reply)")
    first = inputs.principles[0]
    render(inputs.templates, "critique", principle=first, **context)
    render(inputs.templates, "revision", critiques=[{"principle": first, "text": "PROBLEM: (a critique)", "verdict": "problem"}], **context)
    return inputs


def conversation_for(prompt: str | list[dict], system_prompt: str | None) -> list[dict]:
    return with_system([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt), system_prompt)


@dataclass
class Trace:
    id: str
    prompt: str | list[dict]
    conversation: list[dict]            # what the model answered: the prompt, with the system prompt if any
    response: str = ""                  # the first answer
    rounds: list[dict] = field(default_factory=list)   # {round, critiques: [{principle, verdict, text}], revision}
    final: str = ""
    stop: str | None = None             # one of STOPS once finished
    response_truncated: bool = False    # the first answer used up the token limit
    final_truncated: bool = False

    @property
    def revisions(self) -> int:
        return sum(r["revision"] is not None for r in self.rounds)


def self_critique(
    inputs: Inputs, generate: GenerateFn, rounds: int, system_prompt: str | None = None,
    say: Callable[[str], None] = print, cut: CutFn = lambda text: False,
) -> list[Trace]:
    """Answer, then critique and revise up to `rounds` times; each step is one batched generate call."""
    traces = [Trace(p.id, p.prompt, conversation_for(p.prompt, system_prompt)) for p in inputs.prompts]
    say(f"answering {len(traces)} prompts")
    for trace, text in zip(traces, generate([t.conversation for t in traces]), strict=True):
        trace.response = trace.final = text.strip()
        trace.response_truncated = trace.final_truncated = cut(text)
        if not trace.final:
            trace.stop = "empty_response"

    by_name = {p.name: p for p in inputs.principles}
    for number in range(1, rounds + 1):
        active = [t for t in traces if t.stop is None]
        if not active:
            break
        say(f"round {number}/{rounds}: critiquing {len(active)} answers against {len(by_name)} principles")
        requests = [(t, p) for t in active for p in inputs.principles]
        asks = [render(inputs.templates, "critique", principle=p, **_context(t)) for t, p in requests]
        for t in active:
            t.rounds.append({"round": number, "critiques": [], "revision": None, "revision_truncated": False})
        for (t, p), text in zip(requests, generate(asks), strict=True):
            t.rounds[-1]["critiques"].append({"principle": p.name, "verdict": parse_verdict(text), "text": text.strip()})

        to_revise = []
        for t in active:
            if all(c["verdict"] == "no_problem" for c in t.rounds[-1]["critiques"]):
                t.stop = "no_problem"
            else:
                to_revise.append(t)
        if not to_revise:
            break
        say(f"round {number}/{rounds}: revising {len(to_revise)} answers")
        asks = []
        for t in to_revise:
            found = [c | {"principle": by_name[c["principle"]]} for c in t.rounds[-1]["critiques"] if c["verdict"] != "no_problem"]
            asks.append(render(inputs.templates, "revision", critiques=found, **_context(t)))
        for t, text in zip(to_revise, generate(asks), strict=True):
            t.final = t.rounds[-1]["revision"] = text.strip()
            t.final_truncated = t.rounds[-1]["revision_truncated"] = cut(text)
            if not t.final:
                t.stop = "empty_revision"
    for t in traces:
        t.stop = t.stop or "max_rounds"
    return traces


def _context(trace: Trace) -> dict:
    return dict(conversation=trace.conversation, prompt=trace.conversation[-1]["content"], response=trace.final)


@dataclass
class Datasets:
    sft: list[dict] = field(default_factory=list)
    preference: list[dict] = field(default_factory=list)
    sft_dropped: dict[str, int] = field(default_factory=dict)           # reason -> count
    preference_dropped: dict[str, int] = field(default_factory=dict)


def build_datasets(traces: list[Trace], truncated: str = "drop") -> Datasets:
    """Rows for sft.jsonl and preference.jsonl; every prompt left out is counted under its reason.

    Both drop `empty_response` (the first answer was empty, nothing was critiqued) and `empty_revision`
    (a revision came back empty). The preference set also drops prompts whose final answer equals the
    first one: `no_problem_found` (the first answer passed every critique) and `revision_identical`.
    With truncated="drop", a row whose texts used up the token limit is dropped as `truncated`.
    """
    data = Datasets()

    def drop(dropped: dict[str, int], reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for t in traces:
        if t.stop in ("empty_response", "empty_revision"):
            drop(data.sft_dropped, t.stop)
            drop(data.preference_dropped, t.stop)
            continue
        if t.final_truncated and truncated == "drop":
            drop(data.sft_dropped, "truncated")
        else:
            data.sft.append({"prompt": t.prompt, "completion": _reply(t.prompt, t.final)})
        if t.final == t.response:
            drop(data.preference_dropped, "no_problem_found" if t.revisions == 0 else "revision_identical")
        elif (t.final_truncated or t.response_truncated) and truncated == "drop":
            drop(data.preference_dropped, "truncated")
        else:
            data.preference.append({"prompt": t.prompt, "chosen": _reply(t.prompt, t.final), "rejected": _reply(t.prompt, t.response)})
    return data


def _reply(prompt: str | list[dict], text: str) -> str | list[dict]:
    """A completion in the prompt's form: a string, or a list of one assistant message."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def summarize(traces: list[Trace], data: Datasets, rounds: int) -> dict:
    verdicts = Counter(c["verdict"] for t in traces for r in t.rounds for c in r["critiques"])
    used = Counter(t.revisions for t in traces)
    return {
        "prompts_read": len(traces),
        "revised": sum(t.revisions > 0 for t in traces),
        "rounds_used": {str(n): used[n] for n in range(rounds + 1)},
        "stopped": {stop: sum(t.stop == stop for t in traces) for stop in STOPS},
        "critiques": {"total": sum(verdicts.values()), **{v: verdicts[v] for v in ("no_problem", "problem", "unparsed")}},
        "hit_token_limit": {
            "responses": sum(t.response_truncated for t in traces),
            "revisions": sum(r["revision_truncated"] for t in traces for r in t.rounds),
        },
        "sft": {"kept": len(data.sft), "dropped": data.sft_dropped},
        "preference": {"kept": len(data.preference), "dropped": data.preference_dropped},
    }


def render_summary(report: dict, out: Path) -> str:
    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items() if v) or "none"

    c = report["critiques"]
    lines = [
        f"constitution: {report['prompts_read']} prompts, {len(report['principles'])} principles, up to {report['rounds']} rounds ({report['model']})",
        f"  revised:      {report['revised']} of {report['prompts_read']}",
        f"  rounds used:  {', '.join(f'{n}: {k}' for n, k in report['rounds_used'].items())}",
        f"  stopped:      {counts(report['stopped'])}",
        f"  critiques:    {c['total']} (no_problem {c['no_problem']}, problem {c['problem']}, unparsed {c['unparsed']}: treated as problems)",
    ]
    hit = report["hit_token_limit"]
    if hit["responses"] or hit["revisions"]:
        lines.append(f"  token limit:  {hit['responses']} first answers and {hit['revisions']} revisions used up --max-new-tokens (likely cut off)")
    for name in ("sft", "preference"):
        part = report[name]
        dropped = sum(part["dropped"].values())
        lines.append(f"  {name + '.jsonl:':17} {part['kept']} kept, {dropped} dropped" + (f" ({counts(part['dropped'])})" if dropped else ""))
    lines.append(f"  written to {out}/: {', '.join(OUTPUTS)} ({report['seconds']:.0f} s)")
    return "\n".join(lines)


def used_token_limit(text: str, tokenizer, max_new_tokens: int) -> bool:
    """Whether a generated text most likely stopped at the token limit rather than at its end-of-turn token.

    A text that ends in U+FFFD stopped inside a multi-byte character. Otherwise the text is re-encoded;
    that can merge a pair of tokens the model wrote apart ("\n" "\n" -> "\n\n"), so one token of slack.
    """
    if text.endswith("\ufffd"):
        return True
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1


def check_settings(rounds: int, truncated: str, batch_size: int = 1) -> None:
    if rounds < 1:
        raise TunesmithError(f"--rounds: {rounds}: needs at least 1 round")
    if batch_size < 1:
        raise TunesmithError(f"--batch-size: {batch_size}: must be at least 1")
    if truncated not in ("drop", "keep"):
        raise TunesmithError(f"--truncated: {truncated!r} is not one of drop, keep")


def check_output(out: str | Path) -> Path:
    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing:
        raise TunesmithError(f"--out {out} already holds {', '.join(existing)}: choose another folder or remove them")
    if out.exists() and not out.is_dir():
        raise TunesmithError(f"--out {out} is a file, not a folder")
    return out


def produce(
    inputs: Inputs, generate: GenerateFn, out: str | Path, rounds: int, system_prompt: str | None = None,
    meta: dict | None = None, say: Callable[[str], None] = print, cut: CutFn = lambda text: False, truncated: str = "drop",
) -> dict:
    """Run the loop with `generate` and write the four files; returns report.json's content."""
    check_settings(rounds, truncated)
    out = check_output(out)
    started = time.perf_counter()
    traces = self_critique(inputs, generate, rounds, system_prompt, say, cut)
    data = build_datasets(traces, truncated)
    report = {
        **(meta or {}),
        "prompts_file": inputs.prompts_file,
        "principles_file": inputs.principles_file,
        "principles": [p.name for p in inputs.principles],
        "templates": {"critique": inputs.templates.critique_source, "revision": inputs.templates.revision_source},
        "system_prompt": system_prompt,
        "rounds": rounds,
        "truncated": truncated,
        **summarize(traces, data, rounds),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "sft.jsonl", data.sft)
    _write_jsonl(out / "preference.jsonl", data.preference)
    _write_jsonl(out / "trace.jsonl", [asdict(t) for t in traces])
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@dataclass
class Decoding:
    """How every answer, critique and revision is generated: greedy unless temperature > 0."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int = 42

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise TunesmithError(f"--max-new-tokens: {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise TunesmithError(f"--temperature: {self.temperature}: must be 0 (greedy) or more")
        if self.temperature == 0 and (self.top_p is not None or self.top_k is not None):
            raise TunesmithError("--top-p and --top-k shape sampling: set --temperature above 0 too")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise TunesmithError(f"--top-p: {self.top_p}: must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise TunesmithError(f"--top-k: {self.top_k}: must be at least 1")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise TunesmithError(f"--repetition-penalty: {self.repetition_penalty}: must be above 0")

    def generate_kwargs(self) -> dict:
        kwargs = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
            kwargs |= {k: v for k, v in (("top_p", self.top_p), ("top_k", self.top_k)) if v is not None}
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


def run(
    model: str, prompts: str, principles: str, out: str, rounds: int = 2, batch_size: int = 8,
    decoding: Decoding | None = None, critique_template: str | None = None, revision_template: str | None = None,
    system: str | None = None, template: str = "model", truncated: str = "drop", progress: bool = True,
) -> dict:
    """The `tunesmith constitution` command: check the inputs, load the model, produce the data."""
    from rich.console import Console

    from tunesmith.eval.generate import generate, load_for_inference

    decoding = decoding or Decoding()
    check_settings(rounds, truncated, batch_size)
    inputs = load_inputs(prompts, principles, critique_template, revision_template)
    check_output(out)

    loaded = load_for_inference(model, template=template)
    kwargs = decoding.generate_kwargs()
    if kwargs["do_sample"]:
        from transformers import set_seed

        set_seed(decoding.seed)

    def answer(conversations: list[list[dict]]) -> list[str]:
        return generate(loaded, conversations, max_new_tokens=decoding.max_new_tokens, batch_size=batch_size, progress=progress, **kwargs)

    def cut(text: str) -> bool:
        return used_token_limit(text, loaded.tokenizer, decoding.max_new_tokens)

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    meta = {"model": loaded.name, "template": loaded.template.name, "batch_size": batch_size, "decoding": asdict(decoding)}
    system_prompt = system if system is not None else loaded.system_prompt
    report = produce(inputs, answer, out, rounds, system_prompt, meta, lambda line: console.print(line, markup=False), cut, truncated)
    print(render_summary(report, Path(out)))
    return report
