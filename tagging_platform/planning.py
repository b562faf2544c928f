"""The chunk planner: how many chunks, how big, on how many GPU pods, at what cost and wall time."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tagging_platform.settings import Settings


@dataclass(frozen=True)
class Plan:
    images: int
    chunk_images: int
    chunks: int
    pods: int
    waves: int
    wall_s: float
    gpu_hours: float
    startup_share: float
    meets_deadline: bool
    cost_usd: float | None = None
    # GPUs free when the batch was planned: TP_MAX_GPUS less what running batches hold or wait for.
    gpus_free: int = 0
    # How long a pod of this plan may wait to be placed before its step fails: node start-up plus the waves
    # ahead of the last wave (those pods hold the GPUs it waits for).
    unschedulable_timeout_s: float = 0.0
    # Why each bound applies, in the planner's words: chunk count, chunk size, pods and lost work.
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        cost = f", ${self.cost_usd:,.2f}" if self.cost_usd is not None else ""
        verdict = "meets the deadline" if self.meets_deadline else "MISSES the deadline"
        summary = (
            f"{self.images:,} images -> {self.chunks:,} chunk{'s' if self.chunks != 1 else ''} of "
            f"{self.chunk_images:,} on {self.pods} pod{'s' if self.pods != 1 else ''} "
            f"({self.waves} wave{'s' if self.waves != 1 else ''}): {self.wall_s / 60:,.1f} min wall, "
            f"{self.gpu_hours:,.2f} GPU-hours{cost}, start-up {self.startup_share:.1%} of GPU time; {verdict}"
        )
        return "\n".join([summary, *(f"  - {reason}" for reason in self.reasons)])


def plan_chunks(
    images: int,
    *,
    ms_per_image: float,
    startup_s: float,
    max_gpus: int,
    deadline_min: float,
    min_chunk_images: int = 1,
    max_chunk_images: int | None = None,
    gpu_hour_usd: float | None = None,
    gpus_held: int = 0,
    checkpoint_images: int | None = None,
    checkpoint_s: float | None = None,
    node_startup_s: float = 0.0,
) -> Plan:
    """The fewest chunks that meet the deadline: every chunk is a pod that pays `startup_s` first.

    Fewer, longer chunks spend less GPU time starting up; more chunks finish sooner when GPUs are
    free. So: take the smallest chunk count whose single wave of pods meets the deadline, never
    more pods than `max_gpus`, never chunks above `max_chunk_images` (a chunk's image list travels
    between steps) or, unless the whole manifest is smaller, below `min_chunk_images`. Checkpoints,
    not chunk size, bound what a lost pod redoes. GPUs that running batches hold (`gpus_held`, all
    batches share one pool of `max_gpus`) do not shrink the plan: the chunks that find no free GPU
    wait in the pool, which the wall time counts as one more wave.
    """
    if images <= 0:
        raise ValueError("a plan needs at least one image")
    if max_gpus <= 0 or ms_per_image <= 0 or startup_s < 0 or deadline_min <= 0:
        raise ValueError("max_gpus, ms_per_image and deadline_min must be positive, startup_s not negative")
    compute_s = images * ms_per_image / 1000
    deadline_s = deadline_min * 60
    free = max(0, max_gpus - max(0, gpus_held))
    reasons = []
    # The most images one pod tags within the deadline after its start-up; chunk sizes round up to whole images.
    per_pod = math.floor((deadline_s - startup_s) * 1000 / ms_per_image) if deadline_s > startup_s else 0
    if per_pod >= 1:
        needed = math.ceil(images / per_pod)
        reasons.append(
            f"chunks: {needed:,} is the fewest whose pods, each paying {startup_s:,.0f} s of start-up, tag "
            f"{compute_s:,.0f} GPU-s of images within the {deadline_min:,.0f}-min deadline in one wave"
        )
    else:
        needed = max_gpus
        reasons.append(f"chunks: start-up ({startup_s:,.0f} s) alone exceeds the deadline, so one per GPU")
    chunks = max(1, min(needed, max_gpus))
    if needed > max_gpus:
        reasons.append(f"chunks: capped at TP_MAX_GPUS {max_gpus}: more would run in later waves and only add start-up")
    if chunks > max(1, images // max(1, min_chunk_images)):
        chunks = max(1, images // max(1, min_chunk_images))
        reasons.append(
            f"chunk size: at least TP_MIN_CHUNK_IMAGES {min_chunk_images:,} (start-up outweighs smaller chunks)"
        )
    if max_chunk_images and math.ceil(images / max_chunk_images) > chunks:
        chunks = math.ceil(images / max_chunk_images)
        reasons.append(
            f"chunk size: at most TP_MAX_CHUNK_IMAGES {max_chunk_images:,}, which raises the chunks to {chunks:,}"
        )
    chunk_images = math.ceil(images / chunks)
    chunks = math.ceil(images / chunk_images)
    pods = min(chunks, max_gpus)
    waves = math.ceil(chunks / pods)
    reasons.append(
        f"pods: {pods} = min(chunks {chunks:,}, TP_MAX_GPUS {max_gpus}); {waves} wave{'s' if waves != 1 else ''}"
    )
    if pods > free:
        waves += 1
        reasons.append(
            f"waiting: running batches hold {gpus_held} of the {max_gpus} GPUs, so {pods - free} pod(s) wait in the gpu "
            "pool for them, counted as one more wave"
        )
    if checkpoint_images is not None and checkpoint_s is not None:
        lost_images = min(checkpoint_images, math.ceil(checkpoint_s * 1000 / ms_per_image), chunk_images)
        reasons.append(
            f"lost work: a pod lost mid-chunk redoes at most {lost_images:,} images "
            f"(a checkpoint every TP_CHECKPOINT_IMAGES {checkpoint_images:,} images or TP_CHECKPOINT_S {checkpoint_s:,.0f} s)"
        )
    wave_s = startup_s + chunk_images * ms_per_image / 1000
    wall_s = waves * wave_s
    unschedulable_s = node_startup_s + (waves - 1) * wave_s
    reasons.append(
        f"unschedulable after {unschedulable_s:,.0f} s: a GPU node's start-up ({node_startup_s:,.0f} s, "
        f"TP_STEP_UNSCHEDULABLE_TIMEOUT_S) plus {waves - 1} wave(s) ahead of {wave_s:,.0f} s each"
    )
    gpu_s = chunks * startup_s + compute_s
    return Plan(
        images=images,
        chunk_images=chunk_images,
        chunks=chunks,
        pods=pods,
        waves=waves,
        wall_s=wall_s,
        gpu_hours=gpu_s / 3600,
        startup_share=chunks * startup_s / gpu_s if gpu_s else 0.0,
        meets_deadline=wall_s <= deadline_s,
        cost_usd=gpu_s / 3600 * gpu_hour_usd if gpu_hour_usd is not None else None,
        gpus_free=free,
        unschedulable_timeout_s=unschedulable_s,
        reasons=tuple(reasons),
    )


def plan_for(settings: Settings, images: int, gpus_held: int = 0) -> Plan:
    """The plan for a batch of `images` under the platform's settings: what plan_chunks sizes and retag costs."""
    return plan_chunks(images, **planning_options(settings), gpus_held=gpus_held)


