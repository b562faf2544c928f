"""The S3-event intake: real notifications from the embedded S3 server through its SQS queue, a real instance."""

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tagging_platform import intake
from tagging_platform.events import configure_notifications
from tagging_platform.s3 import make_client
from tagging_platform.settings import Settings
from tests.sensors.test_manifest_sensor import _tick

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
MANIFEST = json.dumps({"images": ["s3://images/a.jpg"]}).encode()


@pytest.fixture(scope="module")
def events_settings(embedded_s3, s3):
    settings = Settings.from_env(
        {
            **os.environ,
            "TP_INTAKE": "events",
            "TP_MANIFEST_PREFIX": "events/",
            "TP_MAX_RECEIVES": "2",
            "TP_QUEUE_VISIBILITY_S": "30",
        }
    )
    configure_notifications(s3, make_client(settings, "sqs"), settings)
    yield settings
    s3.put_bucket_notification_configuration(Bucket=settings.manifest_bucket, NotificationConfiguration={})


@pytest.fixture(scope="module")
def events_definitions(events_settings):
    from definitions import build_definitions

    return build_definitions(events_settings)


@pytest.fixture(scope="module")
def sqs(events_settings):
    return make_client(events_settings, "sqs")


@pytest.fixture
def queue_url(sqs, events_settings):
    url = sqs.get_queue_url(QueueName=events_settings.manifest_queue)["QueueUrl"]
    _drain(sqs, url)
    return url


def _drain(sqs, url):
    """Empty a queue left by an earlier test (SQS allows one PurgeQueue a minute)."""
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages"):
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def _queue_counts(sqs, url):
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_a_key_with_spaces_plus_unicode_and_percent_is_read_as_itself(
    events_definitions, registered_instance, s3, sqs, queue_url, events_settings
):
    key = f"events/{uuid.uuid4().hex[:6]} a+b%20c é.json"
    s3.put_object(Bucket="manifests", Key=key, Body=MANIFEST)
    data = _tick(events_definitions, registered_instance)
    [request] = data.run_requests
    record = intake.read_partition(s3, events_settings.warehouse_bucket, request.partition_key)
    assert record["key"] == key
    assert s3.get_object(Bucket=record["bucket"], Key=record["key"])["Body"].read() == MANIFEST
    assert request.tags["tagging/manifest"] == f"s3://manifests/{key}"
    _tick(events_definitions, registered_instance, data.cursor)
    assert _queue_counts(sqs, queue_url) == (0, 0)


def test_a_message_is_deleted_only_on_the_tick_after_its_run_was_requested(
    events_definitions, registered_instance, s3, sqs, queue_url
):
    s3.put_object(Bucket="manifests", Key=f"events/{uuid.uuid4().hex[:6]}.json", Body=MANIFEST)
    first = _tick(events_definitions, registered_instance)
    assert len(first.run_requests) == 1
    assert _queue_counts(sqs, queue_url) == (0, 1)  # received, not deleted: a crash now redelivers it
    second = _tick(events_definitions, registered_instance, first.cursor)
    assert second.run_requests == []
    assert _queue_counts(sqs, queue_url) == (0, 0)


def test_duplicates_several_records_deletions_test_events_and_other_keys(
    events_definitions, registered_instance, s3, sqs, queue_url, events_settings
):
    a, b = (f"events/{uuid.uuid4().hex[:6]}-{n}.json" for n in "ab")
    s3.put_object(Bucket="manifests", Key=a, Body=MANIFEST)
    s3.put_object(Bucket="manifests", Key="events/readme.txt", Body=b"not a manifest")
    [delivered] = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1)["Messages"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=delivered["ReceiptHandle"])
    record_a = json.loads(delivered["Body"])["Records"][0]
    record_b = json.loads(json.dumps(record_a).replace(a.split("/")[1], b.split("/")[1]))
    deleted = {**record_a, "eventName": "ObjectRemoved:Delete"}
    for body in (
        json.dumps({"Records": [record_a, record_b]}),  # several records in one message
        json.dumps({"Records": [record_a]}),  # SQS delivering the same event again
        json.dumps({"Records": [deleted]}),
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "manifests"}),
    ):
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)

    data = _tick(events_definitions, registered_instance)
    keys = sorted(r.tags["tagging/manifest"] for r in data.run_requests)
    assert keys == sorted([f"s3://manifests/{a}", f"s3://manifests/{b}"])
    assert len({r.run_key for r in data.run_requests}) == 2
    _tick(events_definitions, registered_instance, data.cursor)
    assert _queue_counts(sqs, queue_url) == (0, 0)


