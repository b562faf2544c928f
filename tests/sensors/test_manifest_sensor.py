"""The manifest sensor, ticked against the embedded S3 server with a real Dagster instance."""

import json
import uuid

import dagster as dg

from tagging_platform import intake


def _tick(definitions, instance, cursor=None, sensor_name="manifest"):
    [sensor] = [s for s in definitions.sensors if s.name.startswith(sensor_name)]  # the one the settings chose
    # An instance ref, as the daemon gives: the sensor's new partitions are then known to its run requests.
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(),
        cursor=cursor,
        resources=dict(definitions.resources),
        repository_def=definitions.get_repository_def(),
    ) as context:
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return data


def test_manifests_wait_until_the_models_are_registered(definitions, instance, s3, settings):
    s3.put_object(Bucket="manifests", Key=f"{settings.manifest_prefix}early-{uuid.uuid4().hex[:6]}.json", Body=b"{}")
    data = _tick(definitions, instance)
    assert data.run_requests == [] and data.dynamic_partitions_requests == []
    assert "model registry" in data.skip_message


def test_new_manifest_then_nothing_then_a_changed_manifest(definitions, registered_instance, s3, settings):
    instance = registered_instance
    data = _tick(definitions, instance)  # whatever earlier tests left in the bucket
    cursor = data.cursor
    batch = f"sensor-{uuid.uuid4().hex[:6]}"
    key = f"{settings.manifest_prefix}{batch}.json"
    s3.put_object(Bucket="manifests", Key=key, Body=json.dumps({"images": ["s3://images/a.jpg"]}).encode())

    data = _tick(definitions, instance, cursor)
    assert [(r.job_name, r.partition_key) for r in data.run_requests] == [("tag_manifest", batch)]
    first_run_key = data.run_requests[0].run_key
    assert intake.CUSTOMER_TAG not in data.run_requests[0].tags  # straight under the prefix: no customer's folder
    assert batch in instance.get_dynamic_partitions("manifests")
    record = intake.read_partition(s3, settings.warehouse_bucket, batch)
    assert record["manifest"] == f"s3://manifests/{key}"

    data = _tick(definitions, instance, data.cursor)
    assert data.run_requests == []

    s3.put_object(Bucket="manifests", Key=key, Body=json.dumps({"images": ["s3://images/b.jpg"]}).encode())
    data = _tick(definitions, instance, data.cursor)
    assert [r.partition_key for r in data.run_requests] == [batch]
    assert data.run_requests[0].run_key != first_run_key
    assert data.dynamic_partitions_requests == []


def test_a_run_is_tagged_with_the_customer_whose_folder_holds_its_manifest(
    definitions, registered_instance, s3, settings
):
    data = _tick(definitions, registered_instance)  # whatever earlier tests left in the bucket
    customer = f"cust-{uuid.uuid4().hex[:6]}"
    s3.put_object(
        Bucket="manifests",
        Key=f"{settings.manifest_prefix}{customer}/b.json",
        Body=json.dumps({"images": ["s3://images/a.jpg"]}).encode(),
    )
    [request] = _tick(definitions, registered_instance, data.cursor).run_requests
    assert request.tags[intake.CUSTOMER_TAG] == customer


def test_a_manifest_the_api_launches_is_left_alone_until_its_grace_is_over(
    definitions, registered_instance, s3, settings
):
    instance = registered_instance
    cursor = _tick(definitions, instance).cursor  # whatever earlier tests left in the bucket
    body = json.dumps({"images": ["s3://images/a.jpg"]}).encode()
    launched = f"{settings.manifest_prefix}api-{uuid.uuid4().hex[:6]}.json"
    dropped = f"{settings.manifest_prefix}dropped-{uuid.uuid4().hex[:6]}.json"
    s3.put_object(Bucket="manifests", Key=launched, Body=body, Metadata={intake.LAUNCHED_BY: "api"})
    s3.put_object(Bucket="manifests", Key=dropped, Body=body)

    # A tick between the API's upload and its launch: no run request of its own for the API's manifest, and
    # the manifest is not remembered as seen, so the next scans list it again.
    data = _tick(definitions, instance, cursor)
    assert [r.partition_key for r in data.run_requests] == [dropped.removeprefix(settings.manifest_prefix)[:-5]]
    assert launched not in intake.ScanCursor.parse(data.cursor).seen
    data = _tick(definitions, instance, data.cursor)
    assert data.run_requests == []

    # After the grace the sensor requests it as any other manifest (same run key as the API's launch).
    [obj] = [
        o
        for o in intake.scan_manifests(s3, "manifests", settings.manifest_prefix, intake.ScanCursor())[0]
        if o.key == launched
    ]
    now = obj.last_modified + settings.api_launch_grace_s + 1
    assert intake.launched_elsewhere(s3, [obj], settings.api_launch_grace_s, now=now) == ([obj], [])
    assert intake.launched_elsewhere(s3, [obj], settings.api_launch_grace_s, now=obj.last_modified + 1) == ([], [obj])


def test_a_small_one_chunk_manifest_runs_in_process_and_any_other_keeps_a_process_per_step(
    definitions, registered_instance, s3, settings
):
    cursor = _tick(definitions, registered_instance).cursor  # whatever earlier tests left in the bucket
    batch = f"exec-{uuid.uuid4().hex[:6]}"
    manifests = {
        # The test settings plan at most 4 images a chunk.
        "small": json.dumps({"images": [f"s3://images/{i}.jpg" for i in range(4)]}).encode(),
        "two-chunks": json.dumps({"images": [f"s3://images/{i}.jpg" for i in range(5)]}).encode(),
        "broken": b"{not json",
    }
    for name, body in manifests.items():
        s3.put_object(Bucket="manifests", Key=f"{settings.manifest_prefix}{batch}-{name}.json", Body=body)
    data = _tick(definitions, registered_instance, cursor)
    configs = {r.partition_key.removeprefix(f"{batch}-"): r.run_config for r in data.run_requests}
    assert configs == {"small": intake.IN_PROCESS, "two-chunks": {}, "broken": {}}
