"""The embedded S3-compatible server (moto's server mode) that local runs, demos and tests talk to over HTTP."""

from __future__ import annotations

import logging
import socket

import boto3
from botocore.config import Config

from tagging_platform.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_client(settings: Settings):
    return aws_client("s3", settings)


def aws_client(service: str, settings: Settings):
    """A boto3 client for the configured endpoint: the embedded server locally, AWS in production."""
    local = settings.deployment == "local"
    return boto3.client(
        service,
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.aws_region,
        aws_access_key_id="embedded" if local else None,
        aws_secret_access_key="embedded" if local else None,
        config=Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=32),
    )


class EmbeddedS3:
    """moto's threaded server on loopback (S3 and SQS), with the platform's buckets created and, for
    event intake, the manifest bucket notifying its queue as it would on AWS."""

    def __init__(self, port: int) -> None:
        from moto.server import ThreadedMotoServer

        # One log line per request would drown the demo's own output.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    def start(self, settings: Settings) -> EmbeddedS3:
        self._server.start()
        create_buckets(s3_client(settings), settings)
        if settings.intake == "events":
            from tagging_platform.events import configure_notifications

            configure_notifications(s3_client(settings), aws_client("sqs", settings), settings)
        return self

    def stop(self) -> None:
        self._server.stop()


def create_buckets(client, settings: Settings | None = None) -> None:
    settings = settings or Settings()
    buckets = {
        settings.manifest_bucket,
        settings.output_bucket,
        settings.warehouse_bucket,
        settings.model_bucket,
        *(entry.split("/")[0] for entry in settings.allowed_image_prefixes),
        *(entry.split("/")[0] for entry in settings.allowed_output_prefixes),
    }
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in sorted(buckets - existing):
        client.create_bucket(Bucket=bucket)
