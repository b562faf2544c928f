"""The canary schedule, ticked against the embedded S3 server with a real Dagster instance."""

import json
from datetime import UTC, datetime

import dagster as dg

from tagging_platform import canary, intake


def _tick(definitions, instance, at: datetime):
    schedule = definitions.resolve_schedule_def("canary_schedule")
    # An instance ref, as the daemon gives: the run request's partition is then checked against the instance.
    with dg.build_schedule_context(
        instance_ref=instance.get_ref(),
        scheduled_execution_time=at,
        resources=dict(definitions.resources),
        repository_def=definitions.get_repository_def(),
    ) as context:
        return schedule.evaluate_tick(context)


def test_the_canary_waits_until_the_models_are_registered(definitions, instance):
    data = _tick(definitions, instance, datetime(2026, 11, 24, 5, 0, tzinfo=UTC))
    assert data.run_requests == []
    assert "model registry" in data.skip_message
    assert canary.PARTITION not in instance.get_dynamic_partitions("manifests")


def test_a_tick_uploads_the_canary_and_requests_a_tag_manifest_run_of_its_batch(
    definitions, registered_instance, s3, settings
):
    instance = registered_instance
    data = _tick(definitions, instance, datetime(2026, 11, 24, 5, 30, tzinfo=UTC))

    [request] = data.run_requests
    assert definitions.resolve_schedule_def("canary_schedule").job_name == "tag_manifest"
    assert request.partition_key == canary.PARTITION
    assert request.run_key == "canary-20261124T053000Z"
    assert request.tags["dagster/partition"] == canary.PARTITION
    assert request.tags["dagster/schedule_name"] == "canary_schedule"
    assert instance.get_dynamic_partitions("manifests") == [canary.PARTITION]

    record = intake.read_partition(s3, settings.warehouse_bucket, canary.PARTITION)
    assert (
        record["manifest"]
        == request.tags["tagging/manifest"]
        == f"s3://{settings.warehouse_bucket}/{canary.MANIFEST_KEY}"
    )
    body = json.loads(s3.get_object(Bucket=record["bucket"], Key=record["key"])["Body"].read())
    expected = canary.photographs(canary.load_expectations())
    assert body["images"] == [f"{settings.canary_image_prefix}{name}" for name in expected]
    assert body["reuse"] is False and body["id"] == "canary-20261124T053000Z"
    for name, data_bytes in expected.items():
        assert s3.get_object(Bucket="images", Key=f"canary/{name}")["Body"].read() == data_bytes

    # The next tick: a run of its own (new run key, new manifest version) in the same batch.
    later = _tick(definitions, instance, datetime(2026, 11, 24, 6, 0, tzinfo=UTC))
    [next_request] = later.run_requests
    assert next_request.run_key == "canary-20261124T060000Z"
    assert next_request.tags["tagging/manifest_etag"] != request.tags["tagging/manifest_etag"]
    assert instance.get_dynamic_partitions("manifests") == [canary.PARTITION]


def test_a_tick_while_the_previous_canary_is_unfinished_starts_nothing(definitions, registered_instance):
    instance = registered_instance
    [first] = _tick(definitions, instance, datetime(2026, 11, 24, 7, 0, tzinfo=UTC)).run_requests
    # What the daemon makes of that request: a run of the canary's batch, not started yet.
    run = instance.create_run_for_job(definitions.resolve_job_def("tag_manifest"), tags=first.tags)

    data = _tick(definitions, instance, datetime(2026, 11, 24, 7, 30, tzinfo=UTC))
    assert data.run_requests == []
    assert data.skip_message == f"the previous canary run {run.run_id} has not finished (NOT_STARTED)"

    instance.report_run_canceled(run)
    [later] = _tick(definitions, instance, datetime(2026, 11, 24, 8, 0, tzinfo=UTC)).run_requests
    assert later.run_key == "canary-20261124T080000Z"
