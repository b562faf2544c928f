"""Prometheus figures of the tagging steps, pushed to a Pushgateway.

A step is a short-lived process (a pod on Kubernetes) that Prometheus could not scrape in time, so
each chunk pushes its outcome under its own group (`job="tag_chunk"`, `batch`, `chunk`): while it
runs, its progress; when it ends, its totals. Once a batch's chunks are merged, their groups are deleted
(`delete_chunks`), so the gateway holds only batches in flight and never grows with the batches ever run;
Prometheus keeps what it scraped meanwhile. It scrapes the Pushgateway with `honor_labels: true`
(deploy/prometheus/scrape-configs.yml), and sums over the groups:

    sum by (model) (tagging_chunk_images{status="ok"})        images tagged
    sum by (model) (tagging_chunk_images{status="error"})     images that failed
    avg by (model) (tagging_chunk_images_per_second)          throughput of the chunks
    max by (model) (tagging_model_load_seconds)               model load time

The canary (tagging_platform/canary.py) pushes its verdict under `job="tagging_canary"` each time its
check runs; a canary that stops running stops pushing, so alert on its age as well as its result
(deploy/prometheus/canary-alerts.yml):

    time() - tagging_canary_last_run_timestamp_seconds      seconds since the last canary verdict
    tagging_canary_passed == 0                              the last canary drifted
    tagging_canary_images{result="fail"}                    how many of its photographs drifted

The events sensor pushes, under `job="manifest_events"`, how many S3 event records it has set aside
as malformed (each also copied to the dead-letter queue, the message and record number logged):

    increase(tagging_event_bad_records_total[1h])          malformed event records

Pushing never fails a step: a Pushgateway that is down costs a warning, not the chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import default_handler, delete_from_gateway, push_to_gateway

log = logging.getLogger(__name__)

JOB = "tag_chunk"
CANARY_JOB = "tagging_canary"
EVENTS_JOB = "manifest_events"
_PUSH_TIMEOUT_S = 3.0


def _chunk_registry(stats, model: str, version: str, done: bool) -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = {"model": model, "version": version}
    images = Gauge(
        "tagging_chunk_images", "Images of the chunk by outcome so far.", [*labels, "status"], registry=registry
    )
    images.labels(**labels, status="ok").set(stats.tagged)
    images.labels(**labels, status="error").set(stats.errors)
    Gauge("tagging_chunk_images_planned", "Images in the chunk.", list(labels), registry=registry).labels(**labels).set(
        stats.images
    )
    Gauge(
        "tagging_chunk_images_per_second", "Images tagged per second by the chunk.", list(labels), registry=registry
    ).labels(**labels).set(stats.images_per_s)
    Gauge("tagging_model_load_seconds", "Time to load the model in the step.", list(labels), registry=registry).labels(
        **labels
    ).set(stats.model_load_s)
    seconds = Gauge(
        "tagging_chunk_stage_seconds", "Time spent per pipeline stage.", [*labels, "stage"], registry=registry
    )
    for stage in ("fetch", "decode", "inference", "write"):
        seconds.labels(**labels, stage=stage).set(getattr(stats, f"{stage}_s"))
    Gauge("tagging_chunk_done", "1 once the chunk's result is written.", list(labels), registry=registry).labels(
        **labels
    ).set(1 if done else 0)
    return registry


def _handler(url, method, timeout, headers, data):
    return default_handler(url, method, _PUSH_TIMEOUT_S, headers, data)


def push_canary(gateway: str, *, passed: bool, images: int, failed: int, model: str, version: str, at: float) -> None:
    """The canary's latest verdict; one group, so each push replaces the previous one (an old model version's too)."""
    if not gateway:
        return
    registry = CollectorRegistry()
    labels = {"model": model, "version": version}
    Gauge(
        "tagging_canary_last_run_timestamp_seconds",
        "When the canary's check last ran (Unix time).",
        list(labels),
        registry=registry,
    ).labels(**labels).set(at)
    Gauge(
        "tagging_canary_passed",
        "1 if every canary photograph got its expected tags, else 0.",
        list(labels),
        registry=registry,
    ).labels(**labels).set(1 if passed else 0)
    counts = Gauge("tagging_canary_images", "Canary photographs by result.", [*labels, "result"], registry=registry)
    counts.labels(**labels, result="pass").set(images - failed)
    counts.labels(**labels, result="fail").set(failed)
    try:
        push_to_gateway(gateway, job=CANARY_JOB, registry=registry, handler=_handler)
    except OSError as exc:
        log.warning("could not push the canary's metrics to %s: %s", gateway, exc)


def push_bad_event_records(gateway: str, total: int) -> None:
    """The events sensor's count of malformed records so far (kept in its cursor, so it only grows)."""
    if not gateway:
        return
    registry = CollectorRegistry()
    Gauge(
        "tagging_event_bad_records_total",
        "S3 event records set aside as malformed since the sensor started.",
        registry=registry,
    ).set(total)
    try:
        push_to_gateway(gateway, job=EVENTS_JOB, registry=registry, handler=_handler)
    except OSError as exc:
        log.warning("could not push the events sensor's metrics to %s: %s", gateway, exc)


def chunk_pusher(gateway: str, batch: str, chunk: int, model: str, version: str) -> Callable[..., None]:
    """A function `push(stats, done=False)` for one chunk; a no-op when no gateway is configured."""
    if not gateway:
        return lambda stats, done=False: None
    grouping = {"batch": batch, "chunk": str(chunk)}

    def push(stats, done: bool = False) -> None:
        try:
            push_to_gateway(
                gateway,
                job=JOB,
                grouping_key=grouping,
                registry=_chunk_registry(stats, model, version, done),
                handler=_handler,
            )
        except OSError as exc:
            log.warning("could not push metrics to %s: %s", gateway, exc)

    return push


def delete_chunks(gateway: str, batch: str, chunks: list[int]) -> None:
    """Delete a batch's chunk groups from the gateway once its chunks are merged; a no-op without a gateway."""
    if not gateway:
        return
    for chunk in chunks:
        try:
            delete_from_gateway(gateway, job=JOB, grouping_key={"batch": batch, "chunk": str(chunk)}, handler=_handler)
        except OSError as exc:
            log.warning("could not delete chunk %s of %s from %s: %s", chunk, batch, gateway, exc)
            return
