"""Quality of a manifest's tags: the metrics asset and the checks that guard publishing."""

import dagster as dg
import pandas as pd
import pyarrow as pa

from assets.partitions import manifests_partitions
from assets.tagging import image_tags
from resources.settings import PlatformSettings
from tagging_platform import quality


@dg.asset(
    partitions_def=manifests_partitions,
    group_name="quality",
    io_manager_key="warehouse_io_manager",
    kinds={"pandas"},
    owners=["team:ml-platform"],
    description="Coverage, error rate, confidence distribution and top tags of one manifest.",
)
def tag_quality_metrics(image_tags: pa.Table, platform: PlatformSettings) -> dg.Output[dict]:
    metrics = quality.tag_metrics(image_tags, low_confidence=platform.settings.low_confidence)
    return dg.Output(
        metrics,
        metadata={
            "images": metrics["images"],
            "coverage": dg.MetadataValue.float(metrics["coverage"]),
            "error_rate": dg.MetadataValue.float(metrics["error_rate"]),
            "mean_confidence": dg.MetadataValue.float(metrics["mean_confidence"]),
            "low_confidence_share": dg.MetadataValue.float(metrics["low_confidence_share"]),
            "top_tags": dg.MetadataValue.md(quality.top_tags_markdown(metrics)),
            "error_reasons": dg.MetadataValue.json(metrics["error_reasons"]),
        },
    )


@dg.asset_check(
    asset=image_tags,
    blocking=True,
    partitions_def=manifests_partitions,
    additional_ins={"manifest": dg.AssetIn("manifest")},
    description="Every manifest image is in the table exactly once, tagged or errored; nothing else is.",
)
def every_image_accounted_for(image_tags: pa.Table, manifest: pd.DataFrame) -> dg.AssetCheckResult:
    counts = quality.accounting(image_tags, manifest["image_uri"].tolist())
    problems = {k: counts[k] for k in ("missing", "duplicated", "unexpected") if counts[k]}
    return dg.AssetCheckResult(
        passed=not problems and counts["tagged"] + counts["errored"] == counts["expected"],
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "expected": counts["expected"],
            "tagged": counts["tagged"],
            "errored": counts["errored"],
            **{k: dg.MetadataValue.json(v[:20]) for k, v in problems.items()},
            **{f"{k}_count": len(v) for k, v in problems.items()},
        },
    )


@dg.asset_check(
    asset=image_tags,
    partitions_def=manifests_partitions,
    description="The share of images that could not be tagged, against the WARN and ERROR thresholds.",
)
def error_rate(image_tags: pa.Table, platform: PlatformSettings) -> dg.AssetCheckResult:
    settings = platform.settings
    metrics = quality.tag_metrics(image_tags, low_confidence=settings.low_confidence)
    rate = metrics["error_rate"]
    severity = dg.AssetCheckSeverity.ERROR if rate > settings.error_rate_error else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        passed=rate <= settings.error_rate_warn,
        severity=severity,
        metadata={
            "error_rate": dg.MetadataValue.float(rate),
            "errors": metrics["errors"],
            "warn_above": settings.error_rate_warn,
            "error_above": settings.error_rate_error,
            "reasons": dg.MetadataValue.json(metrics["error_reasons"]),
        },
    )


@dg.asset_check(
    asset=image_tags,
    partitions_def=manifests_partitions,
    description="The share of tagged images whose best tag is below the low-confidence threshold.",
)
def low_confidence_share(image_tags: pa.Table, platform: PlatformSettings) -> dg.AssetCheckResult:
    settings = platform.settings
    metrics = quality.tag_metrics(image_tags, low_confidence=settings.low_confidence)
    share = metrics["low_confidence_share"]
    return dg.AssetCheckResult(
        passed=share <= settings.low_confidence_share_warn,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "low_confidence_share": dg.MetadataValue.float(share),
            "threshold": settings.low_confidence,
            "warn_above": settings.low_confidence_share_warn,
        },
    )
