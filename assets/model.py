"""The tagger model asset: the default model's artifact, labels and card, registered in the model bucket."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from resources.settings import PlatformSettings
from tagging_platform import models


@dg.asset(
    group_name="model",
    io_manager_key="warehouse_io_manager",
    kinds={"pytorch", "s3"},
    owners=["team:ml-platform"],
    description="The default tagging model, registered in the model bucket; its data version is its content hash.",
)
def tagger_model(context: dg.AssetExecutionContext, s3: S3Resource, platform: PlatformSettings) -> dg.Output[dict]:
    settings = platform.settings
    card, artifact = models.builtin_model()
    ref = models.publish_model(s3.get_client(), settings.model_bucket, card, artifact)
    context.log.info(f"registered {ref.name} {ref.version} in s3://{ref.bucket}/{card.prefix}")
    return dg.Output(
        ref.as_dict(),
        data_version=dg.DataVersion(ref.version),
        metadata={
            "model": ref.name,
            "version": ref.version,
            "classes": len(card.labels),
            "artifact": dg.MetadataValue.path(f"s3://{ref.bucket}/{card.prefix}model.pt"),
            "card": dg.MetadataValue.json(card.as_dict() | {"labels_key": card.prefix + "labels.json"}),
        },
    )
