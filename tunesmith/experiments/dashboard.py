"""`tunesmith dashboard`: one local web page with the queue's jobs, each run's live loss curve and eval metrics, and
the sweeps' results with their plots. Served by FastAPI (the `serve` extra), bound to 127.0.0.1; the page is plain
HTML and JavaScript written here, with no build step, and redraws itself every few seconds.

    tunesmith dashboard                 # http://127.0.0.1:8765
    tunesmith dashboard --port 9000 --queue runs/queue --runs runs

    GET /                               the page
    GET /api/state                      jobs (as `queue ls` shows them) and sweeps
    GET /api/jobs/{id}/metrics          a job's run: train and eval loss by step, its latest eval metrics
    GET /files/{path}                   a report, plot, table or log under the folder it was started in
"""

from __future__ import annotations

import csv
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.experiments.commands import note
from tunesmith.experiments.progress import job_progress
from tunesmith.experiments.store import JobQueue
from tunesmith.runs import RunDir

# What /files serves: reports, plots, tables and logs, nothing else of the folder.
SHOWN = {".html": "text/html", ".png": "image/png", ".md": "text/plain", ".csv": "text/plain", ".txt": "text/plain",
         ".yaml": "text/plain", ".json": "application/json", ".jsonl": "text/plain"}


def build_app(queue_folder: Path, runs: Path, root: Path):
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    app = FastAPI(title="tunesmith dashboard", docs_url=None, redoc_url=None)
    root = root.resolve()

    def link(path: Path) -> str | None:
        """/files/... for a file under root, None for one elsewhere (never served)."""
        try:
            return "/files/" + path.resolve().relative_to(root).as_posix() if path.is_file() else None
        except ValueError:
            return None

    def open_queue() -> JobQueue | None:
        return JobQueue(queue_folder, create=False) if (queue_folder / "queue.db").is_file() else None

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE

    @app.get("/api/state")
    def state():
        queue = open_queue()
        jobs = []
        for job in queue.jobs() if queue else []:
            progress, loss, elapsed, eta = job_progress(job).cells()
            run = Path(job.run_dir) if job.run_dir else None
            jobs.append({
                "id": job.id, "name": job.name, "state": job.state, "progress": progress, "loss": loss, "elapsed": elapsed,
                "eta": eta, "device": job.devices or "", "note": note(job), "run": str(run) if run else "",
                "log": link(queue.log_file(job.id)), "report": link(run / "report.md") if run else None,
                "evals": [{"name": f.parent.name, "href": link(f)} for f in sorted(run.glob("eval/*/report.html"))] if run else [],
            })
        if queue:
            queue.close()
        return {"jobs": jobs, "sweeps": sweeps(runs, link)}

    @app.get("/api/jobs/{job_id}/metrics")
    def metrics(job_id: int):
        queue = open_queue()
        if queue is None:
            raise HTTPException(404, "no queue")
        try:
            job = queue.get(job_id)
        except TunesmithError:
            raise HTTPException(404, f"no job {job_id}") from None
        finally:
            queue.close()
        records = RunDir(Path(job.run_dir)).metrics() if job.run_dir else []
        latest = {}
        for r in records:
            latest.update({k: v for k, v in r.items() if k.startswith("eval_") and isinstance(v, (int, float))})
        return {
            "train": [[r["step"], r["loss"]] for r in records if "loss" in r],
            "eval": [[r["step"], r["eval_loss"]] for r in records if "eval_loss" in r],
            "latest": {k: v for k, v in latest.items() if not k.endswith(("_runtime", "_per_second", "num_tokens"))},
        }

    @app.get("/files/{path:path}")
    def files(path: str):
        file = (root / path).resolve()
        if not file.is_relative_to(root) or not file.is_file() or file.suffix not in SHOWN:
            raise HTTPException(404, "not found")
        return FileResponse(file, media_type=SHOWN[file.suffix])

    return app


def sweeps(runs: Path, link) -> list[dict]:
    """Every sweep folder under `runs` (one with a study.db): its table's rows, its report and plots."""
    found = []
    for folder in sorted(p for p in runs.glob("*") if (p / "study.db").is_file()) if runs.is_dir() else []:
        table = folder / "trials.csv"
        rows = list(csv.reader(table.open(encoding="utf-8-sig"))) if table.is_file() else []
        found.append({
            "name": folder.name, "header": rows[0] if rows else [], "rows": rows[1:], "report": link(folder / "report.html"),
            "best": link(folder / "best.yaml"), "plots": [link(p) for p in sorted((folder / "plots").glob("*.png"))],
        })
    return found


def serve_dashboard(host: str, port: int, queue_folder: Path, runs: Path) -> None:
    import uvicorn

    from tunesmith.serve.server import check_address

    check_address(host, port)
    print(f"dashboard on http://{host}:{port} (queue {queue_folder}, runs {runs}); Ctrl-C stops it")
    uvicorn.run(build_app(queue_folder, runs, Path.cwd()), host=host, port=port, log_level="warning")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunesmith dashboard</title>
