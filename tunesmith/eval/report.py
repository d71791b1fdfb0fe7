"""An evaluation's report.md and report.html (one file: inline CSS, plots embedded as base64 PNG, so it
opens offline and can be mailed), built from the same list of blocks, plus the console summary."""

from __future__ import annotations

import base64
import html
from pathlib import Path

SHOWN_SAMPLES = 10
SHOWN_DIFFERENCES = 20
CELL_CHARS = 300

# A block is ("h2", text) | ("p", text) | ("table", headers, rows) | ("img", file name, caption).
Block = tuple


def fmt(name: str, value) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    if name in ("bleu", "chrf"):
        return f"{value:.2f}"
    return f"{value:.4f}" if name != "perplexity" else f"{value:.3f}"


def short(text: str, limit: int = CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def metrics_table(summary: dict) -> Block:
    names = [summary["details"]["target_name"], *summary["compare"]]
    columns = [summary["metrics"], *summary["compare"].values()]
    keys = list(dict.fromkeys(k for c in columns for k in c))
    rows = [[k, *(fmt(k, c[k]) if k in c else "" for c in columns)] for k in keys]
    return ("table", ["metric", *names], rows)


def build_blocks(folder: Path, summary: dict, data, results, differ: list[int], run: str | None) -> list[Block]:
    from tunesmith.eval.evaluate import prompt_text

    details = summary["details"]
    blocks: list[Block] = [
        ("h1", f"Evaluation {summary['name']}: {results[0].name}"),
        ("p", f"data: {summary['data']} ({summary['n']} rows); target: {summary['target']}"
         + "".join(f"; compared with {r.name} ({r.target})" for r in results[1:])),
        ("h2", "Metrics"),
        metrics_table(summary),
        ("p", "exact match, accuracy, macro F1, ROUGE: share 0-1; BLEU, chrF: 0-100 (sacrebleu); perplexity: lower is better. "
         + ", ".join(f"{n}: BLEU tokenizer {d['bleu_tokenize']}" for n, d in details["models"].items() if "bleu_tokenize" in d)),
        ("p", "decoding: " + ", ".join(f"{k}={v}" for k, v in summary["decoding"].items())),
    ]
    for result in results:
        report = result.details.get("classification")
        if not report:
            continue
        blocks.append(("h2", f"Classification: {result.name}"))
        rows = [[label, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])] for label, c in report["per_class"].items()]
        blocks.append(("table", ["class", "precision", "recall", "F1", "support"], rows))
        confusion = report["confusion"]
        blocks.append(("table", ["actual \\ predicted", *confusion["columns"]],
                       [[label, *map(str, counts)] for label, counts in zip(confusion["labels"], confusion["matrix"])]))
        image = f"confusion_{safe(result.name)}.png"
        plot_confusion(confusion, result.name, folder / image)
        blocks.append(("img", image, f"confusion matrix of {result.name} (rows: reference, columns: predicted)"))
    if len(results) > 1 and not data.is_text:
        rows = differ
        blocks.append(("h2", f"Where the models differ ({len(rows)} of {summary['n']} rows)"))
        if rows:
            blocks.append(("table", ["id", "prompt", "expected", *(f"got ({r.name})" for r in results)],
                           [[data.ids[i], short(prompt_text(data.examples[i].messages[:-1]), 120), short(data.references[i]),
                             *(short(r.outputs[i]) for r in results)] for i in rows[:SHOWN_DIFFERENCES]]))
            if len(rows) > SHOWN_DIFFERENCES:
                blocks.append(("p", f"… {len(rows) - SHOWN_DIFFERENCES} more in predictions.jsonl"))
    if run:
        from tunesmith.runs import RunDir, plot_loss

        records = RunDir(Path(run)).metrics()
        if records:
            plot_loss(records, folder / "loss.png")
            blocks += [("h2", "Training loss"), ("img", "loss.png", f"loss curves of {Path(run).name}")]
    if not data.is_text:
        blocks.append(("h2", "Sample outputs"))
        blocks.append(("table", ["id", "prompt", "reference", *(r.name for r in results)],
                       [[data.ids[i], short(prompt_text(data.examples[i].messages[:-1]), 160), short(data.references[i]),
                         *(short(r.outputs[i]) for r in results)] for i in range(min(SHOWN_SAMPLES, len(data.examples)))]))
    return blocks


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# Fonts with Hangul, tried in order; matplotlib falls back glyph by glyph along the list (DejaVu has no Hangul:
# without one of these, Korean labels show as boxes in the PNG, while the tables beside it still read right).
HANGUL_FONTS = ["Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "Malgun Gothic", "Apple SD Gothic Neo", "AppleGothic"]


def hangul_fonts() -> list[str]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in HANGUL_FONTS if name in installed] + ["DejaVu Sans"]


def plot_confusion(confusion: dict, title: str, out: Path) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix, labels, columns = confusion["matrix"], confusion["labels"], confusion["columns"]
    size = max(3.5, 0.6 * len(columns) + 1.5)
    with plt.rc_context({"font.family": hangul_fonts()}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        peak = max((v for row in matrix for v in row), default=0)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def to_markdown(blocks: list[Block]) -> str:
    lines = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(md_cell(h) for h in headers) + " |")
            lines.append("|" + "|".join(" --- " for _ in headers) + "|")
            lines += ["| " + " | ".join(md_cell(str(c)) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI','Noto Sans KR','Malgun Gothic',sans-serif;margin:2em auto;max-width:72em;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left;white-space:pre-wrap}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:.85em}"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(block[2])}\"><figcaption>{html.escape(block[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: Path, summary: dict, data, results, differ: list[int], run: str | None) -> None:
    blocks = build_blocks(folder, summary, data, results, differ, run)
    (folder / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (folder / "report.html").write_text(to_html(blocks, folder, f"Evaluation {summary['name']}"), encoding="utf-8")


def print_summary(summary: dict, data, results, differ: list[int], folder: Path, human_sheet: str | None) -> None:
    """The metrics table and the first differences, as Markdown on stdout; where the files went on stderr."""
    import sys

    print(to_markdown([metrics_table(summary)]).rstrip())
    if len(results) > 1 and not data.is_text:
        rows = differ
        print(f"\n{len(rows)} of {summary['n']} rows differ between {', '.join(r.name for r in results)}")
        for i in rows[:5]:
            got = "; ".join(f"{r.name}: {short(r.outputs[i].strip(), 60)!r}" for r in results)
            print(f"  {data.ids[i]}: expected {short(data.references[i], 60)!r}, got {got}")
    files = f"{folder}/ (predictions.jsonl, metrics.json, report.md, report.html)"
    print(f"written: {files}" + (f"; review sheet {human_sheet}" if human_sheet else ""), file=sys.stderr)
