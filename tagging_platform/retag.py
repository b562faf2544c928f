"""Re-tagging after a model upgrade: which batches an older version tagged, what redoing them costs, and the backfill.

Which batches are stale is read from the warehouse, where every tag row names the model and version that
produced it: a batch is stale for a model when its tags came from that model at another version than the
one the platform now resolves it to (its `latest`). Dagster's own staleness (tagger_model's data version is
the default model's version, recorded by every image_tags materialization) shows the same batches in the
UI; `retag` prints it beside each batch. Re-tagging is one partitioned asset backfill of exactly those
batches, launched through Dagster's GraphQL API, so it is the backfill an operator would start from the UI.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow.compute as pc

from tagging_platform import planning, warehouse
from tagging_platform.dagster_client import DagsterClient
from tagging_platform.models import ModelRef
from tagging_platform.settings import Settings

# What a manifest's run materializes (the tag_manifest job): validated again, tagged, published, measured.
RETAG_ASSETS = ("manifest", "image_tags", "published_tags", "tag_quality_metrics")
TAGGER_MODEL = "tagger_model"


class RetagError(RuntimeError):
    """Re-tagging cannot start; the message says what to do first."""


@dataclass(frozen=True)
class StaleBatch:
    partition: str
    version: str  # the model version that produced the batch's tags
    images: int
    plan: planning.Plan


def stale_batches(
    settings: Settings, target: ModelRef, older: str | None = None, manifests: list[str] | None = None
) -> list[StaleBatch]:
    """Batches whose tags `target.name` produced at another version than `target.version`, in partition order.

    `older` (a version or its prefix) keeps only batches tagged by that version; `manifests` only those batches.
    """
    table = warehouse.tag_dataset(settings, manifests).to_table(
        columns=["partition", "model_version"], filter=pc.field("model_name") == target.name
    )
    counts = Counter(zip(table.column("partition").to_pylist(), table.column("model_version").to_pylist()))
    wanted = f"sha256:{older.removeprefix('sha256:')}" if older else None
    batches = []
    for (partition, version), images in sorted(counts.items()):
        if version == target.version or (wanted and not version.startswith(wanted)):
            continue
        batches.append(StaleBatch(partition, version, images, planning.plan_for(settings, images)))
    return batches


def describe(batches: list[StaleBatch], target: ModelRef, stale_in_dagster: dict[str, str] | None = None) -> str:
    """The estimate as a table, one row per batch, and the totals."""
    if not batches:
        return f"nothing to re-tag: no batch has tags from another version of {target.name} than {target.short_version}"
    headers = ["batch", "tagged by", "images", "chunks", "GPU-hours", "cost", "Dagster"]
    rows = [
        [
            b.partition,
            f"{target.name}@{b.version.removeprefix('sha256:')[:16]}",
            f"{b.images:,}",
            f"{b.plan.chunks:,}",
            f"{b.plan.gpu_hours:.3f}",
            f"${b.plan.cost_usd:,.2f}",
            (stale_in_dagster or {}).get(b.partition, "?").lower(),
        ]
        for b in batches
    ]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    images = sum(b.images for b in batches)
    chunks = sum(b.plan.chunks for b in batches)
    gpu_hours = sum(b.plan.gpu_hours for b in batches)
    cost = sum(b.plan.cost_usd or 0.0 for b in batches)
    lines.append(
        f"total: {len(batches)} batch{'es' if len(batches) != 1 else ''}, {images:,} images, {chunks:,} chunks, "
        f"{gpu_hours:.3f} GPU-hours, ${cost:,.2f} to re-tag with {target.name}@{target.short_version}"
    )
    return "\n".join(lines)


def stale_in_dagster(client: DagsterClient, partitions: list[str]) -> dict[str, str]:
    """Dagster's own verdict on each batch's image_tags: FRESH, STALE or MISSING."""
    return dict(zip(partitions, client.stale_status("image_tags", partitions), strict=True)) if partitions else {}


def launch(client: DagsterClient, settings: Settings, target: ModelRef, batches: list[StaleBatch]) -> str:
    """One asset backfill of exactly these batches; returns its id."""
    if target.name == settings.default_model:
        # Batches without a "model" take tagger_model's value: it must already be the new version.
        current = client.data_version(TAGGER_MODEL)
        if current != target.version:
            raise RetagError(
                f"tagger_model is still at {current or 'nothing'}, not {target.version}: the model registry sensor "
                "materializes it within one interval of the registration (or run the publish_model job)"
            )
    return client.launch_partition_backfill(
        list(RETAG_ASSETS),
        [b.partition for b in batches],
        title=f"retag {target.name}@{target.short_version}",
        tags={"tagging/retag": f"{target.name}@{target.short_version}"},
    )
