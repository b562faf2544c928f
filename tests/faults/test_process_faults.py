"""Processes dying under a running batch: a tag_chunk step killed mid-chunk, a one-chunk run's own process killed,
the daemon and the webserver restarted, PostgreSQL (Dagster's storage) dropping every connection."""

import io
import os
import signal
import time
import uuid

import dagster as dg
import pyarrow.parquet as pq
import pytest

from tests.faults.conftest import (
    CHECKPOINT_IMAGES,
    CHUNK_IMAGES,
    MarkerWatcher,
    assert_every_image_once,
    image_key_matcher,
    submit_watched,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def test_a_tag_chunk_process_killed_mid_chunk_is_retried_without_duplicates(
    platform, manifest_photographs, fault_results
):
    uris = platform.upload_images(manifest_photographs)
    partition = f"killed-{uuid.uuid4().hex[:6]}"
    # The second chunk's step is parked on its first image: model loaded, chunk started, nothing written.
    reached, release = platform.proxy.hold(image_key_matcher(uris[2:3]))
    with MarkerWatcher(platform, partition, {}) as watcher:
        submit_watched(platform, partition, uris, watcher)
        wait_for(reached.is_set, 420, "the second chunk to fetch its first image")
        run_id, step_key, pid = platform.wait_for_step(partition, "image_tags.tag_chunk[chunk_00001]")
        os.kill(pid, signal.SIGKILL)
        release.set()
        runs = platform.wait_for_finished_runs(partition)
    retried = [e.step_key for e in platform.step_events(run_id, "STEP_UP_FOR_RETRY")]
    assert_every_image_once(
        platform,
        fault_results,
        "tag_chunk_process_killed",
        partition,
        uris,
        watcher,
        runs,
        killed_step=step_key,
        steps_retried=retried,
    )
    # The crash was seen as the step's failure and its retry policy ran it again, in the same run.
    assert retried == [step_key]
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]


def test_a_tag_chunk_process_killed_after_a_checkpoint_is_retried_tagging_only_the_rest(
    platform, manifest_photographs, fault_results
):
    uris = platform.upload_images(manifest_photographs)
    partition = f"checkpoint-{uuid.uuid4().hex[:6]}"
    # The second chunk tags its first image, commits it (a checkpoint per image), then waits on its second.
    reached, release = platform.proxy.hold(image_key_matcher(uris[3:4]))
    with MarkerWatcher(platform, partition, {}) as watcher:
        submit_watched(platform, partition, uris, watcher)
        wait_for(reached.is_set, 420, "the second chunk to fetch its second image")
        run_id, step_key, pid = platform.wait_for_step(partition, "image_tags.tag_chunk[chunk_00001]")
        committed = wait_for(lambda: _chunk_parts(platform, partition, 1), 120, "the second chunk's first checkpoint")
        os.kill(pid, signal.SIGKILL)
        release.set()
        runs = platform.wait_for_finished_runs(partition)
    killed_attempt = {_attempt(key) for key in committed}
    parts = _chunk_parts(platform, partition, 1)
    retry_parts = {key: positions for key, positions in parts.items() if _attempt(key) not in killed_attempt}
    committed_positions = {p for key, positions in parts.items() if _attempt(key) in killed_attempt for p in positions}
    retagged = sum(len(set(positions) & committed_positions) for positions in retry_parts.values())
    [retry_output] = [
        e.event_specific_data.metadata for e in platform.step_events(run_id, "STEP_OUTPUT") if e.step_key == step_key
    ]
    assert_every_image_once(
        platform,
        fault_results,
        "tag_chunk_killed_after_a_checkpoint",
        partition,
        uris,
        watcher,
        runs,
        killed_step=step_key,
        checkpoint_images=CHECKPOINT_IMAGES,
        committed_before_kill=len(committed_positions),
        tagged_by_retry=retry_output["tagged_this_attempt"].value,
        resumed_by_retry=retry_output["resumed"].value,
        retagged_after_kill=retagged,
    )
    # The retry read the killed attempt's part and tagged only the image it did not hold.
    assert len(committed_positions) == 1 and retagged == 0
    assert (retry_output["resumed"].value, retry_output["tagged_this_attempt"].value) == (1, 1)
    assert retry_output["attempt"].value == 1
    assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]


