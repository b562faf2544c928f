"""How a model runs fastest on the hardware it loads on: a measured batch size and a gated lower precision.

The batch size (and the inputs' memory format) comes from a short probe on random inputs, stored in the model
bucket per model version, precision and machine, so later loads on the same kind of machine read it instead.
A precision other than float32 is used only where its tags were measured against float32's for that model version
(top-1 agreement and top-5 containment on real photographs) and kept within CONTAINMENT_TARGET; the measurement
is recorded in the model's card, where `tagging-platform model list` shows it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tagging_platform import models, photos
from tagging_platform.s3 import read_bytes

FLOAT32 = "float32"
PRECISIONS = (FLOAT32, "bfloat16", "float16")
CONTAINMENT_TARGET = 0.995
MEMORY_FORMATS = ("channels_last", "contiguous")
# A GPU keeps its cores busy only with far more images in flight than a CPU, whose caches favour small batches.
BATCH_CANDIDATES = {"cpu": (4, 8, 16, 32), "cuda": (32, 64, 128, 256)}
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic; without them torch emulates it, far slower.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The calibration set: each shipped photograph (the canary's among them) and seeded crops of it.
CALIBRATION_VARIANTS = 20
GATE_KEY = "precision_gate"
# The probe times each cell this many times, in turns, and the first time calls it this often untimed.
PROBE_PASSES = 2
PROBE_WARM_UP_CALLS = 2


class PrecisionRefused(models.ModelError):
    """A precision asked for that the gate has not passed for this model version."""


@dataclass(frozen=True)
class BatchChoice:
    """The batch size and input memory format a tagger runs with, where they came from, and the probe's rates."""

    batch_size: int
    memory_format: str = "channels_last"
    source: str = "pinned"  # "probe", "cache" (an earlier probe on the same kind of machine) or "pinned"
    rates: dict[str, float] = field(default_factory=dict)  # "16/channels_last" -> images/s

    def rates_text(self) -> str:
        return " ".join(f"{cell}:{rate:.0f}" for cell, rate in self.rates.items())


# ---------------------------------------------------------------------------------------------------
# The machine


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_identity(device: str) -> dict[str, Any]:
    """What decides the fastest setting: the CPU, how many cores this process may use, and the GPU if it runs there."""
    gpu = None
    if device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name()
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "gpu": gpu}


def machine_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def native_lower_precision(device: str) -> str | None:
    """The precision below float32 this device computes natively, if any: half on CUDA, bfloat16 on some CPUs."""
    if device == "cuda":
        return "float16"
    return "bfloat16" if cpu_flags() & BF16_CPU_FLAGS else None


def torch_dtype(precision: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]


# ---------------------------------------------------------------------------------------------------
# The batch probe


def probe_batch(
    forward: Callable[[Any], Any], shape: tuple[int, int, int], device: str, precision: str, budget_s: float
) -> BatchChoice:
    """Time `forward` on random inputs for each candidate batch size, then the best size in the other memory format.

    Every cell is timed PROBE_PASSES times, in turns, and keeps its best rate: a neighbour's burst of work then
    slows one turn of a cell rather than deciding the choice. Each timing gets an equal share of `budget_s` after
    warm-up calls (TorchScript specialises its graph to a shape over the first calls) and at least one timed
    call, so the probe takes about `budget_s` plus the warm-ups.
    """
    import torch

    sizes = BATCH_CANDIDATES["cuda" if device == "cuda" else "cpu"]
    share = budget_s / (PROBE_PASSES * (len(sizes) + 1))
    dtype = torch_dtype(precision)
    rates: dict[str, float] = {}

    def measure(size: int, memory_format: str) -> float:
        inputs = torch.randn(size, *shape, device=device, dtype=dtype)
        if memory_format == "channels_last":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        cell = f"{size}/{memory_format}"
        with torch.inference_mode():
            for _ in range(1 if cell in rates else PROBE_WARM_UP_CALLS):
                forward(inputs)
            _synchronize(device)
            calls, started = 0, time.perf_counter()
            while calls < 1 or time.perf_counter() - started < share:
                forward(inputs)
                calls += 1
            _synchronize(device)
        rate = calls * size / (time.perf_counter() - started)
        rates[cell] = round(max(rate, rates.get(cell, 0.0)), 1)
        return rates[cell]

    for size in sizes:
        measure(size, "channels_last")
    best_size = max(sizes, key=lambda size: rates[f"{size}/channels_last"])
    measure(best_size, "contiguous")
    for _ in range(PROBE_PASSES - 1):
        for cell in list(rates):
            size, memory_format = cell.split("/")
            measure(int(size), memory_format)
    best = max(rates, key=rates.get)
    size, memory_format = best.split("/")
    return BatchChoice(int(size), memory_format, "probe", rates)


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def tuning_key(ref: models.ModelRef, precision: str, identity: dict[str, Any]) -> str:
    """Where a probe's choice is kept: beside the model version, one object per precision and kind of machine."""
    return f"{ref.name}/{ref.short_version}/tuning/{precision}-{machine_key(identity)}.json"


