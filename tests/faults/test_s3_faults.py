"""S3 misbehaving under a running batch: throttling and resets on a share of requests, then a 30 s outage."""

import time
import uuid

import boto3
import dagster as dg
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tagging_platform import engine
from tests.faults.conftest import (
    MarkerWatcher,
    assert_every_image_once,
    image_key_matcher,
    submit_watched,
    wait_for,
)
from tests.faults.s3_proxy import S3FaultProxy

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

OUTAGE_S = 30


def test_throttling_and_resets_on_a_share_of_gets_and_puts_are_retried(platform, manifest_photographs, fault_results):
    uris = platform.upload_images(manifest_photographs)
    partition = f"throttled-{uuid.uuid4().hex[:6]}"
    proxy = platform.proxy
    before = proxy.injected.copy()
    # One GET or PUT in ten answered 503 SlowDown, one in ten reset (half before S3 saw it, half after).
    proxy.faults(slowdown=0.1, reset=0.1)
    started = time.monotonic()
    with MarkerWatcher(platform, partition, {}) as watcher:
        submit_watched(platform, partition, uris, watcher)
        runs = platform.wait_for_finished_runs(partition)
    proxy.faults()
    injected = proxy.injected - before
    row = assert_every_image_once(
        platform,
        fault_results,
        "s3_throttling_and_resets",
        partition,
        uris,
        watcher,
        runs,
        injected=dict(injected),
        wall_s=round(time.monotonic() - started, 1),
    )
    # The faults really reached the run's requests, and botocore's retries absorbed them: one run, no error rows.
    assert injected["slowdown"] >= 5 and injected["reset_before"] + injected["reset_after"] >= 5, injected
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
    assert row["errored"] == 0


def test_s3_unavailable_for_30_seconds_mid_run_loses_nothing(platform, manifest_photographs, fault_results):
    uris = platform.upload_images(manifest_photographs)
    partition = f"outage-{uuid.uuid4().hex[:6]}"
    proxy = platform.proxy
    # The outage starts when the second chunk asks for its first image: tagging is under way.
    reached, release = proxy.hold(image_key_matcher(uris[2:3]))
    started = time.monotonic()
    with MarkerWatcher(platform, partition, {}) as watcher:
        submit_watched(platform, partition, uris, watcher)
        wait_for(reached.is_set, 420, "the second chunk to fetch its first image")
        proxy.outage()  # refused connections; the open ones (the held request's too) are reset
        release.set()
        time.sleep(OUTAGE_S)  # the fault itself: S3 is unreachable for this long
        proxy.restore()
        runs = platform.wait_for_finished_runs(partition)
    retried = [e.step_key for run in runs for e in platform.step_events(run.run_id, "STEP_UP_FOR_RETRY")]
    row = assert_every_image_once(
        platform,
        fault_results,
        "s3_unavailable_30s",
        partition,
        uris,
        watcher,
        runs,
        outage_s=OUTAGE_S,
        steps_retried=retried,
        wall_s=round(time.monotonic() - started, 1),
    )
    # Absorbed inside the run (botocore's backoff, then the steps' retry policy): no image is an error row
    # because S3 was briefly away.
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
    assert row["errored"] == 0


@pytest.fixture(scope="module")
def tagger(s3, model_ref):
    return engine.Tagger.load(s3, model_ref, device="cpu", batch_size=2, fetch_workers=2)


@pytest.mark.parametrize("fault", ["slowdown", "reset"])
def test_an_image_s3_cannot_serve_fails_its_chunk_for_a_retry_instead_of_becoming_an_error_row(
    fault, embedded_s3, s3, settings, model_ref, photographs, upload_images, tagger
):
    uris = upload_images(dict(list(photographs.items())[:2]))
    [spec] = engine.chunk_specs(
        f"s3-away-{fault}", "s3://manifests/x.json", uuid.uuid4().hex, [0, 1], uris, model_ref, 2
    )
    proxy = S3FaultProxy(embedded_s3.port).start()
    # Two attempts, not the platform's eight: the same giving up, sooner.
    client = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        region_name=settings.aws_region,
        aws_access_key_id="embedded",
        aws_secret_access_key="embedded",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )
    # Every GET of an image answered 503 SlowDown, or its connection reset; all else goes through.
    proxy.faults(**{fault: 1.0}, methods=("GET",), only=image_key_matcher(uris))
    try:
        with pytest.raises((ClientError, BotoCoreError)):
            engine.run_chunk(client, settings.warehouse_bucket, spec, "run-1", lambda: tagger)
        assert proxy.injected, "no fault reached the chunk"
        assert engine.chunk_stats(s3, settings.warehouse_bucket, spec) == {}, "the failed chunk wrote a result"
        # Once S3 answers again, the retried chunk tags both images: neither was recorded as an error.
        proxy.faults()
        stats = engine.run_chunk(client, settings.warehouse_bucket, spec, "run-2", lambda: tagger)
    finally:
        proxy.stop()
    assert (stats.tagged, stats.errors, stats.skipped) == (2, 0, False)
