"""Launching an accepted batch's run from the API, as the manifest sensor would, instead of waiting for its tick.

The run carries the sensor's name and run key (manifest key + ETag), so Dagster counts it as the sensor's own:
when the sensor later requests the same manifest, the run key finds this run and nothing else starts. The sensor
leaves a manifest the API launches alone for TP_API_LAUNCH_GRACE_S (intake.launched_elsewhere), so a tick between
the manifest's upload and this launch cannot start a second run; a launch that failed is the sensor's after that.
"""

from __future__ import annotations

import logging
import threading

from botocore.exceptions import BotoCoreError, ClientError

from tagging_platform import intake
from tagging_platform.dagster_client import DagsterClient, DagsterError
from tagging_platform.settings import Settings

JOB = "tag_manifest"
PARTITIONS = "manifests"
RUN_KEY_TAG = "dagster/run_key"
SENSOR_TAG = "dagster/sensor_name"
LAUNCHED_BY_TAG = "tagging/launched_by"

log = logging.getLogger(__name__)


class Launcher:
    def __init__(self, s3_client, settings: Settings, dagster: DagsterClient) -> None:
        self.s3 = s3_client
        self.settings = settings
        self.dagster = dagster
        self._repository: dict[str, str] | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        # With event intake the sensor reads a notification, not a listing it could leave for later.
        return self.settings.api_launch_runs and self.settings.intake == "listing"

    def tags(self, obj: intake.ManifestObject, batch_id: str) -> dict[str, str]:
        """The tags the sensor's run request gives the run, plus the two Dagster matches a sensor's runs by."""
        return {
            "dagster/partition": batch_id,
            **intake.run_tags(obj, self.settings.manifest_prefix),
            RUN_KEY_TAG: obj.run_key,
            SENSOR_TAG: intake.LISTING_SENSOR,
            LAUNCHED_BY_TAG: "api",
        }

    def launch(self, obj: intake.ManifestObject, batch_id: str, images: int) -> str | None:
        """The run's id; None when Dagster could not launch it (the sensor requests it after the grace)."""
        try:
            repository = self._repository_selector()
            # What the sensor does before its run request: the record the manifest asset reads, the partition.
            intake.record_partition(self.s3, self.settings.warehouse_bucket, batch_id, obj)
            self.dagster.add_dynamic_partition(repository, PARTITIONS, batch_id)
            return self.dagster.launch_run(
                repository, JOB, self.tags(obj, batch_id), intake.run_config(self.settings, images)
            )
        except (DagsterError, ClientError, BotoCoreError) as exc:
            log.warning(
                "batch %s: launching its run failed (%s); the manifest sensor requests it within %.0f s",
                batch_id,
                exc,
                self.settings.api_launch_grace_s + self.settings.sensor_interval_s,
            )
            return None

    def _repository_selector(self) -> dict[str, str]:
        with self._lock:
            if self._repository is None:
                self._repository = self.dagster.repository_of(JOB)
            return self._repository
