"""Quality metrics of one manifest's tags: coverage, errors, confidence and the tags it produced."""

from __future__ import annotations

import io
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tagging_platform import reuse, tags
from tagging_platform.models import ModelRef

HISTOGRAM_BINS = 10
# tag_quality_history's columns comparing a batch's tags with those of the model version they replaced.
COMPARISON_COLUMNS = (
    "compared_versions",
    "top1_agreement",
    "top5_agreement",
    "confidence_shift",
    "classes_gained",
    "classes_lost",
)


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
        (reason or "").split(":")[0]
        for reason in table.filter(pc.equal(table.column("status"), tags.STATUS_ERROR)).column("error").to_pylist()
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
        "computed_at": datetime.now(UTC).isoformat(),
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
        reference = (
            {n: sum(d.get(n, 0.0) for d in trailing) / len(trailing) for n in set().union(*trailing)}
            if trailing
            else {}
        )
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
                **_comparison_columns(metrics.get("version_comparison")),
            }
        )
        distributions.append(current)
    return rows


def version_comparison(s3_client, warehouse_bucket: str, partition: str, table: pa.Table) -> dict[str, Any] | None:
    """A batch's tags against the model version they replaced (its reuse index), or None if none was there."""
    if not table.num_rows:
        return None
    model = ModelRef(table.column("model_name")[0].as_py(), table.column("model_version")[0].as_py(), "")
    earlier = reuse.earlier_version(s3_client, warehouse_bucket, model, partition)
    if earlier is None:
        return None
    version, rows = earlier
    return {"from_version": version, "to_version": model.short_version, **compare_versions(rows, table)}


def compare_versions(earlier: pa.Table, current: pa.Table, top_n: int = 5) -> dict[str, Any]:
    """How a new model version's tags of a batch differ from an earlier version's, image by image (by ETag).

    `earlier` has the earlier version's rows (etag, tags, top_tag, top_confidence: its reuse index), `current`
    is the batch's tag table. Top-1 agreement: the share of images whose best tag is the same; top-5
    agreement: the mean share of the earlier version's tags (its top-k) that the new version also gives;
    classes gained and lost: the best tags that became more and less frequent; confidence shift: the mean
    change of the best tag's confidence.
    """
    before = {row["etag"]: row for row in earlier.select(["etag", "tags", "top_tag", "top_confidence"]).to_pylist()}
    ok = current.filter(pc.equal(current.column("status"), tags.STATUS_OK))
    pairs = [
        (before[row["etag"]], row)
        for row in ok.select(["etag", "tags", "top_tag", "top_confidence"]).to_pylist()
        if row["etag"] in before
    ]
    if not pairs:
        return {"images": 0}
    top1 = sum(old["top_tag"] == new["top_tag"] for old, new in pairs) / len(pairs)
    top5 = sum(
        len({t["name"] for t in old["tags"] or []} & {t["name"] for t in new["tags"] or []})
        / max(1, len(old["tags"] or []))
        for old, new in pairs
    ) / len(pairs)
    change = Counter(new["top_tag"] for _, new in pairs)
    change.subtract(Counter(old["top_tag"] for old, _ in pairs))
    ranked = sorted(change.items(), key=lambda item: (-item[1], item[0]))
    return {
        "images": len(pairs),
        "top1_agreement": top1,
        "top5_agreement": top5,
        "confidence_shift": sum(new["top_confidence"] - old["top_confidence"] for old, new in pairs) / len(pairs),
        "gained": [{"name": n, "images": c} for n, c in ranked[:top_n] if c > 0],
        "lost": [{"name": n, "images": -c} for n, c in reversed(ranked[-top_n:]) if c < 0],
    }


def comparison_chart_png(rows: list[dict[str, Any]]) -> bytes:
    """For each batch compared with an earlier model version (history rows): top-1 and top-5 agreement, and
    the confidence shift."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 2.6), dpi=100)
    positions = range(len(rows))
    axes.bar(
        [p - 0.2 for p in positions],
        [r["top1_agreement"] for r in rows],
        width=0.4,
        color="#4f46e5",
        label="top-1 agreement",
    )
    axes.bar(
        [p + 0.2 for p in positions],
        [r["top5_agreement"] for r in rows],
        width=0.4,
        color="#a5b4fc",
        label="top-5 agreement",
    )
    axes.plot(positions, [r["confidence_shift"] for r in rows], marker="o", color="#dc2626", label="confidence shift")
    axes.axhline(0, color="#6b7280", linewidth=0.5)
    axes.set_xticks(list(positions), [r["partition"][:14] for r in rows], rotation=30, fontsize=7)
    axes.set_ylim(min(-0.2, *(r["confidence_shift"] for r in rows)), 1)
    axes.legend(fontsize=7)
    return _png(figure)


def _comparison_columns(comparison: dict[str, Any] | None) -> dict[str, Any]:
    """The history's columns for a batch re-tagged by a new model version (None for the others)."""
    if not (comparison and comparison.get("images")):
        return dict.fromkeys(COMPARISON_COLUMNS)
    return {
        "compared_versions": f"{comparison['from_version']} > {comparison['to_version']}",
        "top1_agreement": comparison["top1_agreement"],
        "top5_agreement": comparison["top5_agreement"],
        "confidence_shift": comparison["confidence_shift"],
        "classes_gained": ", ".join(f"{t['name']} (+{t['images']})" for t in comparison["gained"]),
        "classes_lost": ", ".join(f"{t['name']} (-{t['images']})" for t in comparison["lost"]),
    }


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
    axes.plot(
        range(len(rows)), [r["mean_confidence"] for r in rows], marker=".", color="#4f46e5", label="mean confidence"
    )
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
