"""The embedded S3-compatible server (moto's server mode) that local runs, demos and tests talk to over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tagging_platform.s3 import make_client
from tagging_platform.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedS3:
    """moto's threaded server on loopback (S3 and SQS), with the platform's buckets created and, for
    event intake, the manifest bucket notifying its queue as it would on AWS."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen | None = None

    def start(self, settings: Settings, timeout_s: float = 60) -> EmbeddedS3:
        # Its own process: moto keeps its state per process, so two servers started by one process
        # (a test session and the platform a test starts) would otherwise share every bucket.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = make_client(settings)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the embedded S3 server did not start on {self.endpoint}") from None
                time.sleep(0.2)
        create_buckets(client, settings)
        if settings.intake == "events":
            from tagging_platform.events import configure_notifications

            configure_notifications(client, make_client(settings, "sqs"), settings)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)


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
