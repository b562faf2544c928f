"""Quality of a manifest's tags: the metrics asset and the checks that guard publishing."""

import base64

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster_aws.s3 import S3Resource

from assets.partitions import BATCH_ASSET, OWNERS, manifests_partitions
from assets.tagging import image_tags
from resources.settings import PlatformSettings
from tagging_platform import canary, quality


@dg.asset(
    **BATCH_ASSET,
    group_name="quality",
    kinds={"pandas"},
    description="Coverage, error rate, confidence distribution and top tags of one manifest.",
)
def tag_quality_metrics(
    context: dg.AssetExecutionContext, image_tags: pa.Table, platform: PlatformSettings, s3: S3Resource
) -> dg.Output[dict]:
    metrics = quality.tag_metrics(image_tags, low_confidence=platform.settings.low_confidence)
    # A batch re-tagged by a new model version is compared with the version it replaces.
    comparison = quality.version_comparison(
        s3.get_client(), platform.settings.warehouse_bucket, context.partition_key, image_tags
    )
    if comparison:
        metrics["version_comparison"] = comparison
    return dg.Output(
        metrics,
        metadata={
            "confidence_histogram": dg.MetadataValue.md(_image(quality.confidence_histogram_png(metrics))),
            "images": metrics["images"],
            "coverage": dg.MetadataValue.float(metrics["coverage"]),
            "error_rate": dg.MetadataValue.float(metrics["error_rate"]),
            "mean_confidence": dg.MetadataValue.float(metrics["mean_confidence"]),
            "low_confidence_share": dg.MetadataValue.float(metrics["low_confidence_share"]),
            "top_tags": dg.MetadataValue.md(quality.top_tags_markdown(metrics)),
            "error_reasons": dg.MetadataValue.json(metrics["error_reasons"]),
            **({"version_comparison": dg.MetadataValue.json(comparison)} if comparison else {}),
        },
    )


@dg.asset(
    group_name="quality",
    io_manager_key="warehouse_io_manager",
    kinds={"pandas"},
    owners=OWNERS,
    automation_condition=dg.AutomationCondition.eager(),
    description="Quality across manifests: one row per manifest, with tag-distribution drift (Jensen-Shannon "
    "divergence) against the trailing manifests. Updated after every manifest.",
)
def tag_quality_history(tag_quality_metrics: dict, platform: PlatformSettings) -> dg.Output[pd.DataFrame]:
    # The canary's batch measures the model, not the customers' data, and is the latest batch every half
    # hour: in the history it would be compared with the customers' batches and hide their drift.
    customers = {partition: m for partition, m in tag_quality_metrics.items() if partition != canary.PARTITION}
    rows = quality.history(customers, baseline=platform.settings.drift_baseline_manifests)
    frame = pd.DataFrame(rows)
    latest = rows[-1] if rows else {}
    compared = [r for r in rows if r["compared_versions"]]
    return dg.Output(
        frame,
        metadata={
            "manifests": len(rows),
            "latest": latest.get("partition", ""),
            "latest_drift_jsd": dg.MetadataValue.float(float(latest.get("drift_jsd") or 0.0)),
            "drift": dg.MetadataValue.md(_image(quality.drift_chart_png(rows)) if rows else "no manifests yet"),
            "history": dg.MetadataValue.md(
                frame.drop(columns=list(quality.COMPARISON_COLUMNS)).tail(20).to_markdown(index=False) if rows else ""
            ),
            # Batches re-tagged by a new model version against the version they replaced.
            "version_comparisons": _comparison_table(compared[-20:]),
            **(
                {"version_comparison_chart": dg.MetadataValue.md(_image(quality.comparison_chart_png(compared[-20:])))}
                if compared
                else {}
            ),
        },
    )


def _comparison_table(rows: list[dict]) -> dg.TableMetadataValue:
    columns = ["partition", *quality.COMPARISON_COLUMNS]
    kinds = {"top1_agreement": "float", "top5_agreement": "float", "confidence_shift": "float"}
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: round(r[c], 4) if c in kinds else r[c] for c in columns}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, kinds.get(c, "string")) for c in columns]),
    )


@dg.asset_check(asset=tag_quality_history, description="The latest manifest's tags are not far from the trailing ones.")
def tag_distribution_drift(tag_quality_history: pd.DataFrame, platform: PlatformSettings) -> dg.AssetCheckResult:
    threshold = platform.settings.drift_warn_jsd
    # Empty, without columns, while only the canary has run (it is left out of the history).
    measured = tag_quality_history.dropna(subset=["drift_jsd"]) if len(tag_quality_history) else tag_quality_history
    drift = float(measured["drift_jsd"].iloc[-1]) if len(measured) else 0.0
    return dg.AssetCheckResult(
        passed=drift <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "manifest": str(measured["partition"].iloc[-1]) if len(measured) else "",
            "drift_jsd": dg.MetadataValue.float(drift),
            "warn_above": threshold,
        },
    )


def _image(png: bytes) -> str:
    """Markdown metadata can carry a chart inline: the UI shows it on the materialization."""
    return f"![chart](data:image/png;base64,{base64.b64encode(png).decode()})"


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "every_image_accounted_for",
            asset=image_tags,
            blocking=True,
            partitions_def=manifests_partitions,
            additional_deps=["manifest"],
            description="Every manifest image is in the table exactly once, tagged or errored; nothing else is.",
        ),
        dg.AssetCheckSpec(
            "error_rate",
            asset=image_tags,
            partitions_def=manifests_partitions,
            description="The share of images that could not be tagged, against the WARN and ERROR thresholds.",
        ),
        dg.AssetCheckSpec(
            "low_confidence_share",
            asset=image_tags,
            partitions_def=manifests_partitions,
            description="The share of tagged images whose best tag is below the low-confidence threshold.",
        ),
    ],
    ins={"image_tags": dg.AssetIn("image_tags"), "manifest": dg.AssetIn("manifest")},
)
def image_tags_checks(image_tags: pa.Table, manifest: pd.DataFrame, platform: PlatformSettings):
    """The three checks in one step: each reads the same table, and on Kubernetes each step is a pod."""
    settings = platform.settings
    yield _accounted_for(image_tags, manifest)
    metrics = quality.tag_metrics(image_tags, low_confidence=settings.low_confidence)
    rate = metrics["error_rate"]
    yield dg.AssetCheckResult(
        check_name="error_rate",
        passed=rate <= settings.error_rate_warn,
        severity=dg.AssetCheckSeverity.ERROR if rate > settings.error_rate_error else dg.AssetCheckSeverity.WARN,
        metadata={
            "error_rate": dg.MetadataValue.float(rate),
            "errors": metrics["errors"],
            "warn_above": settings.error_rate_warn,
            "error_above": settings.error_rate_error,
            "reasons": dg.MetadataValue.json(metrics["error_reasons"]),
        },
    )
    share = metrics["low_confidence_share"]
    yield dg.AssetCheckResult(
        check_name="low_confidence_share",
        passed=share <= settings.low_confidence_share_warn,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "low_confidence_share": dg.MetadataValue.float(share),
            "threshold": settings.low_confidence,
            "warn_above": settings.low_confidence_share_warn,
        },
    )


def _accounted_for(image_tags: pa.Table, manifest: pd.DataFrame) -> dg.AssetCheckResult:
    counts = quality.accounting(image_tags, manifest["image_uri"].tolist())
    problems = {k: counts[k] for k in ("missing", "duplicated", "unexpected") if counts[k]}
    return dg.AssetCheckResult(
        check_name="every_image_accounted_for",
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
