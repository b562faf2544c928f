"""Parsing S3 event notifications exactly as S3 (and SNS) deliver them."""

import json

import pytest

from tagging_platform.events import Notification, NotificationError, parse_notification


def _record(key, event="ObjectCreated:Put", bucket="manifests", size=10, etag="abc123"):
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-23T22:11:02.278Z",
        "eventName": event,
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": etag}},
    }


def _body(*records):
    return json.dumps({"Records": list(records)})


def test_keys_arrive_url_encoded_and_are_decoded():
    [obj] = parse_notification(_body(_record("incoming%2Fa+b%2Bc%25d+%C3%A9.json")), "manifests", "incoming/").manifests
    assert obj.key == "incoming/a b+c%d é.json"
    assert obj.uri == "s3://manifests/incoming/a b+c%d é.json"
    assert obj.run_key == "incoming/a b+c%d é.json@abc123"


def test_the_test_event_announces_nothing():
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "manifests"})
    assert parse_notification(body, "manifests", "incoming/") == Notification()


def test_one_message_may_hold_several_records():
    body = _body(_record("incoming/a.json", etag="1"), _record("incoming/b.jsonl.gz", etag="2"))
    assert [o.key for o in parse_notification(body, "manifests", "incoming/").manifests] == [
        "incoming/a.json",
        "incoming/b.jsonl.gz",
    ]


@pytest.mark.parametrize(
    "record",
    [
        _record("incoming/a.json", event="ObjectRemoved:Delete"),
        _record("incoming/notes.txt"),
        _record("elsewhere/a.json"),
        _record("incoming/a.json", bucket="other-bucket"),
        _record("incoming/empty.json", size=0),
    ],
    ids=["deletion", "not-a-manifest", "outside-the-prefix", "other-bucket", "empty-object"],
)
def test_records_that_announce_no_manifest_are_ignored(record):
    assert parse_notification(_body(record), "manifests", "incoming/") == Notification()


def test_a_notification_through_sns_is_unwrapped():
    body = json.dumps({"Type": "Notification", "Message": _body(_record("incoming/a.json"))})
    assert [o.key for o in parse_notification(body, "manifests", "incoming/").manifests] == ["incoming/a.json"]


@pytest.mark.parametrize(
    "body",
    ["not json", "[1, 2]", json.dumps({"Hello": 1}), json.dumps({"Records": "x"}), "[" * 10000],
    ids=["not-json", "array", "no-records", "records-not-a-list", "deep-nesting"],
)
def test_anything_else_is_a_notification_error(body):
    with pytest.raises(NotificationError):
        parse_notification(body, "manifests", "incoming/")


def test_manifest_suffixes_match_in_any_case():
    keys = ["incoming/A.JSON", "incoming/b.JsonL", "incoming/c.JSONL.GZ", "incoming/d.Manifest.Gz", "incoming/e.TXT"]
    body = _body(*(_record(key, etag=str(n)) for n, key in enumerate(keys)))
    assert [o.key for o in parse_notification(body, "manifests", "incoming/").manifests] == keys[:4]


@pytest.mark.parametrize(
    "bad",
    [
        {"eventSource": "aws:s3"},
        "a string",
        None,
        {**_record("incoming/x.json"), "s3": {"object": {"key": "k"}}},
        {**_record("incoming/x.json"), "eventName": 5},
    ],
    ids=["no-fields", "string", "null", "no-bucket", "event-name-not-text"],
)
def test_a_malformed_record_is_set_aside_by_number_and_its_siblings_are_read(bad):
    body = _body(_record("incoming/a.json", etag="1"), bad, _record("incoming/b.json", etag="2"))
    notification = parse_notification(body, "manifests", "incoming/")
    assert [o.key for o in notification.manifests] == ["incoming/a.json", "incoming/b.json"]
    [set_aside] = notification.bad_records
    assert (set_aside.number, set_aside.record) == (2, bad)
    assert set_aside.problem.startswith("not an S3 event record: missing or malformed ")