def test_a_one_chunk_run_killed_in_process_after_a_checkpoint_is_rerun_tagging_only_the_rest(
    platform, manifest_photographs, fault_results
):
    # One chunk's worth of images: the run executes every step in its own process (intake.run_config), so the
    # kill takes the whole run, not one step. The code server reports the run failed, the instance's run
    # retries start it again from the failure, and that run's tag_chunk resumes from the committed part.
    uris = platform.upload_images(manifest_photographs)[:CHUNK_IMAGES]
    partition = f"inprocess-{uuid.uuid4().hex[:6]}"
    reached, release = platform.proxy.hold(image_key_matcher(uris[1:2]))
    with MarkerWatcher(platform, partition, {}) as watcher:
        submit_watched(platform, partition, uris, watcher)
        wait_for(reached.is_set, 420, "the chunk to fetch its second image")
        killed_run, pid = wait_for(lambda: _in_process_run(platform, partition), 60, "the run's in-process executor")
        committed = wait_for(lambda: _chunk_parts(platform, partition, 0), 120, "the chunk's first checkpoint")
        os.kill(pid, signal.SIGKILL)
        release.set()
        runs = platform.wait_for_success(partition)
    [rerun] = [r.run_id for r in runs if r.run_id != killed_run]
    [output] = [
        e.event_specific_data.metadata
        for e in platform.step_events(rerun, "STEP_OUTPUT")
        if e.step_key.startswith("image_tags.tag_chunk")
    ]
    committed_positions = {p for positions in committed.values() for p in positions}
    retagged = sum(
        len(set(positions) & committed_positions)
        for key, positions in _chunk_parts(platform, partition, 0).items()
        if key not in committed
    )
    assert_every_image_once(
        platform,
        fault_results,
        "one_chunk_run_killed_in_process_after_a_checkpoint",
        partition,
        uris,
        watcher,
        runs,
        checkpoint_images=CHECKPOINT_IMAGES,
        committed_before_kill=len(committed_positions),
        tagged_by_rerun=output["tagged_this_attempt"].value,
        resumed_by_rerun=output["resumed"].value,
        retagged_after_kill=retagged,
    )
    assert [r.status for r in reversed(runs)] == [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS]
    assert len(committed_positions) == 1 and retagged == 0
    assert (output["resumed"].value, output["tagged_this_attempt"].value) == (1, 1)


def _in_process_run(platform, partition: str) -> tuple[str, int] | None:
    """(run id, pid) of the partition's run executing its steps in its own process, once it has said so."""
    for run in platform.runs(partition):
        for event in platform.step_events(run.run_id, "ENGINE_EVENT"):
            if event.message.startswith("Executing steps in process"):
                return run.run_id, int(event.event_specific_data.metadata["pid"].value)
    return None


def _chunk_parts(platform, partition: str, index: int) -> dict[str, list[int]]:
    """{part key: positions} of a chunk's committed parts in the warehouse."""
    client, bucket = platform.s3(), platform.settings.warehouse_bucket
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"chunks/partition={partition}/")
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {
        key: pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
        .column("position")
        .to_pylist()
        for key in keys
        if f"/chunk-{index:05d}-" in key and key.rsplit("/", 1)[-1].startswith("part-")
    }


def _attempt(part_key: str) -> str:
    return part_key.rsplit("-", 1)[-1].removesuffix(".parquet")


