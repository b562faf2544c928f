"""The jobs the sensor launches: one manifest end to end, and the default model's registration."""

import dagster as dg

from assets.intake import manifest
from assets.model import tagger_model
from assets.partitions import manifests_partitions
from assets.publishing import published_tags
from assets.quality import tag_quality_metrics
from assets.tagging import image_tags

tag_manifest_job = dg.define_asset_job(
    "tag_manifest",
    selection=dg.AssetSelection.assets(manifest, image_tags, published_tags, tag_quality_metrics),
    partitions_def=manifests_partitions,
    description="Validate, tag, publish and measure one manifest.",
)
publish_model_job = dg.define_asset_job(
    "publish_model", selection=dg.AssetSelection.assets(tagger_model), description="Register the default model."
)
