"""`tunesmith chat`: a multi-turn conversation in the terminal with a run (its template and training system
prompt) or a model.

    tunesmith chat runs/support
    > My parcel never arrived
    shipping
    > /system Answer in French.      (commands: /reset, /system TEXT, /exit; Ctrl-D also ends)

Replies go to stdout and everything else to stderr, so `tunesmith chat RUN < questions.txt > answers.txt`
keeps one reply per question. When the conversation outgrows the model's context, the oldest turns go.
"""

from __future__ import annotations

import sys

from tunesmith.data.formats import with_system
from tunesmith.data.templates import prompt_ids
from tunesmith.eval.generate import Loaded, generate, load_for_inference

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message; empty: none), /exit"


def chat(target: str, template: str = "model", system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0) -> None:
    loaded = load_for_inference(target, template=template)
    system = system if system is not None else loaded.system_prompt
    decoding = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else {}
    interactive = sys.stdin.isatty()
    note(f"chatting with {loaded.name} (template {loaded.template.name}); {HELP}")
    history: list[dict] = []
    while True:
        try:
            line = input("> " if interactive else "").strip()
        except EOFError:
            break
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = []
            note("(conversation cleared)")
            continue
        if line == "/system" or line.startswith("/system "):
            system = line[len("/system") :].strip() or None
            note(f"(system message: {system!r})")
            continue
        if line.startswith("/"):
            note(f"unknown command {line.split()[0]!r}; {HELP}")
            continue
        history.append({"role": "user", "content": line})
        history = fit(loaded, system, history, max_new_tokens)
        reply = generate(loaded, [with_system(history, system)], max_new_tokens=max_new_tokens, progress=False, **decoding)[0]
        history.append({"role": "assistant", "content": reply})
        print(reply, flush=True)


def fit(loaded: Loaded, system: str | None, history: list[dict], max_new_tokens: int) -> list[dict]:
    """Drop the oldest exchanges until the prompt and the reply fit the model's context."""
    context = int(getattr(loaded.model.config, "max_position_embeddings", 2048))
    while len(history) > 1 and len(prompt_ids(loaded.template, loaded.tokenizer, with_system(history, system))) + max_new_tokens > context:
        history = history[2:]
        note("(the conversation outgrew the context: the oldest exchange was dropped)")
    return history


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