def cached_choice(s3_client, ref: models.ModelRef, precision: str, identity: dict[str, Any]) -> BatchChoice | None:
    body = read_bytes(s3_client, ref.bucket, tuning_key(ref, precision, identity))
    if body is None:
        return None
    stored = json.loads(body)
    return BatchChoice(stored["batch_size"], stored["memory_format"], "cache", stored["rates"])


def store_choice(
    s3_client, ref: models.ModelRef, precision: str, identity: dict[str, Any], choice: BatchChoice
) -> None:
    record = {
        "model": ref.name,
        "model_version": ref.version,
        "precision": precision,
        "machine": identity,
        "batch_size": choice.batch_size,
        "memory_format": choice.memory_format,
        "rates": choice.rates,
        "probed_at": datetime.now(UTC).isoformat(),
    }
    s3_client.put_object(
        Bucket=ref.bucket, Key=tuning_key(ref, precision, identity), Body=json.dumps(record, indent=2).encode()
    )


# ---------------------------------------------------------------------------------------------------
# The precision gate


def calibration_images() -> list[tuple[str, bytes]]:
    """The shipped photographs (the canary's among them) and seeded crops of each, as JPEGs."""
    return photos.sample_set(variants_per_photo=CALIBRATION_VARIANTS)


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Top-1 agreement and top-5 containment of a candidate's top-5 classes against the reference's, per image.

    Containment is the share of images whose reference top-1 class is among the candidate's top 5: a tag the
    reference would publish first is still published.
    """
    images = len(reference)
    top1 = sum(r[0] == c[0] for r, c in zip(reference, candidate, strict=True))
    contained = sum(r[0] in c for r, c in zip(reference, candidate, strict=True))
    return {
        "images": images,
        "top1_agreement": round(top1 / images, 4),
        "top5_containment": round(contained / images, 4),
    }


def top5(forward: Callable[[Any], Any], inputs, precision: str, device: str, batch: int = 16) -> list[list[int]]:
    """Each input's five most likely classes from `forward`, run at `precision` on `device`."""
    import torch

    classes: list[list[int]] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch].to(device).to(torch_dtype(precision))
            chunk = chunk.contiguous(memory_format=torch.channels_last)
            classes += forward(chunk).float().topk(5, dim=1).indices.tolist()
    return classes


def gate_record(reference: list[list[int]], candidate: list[list[int]], precision: str, device: str) -> dict[str, Any]:
    measured = agreement(reference, candidate)
    return {
        **measured,
        "precision": precision,
        "device": device,
        "machine": machine_identity(device),
        "target": CONTAINMENT_TARGET,
        "passed": measured["top5_containment"] >= CONTAINMENT_TARGET,
        "calibration": f"{len(photos.PHOTOGRAPHS)} shipped photographs, {CALIBRATION_VARIANTS - 1} seeded crops of each",
        "measured_at": datetime.now(UTC).isoformat(),
    }


def read_gate(s3_client, ref: models.ModelRef) -> dict[str, dict[str, Any]]:
    """The card's gate records, by precision: what the platform has measured for this model version."""
    card = json.loads(s3_client.get_object(Bucket=ref.bucket, Key=ref.card_key)["Body"].read())
    return card.get(GATE_KEY, {})


def record_gate(s3_client, ref: models.ModelRef, record: dict[str, Any]) -> None:
    """Add a gate record to the model's card. Not part of the version: it changes how the model runs, not what it is."""
    card = json.loads(s3_client.get_object(Bucket=ref.bucket, Key=ref.card_key)["Body"].read())
    card.setdefault(GATE_KEY, {})[record["precision"]] = record
    s3_client.put_object(Bucket=ref.bucket, Key=ref.card_key, Body=json.dumps(card, indent=2).encode())


def describe_gate(card: dict[str, Any]) -> str:
    """One line for `model list`: which precisions passed the gate, with their containment."""
    records = card.get(GATE_KEY, {})
    shown = [
        f"{precision} {'ok' if r['passed'] else 'refused'} (top-5 {r['top5_containment']:.3f})"
        for precision, r in sorted(records.items())
    ]
    return ", ".join([FLOAT32, *shown])
