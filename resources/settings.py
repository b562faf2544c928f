"""The platform's settings as a Dagster resource, so assets and sensors take them like any other resource."""

import functools

import dagster as dg

from tagging_platform.settings import Settings


class PlatformSettings(dg.ConfigurableResource):
    """Reads `Settings.from_env()` in the process that uses it (a step process, a pod, the sensor)."""

    @property
    def settings(self) -> Settings:
        return _from_env()


@functools.cache
def _from_env() -> Settings:
    return Settings.from_env()
