"""The image_tags asset: a manifest planned into chunks, each tagged by its own step (a GPU pod on Kubernetes)."""

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster_aws.s3 import S3Resource

from assets.partitions import manifests_partitions
from resources.settings import PlatformSettings
from resources.tagger import TaggerResource
from tagging_platform import engine, metrics, reuse, tags
from tagging_platform.models import ModelRef
from tagging_platform.planning import plan_for

# On Kubernetes each tag_chunk step is a pod on the GPU pool; other executors ignore these tags.
GPU_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {
            "node_selector": {"tagging.platform/pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
}


@dg.op(out=dg.DynamicOut(engine.ChunkSpec))
def plan_chunks(
    context: dg.OpExecutionContext, manifest: pd.DataFrame, tagger_model: dict, platform: PlatformSettings
):
    """Split the manifest into chunks sized by the cost model (pod start-up against per-image time)."""
    settings = platform.settings
    model = ModelRef(**(manifest.attrs["model"] or tagger_model))
    chunking = plan_for(settings, len(manifest))
    context.log.info(f"plan: {chunking.describe()}; model {model.name} {model.version}")
    for spec in engine.chunk_specs(
        context.partition_key,
        manifest.attrs["manifest"],
        manifest.attrs["etag"],
        manifest["position"].tolist(),
        manifest["image_uri"].tolist(),
        model,
        chunking.chunk_images,
        # Manifests stored before the "reuse" field existed take the default.
        reuse_tags=manifest.attrs.get("reuse", True),
    ):
        yield dg.DynamicOutput(spec, mapping_key=f"chunk_{spec.index:05d}")


@dg.op(
    tags=GPU_STEP_TAGS,
    retry_policy=dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
)
def tag_chunk(
    context: dg.OpExecutionContext, spec: engine.ChunkSpec, s3: S3Resource, tagger: TaggerResource, platform: PlatformSettings
) -> engine.ChunkSpec:
    """Tag one chunk; its rows land in the warehouse as one Parquet object, written once."""
    client = s3.get_client()
    push = metrics.chunk_pusher(
        platform.settings.metrics_pushgateway, spec.partition, spec.index, spec.model.name, spec.model.version
    )

    def report(stats: engine.ChunkStats) -> None:
        context.log.info(
            f"chunk {spec.index}: {stats.tagged + stats.errors}/{stats.images} images, {stats.images_per_s:.1f} images/s"
        )
        push(stats)

    stats = engine.run_chunk(
        client, platform.settings.warehouse_bucket, spec, context.run_id, lambda: tagger.load(client, spec.model), report
    )
    push(stats, done=True)
    verb = "found earlier result for" if stats.skipped else "tagged"
    context.log.info(
        f"{verb} chunk {spec.index}: {stats.tagged} tagged ({stats.reused} reused from earlier runs), {stats.errors} errors"
    )
    context.add_output_metadata({k: v for k, v in stats.as_dict().items()})
    return spec


@dg.op(out=dg.Out(io_manager_key="warehouse_io_manager"))
def merge_chunks(context: dg.OpExecutionContext, chunks: list[engine.ChunkSpec], s3: S3Resource, platform: PlatformSettings) -> pa.Table:
    """One table per manifest, in manifest order, from the chunks' Parquet objects."""
    client = s3.get_client()
    bucket = platform.settings.warehouse_bucket
    ordered = sorted(chunks, key=lambda s: s.index)
    parts = [engine.read_chunk(client, bucket, spec) for spec in ordered]
    table = pa.concat_tables(parts).cast(tags.TAG_SCHEMA) if parts else tags.empty_tag_table()
    figures = [(spec.index, engine.chunk_stats(client, bucket, spec)) for spec in ordered]
    # The next manifests with these images (same ETag, same model version) take these tags instead of re-running.
    indexed = reuse.record(client, bucket, ordered[0].partition, table) if ordered else 0
    tagging_s = sum(f.get("wall_s", 0.0) for _, f in figures)
    rows = "\n".join(
        f"| {index} | {f.get('images', '')} | {f.get('reused', 0)} | {f.get('errors', '')} | {f.get('images_per_s', 0):.1f} | "
        f"{f.get('model_load_s', 0):.1f} | {f.get('inference_s', 0):.1f} | {f.get('fetch_s', 0) + f.get('decode_s', 0):.1f} | "
        f"{f.get('peak_rss_mb', 0):,.0f} |"
        for index, f in figures
    )
    context.add_output_metadata(
        {
            "chunks": len(parts),
            "images": table.num_rows,
            "reused": sum(f.get("reused", 0) for _, f in figures),
            "reuse_index_entries": indexed,
            # Lineage to the registry: which model version produced these tags.
            **({"model": ordered[0].model.name, "model_version": ordered[0].model.version} if ordered else {}),
            # Per step of tagging (all chunks' images over all chunks' tagging time), whatever ran in parallel.
            "images_per_s_per_step": round(table.num_rows / tagging_s, 2) if tagging_s else 0.0,
            "chunk_figures": dg.MetadataValue.md(
                "| chunk | images | reused | errors | images/s | model load s | inference s | fetch+decode s (threads) "
                f"| peak memory MB |\n|---|---|---|---|---|---|---|---|---|\n{rows}"
            ),
        }
    )
    return table.sort_by("position")


@dg.graph_asset(
    partitions_def=manifests_partitions,
    group_name="tagging",
    kinds={"pytorch", "s3", "parquet"},
    owners=["team:ml-platform"],
    description="One tag row per manifest image (tagged or errored), with lineage: model version, chunk, run.",
)
def image_tags(manifest: pd.DataFrame, tagger_model: dict) -> pa.Table:
    return merge_chunks(plan_chunks(manifest, tagger_model).map(tag_chunk).collect())
