"""The one S3 layer: the client every module uses, s3:// URIs, "not found", listing, and pyarrow's view of S3.

Where each kind of object lives (warehouse tables, batch records, chunk results, the reuse index, markers)
is spelled once in `tagging_platform.layout`; this module only knows how to talk to S3.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import boto3
import pyarrow.fs
from botocore.config import Config
from botocore.exceptions import ClientError

from tagging_platform.settings import Settings

# Standard mode retries throttling, 5xx and connection errors with jittered backoff; 8 attempts ride out a
# short S3 brown-out without turning a real outage into a long hang.
RETRIES = {"max_attempts": 8, "mode": "standard"}
# Fetch threads, the writer and the reuse lookups of one step share a client.
MAX_POOL_CONNECTIONS = 32
# The embedded server accepts any credentials; on AWS they come from the pod's role.
EMBEDDED_CREDENTIALS = {"aws_access_key_id": "embedded", "aws_secret_access_key": "embedded"}

# Error messages echo customer data: a multi-megabyte "URI" must not become a multi-megabyte message.
SHOWN_CHARS = 200
BUCKET_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_S3_URI = re.compile(rf"s3://({BUCKET_PATTERN})(?:/(.*))?\Z", re.DOTALL)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})


class S3UriError(ValueError):
    """A string that is not an s3://bucket/key URI; the message says why, for the customer."""


def credentials(settings: Settings) -> dict[str, str]:
    return EMBEDDED_CREDENTIALS if settings.deployment == "local" else {}


def make_client(settings: Settings, service: str = "s3"):
    """A boto3 client for the configured endpoint: the embedded server locally, AWS in production."""
    return client_for(service, settings.s3_endpoint or None, settings.aws_region, **credentials(settings))


def client_for(
    service: str,
    endpoint_url: str | None,
    region_name: str | None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
):
    """Every boto3 client of the platform is made here, so all share one retry policy and pool size."""
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=region_name,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        config=Config(retries=RETRIES, max_pool_connections=MAX_POOL_CONNECTIONS),
    )


def arrow_filesystem(settings: Settings) -> pyarrow.fs.S3FileSystem:
    """pyarrow's own S3 client on the same endpoint and credentials (DuckDB reads the warehouse through it)."""
    endpoint = settings.s3_endpoint.removeprefix("http://").removeprefix("https://")
    local = credentials(settings)
    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint or None,
        scheme="https" if settings.s3_endpoint.startswith("https") else "http" if endpoint else "https",
        region=settings.aws_region,
        access_key=local.get("aws_access_key_id"),
        secret_key=local.get("aws_secret_access_key"),
    )


def shown(value: str) -> str:
    """A customer's string as it may appear in an error message: bounded, and printable."""
    text = value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "..."
    return text if text.isprintable() else repr(text)


def split_uri(uri: str) -> tuple[str, str]:
    """ "s3://bucket/key" -> ("bucket", "key"); the key is "" for "s3://bucket" or "s3://bucket/"."""
    match = _S3_URI.match(uri)
    if match:
        return match.group(1), match.group(2) or ""
    scheme = _SCHEME.match(uri)
    if scheme and scheme.group(1) != "s3":
        raise S3UriError(f'{shown(uri)} is not an s3:// URI (scheme "{scheme.group(1)}" is not accepted)')
    if uri.startswith("s3://"):
        bucket = uri[5:].partition("/")[0]
        if not bucket:
            raise S3UriError(f"{shown(uri)} has no bucket")
        raise S3UriError(f'{shown(uri)}: "{shown(bucket)}" is not a valid bucket name')
    raise S3UriError(f"{shown(uri)} is not an s3:// URI (expected s3://bucket/key)")


def is_not_found(error: BaseException) -> bool:
    """Whether S3 said the key or bucket does not exist.

    Matched by code, not by `client.exceptions.NoSuchKey`: every client has its own exception classes, and HEAD
    answers a bare 404 with no code of its own.
    """
    return isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in _NOT_FOUND


def list_objects(s3_client, bucket: str, prefix: str = "") -> Iterator[dict]:
    """Every object under a prefix (each as S3 lists it: Key, ETag, Size, LastModified), page by page."""
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def list_folder(s3_client, bucket: str, prefix: str) -> tuple[list[dict], list[str]]:
    """One level under a prefix: the objects directly in it and the sub-folders' prefixes."""
    objects, folders = [], []
    paginator = s3_client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        objects.extend(page.get("Contents", []))
        folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
    return objects, folders


def read_bytes(s3_client, bucket: str, key: str) -> bytes | None:
    """An object's body, or None when it does not exist."""
    try:
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
