"""The platform's settings as a Dagster resource, so assets and sensors take them like any other resource."""

import dagster as dg

from tagging_platform.settings import Settings


class PlatformSettings(dg.ConfigurableResource):
    """The settings the definitions were built with, as TP_* variables (empty: the process environment)."""

    values: dict[str, str] = {}  # noqa: RUF012 - a pydantic field (the resource's config), copied per instance

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.values or None)
