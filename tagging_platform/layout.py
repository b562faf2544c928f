"""Where each kind of object lives in the warehouse bucket: the one place these paths are spelled.

    assets/<asset>/manifest=<batch>/data.parquet|json      a partitioned asset's value (the IO manager)
    assets/<asset>/data.parquet|json                        an unpartitioned asset's value
    batches/<batch>.json                                    which manifest (key, ETag) a batch stands for
    chunks/partition=<batch>/model=<name>-<short version>/chunk-<index>-<digest>/part-<first position>-<attempt>.parquet
                                                            a chunk's rows, committed as tagging goes (checkpoints)
    chunks/partition=<batch>/model=<name>-<short version>/chunk-<index>-<digest>/_COMPLETE.json
                                                            the chunk's marker, written last: its parts and figures
    chunks/partition=<batch>/model=<name>-<short version>/reused-<digest>.parquet
                                                            the rows planning took from the reuse index
    chunks/partition=<batch>/model=<name>-<short version>/progress/chunk-<index>.json
                                                            a running chunk's figures so far (the API's status)

The reuse index (`reuse.index_prefix`) and the completion marker (`publishing.MARKER_NAME`) keep their
layouts beside the code that owns them.
"""

from __future__ import annotations

ASSETS_PREFIX = "assets/"
BATCHES_PREFIX = "batches/"
CHUNKS_PREFIX = "chunks/"


def asset_base(asset: str, partition: str | None = None, root: str = ASSETS_PREFIX) -> str:
    """An asset's value without its suffix (.parquet for tables, .json for documents)."""
    return f"{root}{asset}/manifest={partition}/data" if partition else f"{root}{asset}/data"


def asset_table_key(asset: str, partition: str | None = None) -> str:
    return asset_base(asset, partition) + ".parquet"


def asset_partitions_prefix(asset: str) -> str:
    """Under which every partition of an asset lies."""
    return f"{ASSETS_PREFIX}{asset}/"


def batch_record_key(partition: str) -> str:
    return f"{BATCHES_PREFIX}{partition}.json"


def chunks_prefix(partition: str) -> str:
    """Every chunk result of a batch, whatever the model."""
    return f"{CHUNKS_PREFIX}partition={partition}/"


def model_prefix(partition: str, model_name: str, short_version: str) -> str:
    """A batch's chunk results by one model version."""
    return f"{chunks_prefix(partition)}model={model_name}-{short_version}/"


def chunk_prefix(partition: str, model_name: str, short_version: str, index: int, digest: str) -> str:
    """A chunk's folder: its checkpointed parts and, last, its marker."""
    return f"{model_prefix(partition, model_name, short_version)}chunk-{index:05d}-{digest}/"


def reused_key(partition: str, model_name: str, short_version: str, digest: str) -> str:
    return f"{model_prefix(partition, model_name, short_version)}reused-{digest}.parquet"


def progress_key(partition: str, model_name: str, short_version: str, index: int) -> str:
    """A running chunk's figures so far, overwritten as it goes."""
    return f"{model_prefix(partition, model_name, short_version)}progress/chunk-{index:05d}.json"
