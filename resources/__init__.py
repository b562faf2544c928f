"""Resources chosen per deployment: the assets never branch on where they run."""

from dagster_aws.s3 import S3PickleIOManager

from resources.s3 import PlatformS3Resource
from resources.settings import PlatformSettings
from resources.tagger import TaggerResource
from resources.warehouse_io_manager import WarehouseIOManager
from tagging_platform.settings import Settings


def build_resources(settings: Settings) -> dict[str, object]:
    s3 = PlatformS3Resource.from_settings(settings)
    return {
        "s3": s3,
        "platform": PlatformSettings(values=settings.as_env()),
        # Step-to-step values (the chunk plan) cross processes and pods, so they live in S3 too.
        "io_manager": S3PickleIOManager(s3_resource=s3, s3_bucket=settings.warehouse_bucket, s3_prefix="dagster/steps"),
        "warehouse_io_manager": WarehouseIOManager(s3=s3, bucket=settings.warehouse_bucket),
        "tagger": TaggerResource(
            device=settings.device,
            precision=settings.precision,
            batch_size=settings.batch_size,
            fetch_workers=settings.fetch_workers,
            top_k=settings.top_k,
            min_confidence=settings.min_confidence,
        ),
    }


__all__ = ["PlatformS3Resource", "PlatformSettings", "TaggerResource", "WarehouseIOManager", "build_resources"]
