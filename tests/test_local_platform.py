"""The whole platform as a user runs it: embedded S3, `dagster dev` (webserver + daemon), the sensor, the model."""

import re
import subprocess
import sys

import pytest

from tagging_platform import photos
from tagging_platform.cli import summarise, upload_batch
from tagging_platform.local import LocalPlatform
from tagging_platform.manifests import partition_key_for
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_make_demo_tags_every_photograph_through_the_sensor():
    completed = subprocess.run(
        [sys.executable, "-m", "tagging_platform.cli", "demo", "--variants", "1", "--timeout", "600"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    last = completed.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"tagged (\d+)/(\d+) images, (\d+) tag objects published to s3://\S+, checks passed", last)
    assert match, completed.stdout
    tagged, expected, published = map(int, match.groups())
    assert tagged == expected == published == len(photos.PHOTOGRAPHS)


def test_the_same_run_with_dagster_storage_on_postgresql(postgres_url, tmp_path):
    overrides = {"TP_MAX_CHUNK_IMAGES": "3", "TP_MIN_CHUNK_IMAGES": "1", "TP_SENSOR_INTERVAL_S": "2"}
    platform = LocalPlatform(
        REPO / "workspace.yaml", postgres_url=postgres_url, settings_overrides=overrides, dagster_home=tmp_path / "home"
    )
    with platform:
        images = photos.sample_set(variants_per_photo=1)
        key = upload_batch(platform.s3(), platform.settings, "postgres-batch", images)
        partition = partition_key_for(key, platform.settings.manifest_prefix)
        run = platform.wait_for_run(partition, timeout_s=600)
        assert run["status"] == "SUCCESS", platform.log_path.read_text()[-5000:]
        assert summarise(platform, run, partition, len(images), started=0) == 0
        checks, failures = platform.dagster.run_events(run["runId"])
        assert failures == []
        assert {c["checkName"] for c in checks} >= {"every_image_accounted_for", "error_rate"}
    import psycopg2

    with psycopg2.connect(postgres_url) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cursor.fetchone()[0] >= 2  # the model's registration and the batch, stored in PostgreSQL
