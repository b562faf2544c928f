"""The model-upgrade story on the whole local platform: register a new version, see the batches stale, dry-run the
re-tag, re-tag them with a real backfill, compare; the old version's output stays readable."""

import json
import re
import subprocess
import sys
import time

import pytest

from tagging_platform import models, photos, publishing
from tagging_platform.cli import upload_batch
from tagging_platform.local import LocalPlatform
from tagging_platform.manifests import partition_key_for
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

TIMEOUT_S = 600


def _cli(platform: LocalPlatform, *args: str, check: bool = True) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "tagging_platform.cli", *args],
        cwd=REPO,
        env={**platform.env, "TP_DAGSTER_URL": platform.ui_url},
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0 or not check, completed.stdout + completed.stderr
    return completed.stdout


def _wait(condition, what: str, platform: LocalPlatform):
    deadline = time.monotonic() + TIMEOUT_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}; see {platform.log_path}"
        time.sleep(2)
    return value


def _output(platform: LocalPlatform, partition: str, ref: models.ModelRef) -> tuple[dict, list[dict]]:
    client = platform.s3()
    location = publishing.output_location(platform.settings.output_root, partition, ref)
    marker = publishing.read_marker(client, location)
    bucket = platform.settings.output_bucket
    objects = [
        json.loads(line)
        for part in marker["parts"]
        for line in client.get_object(Bucket=bucket, Key=part["key"])["Body"].read().splitlines()
    ]
    return marker, objects


def test_a_new_model_version_is_retagged_by_a_backfill_of_exactly_the_stale_batches(tmp_path):
    overrides = {
        "TP_SENSOR_INTERVAL_S": "2",
        "TP_MAX_CHUNK_IMAGES": "4",
        "TP_MIN_CHUNK_IMAGES": "1",
        "TP_CANARY_ENABLED": "0",
    }
    platform = LocalPlatform(REPO / "workspace.yaml", settings_overrides=overrides, dagster_home=tmp_path / "home")
    with platform:
        client, settings = platform.s3(), platform.settings
        pictures = dict(photos.sample_set(variants_per_photo=1))
        keys = [
            upload_batch(client, settings, "cats", [("chelsea.jpg", pictures["chelsea.jpg"])]),
            upload_batch(client, settings, "drinks", [("coffee.jpg", pictures["coffee.jpg"])]),
        ]
        batches = [partition_key_for(key, settings.manifest_prefix) for key in keys]
        for batch in batches:
            assert platform.wait_for_run(batch, timeout_s=TIMEOUT_S)["status"] == "SUCCESS", platform.log_path
        old = models.resolve_model(client, settings.model_bucket, "mobilenet_v2")
        assert platform.dagster.stale_status("image_tags", batches) == ["FRESH", "FRESH"]

        _cli(platform, "model", "register", "mobilenet_v2", "--builtin", "mobilenet_v2", "--resize", "232")
        new = models.resolve_model(client, settings.model_bucket, "mobilenet_v2")
        assert new.version != old.version
        # The model registry sensor materializes tagger_model with the new version as its data version.
        _wait(lambda: platform.dagster.data_version("tagger_model") == new.version, "tagger_model", platform)
        assert platform.dagster.stale_status("image_tags", batches) == ["STALE", "STALE"]

        dry_run = _cli(platform, "retag", "--model", "mobilenet_v2", "--dry-run")
        assert [line.split()[0] for line in dry_run.splitlines()[2:-2]] == sorted(batches)
        assert all(line.split()[-1] == "stale" for line in dry_run.splitlines()[2:-2])
        launched = _cli(platform, "retag", "--model", f"mobilenet_v2@{old.short_version[:8]}")
        backfill = re.search(r"launched backfill (\S+) of 2 batches", launched).group(1)
        status = _wait(
            lambda: (s := platform.dagster.backfill_status(backfill)) not in ("REQUESTED", "CANCELING") and s,
            "the backfill",
            platform,
        )
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, platform.log_path)

        assert platform.dagster.stale_status("image_tags", batches) == ["FRESH", "FRESH"]
        for batch in batches:
            old_marker, old_objects = _output(platform, batch, old)
            new_marker, new_objects = _output(platform, batch, new)
            # The old version's output is where it was, complete; the new one names the version it supersedes.
            assert {o["model"]["version"] for o in old_objects} == {old.version} and old_marker["supersedes"] is None
            assert {o["model"]["version"] for o in new_objects} == {new.version}
            assert new_marker["supersedes"]["version"] == old.version
            assert new_marker["supersedes"]["location"] == publishing.output_location(settings.output_root, batch, old)
            assert [o["image"] for o in new_objects] == [o["image"] for o in old_objects]
        assert "nothing to re-tag" in _cli(platform, "retag", "--model", "mobilenet_v2", "--dry-run")
        # quality_history_automation brings tag_quality_history up to date: each batch against the old version.
        compared = _wait(
            # Until its first materialization `compare` says there is no history yet.
            lambda: (
                (out := _cli(platform, "compare", check=False)).count(
                    f"versions {old.short_version} > {new.short_version}"
                )
                == 2
                and out
            ),
            "the version comparison in tag_quality_history",
            platform,
        )
        assert re.search(r"top-1 agreement [\d.]+%, top-5 agreement [\d.]+%, confidence shift [+-][\d.]+", compared)
