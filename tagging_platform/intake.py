"""Noticing manifests in the manifest bucket: an incremental listing with a resumable cursor, and batch records."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from tagging_platform import layout
from tagging_platform.manifests import ManifestError, parse_manifest, partition_key_for
from tagging_platform.planning import plan_for
from tagging_platform.s3 import is_not_found, read_bytes
from tagging_platform.settings import Settings

MANIFEST_SUFFIXES = (".json", ".jsonl", ".manifest", ".json.gz", ".jsonl.gz", ".manifest.gz")


# S3's clock and ours may disagree; objects this close to the watermark are looked at twice, and the
# remembered ETags (plus Dagster's run keys) keep the second look from starting a second run.
CLOCK_SKEW_S = 300.0


# The listing sensor's name: a run launched for a manifest by anyone else carries it (and the sensor's run key),
# so that the sensor counts the run as its own and never starts a second one (Dagster matches both tags).
LISTING_SENSOR = "manifest_sensor"
# S3 user metadata on a manifest whose run the API launches itself: the sensor waits before requesting it.
LAUNCHED_BY = "tp-launched-by"


def is_manifest_key(key: str) -> bool:
    """Whether a key names a manifest by its suffix, in any case: Windows tools write "BATCH.JSON"."""
    return key.lower().endswith(MANIFEST_SUFFIXES)


@dataclass(frozen=True)
class ManifestObject:
    bucket: str
    key: str
    etag: str
    size: int
    last_modified: float

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def run_key(self) -> str:
        """A changed manifest (new ETag) is a new run of the same partition; an identical one is not."""
        return f"{self.key}@{self.etag}"


@dataclass
class ScanCursor:
    """Where the listing stands, kept as the sensor's cursor so it survives restarts.

    A scan walks the bucket in key order a few pages per tick (`after`), wrapping to the start when
    it reaches the end. An object is new when it changed after the start of the previous full scan
    (`watermark`): every upload is then seen within two scans, and none is re-listed per tick.
    `seen` remembers (ETag, last modified) of what was emitted and could still be listed again: by
    this scan, or by the next one (changed after its watermark), so the overlap between two scans
    emits nothing twice.
    """

    after: str = ""
    scan_started: float = 0.0
    watermark: float = 0.0
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def serialize(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def parse(cls, raw: str | None) -> ScanCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        data["seen"] = {k: (v[0], v[1]) for k, v in data["seen"].items()}
        return cls(**data)


def scan_manifests(
    s3_client,
    bucket: str,
    prefix: str,
    cursor: ScanCursor,
    *,
    max_keys: int = 10_000,
    budget_s: float = math.inf,
    now: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[ManifestObject], ScanCursor]:
    """List from where the cursor stands; return new manifests and the next cursor.

    A call lists at most `max_keys` keys, and stops after the page during which `budget_s` seconds
    (by `clock`) ran out: a listing page's cost grows with the bucket, so a key count alone does not
    bound a sensor tick. The next call resumes after the last key listed.
    """
    now = time.time() if now is None else now
    started = clock()
    cursor = ScanCursor(cursor.after, cursor.scan_started or now, cursor.watermark, dict(cursor.seen))
    # The next scan's watermark: what changed before it is never listed as new again.
    next_watermark = cursor.scan_started - CLOCK_SKEW_S
    found: list[ManifestObject] = []
    listed = 0
    while listed < max_keys:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": min(1000, max_keys - listed)}
        if cursor.after:
            kwargs["StartAfter"] = cursor.after
        page = s3_client.list_objects_v2(**kwargs)
        contents = page.get("Contents", [])
        listed += len(contents)
        for item in contents:
            obj = ManifestObject(
                bucket=bucket,
                key=item["Key"],
                etag=item["ETag"].strip('"'),
                size=item["Size"],
                last_modified=item["LastModified"].timestamp(),
            )
            cursor.after = obj.key
            is_manifest = is_manifest_key(obj.key) and obj.size > 0
            already = cursor.seen.get(obj.key)
            if is_manifest and obj.last_modified >= cursor.watermark and (already is None or already[0] != obj.etag):
                found.append(obj)
                if obj.last_modified >= next_watermark:
                    cursor.seen[obj.key] = (obj.etag, obj.last_modified)
        if not page.get("IsTruncated"):
            # The end of the bucket: the next tick starts a new scan, and everything that changed
            # since this scan started must be looked at again.
            cursor.watermark = next_watermark
            cursor.after = ""
            cursor.scan_started = now
            cursor.seen = {k: v for k, v in cursor.seen.items() if v[1] >= cursor.watermark}
            break
        if clock() - started >= budget_s:
            break
    return found, cursor


def launched_elsewhere(
    s3_client, found: list[ManifestObject], grace_s: float, now: float | None = None
) -> tuple[list[ManifestObject], list[ManifestObject]]:
    """Split what a listing found into what to request now and what someone else launches (left alone for now).

    The API launches a batch's run right after writing its manifest, with this manifest's run key. A sensor
    tick listing the manifest in between would see no run with that key yet and start a second one; so a
    manifest marked as launched by the API is left alone until `grace_s` after it was written. Then the sensor
    requests it as any other, and the run key finds the API's run, or starts the one a failed launch left out.
    """
    now = time.time() if now is None else now
    young = [obj for obj in found if obj.last_modified > now - grace_s]
    marked = {obj.key for obj in young if _launched_by(s3_client, obj)}
    return [obj for obj in found if obj.key not in marked], [obj for obj in found if obj.key in marked]


def _launched_by(s3_client, obj: ManifestObject) -> bool:
    try:
        head = s3_client.head_object(Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
    except ClientError as exc:
        # Gone or changed since it was listed: this version is nobody's to launch but the sensor's. Anything
        # else fails the tick (the next one lists it again) rather than risk racing the API's launch.
        if is_not_found(exc) or exc.response.get("Error", {}).get("Code") in ("412", "PreconditionFailed"):
            return False
        raise
    return bool(head.get("Metadata", {}).get(LAUNCHED_BY))


def record_partition(s3_client, warehouse_bucket: str, partition: str, obj: ManifestObject) -> None:
    """Remember which manifest a partition stands for, for the assets and the API to read back."""
    record = {"partition": partition, "manifest": obj.uri, "bucket": obj.bucket, "key": obj.key, "etag": obj.etag}
    s3_client.put_object(
        Bucket=warehouse_bucket, Key=layout.batch_record_key(partition), Body=json.dumps(record).encode()
    )


def read_partition(s3_client, warehouse_bucket: str, partition: str) -> dict[str, str]:
    body = read_bytes(s3_client, warehouse_bucket, layout.batch_record_key(partition))
    if body is None:
        raise LookupError(
            f"partition {partition!r} has no batch record in s3://{warehouse_bucket}/: "
            "partitions are added by the manifest sensor"
        )
    return json.loads(body)


def partition_for(obj: ManifestObject, manifest_prefix: str) -> str:
    return partition_key_for(obj.key, manifest_prefix)


# The run tag naming the customer whose manifest a run tags: Dagster's run queue limits runs per value of it
# (tag_concurrency_limits in local.py and deploy/values.yaml), so one customer's burst waits behind its own runs.
CUSTOMER_TAG = "tagging/customer"


def customer_tags(obj: ManifestObject, manifest_prefix: str) -> dict[str, str]:
    """The run tag naming the manifest's customer: the folder under the manifest prefix the API writes it into
    (`<prefix><customer>/<name>.json`). A manifest put straight under the prefix has no customer: no tag."""
    folder, _, rest = obj.key.removeprefix(manifest_prefix).partition("/")
    return {CUSTOMER_TAG: folder} if folder and rest else {}


def run_tags(obj: ManifestObject, manifest_prefix: str) -> dict[str, str]:
    """The tags of a manifest's run, whoever starts it (the sensor, or the API launching it itself)."""
    return {"tagging/manifest": obj.uri, "tagging/manifest_etag": obj.etag, **customer_tags(obj, manifest_prefix)}


