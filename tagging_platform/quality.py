"""Quality metrics of one manifest's tags: coverage, errors, confidence and the tags it produced."""

from __future__ import annotations

from collections import Counter
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
    }


def top_tags_markdown(metrics: dict[str, Any]) -> str:
    lines = ["| tag | images |", "|---|---:|"]
    lines += [f"| {t['name']} | {t['images']} |" for t in metrics["top_tags"]]
    return "\n".join(lines)
