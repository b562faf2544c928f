"""The manifest sensors: new or changed manifests become partitions and runs, by listing or by S3 events."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.jobs import tag_manifest_job
from assets.partitions import manifests_partitions
from resources.settings import PlatformSettings
from sensors.model_registry_sensor import model_registered
from sensors.ticks import every_interval
from tagging_platform import intake, metrics
from tagging_platform.events import ManifestQueue
from tagging_platform.s3 import make_client
from tagging_platform.settings import Settings

# A tick stops taking messages well before Dagster's 60 s limit on a sensor evaluation; what is
# left waits in the queue for the next tick.
EVENTS_BUDGET_S = 10.0


def build_manifest_sensor(settings: Settings) -> dg.SensorDefinition:
    """The sensor the settings choose: both make the same partitions and runs for the same manifests."""
    return _events_sensor(settings) if settings.intake == "events" else _listing_sensor(settings)


def _listing_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=intake.LISTING_SENSOR,
        **every_interval(settings),
        description=f"Lists s3://{settings.manifest_bucket}/{settings.manifest_prefix} a few pages per tick.",
        job=tag_manifest_job,
    )
    def manifest_sensor(context: dg.SensorEvaluationContext, s3: S3Resource, platform: PlatformSettings):
        if not model_registered(context):
            return dg.SkipReason("waiting for the model registry sensor to register the models")
        settings = platform.settings
        client = s3.get_client()
        found, cursor = intake.scan_manifests(
            client,
            settings.manifest_bucket,
            settings.manifest_prefix,
            intake.ScanCursor.parse(context.cursor),
            max_keys=settings.sensor_max_keys_per_tick,
            budget_s=settings.sensor_tick_budget_s,
        )
        found, left = intake.launched_elsewhere(client, found, settings.api_launch_grace_s)
        for obj in left:
            # Listed again by the next scans until its grace is over (intake.launched_elsewhere).
            cursor.seen.pop(obj.key, None)
        if left:
            context.log.debug(f"{len(left)} manifest(s) the API launches itself, requested after their grace")
        return _result(context, client, settings, found, cursor.serialize())

    return manifest_sensor


def _events_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="manifest_events_sensor",
        **every_interval(settings),
        description=f"Reads S3 event notifications of s3://{settings.manifest_bucket}/ from SQS queue "
        f"{settings.manifest_queue}.",
        job=tag_manifest_job,
    )
    def manifest_events_sensor(context: dg.SensorEvaluationContext, s3: S3Resource, platform: PlatformSettings):
        if not model_registered(context):
            return dg.SkipReason("waiting for the model registry sensor to register the models")
        settings = platform.settings
        queue = ManifestQueue(make_client(settings, "sqs"), settings)
        # The cursor holds the messages whose runs the previous tick asked for. Dagster stores a
        # cursor only after recording that tick's run requests, so deleting them now never loses
        # one; a crash before this point redelivers them, and their run keys start nothing twice.
        cursor = EventsCursor.parse(context.cursor)
        if cursor.handled:
            queue.delete(cursor.handled)
        started = time.monotonic()
        received = queue.receive(settings.events_per_tick, EVENTS_BUDGET_S)
        for message in received:
            if message.error:
                context.log.warning(
                    f"message {message.message_id} (received {message.receive_count}x) is not an S3 event "
                    f"notification: {message.error}; it moves to {settings.manifest_dead_letter_queue} after "
                    f"{settings.max_receives} receives"
                )
            for bad in message.notification.bad_records:
                queue.set_aside(message, bad)
                context.log.warning(
                    f"message {message.message_id} record {bad.number}: {bad.problem}; copied to "
                    f"{settings.manifest_dead_letter_queue}, the message's other records are read as usual"
                )
        bad_records = sum(len(m.notification.bad_records) for m in received)
        if bad_records:
            metrics.push_bad_event_records(settings.metrics_pushgateway, cursor.bad_records + bad_records)
        dead = queue.dead_letters()
        if dead:
            context.log.warning(f"{dead} message(s) in dead-letter queue {settings.manifest_dead_letter_queue}")
        found = [obj for m in received if not m.error for obj in m.notification.manifests]
        context.log.debug(f"{len(received)} message(s), {len(found)} manifest(s) in {time.monotonic() - started:.1f} s")
        # A message with a bad record is deleted too, once its good records' runs are recorded: the bad
        # record itself is in the dead-letter queue by then.
        next_cursor = EventsCursor(
            [m.receipt_handle for m in received if not m.error], cursor.bad_records + bad_records
        )
        return _result(context, s3.get_client(), settings, found, next_cursor.serialize())

    return manifest_events_sensor


@dataclass
class EventsCursor:
    """The events sensor's cursor: the messages to delete next tick, and the bad records seen so far (a counter)."""

    handled: list[str] = field(default_factory=list)
    bad_records: int = 0

    def serialize(self) -> str:
        return json.dumps({"handled": self.handled, "bad_records": self.bad_records})

    @classmethod
    def parse(cls, raw: str | None) -> "EventsCursor":
        data = json.loads(raw or "{}")
        # Earlier versions kept the list of handled messages alone.
        return cls(handled=data) if isinstance(data, list) else cls(**data)


def _result(
    context: dg.SensorEvaluationContext, client, settings: Settings, found: list[intake.ManifestObject], cursor: str
) -> dg.SensorResult:
    """One run per manifest version (run key = key + ETag), a new partition per new manifest key.

    A small local batch's run goes in-process (intake.run_config), as when the API launches it.
    """
    known = set(context.instance.get_dynamic_partitions(manifests_partitions.name))
    unique = list({obj.run_key: obj for obj in found}.values())  # an event delivered twice in one tick
    partitions = [intake.partition_for(obj, settings.manifest_prefix) for obj in unique]
    counted = intake.worth_counting(unique)

    def prepare(partition: str, obj: intake.ManifestObject) -> dict:
        intake.record_partition(client, settings.warehouse_bucket, partition, obj)
        images = intake.images_listed(client, settings, obj) if obj.run_key in counted else None
        return intake.run_config(settings, images)

    with ThreadPoolExecutor(8) as pool:
        run_configs = list(pool.map(prepare, partitions, unique))
    new_partitions = list(dict.fromkeys(p for p in partitions if p not in known))
    run_requests = [
        dg.RunRequest(
            run_key=obj.run_key,
            job_name=tag_manifest_job.name,
            partition_key=partition,
            tags=intake.run_tags(obj, settings.manifest_prefix),
            run_config=run_config,
        )
        for obj, partition, run_config in zip(unique, partitions, run_configs, strict=True)
    ]
    if run_requests:
        shown = ", ".join(partitions[:10]) + (f" and {len(partitions) - 10} more" if len(partitions) > 10 else "")
        context.log.info(f"{len(run_requests)} manifest(s): {shown}")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[manifests_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=cursor,
    )
