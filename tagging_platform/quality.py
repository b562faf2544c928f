"""Quality metrics of one manifest's tags: coverage, errors, confidence and the tags it produced."""

from __future__ import annotations

import io
import math
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tagging_platform import tags

HISTOGRAM_BINS = 10


def accounting(table: pa.Table, manifest_images: list[str]) -> dict[str, Any]:
    """Is every manifest image in the table exactly once, tagged or errored? The counts that say so."""
    expected = Counter(manifest_images)
    got = Counter(table.column("image").to_pylist())
    statuses = table.column("status").to_pylist()
    return {
        "expected": len(manifest_images),
        "rows": table.num_rows,
        "tagged": statuses.count(tags.STATUS_OK),
        "errored": statuses.count(tags.STATUS_ERROR),
        "missing": sorted((expected - got).elements()),
        "duplicated": sorted(k for k, n in got.items() if n > 1),
        "unexpected": sorted(k for k in got if k not in expected),
    }


def tag_metrics(table: pa.Table, *, low_confidence: float, top_n: int = 20) -> dict[str, Any]:
    images = table.num_rows
    ok = table.filter(pc.equal(table.column("status"), tags.STATUS_OK))
    errors = images - ok.num_rows
    top_confidence = ok.column("top_confidence").to_pylist()
    tag_counts: Counter[str] = Counter()
    for row_tags in ok.column("tags").to_pylist():
        tag_counts.update(t["name"] for t in row_tags or [])
    error_reasons = Counter(
        (reason or "").split(":")[0] for reason in table.filter(pc.equal(table.column("status"), tags.STATUS_ERROR)).column("error").to_pylist()
    )
    histogram = [0] * HISTOGRAM_BINS
    for value in top_confidence:
        histogram[min(int(value * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    return {
        "images": images,
        "tagged": ok.num_rows,
        "errors": errors,
        "coverage": ok.num_rows / images if images else 0.0,
        "error_rate": errors / images if images else 0.0,
        "mean_confidence": sum(top_confidence) / len(top_confidence) if top_confidence else 0.0,
        "low_confidence_share": (
            sum(1 for c in top_confidence if c < low_confidence) / len(top_confidence) if top_confidence else 0.0
        ),
        "confidence_histogram": histogram,
        "top_tags": [{"name": n, "images": c} for n, c in tag_counts.most_common(top_n)],
        "error_reasons": dict(error_reasons.most_common()),
        "computed_at": datetime.now(timezone.utc).isoformat(),
    }


def top_tags_markdown(metrics: dict[str, Any]) -> str:
    lines = ["| tag | images |", "|---|---:|"]
    lines += [f"| {t['name']} | {t['images']} |" for t in metrics["top_tags"]]
    return "\n".join(lines)


def tag_distribution(metrics: dict[str, Any]) -> dict[str, float]:
    """Share of tagged images per top tag, from a manifest's metrics."""
    total = sum(t["images"] for t in metrics["top_tags"])
    return {t["name"]: t["images"] / total for t in metrics["top_tags"]} if total else {}


def jensen_shannon(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two tag distributions; 0 when either is empty."""
    if not p or not q:
        return 0.0
    names = set(p) | set(q)
    m = {n: (p.get(n, 0.0) + q.get(n, 0.0)) / 2 for n in names}

    def kl(a: dict[str, float]) -> float:
        return sum(a[n] * math.log2(a[n] / m[n]) for n in names if a.get(n, 0.0) > 0)

    return (kl(p) + kl(q)) / 2


def history(metrics_by_partition: dict[str, dict[str, Any]], baseline: int = 5) -> list[dict[str, Any]]:
    """One row per manifest in the order they were measured, with drift against the trailing baseline:
    the average tag distribution of up to `baseline` manifests before it."""
    ordered = sorted(metrics_by_partition.items(), key=lambda item: item[1].get("computed_at", ""))
    rows: list[dict[str, Any]] = []
    distributions: list[dict[str, float]] = []
    for partition, metrics in ordered:
        current = tag_distribution(metrics)
        trailing = distributions[-baseline:]
        reference = {
            n: sum(d.get(n, 0.0) for d in trailing) / len(trailing) for n in set().union(*trailing)
        } if trailing else {}
        rows.append(
            {
                "partition": partition,
                "computed_at": metrics.get("computed_at", ""),
                "images": metrics["images"],
                "coverage": metrics["coverage"],
                "error_rate": metrics["error_rate"],
                "mean_confidence": metrics["mean_confidence"],
                "low_confidence_share": metrics["low_confidence_share"],
                "top_tag": metrics["top_tags"][0]["name"] if metrics["top_tags"] else None,
                "drift_jsd": jensen_shannon(current, reference) if reference else None,
            }
        )
        distributions.append(current)
    return rows


def confidence_histogram_png(metrics: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 2.4), dpi=100)
    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS)]
    axes.bar(edges, metrics["confidence_histogram"], width=1 / HISTOGRAM_BINS, align="edge", color="#4f46e5")
    axes.set_xlabel("top-tag confidence")
    axes.set_ylabel("images")
    axes.set_xlim(0, 1)
    return _png(figure)


def drift_chart_png(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 2.4), dpi=100)
    drift = [r["drift_jsd"] if r["drift_jsd"] is not None else float("nan") for r in rows]
    axes.plot(range(len(rows)), drift, marker="o", color="#dc2626", label="drift (JSD vs trailing)")
    axes.plot(range(len(rows)), [r["mean_confidence"] for r in rows], marker=".", color="#4f46e5", label="mean confidence")
    axes.set_xticks(range(len(rows)), [r["partition"][:12] for r in rows], rotation=30, fontsize=7)
    axes.set_ylim(0, 1)
    axes.legend(fontsize=7)
    return _png(figure)


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
