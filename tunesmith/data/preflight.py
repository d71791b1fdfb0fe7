"""The preflight report: printed before step 1 and saved as data_report.md in the run directory."""

from __future__ import annotations

from tunesmith.data.report import DataReport, SplitReport


# What the EOS check covers, per kind of data; prompts (grpo, ppo) have no responses to check.
EOS_CHECKED = {
    "conversation": "in the labels of every trained turn",
    "preference": "at the end of both the chosen and the rejected response",
    "unpaired": "at the end of every completion",
}


def _split_lines(name: str, s: SplitReport, kind: str) -> list[str]:
    if not s.examples and not s.dropped:
        return [f"- {name}: none"]
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(s.dropped.items())) or "none"
    eos = f"{s.with_eos}/{s.kept} ({100 * s.with_eos / s.kept:.1f}%)" if s.kept else "-"
    examples = f"{s.conversations} conversations, {s.examples} examples" if s.examples != s.conversations else f"{s.examples} examples"
    lines = [
        f"- {name}: {examples} → kept {s.kept}, dropped: {dropped}, truncated {s.truncated}",
        f"  - tokens per example: {lengths(s.lengths)}; trained tokens: {s.trained_tokens:,}",
    ]
    if kind in EOS_CHECKED:
        lines.append(f"  - EOS/end-of-turn {EOS_CHECKED[kind]}: {eos}")
    if kind in EOS_CHECKED and s.template_checked:
        lines.append(
            "  - template checks (content kept, turns consistent, prompt tokenises to the training prefix): "
            f"{s.template_checked - sum(s.problems.values())}/{s.template_checked} examples pass"
        )
    if kind in EOS_CHECKED and s.kept and s.with_eos < s.kept:
        lines.append(f"  - note: {s.kept - s.with_eos} examples lost their EOS to truncation (data.truncation: truncate_right)")
    return lines


def batching_lines(b: dict) -> list[str]:
    """How the training rows are batched, per epoch, and why packing is off when the model refused it."""
    if not b:
        return []
    if b["mode"] == "random":
        line = f"  - batches: {b['batches']:,} per epoch of {b['batch_size']} examples in random order, padded to their longest"
    else:
        what = "packed rows" if b["mode"] == "packed" else "length-grouped batches"
        line = (f"  - batches: {b['batches']:,} {what} per epoch of up to {b['budget']:,} tokens "
                f"(about {b['examples_per_batch']:g} examples each{', none split' if b['mode'] == 'packed' else ''}): "
                f"fill {100 * b['fill']:.1f}%, padding {100 * b['padding_share']:.1f}%")
    return [line] + ([f"  - note: {b['note']}"] if b.get("note") else [])


def lengths(stats: dict) -> str:
    """'min 45, mean 60.2, p50 58, p95 90, max 120', or '-' when nothing was kept."""
    return ", ".join(f"{key} {value:,}" for key, value in stats.items()) or "-"


FIRST_EXAMPLE = {
    "conversation": "Trained tokens are between ⟦ and ⟧.",
    "preference": "The prompt, then each response; the tokens each response is scored on are between ⟦ and ⟧.",
    "unpaired": "The prompt, then the completion; the tokens it is scored on are between ⟦ and ⟧.",
    "prompt": "The prompt as the policy sees it, generation prompt included.",
}


def render_markdown(report: DataReport) -> str:
    lines = ["# Data preflight", "", "## Files", ""]
    for f in report.files:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(f["dropped"].items())) or "none"
        lines.append(f"- `{f['file']}` ({f['format']}): read {f['read']}, kept {f['kept']}, dropped: {dropped}")
        lines += [f"  - {msg}" for msg in f.get("first_errors", [])]
    lines += ["", "## Splits", ""]
    lines += _split_lines("train", report.train, report.kind) + batching_lines(report.batching)
    lines += _split_lines("eval", report.eval, report.kind)
    if report.sources:
        lines += ["", "## Mixture", "", "Examples per source and task as they go to tokenization (weights resample train only).", "",
                  "| source | task | weight | read | kept | train | eval |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| `{s['path']}` ({s['split']}) | {s['task'] or '-'} | {s['weight']:g} | {s['read']} | {s['kept']} | {s['train']} | {s['eval']} |"
                  for s in report.sources]
        lines += ["", "- per task: " + "; ".join(f"{task}: train {n['train']}, eval {n['eval']}" for task, n in report.tasks.items())]
    stops = ", ".join(report.stop_tokens) or "none"
    lines += [
        "",
        "## Template",
        "",
        f"- `{report.template}`; stop tokens: {stops}",
        *[f"- {note}" for note in report.template_notes],
        f"- max_length {report.max_length}, truncation: {report.truncation}",
        "",
        "## First training example",
        "",
        FIRST_EXAMPLE[report.kind],
        "",
        "```text",
        report.first_example,
        "```",
        "",
    ]
    return "\n".join(lines + token_weight_lines(report.token_weights))


def token_weight_lines(w: dict) -> list[str]:
    """What train.token_weights weighs: the share of trained tokens, matches per word, the first weighted example."""
    if not w:
        return []
    rules = [f"words (×{w['weight']:g}): " + ", ".join(f"{word!r} {n:,} matches" for word, n in w["words"].items())] if w["words"] else []
    rules += [f"regex {w['regex']!r} (×{w['weight']:g})"] if w["regex"] else []
    rules += [f"column {w['column']!r} (each row's weight times all its trained tokens)"] if w["column"] else []
    lines = ["## Token weights", "", *[f"- {rule}" for rule in rules],
             f"- weighted: {w['weighted_tokens']:,} of {w['trained_tokens']:,} trained tokens ({100 * w['share']:.1f}%); "
             "the loss is their weighted mean (the eval loss stays unweighted)"]
    if w.get("zero_weight_rows"):
        lines.append(f"- note: {w['zero_weight_rows']:,} training rows have weight 0 in the column: they train nothing")
    unmatched = [word for word, n in w["words"].items() if n == 0]
    if unmatched:
        lines.append(f"- note: no trained token matches {', '.join(map(repr, unmatched))}")
    if w["first_example"]:
        lines += ["", f"The first example with weighted tokens ({w['first_example_where']}): each run of them between ⟪ and ⟫, then its weight.",
                  "", "```text", w["first_example"], "```", ""]
    else:
        lines += ["- note: no trained token is weighted: check the words, the regex or the column"]
    return lines
