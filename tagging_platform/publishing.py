"""Publishing tag objects to the customer's output location, with a completion marker written last."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from tagging_platform import output_formats, tags
from tagging_platform.models import ModelRef
from tagging_platform.s3 import list_folder, list_objects, read_bytes, split_uri

MARKER_NAME = "_COMPLETE.json"


def output_location(base: str, partition: str, model: ModelRef) -> str:
    """Each batch has its own prefix under the output location (two batches never share parts), and
    each model version its own under that, so re-tagging with a new model never overwrites old tags."""
    return f"{base}{partition}/{model.name}/{model.short_version}/"


def publish(
    s3_client,
    table: pa.Table,
    location: str,
    *,
    fmt: str,
    part_images: int,
    lineage: dict[str, Any],
    options: output_formats.Options = output_formats.Options(),
) -> dict[str, Any]:
    """Write one JSON record per image in format `fmt` (settings.PUBLISH_FORMATS), then the completion marker.

    Readers trust only the marker: it is removed first and written last, so output that is still
    being written, or that a crashed attempt left behind, is never seen as complete. Parts are
    replaced in place on a re-run and stale ones are removed, so nothing is duplicated.
    """
    bucket, prefix = split_uri(location)
    marker_key = prefix + MARKER_NAME
    s3_client.delete_object(Bucket=bucket, Key=marker_key)
    before = _list_keys(s3_client, bucket, prefix)
    if fmt == "objects":
        written = _write_objects(s3_client, bucket, prefix, table)
    else:
        written = _write_parts(s3_client, bucket, prefix, table, part_images, _record_maker(fmt, table, options))
    stale = sorted(before - {w["key"] for w in written} - {marker_key})
    for start in range(0, len(stale), 1000):
        s3_client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stale[start : start + 1000]], "Quiet": True}
        )
    statuses = table.column("status").to_pylist()
    marker = {
        "location": location,
        "format": fmt,
        "images": table.num_rows,
        "tagged": statuses.count(tags.STATUS_OK),
        "errors": statuses.count(tags.STATUS_ERROR),
        "objects": sum(w["objects"] for w in written),
        "files": len(written),
        "parts": written if fmt != "objects" else [],
        "sha256": hashlib.sha256("".join(w["sha256"] for w in written).encode()).hexdigest(),
        "completed_at": datetime.now(UTC).isoformat(),
        **lineage,
    }
    s3_client.put_object(
        Bucket=bucket, Key=marker_key, Body=json.dumps(marker, indent=2).encode(), ContentType="application/json"
    )
    return marker


def superseded(s3_client, base: str, partition: str, model: ModelRef) -> dict[str, Any] | None:
    """The batch's newest complete output from another version of the same model: what a new version replaces.

    It stays where it is (every version has its own prefix); the new marker names it so readers can follow.
    """
    bucket, prefix = split_uri(output_location(base, partition, model).rsplit("/", 2)[0] + "/")
    earlier = []
    for folder in list_folder(s3_client, bucket, prefix)[1]:
        location = f"s3://{bucket}/{folder}"
        marker = read_marker(s3_client, location) if location != output_location(base, partition, model) else None
        if marker and marker.get("model", {}).get("version") != model.version:
            earlier.append(
                {"version": marker["model"]["version"], "location": location, "completed_at": marker["completed_at"]}
            )
    return max(earlier, key=lambda m: m["completed_at"], default=None)


def find_markers(s3_client, bucket: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """Every completion marker under a prefix, with the location it completes: (s3://.../, marker)."""
    found = []
    for item in list_objects(s3_client, bucket, prefix):
        if item["Key"].endswith(MARKER_NAME):
            location = f"s3://{bucket}/{item['Key'][: -len(MARKER_NAME)]}"
            marker = read_marker(s3_client, location)
            if marker is not None:
                found.append((location, marker))
    return found


def read_marker(s3_client, location: str) -> dict[str, Any] | None:
    bucket, prefix = split_uri(location)
    body = read_bytes(s3_client, bucket, prefix + MARKER_NAME)
    return None if body is None else json.loads(body)


def _record_maker(fmt: str, table: pa.Table, options: output_formats.Options) -> Callable[[dict], dict]:
    """The function that turns a tag row into the record `fmt` publishes."""
    if fmt == "jsonl":
        return tags.tag_object
    if fmt == "rekognition":
        return lambda row: output_formats.rekognition_record(row, options)
    if fmt == "groundtruth":
        ids = output_formats.class_ids(table.column("tags"))
        return lambda row: output_formats.groundtruth_record(row, ids, options)
    raise ValueError(f"unknown publish format {fmt!r}")


def _write_parts(
    s3_client, bucket: str, prefix: str, table: pa.Table, part_images: int, record: Callable[[dict], dict]
) -> list[dict[str, Any]]:
    def put(index_and_slice: tuple[int, pa.Table]) -> dict[str, Any]:
        index, part = index_and_slice
        body = b"".join(tags.json_lines(part, record=record))
        key = f"{prefix}part-{index:05d}.jsonl"
        s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")
        return {"key": key, "objects": part.num_rows, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    slices = [(i, table.slice(start, part_images)) for i, start in enumerate(range(0, table.num_rows, part_images))]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(put, slices))


def _write_objects(s3_client, bucket: str, prefix: str, table: pa.Table) -> list[dict[str, Any]]:
    def put(line: bytes) -> dict[str, Any]:
        image_bucket, image_key = split_uri(json.loads(line)["image"])
        key = f"{prefix}objects/{image_bucket}/{image_key}.json"
        s3_client.put_object(Bucket=bucket, Key=key, Body=line, ContentType="application/json")
        return {"key": key, "objects": 1, "bytes": len(line), "sha256": hashlib.sha256(line).hexdigest()}

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(put, tags.json_lines(table)))


def _list_keys(s3_client, bucket: str, prefix: str) -> set[str]:
    return {item["Key"] for item in list_objects(s3_client, bucket, prefix)}
