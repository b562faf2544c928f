"""Publishing tag objects: parts, objects, the completion marker, and re-runs."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from tagging_platform import publishing, tags


def _table(n):
    now = datetime.now(UTC)
    rows = [
        {
            "image": f"s3://images/p/{i}.jpg",
            "position": i,
            "etag": f"e{i}",
            "status": tags.STATUS_OK if i % 5 else tags.STATUS_ERROR,
            "error": None if i % 5 else "not found: the object does not exist",
            "tags": [{"name": "tabby", "confidence": 0.9, "parents": []}] if i % 5 else None,
            "top_tag": "tabby" if i % 5 else None,
            "top_confidence": 0.9 if i % 5 else None,
            "model_name": "mobilenet_v2",
            "model_version": "sha256:abc",
            "manifest": "s3://manifests/incoming/p.json",
            "partition": "p",
            "chunk": 0,
            "run_id": "run-1",
            "tagged_at": now,
        }
        for i in range(n)
    ]
    return tags.tag_table(rows)


@pytest.fixture
def location():
    return f"s3://tags/publish-test-{uuid.uuid4().hex[:6]}/"


def _keys(s3, location):
    bucket, prefix = location[5:].split("/", 1)
    return sorted(o["Key"][len(prefix) :] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_jsonl_parts_and_a_marker_that_accounts_for_every_image(s3, location):
    marker = publishing.publish(s3, _table(25), location, fmt="jsonl", part_images=10, lineage={"run_id": "run-1"})
    assert _keys(s3, location) == ["_COMPLETE.json", "part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    assert (marker["images"], marker["tagged"], marker["errors"], marker["objects"]) == (25, 20, 5, 25)
    assert publishing.read_marker(s3, location) == marker
    lines = s3.get_object(Bucket="tags", Key=marker["parts"][0]["key"])["Body"].read().splitlines()
    first, error = json.loads(lines[1]), json.loads(lines[0])
    assert first["tags"][0]["name"] == "tabby" and first["model"] == {"name": "mobilenet_v2", "version": "sha256:abc"}
    assert error["status"] == "error" and "tags" not in error and error["error"].startswith("not found")


def test_a_smaller_rerun_replaces_parts_and_leaves_no_stale_ones(s3, location):
    publishing.publish(s3, _table(25), location, fmt="jsonl", part_images=10, lineage={})
    marker = publishing.publish(s3, _table(12), location, fmt="jsonl", part_images=10, lineage={})
    assert _keys(s3, location) == ["_COMPLETE.json", "part-00000.jsonl", "part-00001.jsonl"]
    assert marker["objects"] == 12


def test_one_object_per_image_as_an_option(s3, location):
    marker = publishing.publish(s3, _table(3), location, fmt="objects", part_images=10, lineage={})
    assert _keys(s3, location) == ["_COMPLETE.json"] + [f"objects/images/p/{i}.jpg.json" for i in range(3)]
    assert marker["objects"] == 3 and marker["files"] == 3