<style>
body{font-family:system-ui,-apple-system,'Segoe UI','Noto Sans KR',sans-serif;margin:1.5em auto;max-width:80em;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.state-running{color:#0a6}.state-failed{color:#c22}.state-queued{color:#888}.state-cancelled{color:#a60}
.runs{display:flex;flex-wrap:wrap;gap:1em}.run{border:1px solid #ddd;padding:.6em;width:24em}.run h3{margin:.1em 0 .4em;font-size:1em}
svg.loss{background:#fafafa;border:1px solid #eee}.metrics{font-size:.85em;color:#444}img{max-width:24em;border:1px solid #eee;margin:.3em}
small{color:#666}
</style></head>
<body>
<h1>tunesmith</h1>
<h2>Jobs</h2><div id="jobs"><p>loading…</p></div>
<h2>Runs</h2><div id="runs" class="runs"></div>
<h2>Sweeps</h2><div id="sweeps"></div>
<script>
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const a = (href, text) => href ? `<a href="${esc(href)}">${esc(text)}</a>` : "";
const num = c => c !== "" && !isNaN(c) && String(c).includes(".") ? Number(c).toPrecision(4) : c;  // trials.csv keeps every digit

function chart(train, evals) {
  const points = train.concat(evals);
  if (!points.length) return "<small>no loss logged yet</small>";
  const W = 360, H = 160, P = 28;
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y0 = Math.min(...ys), y1 = Math.max(...ys);
  const x = s => P + (x1 === x0 ? 0 : (s - x0) / (x1 - x0)) * (W - 2 * P);
  const y = v => H - P - (y1 === y0 ? 0.5 : (v - y0) / (y1 - y0)) * (H - 2 * P);
  const line = (pts, color, cls) => pts.length ? `<polyline class="${cls}" fill="none" stroke="${color}" stroke-width="1.5" points="${pts.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ")}"/>` : "";
  const dots = evals.map(p => `<circle cx="${x(p[0]).toFixed(1)}" cy="${y(p[1]).toFixed(1)}" r="2.5" fill="#d62728"/>`).join("");
  return `<svg class="loss" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">` +
    `<text x="${P}" y="12" font-size="10">loss ${y1.toFixed(3)} … ${y0.toFixed(3)}, steps ${x0}–${x1}</text>` +
    line(train, "#1f77b4", "train") + line(evals, "#d62728", "eval") + dots + `</svg>`;
}

async function refresh() {
  const state = await (await fetch("/api/state")).json();
  const rows = state.jobs.map(j => `<tr data-job="${j.id}"><td>${j.id}</td><td>${esc(j.name)}</td><td class="state-${esc(j.state)}">${esc(j.state)}</td>` +
    `<td>${esc(j.progress)}</td><td>${esc(j.loss)}</td><td>${esc(j.elapsed)}</td><td>${esc(j.eta)}</td><td>${esc(j.device)}</td>` +
    `<td>${esc(j.note)}</td><td>${a(j.log, "log")}</td></tr>`).join("");
  document.getElementById("jobs").innerHTML = state.jobs.length ?
    `<table><tr><th>id</th><th>name</th><th>state</th><th>progress</th><th>loss</th><th>elapsed</th><th>ETA</th><th>device</th><th>note</th><th></th></tr>${rows}</table>` :
    "<p>no jobs: add some with <code>tunesmith queue add</code></p>";
  const cards = await Promise.all(state.jobs.filter(j => j.run).map(async j => {
    const m = await (await fetch(`/api/jobs/${j.id}/metrics`)).json();
    const latest = Object.entries(m.latest).map(([k, v]) => `${esc(k)} ${Number(v).toFixed(4)}`).join(", ");
    const links = [a(j.report, "report"), ...j.evals.map(e => a(e.href, `eval ${e.name}`))].filter(Boolean).join(" · ");
    return `<div class="run" data-job="${j.id}"><h3>${esc(j.name)} <small class="state-${esc(j.state)}">${esc(j.state)} ${esc(j.progress)}</small></h3>` +
      chart(m.train, m.eval) + `<div class="metrics">${latest || "no evaluation yet"}</div><div>${links}</div></div>`;
  }));
  document.getElementById("runs").innerHTML = cards.join("") || "<p>no runs yet</p>";
  document.getElementById("sweeps").innerHTML = state.sweeps.map(s => `<div class="sweep"><h3>${esc(s.name)}</h3>` +
    `<table><tr>${s.header.map(h => `<th>${esc(h)}</th>`).join("")}</tr>${s.rows.map(r => `<tr>${r.map(c => `<td>${esc(num(c))}</td>`).join("")}</tr>`).join("")}</table>` +
    `<div>${[a(s.report, "report"), a(s.best, "best recipe")].filter(Boolean).join(" · ")}</div>${s.plots.map(p => `<img src="${esc(p)}" alt="plot">`).join("")}</div>`).join("")
    || "<p>no sweeps yet</p>";
}
refresh();
setInterval(refresh, 3000);
</script>
</body></html>
"""
