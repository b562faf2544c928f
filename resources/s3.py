"""dagster-aws's S3 resource, with its clients made by the platform's one factory (`tagging_platform.s3`)."""

from dagster_aws.s3 import S3Resource

from tagging_platform import s3
from tagging_platform.settings import Settings


class PlatformS3Resource(S3Resource):
    """The S3 resource every asset, the IO managers and the pickled step values use: same retries and pool
    size as every other client of the platform, whatever runs it."""

    def get_client(self):
        return s3.client_for(
            "s3", self.endpoint_url, self.region_name, self.aws_access_key_id, self.aws_secret_access_key
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> "PlatformS3Resource":
        return cls(
            endpoint_url=settings.s3_endpoint or None, region_name=settings.aws_region, **s3.credentials(settings)
        )
