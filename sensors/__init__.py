"""Sensors: manifests become partitions and runs; models registered in the model bucket become materializations."""

from sensors.manifest_sensor import build_manifest_sensor
from sensors.model_registry_sensor import build_model_registry_sensor

__all__ = ["build_manifest_sensor", "build_model_registry_sensor"]