# The local executor's choice for a run that gains nothing from a process per step (definitions.py).
IN_PROCESS = {"execution": {"config": {"in_process": True}}}
# The sensor counts a manifest's images only when it is at most this large, gunzipped too: a sensor tick is no
# place to read a large file, and a larger manifest's run simply keeps its process per step.
COUNT_MAX_BYTES = 8 << 20
# And one tick reads at most this many bytes of manifests in all: a tick that finds many leaves the rest with a
# process per step rather than spend its time reading them.
COUNT_MAX_BYTES_PER_TICK = 32 << 20


def run_config(settings: Settings, images: int | None) -> dict[str, Any]:
    """A batch's run config, whoever launches it: in-process when local, one chunk and at most TP_IN_PROCESS_MAX_IMAGES.

    A one-chunk batch runs its steps one after another whatever the executor, so a process per step only adds
    their starts; a batch of several chunks keeps them, to tag its chunks side by side. `images` None: not known.
    """
    if settings.deployment != "local" or images is None or not 0 < images <= settings.in_process_max_images:
        return {}
    return IN_PROCESS if plan_for(settings, images).chunks == 1 else {}


def worth_counting(found: list[ManifestObject]) -> set[str]:
    """The run keys of the manifests a sensor tick counts the images of: in order, while their bytes fit the tick's."""
    keys, total = set(), 0
    for obj in found:
        if obj.size <= COUNT_MAX_BYTES and total + obj.size <= COUNT_MAX_BYTES_PER_TICK:
            keys.add(obj.run_key)
            total += obj.size
    return keys


def images_listed(s3_client, settings: Settings, obj: ManifestObject) -> int | None:
    """How many images a manifest lists, where that can choose its run's executor (run_config); None otherwise.

    Read only for the local deployment and only up to COUNT_MAX_BYTES; a manifest that cannot be read or is not
    valid gets None, and its run's `manifest` step reports what is wrong as it always does.
    """
    if settings.deployment != "local" or settings.in_process_max_images == 0 or obj.size > COUNT_MAX_BYTES:
        return None
    try:
        body = s3_client.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')["Body"].read()
        parsed = parse_manifest(
            body,
            obj.uri,
            allowed_image_prefixes=settings.allowed_image_prefixes,
            allowed_output_prefixes=settings.allowed_output_prefixes,
            max_images=settings.in_process_max_images,
            max_bytes=COUNT_MAX_BYTES,
        )
    except (ClientError, ManifestError):
        return None
    return len(parsed.image_uris)
