"""The manifest sensor: new or changed manifests in the manifest bucket become partitions and runs."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.jobs import publish_model_job, tag_manifest_job
from assets.partitions import manifests_partitions
from resources.settings import PlatformSettings
from tagging_platform import intake
from tagging_platform.settings import Settings

TAGGER_MODEL = dg.AssetKey("tagger_model")


def build_manifest_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="manifest_sensor",
        minimum_interval_seconds=settings.sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Lists s3://{settings.manifest_bucket}/{settings.manifest_prefix} a few pages per tick.",
        jobs=[tag_manifest_job, publish_model_job],
    )
    def manifest_sensor(context: dg.SensorEvaluationContext, s3: S3Resource, platform: PlatformSettings):
        return evaluate(context, s3.get_client(), platform.settings)

    return manifest_sensor


def evaluate(context: dg.SensorEvaluationContext, client, settings: Settings) -> dg.SensorResult | dg.SkipReason:
    # Tagging needs a registered model: the first tick registers it and holds manifests back until then.
    if context.instance.get_latest_materialization_event(TAGGER_MODEL) is None:
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key="register-default-model", job_name=publish_model_job.name)],
            skip_reason=None,
        )
    cursor = intake.ScanCursor.parse(context.cursor)
    found, cursor = intake.scan_manifests(
        client, settings.manifest_bucket, settings.manifest_prefix, cursor, max_keys=settings.sensor_max_keys_per_tick
    )
    known = set(context.instance.get_dynamic_partitions(manifests_partitions.name))
    new_partitions: list[str] = []
    run_requests = []
    for obj in found:
        partition = intake.partition_for(obj, settings.manifest_prefix)
        intake.record_partition(client, settings.warehouse_bucket, partition, obj)
        if partition not in known and partition not in new_partitions:
            new_partitions.append(partition)
        run_requests.append(
            dg.RunRequest(
                run_key=obj.run_key,
                job_name=tag_manifest_job.name,
                partition_key=partition,
                tags={"tagging/manifest": obj.uri, "tagging/manifest_etag": obj.etag},
            )
        )
    if run_requests:
        context.log.info(f"{len(run_requests)} manifest(s): {', '.join(r.partition_key for r in run_requests)}")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[manifests_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=cursor.serialize(),
    )
