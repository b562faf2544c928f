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

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        cost = f", ${self.cost_usd:,.2f}" if self.cost_usd is not None else ""
        verdict = "meets the deadline" if self.meets_deadline else "MISSES the deadline"
        return (
            f"{self.images:,} images -> {self.chunks:,} chunk{'s' if self.chunks != 1 else ''} of "
            f"{self.chunk_images:,} on {self.pods} pod{'s' if self.pods != 1 else ''} "
            f"({self.waves} wave{'s' if self.waves != 1 else ''}): {self.wall_s / 60:,.1f} min wall, "
            f"{self.gpu_hours:,.2f} GPU-hours{cost}, start-up {self.startup_share:.1%} of GPU time; {verdict}"
        )


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
) -> Plan:
    """The fewest chunks that meet the deadline: every chunk is a pod that pays `startup_s` first.

    Fewer, longer chunks spend less GPU time starting up; more chunks finish sooner when GPUs are
    free. So: take the smallest chunk count whose single wave of pods meets the deadline, never
    more pods than GPUs, never chunks above `max_chunk_images` (the work a failed pod redoes) or,
    unless the whole manifest is smaller, below `min_chunk_images`.
    """
    if images <= 0:
        raise ValueError("a plan needs at least one image")
    if max_gpus <= 0 or ms_per_image <= 0 or startup_s < 0 or deadline_min <= 0:
        raise ValueError("max_gpus, ms_per_image and deadline_min must be positive, startup_s not negative")
    compute_s = images * ms_per_image / 1000
    deadline_s = deadline_min * 60
    needed = math.ceil(compute_s / (deadline_s - startup_s)) if deadline_s > startup_s else max_gpus
    chunks = max(1, min(needed, max_gpus))
    if max_chunk_images:
        chunks = max(chunks, math.ceil(images / max_chunk_images))
    chunks = min(chunks, max(1, images // max(1, min_chunk_images)))
    chunk_images = math.ceil(images / chunks)
    chunks = math.ceil(images / chunk_images)
    pods = min(chunks, max_gpus)
    waves = math.ceil(chunks / pods)
    wall_s = waves * (startup_s + chunk_images * ms_per_image / 1000)
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
    )


def plan_for(settings: Settings, images: int) -> Plan:
    """The plan for a batch of `images` under the platform's settings: what plan_chunks sizes and retag costs."""
    return plan_chunks(
        images,
        ms_per_image=settings.ms_per_image,
        startup_s=settings.startup_s,
        max_gpus=settings.max_gpus,
        deadline_min=settings.deadline_min,
        min_chunk_images=settings.min_chunk_images,
        max_chunk_images=settings.max_chunk_images,
        gpu_hour_usd=settings.gpu_hour_usd,
    )


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
