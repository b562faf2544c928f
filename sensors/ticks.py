"""What every sensor that follows the settings' interval shares."""

import dagster as dg

from tagging_platform.settings import Settings


def every_interval(settings: Settings) -> dict:
    """Evaluated every TP_SENSOR_INTERVAL_S, and running from the start: nobody has to switch it on."""
    return {"minimum_interval_seconds": settings.sensor_interval_s, "default_status": dg.DefaultSensorStatus.RUNNING}