def planning_options(settings: Settings) -> dict:
    """The planner's inputs as the deployment's settings give them."""
    return {
        "ms_per_image": settings.ms_per_image,
        "startup_s": settings.startup_s,
        "max_gpus": settings.max_gpus,
        "deadline_min": settings.deadline_min,
        "min_chunk_images": settings.min_chunk_images,
        "max_chunk_images": settings.max_chunk_images,
        "gpu_hour_usd": settings.gpu_hour_usd,
        "checkpoint_images": settings.checkpoint_images,
        "checkpoint_s": settings.checkpoint_s,
        "node_startup_s": settings.step_unschedulable_timeout_s,
    }


def tradeoff(images: int, deadlines_min: list[float], **options) -> str:
    """One plan per deadline, as a table: what a shorter deadline costs in GPU-hours and start-up."""
    lines = ["deadline min | chunks | images/chunk | pods | wall min | GPU-hours | cost | start-up share | meets"]
    for deadline in deadlines_min:
        plan = plan_chunks(images, deadline_min=deadline, **options)
        cost = f"${plan.cost_usd:,.2f}" if plan.cost_usd is not None else "-"
        lines.append(
            f"{deadline:>12,.0f} | {plan.chunks:>6,} | {plan.chunk_images:>12,} | {plan.pods:>4} | {plan.wall_s / 60:>8,.1f} | "
            f"{plan.gpu_hours:>9,.2f} | {cost:>8} | {plan.startup_share:>14.1%} | {'yes' if plan.meets_deadline else 'NO'}"
        )
    return "\n".join(lines)


SIZING_IMAGES = (10_000, 100_000, 1_000_000, 3_000_000, 10_000_000)


def sizing_table(settings: Settings, sizes: tuple[int, ...] = SIZING_IMAGES) -> str:
    """docs/operations.md's sizing table: one plan per manifest size under these settings, as Markdown."""
    lines = [
        "| images | chunks | images/chunk | pods | waves | wall min | GPU-hours | start-up share | cost | meets deadline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for images in sizes:
        plan = plan_for(settings, images)
        lines.append(
            f"| {images:,} | {plan.chunks:,} | {plan.chunk_images:,} | {plan.pods} | {plan.waves} | {plan.wall_s / 60:,.1f} "
            f"| {plan.gpu_hours:,.2f} | {plan.startup_share:.1%} | ${plan.cost_usd:,.2f} | {'yes' if plan.meets_deadline else 'NO'} |"
        )
    return "\n".join(lines)
