"""Reuse of earlier tags: an index, per model version, of every image (by ETag) that version has tagged.

Tags are content-addressed by (image ETag, model version): the same bytes through the same model give
the same tags, so an image seen before needs no second pass through the model. The index lives in
the warehouse bucket, one small Parquet object per model version and batch:

    s3://<warehouse>/reuse/model=<name>/version=<short version>/partition=<batch>.parquet

Each row is one ETag with its tags and its origin (the manifest, batch, run and chunk that first ran
the model on it). A batch's merge writes its object once its tag table is complete, replacing what an
earlier run of the same batch wrote, so no two writers ever share an object. Planning looks a
manifest's ETags up once, before any chunk exists, in the index of its model version only: each object's ETag column is matched
and only the row groups holding a match are decoded; no batch's tag table is ever read. A lookup
still reads one object per batch that version has tagged: past some thousands of batches per
version, compacting them into ETag-sharded objects is the next step. Error rows are never indexed:
an image that failed is tried again next time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from tagging_platform import tags
from tagging_platform.models import ModelRef
from tagging_platform.s3 import is_not_found, list_folder, list_objects, split_uri

INDEX_PREFIX = "reuse/"

INDEX_SCHEMA = pa.schema(
    [
        pa.field("etag", pa.string(), nullable=False),
        pa.field("tags", pa.list_(tags.TAG_STRUCT)),
        pa.field("top_tag", pa.string()),
        pa.field("top_confidence", pa.float64()),
        pa.field("tagged_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("origin", tags.ORIGIN_STRUCT, nullable=False),
        # The arithmetic the tags were made in: a reused row says so too (indexes written before have none).
        pa.field("precision", pa.string()),
    ]
)
# A folder holding at least this many of a manifest's images is listed instead of HEADing each image.
_LIST_AT_LEAST = 50
# Keys in one page of ListObjectsV2, S3's most.
_LIST_PAGE = 1000
# Row groups small enough that a lookup's matches are read without the rest of a large batch's tags.
_ROW_GROUP = 4096


def index_prefix(model: ModelRef) -> str:
    return f"{INDEX_PREFIX}model={model.name}/version={model.short_version}/"


def index_key(model: ModelRef, partition: str) -> str:
    return f"{index_prefix(model)}partition={partition}.parquet"


def record(s3_client, bucket: str, partition: str, table: pa.Table) -> int:
    """Index a batch's tagged (status ok) rows under their model version; returns how many were indexed.

    A row that was itself reused keeps the origin it was reused from, so the index always names the
    run that first produced the tags.
    """
    indexed = 0
    ok = table.filter(pc.equal(table.column("status"), tags.STATUS_OK))
    for name, version in {
        (n, v) for n, v in zip(ok.column("model_name").to_pylist(), ok.column("model_version").to_pylist())
    }:
        rows = ok.filter(
            pc.and_(pc.equal(ok.column("model_name"), name), pc.equal(ok.column("model_version"), version))
        )
        entries = _dedupe(
            {
                "etag": row["etag"],
                "tags": row["tags"],
                "top_tag": row["top_tag"],
                "top_confidence": row["top_confidence"],
                "tagged_at": row["tagged_at"],
                "precision": row.get("precision"),
                "origin": row.get("reused_from") or {k: row[k] for k in ("manifest", "partition", "run_id", "chunk")},
            }
            for row in rows.to_pylist()
            if row["etag"]
        )
        index = pa.Table.from_pylist(entries, schema=INDEX_SCHEMA).sort_by("etag")
        sink = io.BytesIO()
        pq.write_table(index, sink, compression="zstd", row_group_size=_ROW_GROUP)
        s3_client.put_object(Bucket=bucket, Key=index_key(ModelRef(name, version, ""), partition), Body=sink.getvalue())
        indexed += index.num_rows
    return indexed


def lookup(
    s3_client, bucket: str, model: ModelRef, etags: Iterable[str], index_keys: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """{etag: index row} for the ETags this model version has tagged before, earliest origin first.

    `index_keys`: the version's index objects, when the caller has listed them already."""
    wanted = pa.array(sorted(set(etags)), pa.string())
    if not len(wanted):
        return {}
    if index_keys is None:
        index_keys = _index_keys(s3_client, bucket, model)
    found: dict[str, dict[str, Any]] = {}
    for key in index_keys:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        index = pq.ParquetFile(io.BytesIO(body))
        matched = pc.is_in(index.read(columns=["etag"]).column("etag"), value_set=wanted)
        groups, masks, start = [], [], 0
        for group in range(index.metadata.num_row_groups):
            size = index.metadata.row_group(group).num_rows
            mask = matched.slice(start, size)
            if pc.any(mask).as_py():
                groups.append(group)
                masks.extend(mask.chunks)
            start += size
        if not groups:
            continue
        for row in index.read_row_groups(groups).filter(pa.chunked_array(masks)).to_pylist():
            earlier = found.get(row["etag"])
            if earlier is None or row["tagged_at"] < earlier["tagged_at"]:
                found[row["etag"]] = row
    return found


