"""Sensors and the schedule: manifests become partitions and runs; models registered in the model bucket become
materializations; a failed batch run nothing retried gets another; the canary batch runs on a schedule."""

from sensors.canary_schedule import build_canary_schedule
from sensors.failed_run_sensor import build_failed_run_sensor
from sensors.manifest_sensor import build_manifest_sensor
from sensors.model_registry_sensor import build_model_registry_sensor

__all__ = ["build_canary_schedule", "build_failed_run_sensor", "build_manifest_sensor", "build_model_registry_sensor"]
