"""The short Markdown report every data verb writes next to its report.json: what was read, written, changed
and dropped (by reason), the settings, and the verb's own sections."""

from __future__ import annotations

import json


def render_markdown(report: dict, sections: list[str] = ()) -> str:
    written = "; ".join(f"`{report['outputs'][name]}` {n:,} rows" for name, n in report["written"].items())
    dropped = ", ".join(f"{reason} {n:,}" for reason, n in sorted(report["dropped"].items())) or "none"
    counters = ", ".join(f"{key} {n:,}" for key, n in sorted(report["counters"].items()))
    speed = f" ({report['rows_per_s']:,} rows/s)" if report["rows_per_s"] else ""
    lines = [
        f"# tunesmith data {report['verb']}",
        "",
        f"- input: `{report['input']}`, {report['read']:,} rows read",
        f"- written: {written}" if written else "- written: nothing (report only)",
        *([f"- {counters}"] if counters else []),
        f"- dropped: {dropped}",
        *[f"  - {message}" for message in report["first_errors"]],
        "- settings: " + ", ".join(f"{key} {shown(value)}" for key, value in report["settings"].items()),
        f"- time: {report['seconds']:.1f} s{speed}",
        "",
        *sections,
    ]
    if report["examples"]:
        keys = list(dict.fromkeys(k for sample in report["examples"] for k in sample))
        lines += ["## Examples", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(cell(sample.get(k)) for k in keys) + " |" for sample in report["examples"]]
    return "\n".join(lines).rstrip() + "\n"


def cell(value) -> str:
    """A table cell: text as it is (a list of texts joined by ' / '), anything else as JSON; '|' and newlines escaped."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = " / ".join(value)
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)