def earlier_version(s3_client, bucket: str, model: ModelRef, partition: str) -> tuple[str, pa.Table] | None:
    """The batch's tags from the most recently indexed other version of the model: (its short version, rows).

    What a batch re-tagged by a new version is compared with (tagging_platform.quality.compare_versions).
    """
    found = []
    prefix = f"{INDEX_PREFIX}model={model.name}/"
    # One listing of the model's versions (a few), then one HEAD per version: never a listing of every batch.
    for folder in list_folder(s3_client, bucket, prefix)[1]:
        version = folder[len(prefix) :].removeprefix("version=").rstrip("/")
        key = f"{folder}partition={partition}.parquet"
        if version == model.short_version:
            continue
        try:
            found.append((s3_client.head_object(Bucket=bucket, Key=key)["LastModified"], version, key))
        except ClientError as exc:
            if not is_not_found(exc):
                raise
    if not found:
        return None
    _, version, key = max(found)
    return version, pq.read_table(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()))


@dataclass(frozen=True)
class Reused:
    """What planning found already tagged by the model version: those images' rows, and the images left to tag."""

    rows: pa.Table
    positions: list[int]
    images: list[str]


# The chunk number of a row whose tags were reused at planning: no chunk (and no GPU step) touched it.
REUSED_CHUNK = -1


def plan_reuse(
    s3_client, bucket: str, model: ModelRef, batch: dict[str, str], run_id: str, positions: list[int], images: list[str]
) -> Reused:
    """Split a manifest into the images this model version tagged before (same ETag) and the rest.

    The images' current ETags come from listings of their folders (a HEAD each only for what a listing
    misses), then one index lookup for the whole manifest. `batch` holds the row's lineage: manifest and
    partition. An image whose ETag cannot be read is left to the tagger, which reports why. A version that
    has indexed nothing yet (its first batch) can reuse nothing: its images' ETags are not read at all.
    """
    index_keys = _index_keys(s3_client, bucket, model)
    if not index_keys:
        return Reused(tags.empty_tag_table(), positions, images)
    etags = current_etags(s3_client, images)
    return split_by_index(s3_client, bucket, model, batch, run_id, positions, images, etags, index_keys)


def split_by_index(
    s3_client,
    bucket: str,
    model: ModelRef,
    batch: dict[str, str],
    run_id: str,
    positions: list[int],
    images: list[str],
    etags: list[str | None],
    index_keys: list[str] | None = None,
) -> Reused:
    """plan_reuse once the images' ETags are known: one index lookup, then the reused rows and the rest."""
    found = lookup(s3_client, bucket, model, (e for e in etags if e), index_keys)
    rows, rest_positions, rest_images = [], [], []
    for position, image, etag in zip(positions, images, etags, strict=True):
        hit = found.get(etag) if etag else None
        if hit is None:
            rest_positions.append(position)
            rest_images.append(image)
            continue
        rows.append(
            {
                "image": image,
                "position": position,
                "etag": etag,
                "status": tags.STATUS_OK,
                "error": None,
                "tags": hit["tags"],
                "top_tag": hit["top_tag"],
                "top_confidence": hit["top_confidence"],
                "model_name": model.name,
                "model_version": model.version,
                "manifest": batch["manifest"],
                "partition": batch["partition"],
                "chunk": REUSED_CHUNK,
                "run_id": run_id,
                # When the tags were made, and by which run: this row only carries them into this batch.
                "tagged_at": hit["tagged_at"],
                "precision": hit.get("precision"),
                "reused_from": hit["origin"],
            }
        )
    return Reused(tags.tag_table(rows), rest_positions, rest_images)


