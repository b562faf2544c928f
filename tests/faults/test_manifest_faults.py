"""Manifests racing the platform: the same manifest uploaded twice at once, and one changed while its run is in
progress. The semantics: a manifest version (key + ETag) is one run; a changed manifest (new ETag) is a new run of
the same batch (partition), which waits for the batch's run in progress, so that run completes on the version it
read and the newest version's run lands last and is what the batch's output and warehouse table hold."""

import threading
import time
import uuid

import dagster as dg
import pytest

from tests.faults.conftest import (
    MarkerWatcher,
    assert_every_image_once,
    check_marker,
    image_key_matcher,
    published_location,
    submit_watched,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def _etag(platform, key: str) -> str:
    return platform.s3().head_object(Bucket=platform.settings.manifest_bucket, Key=key)["ETag"].strip('"')


def test_the_same_manifest_uploaded_twice_at_once_starts_one_run(platform, manifest_photographs, fault_results):
    uris = platform.upload_images(manifest_photographs)
    partition = f"twice-{uuid.uuid4().hex[:6]}"
    start = threading.Barrier(2)
    keys = []

    def upload():
        start.wait()
        keys.append(platform.submit(partition, uris))

    with MarkerWatcher(platform, partition, {}) as watcher:
        uploads = [threading.Thread(target=upload) for _ in range(2)]
        for thread in uploads:
            thread.start()
        for thread in uploads:
            thread.join()
        watcher.expected[_etag(platform, keys[0])] = len(uris)
        runs = platform.wait_for_finished_runs(partition)
        since = time.time()
        wait_for(lambda: platform.manifest_sensor_ticks_since(since) >= 2, 120, "two more manifest sensor ticks")
    runs = platform.runs(partition)
    assert_every_image_once(
        platform, fault_results, "same_manifest_uploaded_twice_at_once", partition, uris, watcher, runs
    )
    assert keys[0] == keys[1]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]


def test_a_manifest_changed_while_its_run_is_in_progress_gets_a_second_run_that_lands_last(
    platform, manifest_photographs, fault_results
):
    uris = platform.upload_images(manifest_photographs)
    changed = uris[:3]  # the customer takes one image out
    partition = f"changed-{uuid.uuid4().hex[:6]}"
    reached, release = platform.proxy.hold(image_key_matcher(uris[2:3]))
    with MarkerWatcher(platform, partition, {}) as watcher:
        first_etag = submit_watched(platform, partition, uris, watcher)
        wait_for(reached.is_set, 420, "the first version's run to be tagging")
        second_etag = submit_watched(platform, partition, changed, watcher)
        runs = wait_for(lambda: len(platform.runs(partition)) == 2 and platform.runs(partition), 120, "the second run")
        newer = next(r for r in runs if r.tags["tagging/manifest_etag"] == second_etag)
        # It waits for the batch's run in progress instead of racing it to the same output.
        time.sleep(3 * platform.settings.sensor_interval_s)  # the run queue's daemon gets several chances
        assert platform.instance.get_run_by_id(newer.run_id).status == dg.DagsterRunStatus.QUEUED
        release.set()
        runs = platform.wait_for_finished_runs(partition, count=2)
    by_etag = {r.tags["tagging/manifest_etag"]: r for r in runs}
    assert set(by_etag) == {first_etag, second_etag}
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    first_record, second_record = (
        platform.instance.get_run_record_by_id(by_etag[e].run_id) for e in (first_etag, second_etag)
    )
    assert first_record.end_time <= second_record.start_time
    # The first run completed on the version it read: it tagged and published all four images.
    published = {
        e.step_key: e.event_specific_data.materialization.metadata
        for e in platform.step_events(by_etag[first_etag].run_id, "ASSET_MATERIALIZATION")
        if e.event_specific_data.materialization.asset_key == dg.AssetKey("published_tags")
    }
    assert [m["objects"].value for m in published.values()] == [len(uris)]
    # What the batch holds now is the newest version, each of its images once, nothing of the older one.
    assert_every_image_once(
        platform,
        fault_results,
        "manifest_changed_mid_run",
        partition,
        changed,
        watcher,
        runs,
        first_version_images=len(uris),
        changed_version_images=len(changed),
    )
    [location] = published_location(platform.s3(), platform.settings, partition)
    marker, _, _ = check_marker(platform.s3(), platform.settings.output_bucket, location)
    assert (marker["manifest_etag"], marker["run_id"]) == (second_etag, by_etag[second_etag].run_id)
