"""The image_tags asset: a manifest planned into chunks, each tagged by its own step (a GPU pod on Kubernetes)."""

import time

import dagster as dg
import pandas as pd
import pyarrow as pa
import sqlalchemy
from dagster_aws.s3 import S3Resource

from assets.partitions import OWNERS, manifests_partitions
from resources.settings import PlatformSettings
from resources.tagger import TaggerResource
from tagging_platform import engine, metrics, reuse, tags
from tagging_platform.models import ModelRef
from tagging_platform.planning import plan_for

# On Kubernetes each tag_chunk step is a pod asking for one GPU; the k8s executor places it on the GPU pool named by
# TP_GPU_NODE_SELECTOR / TP_GPU_TOLERATION_KEY (executors.py). Other executors ignore these tags.
GPU_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    },
}


# Every tag_chunk step of every batch takes a slot of this Dagster pool, limited to TP_MAX_GPUS
# (tagging_platform/local.py, deploy/values.yaml): concurrent batches share one GPU budget.
GPU_POOL = "gpu"


@dg.op(out={"chunks": dg.DynamicOut(engine.ChunkSpec), "planned": dg.Out(engine.PlannedBatch)})
def plan_chunks(
    context: dg.OpExecutionContext,
    manifest: pd.DataFrame,
    tagger_model: dict,
    s3: S3Resource,
    platform: PlatformSettings,
):
    """Take what this model version tagged before from the reuse index, and split the rest into chunks.

    Sized by the cost model (pod start-up against per-image time) and the GPUs other batches hold. The
    `planned` output always reaches the merge, so a manifest with nothing left to tag (no chunk, no GPU
    step) still gets its table from the reused rows.
    """
    settings = platform.settings
    client = s3.get_client()
    model = ModelRef(**(manifest.attrs["model"] or tagger_model))
    positions, images = manifest["position"].tolist(), manifest["image_uri"].tolist()
    started = time.perf_counter()
    # Manifests stored before the "reuse" field existed take the default.
    if manifest.attrs.get("reuse", True):
        batch = {"manifest": manifest.attrs["manifest"], "partition": context.partition_key}
        reused = reuse.plan_reuse(client, settings.warehouse_bucket, model, batch, context.run_id, positions, images)
        reused_rows, positions, images = reused.rows, reused.positions, reused.images
    else:
        reused_rows = tags.empty_tag_table()
    planned = engine.plan_batch(
        client, settings.warehouse_bucket, context.partition_key, manifest.attrs["etag"], model, reused_rows
    )
    set_gpu_budget(context.instance, settings.max_gpus)
    held = gpus_held(context.instance)
    chunking = plan_for(settings, len(images), gpus_held=held) if images else None
    context.log.info(
        f"plan: {planned.reused:,} of {len(manifest):,} images tagged before by {model.name} {model.version} "
        f"(looked up in {time.perf_counter() - started:.1f} s); "
        + (chunking.describe() if chunking else "nothing left to tag: no tag_chunk step")
    )
    for spec in engine.chunk_specs(
        context.partition_key,
        manifest.attrs["manifest"],
        manifest.attrs["etag"],
        positions,
        images,
        model,
        chunking.chunk_images if chunking else 1,
    ):
        yield dg.DynamicOutput(spec, mapping_key=f"chunk_{spec.index:05d}", output_name="chunks")
    yield dg.Output(
        planned,
        output_name="planned",
        metadata={
            "reused": planned.reused,
            "to_tag": len(images),
            "gpus_held_by_other_batches": held,
            **({"plan": dg.MetadataValue.json(chunking.as_dict())} if chunking else {}),
        },
    )


def set_gpu_budget(instance: dg.DagsterInstance, max_gpus: int) -> None:
    """The "gpu" pool's limit, TP_MAX_GPUS, set explicitly before any tag_chunk step of the run claims a slot.

    Left to the instance's pools.default_limit, the first step to claim writes the limit itself, and on
    PostgreSQL that write fails the step's run when another run's step writes it at the same moment, or when
    the default has changed since (dagster-io/dagster#33552: an INSERT that hits the existing row aborts the
    transaction its fallback UPDATE needs). A limit set explicitly is never written by a step.
    """
    storage = instance.event_log_storage
    current = {limit.name: limit for limit in storage.get_pool_limits()}.get(GPU_POOL)
    if current is not None and current.limit == max_gpus and not current.from_default:
        return
    for attempt in range(3):
        try:
            # Takes the row's lock when the row exists; two runs creating it at once: one insert loses, retried.
            storage.set_concurrency_slots(GPU_POOL, max_gpus)
            return
        except sqlalchemy.exc.DBAPIError:
            if attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))


def gpus_held(instance: dg.DagsterInstance) -> int:
    """GPU steps running batches hold or wait for: the pool's claimed slots and its pending steps."""
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return info.active_slot_count + info.pending_step_count


