"""The model registry sensor: a model registered in the model bucket becomes a tagger_model materialization."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.jobs import publish_model_job
from assets.model import REGISTRY_FINGERPRINT
from resources.settings import PlatformSettings
from sensors.ticks import every_interval
from tagging_platform import models
from tagging_platform.settings import Settings

TAGGER_MODEL = dg.AssetKey("tagger_model")


def build_model_registry_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="model_registry_sensor",
        **every_interval(settings),
        description=f"Materializes tagger_model when s3://{settings.model_bucket}/ changes: built-in models on the "
        "first tick, then every `tagging-platform model register`.",
        job=publish_model_job,
    )
    def model_registry_sensor(context: dg.SensorEvaluationContext, s3: S3Resource, platform: PlatformSettings):
        fingerprint = models.registry_fingerprint(models.list_models(s3.get_client(), platform.settings.model_bucket))
        latest = context.instance.get_latest_materialization_event(TAGGER_MODEL)
        seen = latest and latest.asset_materialization.metadata.get(REGISTRY_FINGERPRINT)
        if seen is not None and seen.value == fingerprint:
            return dg.SkipReason(f"the registry is as tagger_model last saw it ({fingerprint})")
        # The key names the registry's state and the materialization it differs from: asked for once.
        after = latest.run_id if latest else "none"
        return dg.RunRequest(run_key=f"registry-{fingerprint}-after-{after}", job_name=publish_model_job.name)

    return model_registry_sensor


def model_registered(context: dg.SensorEvaluationContext) -> bool:
    """Tagging needs a registered model: manifests wait until tagger_model has been materialized once."""
    return context.instance.get_latest_materialization_event(TAGGER_MODEL) is not None
