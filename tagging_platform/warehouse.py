"""The tag warehouse for analysts: tag tables read from S3 with pyarrow, queried with DuckDB."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs

from tagging_platform import layout
from tagging_platform.s3 import arrow_filesystem
from tagging_platform.settings import Settings
from tagging_platform.tags import TAG_SCHEMA

# One row per (image, tag): what most questions about tags are asked of.
_TAG_LABELS_VIEW = """
CREATE VIEW tag_labels AS
SELECT image, position, partition, manifest, model_name, model_version, run_id, chunk, tagged_at,
       label.name AS tag, label.confidence AS confidence, label.parents AS parents, rank
FROM tags, UNNEST(tags) WITH ORDINALITY AS u(label, rank)
"""

# One row per (image, tag, parent): "every image with an animal in it" is `WHERE parent = 'animal'`.
# level 1 is the tag's nearest parent (tagging_platform.taxonomy); a tag without parents has no rows here.
_TAG_PARENTS_VIEW = """
CREATE VIEW tag_parents AS
SELECT image, position, partition, manifest, model_name, model_version, run_id, chunk, tagged_at,
       tag, confidence, rank, parent, level
FROM tag_labels, UNNEST(parents) WITH ORDINALITY AS p(parent, level)
"""


def tag_dataset(settings: Settings, manifests: list[str] | None = None) -> ds.Dataset:
    """Every manifest's tag table (or only the named ones), as one dataset with the stable schema."""
    fs = arrow_filesystem(settings)
    root = f"{settings.warehouse_bucket}/{layout.asset_partitions_prefix('image_tags')}"
    if manifests is None:
        selector = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
        paths = [f.path for f in fs.get_file_info(selector) if f.path.endswith(".parquet")]
    else:
        paths = [f"{settings.warehouse_bucket}/{layout.asset_table_key('image_tags', m)}" for m in manifests]
    return ds.dataset(sorted(paths), schema=TAG_SCHEMA, format="parquet", filesystem=fs)


def load_tags(
    manifest: str | list[str] | None = None, model: str | None = None, settings: Settings | None = None
) -> pd.DataFrame:
    """Tag rows as a DataFrame, for notebooks: one manifest, several, or all; optionally one model."""
    settings = settings or Settings.from_env()
    manifests = [manifest] if isinstance(manifest, str) else manifest
    table = tag_dataset(settings, manifests).to_table(filter=_model_filter(model))
    return table.to_pandas()


def query(
    sql: str, settings: Settings | None = None, manifests: list[str] | None = None, model: str | None = None
) -> pa.Table:
    """SQL over the views `tags` (one row per image), `tag_labels` (per image and tag), `tag_parents` (per parent)."""
    import duckdb

    settings = settings or Settings.from_env()
    # DuckDB scans the Arrow dataset lazily, pushing filters and projections into the Parquet reads.
    tags = tag_dataset(settings, manifests)
    if model:
        tags = tags.filter(_model_filter(model))
    connection = duckdb.connect()
    connection.register("tags", tags)
    connection.execute(_TAG_LABELS_VIEW)
    connection.execute(_TAG_PARENTS_VIEW)
    return connection.sql(sql).to_arrow_table()


def _model_filter(model: str | None):
    if not model:
        return None
    name, _, version = model.partition("@")
    expression = pc.field("model_name") == name
    if version:
        expression &= pc.starts_with(pc.field("model_version"), pattern=f"sha256:{version.removeprefix('sha256:')}")
    return expression
