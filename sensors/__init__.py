"""Sensors: the manifest sensor that turns uploads into partitions and runs."""

from sensors.manifest_sensor import build_manifest_sensor

__all__ = ["build_manifest_sensor"]