def current_etags(s3_client, uris: list[str], workers: int = 16) -> list[str | None]:
    """Each image's ETag now (None where it cannot be read), with as few requests as the layout allows.

    Images usually sit side by side under a few folders: a folder with many of them is listed (1,000 keys a
    request, from just before its first image to its last, in ranges of 1,000 images listed in parallel) rather
    than asked about one image at a time. What a bounded listing does not find (a sparse folder, a missing
    object) gets one HEAD each, in parallel.
    """
    found: dict[str, str] = {}
    folders: dict[tuple[str, str], list[str]] = {}
    for uri in uris:
        bucket, key = split_uri(uri)
        folders.setdefault((bucket, key.rpartition("/")[0] + "/" if "/" in key else ""), []).append(key)
    with ThreadPoolExecutor(workers, thread_name_prefix="etags") as pool:
        for listed in pool.map(lambda job: _listed_etags(s3_client, *job), _listing_ranges(folders)):
            found.update(listed)
        rest = [uri for uri in uris if uri not in found]
        found.update(zip(rest, pool.map(lambda uri: _head_etag(s3_client, uri), rest)))
    return [found.get(uri) for uri in uris]


def _listing_ranges(folders: dict[tuple[str, str], list[str]]) -> list[tuple[str, str, list[str]]]:
    """(bucket, folder, sorted keys) for each page's worth of keys in each folder worth listing.

    A listing is a request per page, one after another: ranges listed side by side take a few requests' time
    for a large manifest, not all of them.
    """
    ranges = []
    for (bucket, folder), keys in folders.items():
        if len(keys) >= _LIST_AT_LEAST:
            ordered = sorted(set(keys))
            ranges += [(bucket, folder, ordered[i : i + _LIST_PAGE]) for i in range(0, len(ordered), _LIST_PAGE)]
    return ranges


def _listed_etags(s3_client, bucket: str, folder: str, keys: list[str]) -> dict[str, str]:
    """The ETags of `keys` (sorted) in one folder, listed from just before the first to the last."""
    wanted, first, last = set(keys), keys[0], keys[-1]
    etags: dict[str, str] = {}
    # A folder where these keys are a small minority would take many pages: stop and let HEADs do the rest.
    pages = 2 * math.ceil(len(keys) / _LIST_PAGE) + 1
    paginator = s3_client.get_paginator("list_objects_v2")
    # first[:-1] sorts just before `first` (it is its prefix): the listing starts at the range's first image.
    start = {"StartAfter": first[:-1]} if first[:-1] else {}
    for page in paginator.paginate(Bucket=bucket, Prefix=folder, PaginationConfig={"MaxItems": pages * 1000}, **start):
        for item in page.get("Contents", []):
            if item["Key"] in wanted:
                etags[f"s3://{bucket}/{item['Key']}"] = item["ETag"].strip('"')
            if item["Key"] >= last:
                return etags
    return etags


def _head_etag(s3_client, uri: str) -> str | None:
    try:
        bucket, key = split_uri(uri)
        return s3_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except Exception:  # noqa: BLE001 - the tagger's own fetch reports what is wrong with the image
        return None


def _index_keys(s3_client, bucket: str, model: ModelRef) -> list[str]:
    return [
        item["Key"] for item in list_objects(s3_client, bucket, index_prefix(model)) if item["Key"].endswith(".parquet")
    ]


def _dedupe(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per ETag (a batch may list the same bytes under two keys): the earliest tagged."""
    kept: dict[str, dict[str, Any]] = {}
    for entry in entries:
        earlier = kept.get(entry["etag"])
        if earlier is None or entry["tagged_at"] < earlier["tagged_at"]:
            kept[entry["etag"]] = entry
    return list(kept.values())
