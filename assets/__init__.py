"""The platform's assets and checks, grouped by domain: model, intake, tagging, publishing, quality, canary."""

from assets.canary import canary_predictions_match
from assets.intake import manifest
from assets.model import tagger_model
from assets.partitions import manifests_partitions
from assets.publishing import published_tags
from assets.quality import (
    image_tags_checks,
    tag_distribution_drift,
    tag_quality_history,
    tag_quality_metrics,
)
from assets.tagging import image_tags

all_assets = [tagger_model, manifest, image_tags, published_tags, tag_quality_metrics, tag_quality_history]
all_checks = [image_tags_checks, tag_distribution_drift, canary_predictions_match]

__all__ = ["all_assets", "all_checks", "manifests_partitions"]