def test_daemon_and_webserver_restarted_mid_run_lose_no_run_and_repeat_no_manifest(
    platform, manifest_photographs, fault_results
):
    runs_before = {r.run_id for r in platform.instance.get_runs()}
    first_uris = platform.upload_images(manifest_photographs)
    second_uris = platform.upload_images(manifest_photographs)
    first, second = f"restart-a-{uuid.uuid4().hex[:6]}", f"restart-b-{uuid.uuid4().hex[:6]}"
    reached, release = platform.proxy.hold(image_key_matcher(first_uris[2:3]))
    with MarkerWatcher(platform, first, {}) as watcher, MarkerWatcher(platform, second, {}) as second_watcher:
        submit_watched(platform, first, first_uris, watcher)
        wait_for(reached.is_set, 420, "the first batch's run to be tagging")
        platform.stop_process("daemon")
        # While the daemon is away a second manifest arrives; nothing can notice it yet.
        submit_watched(platform, second, second_uris, second_watcher)
        platform.stop_process("webserver")
        platform.start_webserver()
        release.set()
        platform.start_daemon()
        first_runs = platform.wait_for_finished_runs(first)
        second_runs = platform.wait_for_finished_runs(second)
        # Two more sensor ticks after both runs: a repeated manifest would have started a run by now.
        since = time.time()
        wait_for(lambda: platform.manifest_sensor_ticks_since(since) >= 2, 120, "two more manifest sensor ticks")
    details = {"daemon_restarted": True, "webserver_restarted": True}
    assert_every_image_once(
        platform, fault_results, "daemon_restarted_mid_run", first, first_uris, watcher, first_runs, **details
    )
    assert_every_image_once(
        platform,
        fault_results,
        "manifest_arriving_while_daemon_down",
        second,
        second_uris,
        second_watcher,
        second_runs,
        **details,
    )
    assert [r.status for r in first_runs] == [dg.DagsterRunStatus.SUCCESS]
    assert [r.status for r in second_runs] == [dg.DagsterRunStatus.SUCCESS]
    # The restarted webserver shows both runs.
    shown = {r["runId"] for r in platform.dagster.runs(job="tag_manifest")}
    assert {first_runs[0].run_id, second_runs[0].run_id} <= shown
    # The sensor's cursor neither skipped a manifest (both ran) nor repeated one: the only new tag_manifest
    # runs are these two, so no earlier batch was started again.
    new = [r for r in platform.instance.get_runs() if r.run_id not in runs_before and r.job_name == "tag_manifest"]
    assert sorted(r.tags["dagster/partition"] for r in new) == sorted([first, second])


def test_postgresql_dropping_every_connection_mid_run_loses_nothing(
    platform, manifest_photographs, fault_results, fault_database
):
    import psycopg2

    database, _ = fault_database
    uris = platform.upload_images(manifest_photographs)
    partition = f"pg-drop-{uuid.uuid4().hex[:6]}"
    reached, release = platform.proxy.hold(image_key_matcher(uris[2:3]))
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    terminated = 0
    try:
        with MarkerWatcher(platform, partition, {}) as watcher:
            submit_watched(platform, partition, uris, watcher)
            wait_for(reached.is_set, 420, "the second chunk to fetch its first image")
            release.set()
            # For ten seconds every connection to Dagster's database is cut as soon as it is seen: the
            # run worker's, the steps', the daemon's and the webserver's event and run writes.
            until = time.monotonic() + 10
            while time.monotonic() < until:
                cursor = admin.cursor()
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
                terminated += cursor.fetchone()[0]
                time.sleep(0.05)
            runs = platform.wait_for_success(partition)
    finally:
        admin.close()
    assert terminated > 0, "no connection to terminate: the fault was not injected"
    failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
    # Dagster's automatic retry names its parent; if its daemon lost the failure to the same outage, the
    # failed-run sensor's run names the run it stands in for (sensors/failed_run_sensor.py).
    retried_from = {r.tags.get("dagster/parent_run_id") or r.tags.get("tagging/retry_of") for r in runs}
    assert_every_image_once(
        platform,
        fault_results,
        "postgresql_connections_dropped",
        partition,
        uris,
        watcher,
        runs,
        connections_terminated=terminated,
        recovered_by=_recovered_by(runs, failed),
    )
    # A run that lost its storage mid-write fails clearly (a step's end could not be recorded) and the daemon
    # retries it from the failure; exactly one run succeeds and no failed run is left without its retry.
    assert [r.status for r in runs].count(dg.DagsterRunStatus.SUCCESS) == 1
    assert all(r.run_id in retried_from for r in failed)


def _recovered_by(runs, failed) -> str:
    if not failed:
        return "retries inside the run"
    if any("tagging/retry_of" in r.tags for r in runs):
        return "the failed-run sensor's new run (Dagster's retry daemon lost the failure to the outage)"
    return "the instance's automatic run retry, from the failure"
