"""The canary's check: the published tags of the canary batch against expectations a person wrote."""

import time

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.partitions import manifests_partitions
from assets.publishing import published_tags
from resources.settings import PlatformSettings
from tagging_platform import canary, metrics


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "canary_predictions_match",
            asset=published_tags,
            partitions_def=manifests_partitions,
            description=f"Batch {canary.PARTITION} only: every canary photograph's published tags include what a "
            "person expects in it (tagging_platform/data/canary.json).",
        )
    ],
    can_subset=True,
)
def canary_predictions_match(
    context: dg.AssetCheckExecutionContext, published_tags: dict, s3: S3Resource, platform: PlatformSettings
):
    """A check on `published_tags`, not an asset of its own, and evaluated in the canary's own tag_manifest run.

    Why a check: the canary's verdict is a judgement on a batch's output, which is what Dagster's asset
    checks are; an asset would need a run of its own (or an automation sensor) after every canary, and
    its "materializations" would be verdicts, not data. Why on `published_tags`: it reads what a customer
    reads (the objects the completion marker vouches for), so the canary covers publishing too, not only
    the model. Why in tag_manifest: the canary takes exactly the customers' path, checks included.

    A customer's batch yields no result (the check may do so: `can_subset`), so Dagster records the check
    as skipped there rather than as a pass that says nothing.
    """
    if context.partition_key != canary.PARTITION:
        return
    settings = platform.settings
    expectations = canary.load_expectations(settings.canary_expectations)
    verdicts = canary.judge(canary.published_objects(s3.get_client(), published_tags), expectations)
    drifted = [v for v in verdicts if not v.passed]
    model = published_tags["model"]
    metrics.push_canary(
        settings.metrics_pushgateway,
        passed=not drifted,
        images=len(verdicts),
        failed=len(drifted),
        model=model["name"],
        version=model["version"],
        at=time.time(),
    )
    summary = f"{len(verdicts) - len(drifted)}/{len(verdicts)} canary photographs as expected"
    yield dg.AssetCheckResult(
        passed=not drifted,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join([summary, *(v.describe() for v in drifted)]),
        metadata={
            "photographs": len(verdicts),
            "drifted": len(drifted),
            "verdicts": dg.MetadataValue.md(canary.verdicts_markdown(verdicts)),
            "drifted_images": dg.MetadataValue.json(
                [{"image": v.image, "expected": v.expected, "actual": v.actual, "error": v.error} for v in drifted]
            ),
            "model": model["name"],
            "model_version": model["version"],
            "expectations": settings.canary_expectations or f"tagging_platform/data/{canary.EXPECTATIONS_FILE}",
        },
    )
