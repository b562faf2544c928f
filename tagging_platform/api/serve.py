"""Running the API: `tagging-platform api` (production: settings from TP_*), `--dev` (what `make api` runs:
the embedded S3 server and `dagster dev` as well, a `demo` customer and photographs to try it on), and
`tagging-platform api-key create` (one key per customer, printed once) and `api-key revoke`."""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

from tagging_platform.settings import Settings

DEV_CUSTOMER = "demo"


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    from tagging_platform.api.app import create_app
    from tagging_platform.api.memory import give_memory_back

    # The image's and ConfigMap's MALLOC_* variables are the tagging steps' (never give memory back).
    give_memory_back()
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
        proxy_headers=True,
        timeout_graceful_shutdown=20,
    )
    return 0


def create_key(
    customer: str, output_prefixes: list[str], image_prefixes: list[str], rotate: bool, all_images: bool = False
) -> int:
    from tagging_platform.api.keys import CustomerError, CustomerStore
    from tagging_platform.s3 import make_client

    settings = Settings.from_env()
    try:
        key, created = CustomerStore(make_client(settings), settings).create(
            customer, output_prefixes, image_prefixes, all_images=all_images, rotate=rotate
        )
    except CustomerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"customer {created.name}: outputs {', '.join(created.output_prefixes)}", file=sys.stderr)
    print(f"  images and manifests from {', '.join(created.image_prefixes)}", file=sys.stderr)
    print("the API key (shown this once; only its SHA-256 is stored):", file=sys.stderr)
    print(key)
    return 0


def revoke_key(customer: str) -> int:
    from tagging_platform.api.keys import CACHE_S, CustomerError, CustomerStore
    from tagging_platform.s3 import make_client

    settings = Settings.from_env()
    try:
        CustomerStore(make_client(settings), settings).revoke(customer)
    except CustomerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"customer {customer}: key revoked; the API refuses it within {CACHE_S:.0f} s (`api-key create --rotate` issues a new one)"
    )
    return 0


def run_dev(workspace: Path, host: str, port: int, s3_port: int, dagster_port: int) -> int:
    """The embedded S3 server, `dagster dev` (sensors running) and the API, until interrupted."""
    from tagging_platform import models, photos
    from tagging_platform.api.keys import CustomerStore
    from tagging_platform.local import LocalPlatform

    platform = LocalPlatform(workspace, s3_port=s3_port, ui_port=dagster_port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with platform:
        settings = platform.settings.replace(dagster_url=platform.ui_url, api_host=host, api_port=port)
        client = platform.s3()
        key, customer = CustomerStore(client, settings).create(DEV_CUSTOMER, rotate=True)
        scratch = Path(tempfile.gettempdir()) / "tagging-platform-api"
        local_photos = scratch / "photos"
        local_photos.mkdir(parents=True, exist_ok=True)
        key_file = scratch / "api-key"
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_text(key + "\n")
        image_bucket = settings.allowed_image_prefixes[0].split("/")[0]
        uploaded = []
        for filename, data in photos.sample_set(variants_per_photo=1):
            client.put_object(Bucket=image_bucket, Key=f"demo/photos/{filename}", Body=data, ContentType="image/jpeg")
            (local_photos / filename).write_bytes(data)
            uploaded.append(f"s3://{image_bucket}/demo/photos/{filename}")
        print(
            f"embedded S3 at {settings.s3_endpoint}; Dagster at {platform.ui_url} (DAGSTER_HOME={platform.dagster_home})"
        )
        print("waiting for the model registry sensor to register the built-in models ...", flush=True)
        deadline = time.monotonic() + 300
        while not models.list_models(client, settings.model_bucket) and time.monotonic() < deadline:
            time.sleep(2)
        print(
            f"customer {customer.name} may read images from {', '.join(customer.image_prefixes)} and write to "
            f"{', '.join(customer.output_prefixes)}; its API key is in {key_file}:"
        )
        print(f"  export TP_API_KEY=$(cat {key_file})")
        print(f"{len(uploaded)} photographs uploaded to s3://{image_bucket}/demo/photos/ and saved in {local_photos}/")
        print(f"API docs at http://{host}:{port}/docs (Ctrl-C stops everything)", flush=True)
        try:
            serve(settings, host, port)
        except KeyboardInterrupt:
            pass
    return 0
