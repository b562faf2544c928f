"""One GPU budget for all batches: two manifests at once never run more tag_chunk steps together than TP_MAX_GPUS."""

import json
import os
import subprocess
import sys
import uuid

import dagster as dg
import yaml

from assets.tagging import GPU_POOL
from tagging_platform.local import instance_yaml
from tagging_platform.settings import Settings
from tests.conftest import REPO, record_manifest

MAX_GPUS = 2


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in edges:  # an end sorts before a start at the same instant
        running += change
        most = max(most, running)
    return most


def _tag_chunk_intervals(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, float]]:
    started, ended = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if not event or not (event.step_key or "").startswith("image_tags.tag_chunk["):
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = record.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            ended[event.step_key] = record.timestamp
    return [(started[key], ended[key]) for key in started]


def test_two_manifests_at_once_never_run_more_tag_chunk_steps_together_than_the_gpu_cap(
    postgres_url, tmp_path, s3, settings, photographs, upload_images, definitions
):
    # The budget was 1 when the pool was first used; it has been raised since. Left to the instance's default,
    # Dagster rewrites the limit from the first step that claims a slot, and on PostgreSQL that write fails the
    # run (dagster-io/dagster#33552); the planning step sets it explicitly first (assets/tagging.py).
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "dagster.yaml").write_text(
        instance_yaml(Settings.from_env({**settings.as_env(), "TP_MAX_GPUS": "1"}), postgres_url)
    )
    with dg.DagsterInstance.from_config(str(earlier)) as instance:
        assert instance.event_log_storage.initialize_concurrency_limit_to_default(GPU_POOL)
    home = tmp_path / "home"
    home.mkdir()
    config = instance_yaml(Settings.from_env({**settings.as_env(), "TP_MAX_GPUS": str(MAX_GPUS)}), postgres_url)
    assert yaml.safe_load(config)["concurrency"]["pools"]["default_limit"] == MAX_GPUS
    (home / "dagster.yaml").write_text(config)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert definitions.resolve_job_def("publish_model").execute_in_process(instance=instance).success
        partitions = []
        for _ in range(2):
            # Twelve pictures never seen before (bytes after the JPEG's end marker): three chunks of four each.
            images = {
                f"{i}-{name}": body + uuid.uuid4().bytes for i, (name, body) in enumerate(list(photographs.items()) * 2)
            }
            partition = f"pool-{uuid.uuid4().hex[:6]}"
            record_manifest(s3, settings, partition, {"images": upload_images(dict(list(images.items())[:12]))})
            instance.add_dynamic_partitions("manifests", [partition])
            partitions.append(partition)

        # Each run in its own process, as two run workers would be: both start before either ends.
        env = {**os.environ, **settings.as_env(), "TP_MAX_GPUS": str(MAX_GPUS), "DAGSTER_HOME": str(home)}
        logs = [tmp_path / f"{partition}.log" for partition in partitions]
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "job",
                    "execute",
                    "-m",
                    "definitions",
                    "-j",
                    "tag_manifest",
                    "--tags",
                    json.dumps({"dagster/partition": partition}),
                ],
                cwd=REPO,
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
            )
            for partition, log in zip(partitions, logs, strict=True)
        ]
        codes = [run.wait(timeout=900) for run in runs]
        assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
        run_ids = [r.run_id for r in instance.get_runs() if r.job_name == "tag_manifest"]
        assert len(run_ids) == 2
        intervals = [i for run_id in run_ids for i in _tag_chunk_intervals(instance, run_id)]
        assert len(intervals) == 6
        # Each run's executor would start two steps at once (four together): the pool holds them to the cap.
        assert _most_at_once(intervals) <= MAX_GPUS
        # And the cap was reached: the two runs' steps did share the GPUs, as many as the budget is now.
        assert _most_at_once(intervals) == MAX_GPUS
        [limit] = [p for p in instance.event_log_storage.get_pool_limits() if p.name == GPU_POOL]
        assert (limit.limit, limit.from_default) == (MAX_GPUS, False)
