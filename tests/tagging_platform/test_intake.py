"""The incremental manifest listing against the embedded S3 server."""

import uuid

import pytest

from tagging_platform.intake import ScanCursor, scan_manifests


@pytest.fixture
def prefix():
    return f"scan-{uuid.uuid4().hex[:8]}/"


def _put(s3, key, body=b'{"images": ["s3://images/a.jpg"]}'):
    s3.put_object(Bucket="manifests", Key=key, Body=body)


def test_new_changed_and_identical_manifests(s3, prefix):
    _put(s3, prefix + "a.json")
    _put(s3, prefix + "notes.txt", b"not a manifest")
    found, cursor = scan_manifests(s3, "manifests", prefix, ScanCursor())
    assert [o.key for o in found] == [prefix + "a.json"]

    found, cursor = scan_manifests(s3, "manifests", prefix, ScanCursor.parse(cursor.serialize()))
    assert found == []

    _put(s3, prefix + "a.json")  # identical content, same ETag
    found, cursor = scan_manifests(s3, "manifests", prefix, cursor)
    assert found == []

    _put(s3, prefix + "a.json", b'{"images": ["s3://images/b.jpg"]}')
    found, cursor = scan_manifests(s3, "manifests", prefix, cursor)
    assert [o.key for o in found] == [prefix + "a.json"]
    assert found[0].run_key.startswith(prefix + "a.json@")


def test_a_large_bucket_is_listed_a_few_keys_per_tick_and_nothing_is_missed(s3, prefix):
    for i in range(25):
        _put(s3, f"{prefix}m{i:03d}.json")
    seen, cursor, ticks = [], ScanCursor(), 0
    while True:
        found, cursor = scan_manifests(s3, "manifests", prefix, cursor, max_keys=10)
        seen += [o.key for o in found]
        ticks += 1
        if cursor.after == "":
            break
    assert ticks == 3
    assert sorted(seen) == [f"{prefix}m{i:03d}.json" for i in range(25)]

    _put(s3, f"{prefix}a-early-key.json")  # sorts before keys already passed
    later = []
    for _ in range(3):
        found, cursor = scan_manifests(s3, "manifests", prefix, cursor, max_keys=10)
        later += [o.key for o in found]
    assert later == [f"{prefix}a-early-key.json"]


def test_old_manifests_fall_behind_the_watermark_and_out_of_the_cursor(s3, prefix):
    _put(s3, prefix + "old.json")
    found, cursor = scan_manifests(s3, "manifests", prefix, ScanCursor(), now=1e12)
    assert len(found) == 1
    found, cursor = scan_manifests(s3, "manifests", prefix, cursor, now=1e12 + 10)
    assert found == [] and cursor.seen == {}
