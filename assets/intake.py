"""The manifest asset: a customer's manifest read from S3, validated, and normalised to a table."""

import json

import dagster as dg
import pandas as pd
from dagster_aws.s3 import S3Resource

from assets.partitions import BATCH_ASSET
from resources.settings import PlatformSettings
from tagging_platform import intake, models
from tagging_platform.manifests import ManifestError, parse_manifest
from tagging_platform.s3 import split_uri


@dg.asset(
    **BATCH_ASSET,
    group_name="intake",
    kinds={"s3", "pandas"},
    description="The images a manifest lists, validated, one row per image (image_uri, position).",
)
def manifest(context: dg.AssetExecutionContext, s3: S3Resource, platform: PlatformSettings) -> dg.Output[pd.DataFrame]:
    settings = platform.settings
    client = s3.get_client()
    record = intake.read_partition(client, settings.warehouse_bucket, context.partition_key)
    response = client.get_object(Bucket=record["bucket"], Key=record["key"])
    etag = response["ETag"].strip('"')
    try:
        parsed = parse_manifest(
            # The body as a stream: a JSON Lines manifest is parsed a piece at a time, never held whole.
            response["Body"],
            record["manifest"],
            allowed_image_prefixes=settings.allowed_image_prefixes,
            allowed_output_prefixes=settings.allowed_output_prefixes,
            max_images=settings.max_manifest_images,
            max_bytes=settings.max_manifest_bytes,
        )
        model = models.resolve_model(client, settings.model_bucket, parsed.model) if parsed.model else None
    except (ManifestError, models.ModelError) as exc:
        _report_rejection(client, settings.output_root + context.partition_key + "/", record, exc)
        # The same manifest is rejected the same way every time: keep the instance's run retries off this run.
        context.instance.add_run_tags(context.run_id, {"dagster/retry_on_asset_or_op_failure": "false"})
        raise dg.Failure(
            description=f"manifest {record['manifest']} rejected: {exc}",
            metadata={"manifest": record["manifest"], "etag": etag, "error": str(exc)},
            allow_retries=False,
        ) from exc
    # Where its chunks run: the k8s step handler gives a CPU-only model CPU pods (executors.py).
    profile = models.read_profile(
        client, model or models.resolve_model(client, settings.model_bucket, settings.default_model)
    )
    table = parsed.table()
    table.attrs = {
        "manifest": parsed.source,
        "etag": etag,
        "format": parsed.format,
        "id": parsed.id,
        "model": model.as_dict() if model else None,
        "output": parsed.output or settings.output_root,
        "reuse": parsed.reuse,
        "output_format": parsed.output_format or settings.publish_format,
        "max_labels": parsed.max_labels,
        "min_confidence": parsed.min_confidence,
    }
    return dg.Output(
        table,
        data_version=dg.DataVersion(etag),
        metadata={
            "manifest": dg.MetadataValue.path(parsed.source),
            "etag": etag,
            "format": parsed.format,
            "images": len(table),
            "model": model.name if model else "default",
            "reuse": parsed.reuse,
            "output": dg.MetadataValue.path(table.attrs["output"]),
            "output_format": table.attrs["output_format"],
            "accelerator": profile.accelerator,
            "memory": profile.memory,
        },
    )


def _report_rejection(client, location: str, record: dict, exc: Exception) -> None:
    """Customers watch their output location: a rejected manifest leaves its reason there."""
    bucket, prefix = split_uri(location)
    body = {"manifest": record["manifest"], "etag": record["etag"], "status": "rejected", "error": str(exc)}
    client.put_object(Bucket=bucket, Key=prefix + "_REJECTED.json", Body=json.dumps(body, indent=2).encode())
