"""Comparing a batch's tags from two model versions: agreement, classes gained and lost, confidence shift."""

import pyarrow as pa

from tagging_platform import quality, tags


def _labels(*names: str) -> list[dict]:
    return [{"name": n, "confidence": 0.5, "parents": []} for n in names]


def _earlier(rows: list[tuple[str, list[str], float]]) -> pa.Table:
    """Rows as the reuse index holds them (the earlier version's tags, by ETag)."""
    return pa.Table.from_pylist(
        [{"etag": e, "tags": _labels(*names), "top_tag": names[0], "top_confidence": c} for e, names, c in rows]
    )


def _current(rows: list[tuple[str, str, list[str] | None, float | None]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "etag": e,
                "status": status,
                "tags": _labels(*names) if names else None,
                "top_tag": names[0] if names else None,
                "top_confidence": c,
            }
            for e, status, names, c in rows
        ]
    )


def test_agreement_classes_gained_and_lost_and_confidence_shift_are_measured_per_image_by_etag():
    earlier = _earlier(
        [
            ("a", ["tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"], 0.60),
            ("b", ["espresso", "cup", "coffee mug", "eggnog", "soup bowl"], 0.90),
            ("c", ["tiger cat", "tabby", "Egyptian cat", "lynx", "Siamese cat"], 0.40),
            ("d", ["palace", "monastery", "castle", "church", "dome"], 0.50),  # not in the new table
        ]
    )
    current = _current(
        [
            ("a", tags.STATUS_OK, ["tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"], 0.70),
            ("b", tags.STATUS_OK, ["espresso", "cup", "coffee mug", "eggnog", "soup bowl"], 0.95),
            ("c", tags.STATUS_OK, ["tabby", "tiger cat", "Egyptian cat", "Siamese cat", "cougar"], 0.45),
            ("e", tags.STATUS_OK, ["rocket"], 0.9),  # new image, nothing to compare with
            ("f", tags.STATUS_ERROR, None, None),
        ]
    )
    result = quality.compare_versions(earlier, current)
    assert result["images"] == 3
    assert result["top1_agreement"] == 2 / 3  # c's best tag changed
    assert result["top5_agreement"] == (1 + 1 + 4 / 5) / 3  # c lost lynx from its five
    assert abs(result["confidence_shift"] - (0.10 + 0.05 + 0.05) / 3) < 1e-12
    assert result["gained"] == [{"name": "tabby", "images": 1}]
    assert result["lost"] == [{"name": "tiger cat", "images": 1}]


def test_the_history_carries_the_comparison_of_a_retagged_batch_and_none_for_the_others():
    def metrics(at: str, comparison=None) -> dict:
        m = {
            "images": 2,
            "coverage": 1.0,
            "error_rate": 0.0,
            "mean_confidence": 0.5,
            "low_confidence_share": 0.0,
            "top_tags": [{"name": "tabby", "images": 2}],
            "computed_at": at,
        }
        return {**m, "version_comparison": comparison} if comparison else m

    comparison = {
        "from_version": "aaaa",
        "to_version": "bbbb",
        "images": 2,
        "top1_agreement": 0.5,
        "top5_agreement": 0.9,
        "confidence_shift": -0.02,
        "gained": [{"name": "tabby", "images": 1}],
        "lost": [{"name": "lynx", "images": 1}],
    }
    rows = quality.history({"plain": metrics("2026-01-01"), "retagged": metrics("2026-01-02", comparison)})
    plain, retagged = rows
    assert all(plain[c] is None for c in quality.COMPARISON_COLUMNS)
    assert retagged["compared_versions"] == "aaaa > bbbb"
    assert (retagged["top1_agreement"], retagged["top5_agreement"], retagged["confidence_shift"]) == (0.5, 0.9, -0.02)
    assert (retagged["classes_gained"], retagged["classes_lost"]) == ("tabby (+1)", "lynx (-1)")
    assert quality.comparison_chart_png([retagged]).startswith(b"\x89PNG")