def test_a_poison_message_lands_in_the_dead_letter_queue(
    events_definitions, registered_instance, sqs, queue_url, events_settings
):
    dead_url = sqs.get_queue_url(QueueName=events_settings.manifest_dead_letter_queue)["QueueUrl"]
    _drain(sqs, dead_url)
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"VisibilityTimeout": "1"})
    try:
        sqs.send_message(QueueUrl=queue_url, MessageBody="{this is not an S3 event")
        cursor = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            data = _tick(events_definitions, registered_instance, cursor)
            cursor = data.cursor
            assert data.run_requests == []
            if _queue_counts(sqs, dead_url)[0] == 1:
                break
            time.sleep(1.1)
        [dead] = sqs.receive_message(QueueUrl=dead_url, MaxNumberOfMessages=10)["Messages"]
        assert dead["Body"] == "{this is not an S3 event"
        assert _queue_counts(sqs, queue_url) == (0, 0)
    finally:
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"VisibilityTimeout": "30"})


def test_a_bad_record_is_set_aside_and_the_good_records_beside_it_start_their_runs(
    events_definitions, registered_instance, s3, sqs, queue_url, events_settings, capfd
):
    dead_url = sqs.get_queue_url(QueueName=events_settings.manifest_dead_letter_queue)["QueueUrl"]
    _drain(sqs, dead_url)
    a, b = (f"events/{uuid.uuid4().hex[:6]}-{n}.JSON" for n in "ab")  # suffixes in capitals
    s3.put_object(Bucket="manifests", Key=a, Body=MANIFEST)
    [delivered] = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1)["Messages"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=delivered["ReceiptHandle"])
    record_a = json.loads(delivered["Body"])["Records"][0]
    record_b = json.loads(json.dumps(record_a).replace(a.split("/")[1], b.split("/")[1]))
    bad = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"object": {"key": "x.json"}}}
    message_id = sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [record_a, bad, record_b]}))[
        "MessageId"
    ]

    data = _tick(events_definitions, registered_instance)
    assert sorted(r.tags["tagging/manifest"] for r in data.run_requests) == sorted(
        [f"s3://manifests/{a}", f"s3://manifests/{b}"]
    )
    assert f"message {message_id} record 2: not an S3 event record" in capfd.readouterr().err
    [dead] = sqs.receive_message(QueueUrl=dead_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])["Messages"]
    assert json.loads(dead["Body"]) == {"Records": [bad]}
    assert dead["MessageAttributes"]["SourceMessageId"]["StringValue"] == message_id
    assert dead["MessageAttributes"]["RecordNumber"]["StringValue"] == "2"
    assert json.loads(data.cursor)["bad_records"] == 1
    assert _queue_counts(sqs, queue_url) == (0, 1)  # kept until the good records' runs are recorded
    _tick(events_definitions, registered_instance, data.cursor)
    assert _queue_counts(sqs, queue_url) == (0, 0)


def test_a_burst_of_a_thousand_manifests_is_taken_once_each_in_short_ticks(
    events_definitions, registered_instance, instance, s3, sqs, queue_url, events_settings
):
    from concurrent.futures import ThreadPoolExecutor

    burst = f"events/burst-{uuid.uuid4().hex[:6]}/"
    keys = [f"{burst}m{i:04d}.json" for i in range(1000)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket="manifests", Key=k, Body=MANIFEST), keys))

    requests, event_ticks, cursor = [], [], None
    while len(requests) < len(keys) and len(event_ticks) < 20:
        started = time.perf_counter()
        data = _tick(events_definitions, registered_instance, cursor)
        event_ticks.append(time.perf_counter() - started)
        cursor = data.cursor
        requests += data.run_requests
    _tick(events_definitions, registered_instance, cursor)
    assert sorted(r.tags["tagging/manifest"] for r in requests) == [f"s3://manifests/{k}" for k in keys]
    assert len({r.run_key for r in requests}) == len({r.partition_key for r in requests}) == 1000
    assert {r.partition_key for r in requests} <= set(registered_instance.get_dynamic_partitions("manifests"))
    assert max(event_ticks) < 30

    # The listing sensor over the same 1,000 manifests, on an instance that has never seen them.
    from definitions import build_definitions

    listing = build_definitions(Settings.from_env({**os.environ, "TP_MANIFEST_PREFIX": burst}))
    assert listing.resolve_job_def("publish_model").execute_in_process(instance=instance).success
    started = time.perf_counter()
    listed = _tick(listing, instance)
    listing_tick_s = time.perf_counter() - started
    assert len(listed.run_requests) == 1000

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "intake.json").write_text(
        json.dumps(
            {
                "manifests": len(keys),
                "events": {
                    "ticks": len(event_ticks),
                    "tick_s": [round(t, 2) for t in event_ticks],
                    "max_tick_s": round(max(event_ticks), 2),
                    "run_requests": len(requests),
                    "duplicates": len(requests) - len({r.run_key for r in requests}),
                },
                "listing": {"ticks": 1, "tick_s": round(listing_tick_s, 2), "run_requests": len(listed.run_requests)},
                "sensor_limit_s": 60,
            },
            indent=2,
        )
    )
