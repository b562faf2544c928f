"""Resources chosen per deployment: the assets never branch on where they run."""

import dagster as dg
from dagster_aws.s3 import S3PickleIOManager, S3Resource

from resources.settings import PlatformSettings
from resources.tagger import TaggerResource
from resources.warehouse_io_manager import WarehouseIOManager
from tagging_platform.settings import Settings

# The embedded S3 server accepts any credentials; AWS takes them from the pod's role instead.
_EMBEDDED_CREDENTIALS = {"aws_access_key_id": "embedded", "aws_secret_access_key": "embedded"}


def build_resources(settings: Settings) -> dict[str, object]:
    s3 = S3Resource(
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.aws_region,
        max_attempts=8,
        **(_EMBEDDED_CREDENTIALS if settings.deployment == "local" else {}),
    )
    return {
        "s3": s3,
        "platform": PlatformSettings(values=settings.as_env()),
        # Step-to-step values (the chunk plan) cross processes and pods, so they live in S3 too.
        "io_manager": S3PickleIOManager(s3_resource=s3, s3_bucket=settings.warehouse_bucket, s3_prefix="dagster/steps"),
        "warehouse_io_manager": WarehouseIOManager(s3=s3, bucket=settings.warehouse_bucket),
        "tagger": TaggerResource(
            device=settings.device,
            batch_size=settings.batch_size,
            fetch_workers=settings.fetch_workers,
            top_k=settings.top_k,
            min_confidence=settings.min_confidence,
        ),
    }


__all__ = ["build_resources", "PlatformSettings", "TaggerResource", "WarehouseIOManager"]