@dg.op(
    tags=GPU_STEP_TAGS,
    pool=GPU_POOL,
    retry_policy=dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
)
def tag_chunk(
    context: dg.OpExecutionContext,
    spec: engine.ChunkSpec,
    s3: S3Resource,
    tagger: TaggerResource,
    platform: PlatformSettings,
) -> engine.ChunkSpec:
    """Tag one chunk, committing Parquet parts as it goes; a retry tags only what no part holds."""
    settings = platform.settings
    client = s3.get_client()
    push = metrics.chunk_pusher(
        settings.metrics_pushgateway, spec.partition, spec.index, spec.model.name, spec.model.version
    )

    def report(stats: engine.ChunkStats) -> None:
        context.log.info(
            f"chunk {spec.index}: {stats.tagged + stats.errors}/{stats.images} images, {stats.images_per_s:.1f} images/s"
        )
        push(stats)

    stats = engine.run_chunk(
        client,
        settings.warehouse_bucket,
        spec,
        context.run_id,
        lambda: tagger.load(client, spec.model),
        report,
        checkpoint_images=settings.checkpoint_images,
        checkpoint_s=settings.checkpoint_s,
    )
    push(stats, done=True)
    verb = "found earlier result for" if stats.skipped else "tagged"
    context.log.info(
        f"{verb} chunk {spec.index}: {stats.tagged} tagged, {stats.errors} errors, "
        f"{stats.resumed} of them committed by an earlier attempt"
    )
    # Per attempt: what this attempt tagged itself, so a retry shows it redid none of the committed images.
    tagged_now = 0 if stats.skipped else stats.tagged + stats.errors - stats.resumed
    context.add_output_metadata({**stats.as_dict(), "attempt": context.retry_number, "tagged_this_attempt": tagged_now})
    return spec


@dg.op(out=dg.Out(io_manager_key="warehouse_io_manager"))
def merge_chunks(
    context: dg.OpExecutionContext,
    planned: engine.PlannedBatch,
    chunks: list[engine.ChunkSpec],
    s3: S3Resource,
    platform: PlatformSettings,
) -> pa.Table:
    """One table per manifest, in manifest order, from the reused rows and the chunks' committed parts."""
    client = s3.get_client()
    bucket = platform.settings.warehouse_bucket
    ordered = sorted(chunks, key=lambda s: s.index)
    parts = [engine.read_reused(client, bucket, planned)] + [
        engine.read_chunk(client, bucket, spec) for spec in ordered
    ]
    table = pa.concat_tables(parts).cast(tags.TAG_SCHEMA)
    figures = [(spec.index, engine.chunk_stats(client, bucket, spec)) for spec in ordered]
    # The next manifests with these images (same ETag, same model version) take these tags instead of re-running.
    indexed = reuse.record(client, bucket, planned.partition, table)
    metrics.delete_chunks(platform.settings.metrics_pushgateway, planned.partition, [s.index for s in ordered])
    tagging_s = sum(f.get("wall_s", 0.0) for _, f in figures)
    tagged = sum(f.get("images", 0) for _, f in figures)
    rows = "\n".join(
        f"| {index} | {f.get('images', '')} | {f.get('resumed', 0)} | {f.get('errors', '')} | {f.get('images_per_s', 0):.1f} | "
        f"{f.get('model_load_s', 0):.1f} | {f.get('inference_s', 0):.1f} | {f.get('fetch_s', 0) + f.get('decode_s', 0):.1f} | "
        f"{f.get('peak_rss_mb', 0):,.0f} |"
        for index, f in figures
    )
    context.add_output_metadata(
        {
            "chunks": len(ordered),
            "images": table.num_rows,
            "reused": planned.reused,
            "reuse_index_entries": indexed,
            # Lineage to the registry: which model version produced these tags.
            "model": planned.model.name,
            "model_version": planned.model.version,
            # Per step of tagging (the chunks' images over all chunks' tagging time), whatever ran in parallel.
            "images_per_s_per_step": round(tagged / tagging_s, 2) if tagging_s else 0.0,
            "chunk_figures": dg.MetadataValue.md(
                "| chunk | images | resumed from checkpoints | errors | images/s | model load s | inference s "
                f"| fetch+decode s (threads) | peak memory MB |\n|---|---|---|---|---|---|---|---|---|\n{rows}"
            ),
        }
    )
    return table.sort_by("position")


@dg.graph_asset(
    partitions_def=manifests_partitions,
    group_name="tagging",
    kinds={"pytorch", "s3", "parquet"},
    owners=OWNERS,
    description="One tag row per manifest image (tagged or errored), with lineage: model version, chunk, run.",
)
def image_tags(manifest: pd.DataFrame, tagger_model: dict) -> pa.Table:
    chunks, planned = plan_chunks(manifest, tagger_model)
    return merge_chunks(planned, chunks.map(tag_chunk).collect())
