"""The published_tags asset: one JSON object per image in the customer's output location, then a marker."""

from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster_aws.s3 import S3Resource

from assets.partitions import BATCH_ASSET
from resources.settings import PlatformSettings
from tagging_platform import output_formats, publishing
from tagging_platform.models import ModelRef


@dg.asset(
    **BATCH_ASSET,
    group_name="publishing",
    kinds={"s3", "json"},
    description="A record for every image in the batch's output format (JSON Lines parts of tag objects by default; "
    "DetectLabels responses or a Ground Truth manifest on request) and a completion marker written last.",
)
def published_tags(
    context: dg.AssetExecutionContext,
    image_tags: pa.Table,
    manifest: pd.DataFrame,
    s3: S3Resource,
    platform: PlatformSettings,
) -> dg.Output[dict]:
    settings = platform.settings
    model_versions = set(image_tags.column("model_version").to_pylist())
    if len(model_versions) != 1:
        raise dg.Failure(f"image_tags mixes model versions {sorted(model_versions)}: refusing to publish")
    model = ModelRef(image_tags.column("model_name")[0].as_py(), model_versions.pop(), settings.model_bucket)
    location = publishing.output_location(manifest.attrs["output"], context.partition_key, model)
    client = s3.get_client()
    # A re-tag with a new model version: the old version's output stays, and the new marker points at it.
    supersedes = publishing.superseded(client, manifest.attrs["output"], context.partition_key, model)
    marker = publishing.publish(
        client,
        image_tags,
        location,
        # A manifest read before batches could choose their format has none: the deployment's applies.
        fmt=manifest.attrs.get("output_format") or settings.publish_format,
        part_images=settings.publish_part_images,
        options=output_formats.Options(
            max_labels=manifest.attrs.get("max_labels"),
            min_confidence=manifest.attrs.get("min_confidence"),
            job_name=f"tagging-platform/{context.partition_key}",
            creation_date=datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds"),
        ),
        lineage={
            "manifest": manifest.attrs["manifest"],
            "manifest_etag": manifest.attrs["etag"],
            "partition": context.partition_key,
            "run_id": context.run_id,
            "model": {"name": model.name, "version": model.version},
            "supersedes": supersedes,
        },
    )
    context.log.info(f"published {marker['objects']} tag objects to {location}")
    return dg.Output(
        marker,
        metadata={
            "location": dg.MetadataValue.path(location),
            "marker": dg.MetadataValue.path(location + publishing.MARKER_NAME),
            "objects": marker["objects"],
            "files": marker["files"],
            "tagged": marker["tagged"],
            "errors": marker["errors"],
            **({"supersedes": dg.MetadataValue.path(supersedes["location"])} if supersedes else {}),
        },
    )
