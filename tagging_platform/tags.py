"""The tag row: its Arrow schema (the warehouse's Parquet tables) and its JSON form (the published objects)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TAG_STRUCT = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("parents", pa.list_(pa.string())),
    ]
)

# Where reused tags were first produced: the manifest, batch, run and chunk that ran the model on the image.
ORIGIN_STRUCT = pa.struct(
    [
        pa.field("manifest", pa.string()),
        pa.field("partition", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("chunk", pa.int32()),
    ]
)

# One row per manifest image. Documented in docs/formats.md: add columns at the end, never rename.
TAG_SCHEMA = pa.schema(
    [
        pa.field("image", pa.string(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("etag", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("tags", pa.list_(TAG_STRUCT)),
        pa.field("top_tag", pa.string()),
        pa.field("top_confidence", pa.float64()),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("manifest", pa.string(), nullable=False),
        pa.field("partition", pa.string(), nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("tagged_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        # Null when this run tagged the image; set when the tags were reused (tagging_platform.reuse).
        pa.field("reused_from", ORIGIN_STRUCT),
        # The arithmetic the model ran in (float32, or a lower precision that passed the gate, tagging_platform.tuning).
        # Null on reused rows and on rows written before the column existed.
        pa.field("precision", pa.string()),
    ]
)

STATUS_OK = "ok"
STATUS_ERROR = "error"


def tag_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as dicts (the engine's output) to a table with the stable schema, ordered by position."""
    table = pa.Table.from_pylist(list(rows), schema=TAG_SCHEMA)
    return table.sort_by("position")


def conform(table: pa.Table) -> pa.Table:
    """A table written before columns were added to the schema, with those columns as nulls."""
    for field in TAG_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(TAG_SCHEMA.names).cast(TAG_SCHEMA)


def empty_tag_table() -> pa.Table:
    return TAG_SCHEMA.empty_table()


def to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def from_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def tag_object(row: dict[str, Any]) -> dict[str, Any]:
    """The published JSON for one image, close to what Rekognition DetectLabels users already parse."""
    obj: dict[str, Any] = {"image": row["image"], "etag": row["etag"], "status": row["status"]}
    if row["status"] == STATUS_OK:
        obj["tags"] = [
            {"name": t["name"], "confidence": round(t["confidence"], 4), "parents": list(t["parents"] or [])}
            for t in row["tags"] or []
        ]
    else:
        obj["error"] = row["error"]
    obj["model"] = {"name": row["model_name"], "version": row["model_version"]}
    if row.get("precision"):
        obj["model"]["precision"] = row["precision"]
    obj["manifest"] = row["manifest"]
    obj["run_id"] = row["run_id"]
    obj["chunk"] = row["chunk"]
    if row.get("reused_from"):
        obj["reused_from"] = dict(row["reused_from"])
    return obj


def json_lines(
    table: pa.Table, batch_rows: int = 10_000, record: Callable[[dict[str, Any]], dict[str, Any]] = tag_object
) -> Iterator[bytes]:
    """One JSON line per row (`record` of it), converted a batch at a time so memory follows the batch, not the table."""
    for batch in table.to_batches(max_chunksize=batch_rows):
        for row in batch.to_pylist():
            yield json.dumps(record(row), separators=(",", ":")).encode() + b"\n"
