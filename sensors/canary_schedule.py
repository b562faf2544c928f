"""The canary schedule: known photographs and a manifest of them uploaded, then a tag_manifest run of the canary batch."""

import json
import time

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.jobs import tag_manifest_job
from assets.partitions import manifests_partitions
from resources.settings import PlatformSettings
from sensors.model_registry_sensor import model_registered
from tagging_platform import canary, intake
from tagging_platform.s3 import split_uri
from tagging_platform.settings import Settings

UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def build_canary_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """Always defined, so an operator can start it from the UI; running from the start only when enabled."""

    @dg.schedule(
        name="canary_schedule",
        cron_schedule=settings.canary_cron,
        execution_timezone="UTC",
        job=tag_manifest_job,
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.canary_enabled
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Tags the canary's known photographs as batch {canary.PARTITION}, through the customers' path; "
        "its check canary_predictions_match compares the published tags with what a person expects.",
    )
    def canary_schedule(context: dg.ScheduleEvaluationContext, s3: S3Resource, platform: PlatformSettings):
        if not model_registered(context):
            return dg.SkipReason("waiting for the model registry sensor to register the models")
        # Canaries never pile up behind a slow one (a GPU queue, a stuck run): one at a time, the next tick
        # starts the next. Two at once would also publish to the same place.
        unfinished = context.instance.get_run_records(
            dg.RunsFilter(tags={"dagster/partition": canary.PARTITION}, statuses=UNFINISHED), limit=1
        )
        if unfinished:
            run = unfinished[0].dagster_run
            return dg.SkipReason(f"the previous canary run {run.run_id} has not finished ({run.status.value})")
        settings = platform.settings
        client = s3.get_client()
        # Uploaded every time: the bytes never change (nor their ETags), and a deleted photograph comes back.
        bucket, prefix = split_uri(settings.canary_image_prefix)
        uris = []
        for name, data in canary.photographs(canary.load_expectations(settings.canary_expectations)).items():
            client.put_object(Bucket=bucket, Key=prefix + name, Body=data)
            uris.append(f"s3://{bucket}/{prefix}{name}")
        label = context.scheduled_execution_time.strftime("%Y%m%dT%H%M%SZ")
        body = json.dumps(canary.manifest(uris, label)).encode()
        etag = client.put_object(Bucket=settings.warehouse_bucket, Key=canary.MANIFEST_KEY, Body=body)["ETag"].strip(
            '"'
        )
        obj = intake.ManifestObject(settings.warehouse_bucket, canary.MANIFEST_KEY, etag, len(body), time.time())
        intake.record_partition(client, settings.warehouse_bucket, canary.PARTITION, obj)
        # A schedule cannot return dynamic partition requests as a sensor does (Dagster 1.13 takes only run
        # requests from it) and a run request for a partition that does not exist is refused, so the schedule
        # adds the canary's partition itself, the first time.
        if not context.instance.has_dynamic_partition(manifests_partitions.name, canary.PARTITION):
            context.instance.add_dynamic_partitions(manifests_partitions.name, [canary.PARTITION])
        return dg.RunRequest(
            run_key=f"canary-{label}",
            partition_key=canary.PARTITION,
            tags={"tagging/manifest": obj.uri, "tagging/manifest_etag": etag, "tagging/canary": label},
        )

    return canary_schedule
