"""The incremental manifest listing against the embedded S3 server, and what a manifest's run is launched with."""

import gzip
import json
import uuid

import pytest

from tagging_platform import intake
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


def test_manifest_suffixes_are_listed_in_any_case(s3, prefix):
    keys = [prefix + name for name in ("A.JSON", "b.Jsonl.GZ", "c.MANIFEST", "d.TXT")]
    for key in keys:
        _put(s3, key)
    found, _ = scan_manifests(s3, "manifests", prefix, ScanCursor())
    assert [o.key for o in found] == keys[:3]


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


class _SlowListing:
    """The S3 client in pages of at most `page_keys` keys, each moving a clock on by `page_s`, as a large bucket's do."""

    def __init__(self, s3, page_keys: int, page_s: float) -> None:
        self.s3, self.page_keys, self.page_s = s3, page_keys, page_s
        self.now, self.pages = 0.0, 0

    def list_objects_v2(self, **kwargs):
        self.now += self.page_s
        self.pages += 1
        return self.s3.list_objects_v2(**{**kwargs, "MaxKeys": min(kwargs["MaxKeys"], self.page_keys)})

    def clock(self) -> float:
        return self.now


def _scan_in_ticks(listing: _SlowListing, prefix: str, **limits) -> tuple[list[str], list[int]]:
    keys, cursor, pages_per_tick = [], ScanCursor(), []
    while not pages_per_tick or cursor.after:
        before = listing.pages
        found, cursor = scan_manifests(listing, "manifests", prefix, cursor, clock=listing.clock, **limits)
        pages_per_tick.append(listing.pages - before)
        keys += [o.key for o in found]
    return keys, pages_per_tick


def test_a_tick_stops_after_the_page_that_runs_out_its_budget_and_the_next_resumes_there(s3, prefix):
    for i in range(12):
        _put(s3, f"{prefix}m{i:03d}.json")
    everything = [f"{prefix}m{i:03d}.json" for i in range(12)]
    assert _scan_in_ticks(_SlowListing(s3, page_keys=5, page_s=2.0), prefix) == (everything, [3])
    # 2 s per page against a 3 s budget: the second page crosses it and ends the tick.
    keys, pages_per_tick = _scan_in_ticks(_SlowListing(s3, page_keys=5, page_s=2.0), prefix, budget_s=3.0)
    assert (keys, pages_per_tick) == (everything, [2, 1])


def test_the_cursor_remembers_only_what_the_next_scan_could_list_again(s3, prefix):
    _put(s3, prefix + "recent.json")
    found, cursor = scan_manifests(s3, "manifests", prefix, ScanCursor(), now=1e12)
    # Changed long before this scan's start minus the clock skew: behind the next watermark already.
    assert [o.key for o in found] == [prefix + "recent.json"] and cursor.seen == {}
    found, cursor = scan_manifests(s3, "manifests", prefix, ScanCursor())
    assert list(cursor.seen) == [prefix + "recent.json"]


def test_only_a_local_one_chunk_batch_within_the_limit_runs_in_process(settings):
    # The test settings plan at most 4 images a chunk.
    assert intake.run_config(settings, 4) == intake.IN_PROCESS
    assert intake.run_config(settings, 5) == {}  # two chunks: each its own step process, side by side
    assert intake.run_config(settings.replace(in_process_max_images=3), 4) == {}
    assert intake.run_config(settings.replace(in_process_max_images=0), 1) == {}
    assert intake.run_config(settings.replace(deployment="k8s"), 4) == {}  # a pod per step there, always
    assert intake.run_config(settings, None) == intake.run_config(settings, 0) == {}


def _listed(s3, settings, body: bytes, suffix: str = ".json") -> int | None:
    key = f"count-{uuid.uuid4().hex[:8]}{suffix}"
    s3.put_object(Bucket="manifests", Key=key, Body=body)
    [obj] = [o for o in scan_manifests(s3, "manifests", key, ScanCursor())[0] if o.key == key]
    return intake.images_listed(s3, settings, obj)


def test_the_sensor_counts_a_small_manifests_images_in_any_format_and_gives_up_on_the_rest(s3, settings):
    images = [f"s3://images/{i}.jpg" for i in range(3)]
    assert _listed(s3, settings, json.dumps({"images": images}).encode()) == 3
    lines = "".join(json.dumps({"source-ref": uri}) + "\n" for uri in images).encode()
    assert _listed(s3, settings, gzip.compress(lines), ".jsonl.gz") == 3
    # Not valid, or more images than an in-process run takes: no count, and the run keeps a process per step
    # (its manifest step reports what is wrong with an invalid manifest, as it always did).
    assert _listed(s3, settings, b"{not json") is None
    assert _listed(s3, settings.replace(in_process_max_images=2), json.dumps({"images": images}).encode()) is None
    # A manifest larger than the sensor reads is never read.
    obj = intake.ManifestObject("manifests", "absent.json", "0" * 32, intake.COUNT_MAX_BYTES + 1, 0.0)
    assert intake.images_listed(s3, settings, obj) is None


def test_a_tick_counts_the_images_of_manifests_only_while_their_bytes_fit_its_budget():
    def manifest(name: str, size: int) -> intake.ManifestObject:
        return intake.ManifestObject("manifests", f"{name}.json", "0" * 32, size, 0.0)

    per_tick = intake.COUNT_MAX_BYTES_PER_TICK // intake.COUNT_MAX_BYTES
    found = [manifest(f"full-{i}", intake.COUNT_MAX_BYTES) for i in range(per_tick)]
    found.insert(1, manifest("too-large", intake.COUNT_MAX_BYTES + 1))
    found.append(manifest("past-the-budget", 1))
    assert intake.worth_counting(found) == {f"full-{i}.json@{'0' * 32}" for i in range(per_tick)}
