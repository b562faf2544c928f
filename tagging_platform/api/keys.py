"""Customers and their API keys, kept in S3: one key per customer, only its SHA-256 stored.

A key reads `tp_<customer>_<secret>`: the customer's name says which record to read, the secret
(256 random bits) is what proves it, so a plain SHA-256 is enough at rest (a slow password hash
guards guessable secrets; these are not). Creating a key again for the same customer replaces
the old one (rotation); revoking it leaves the customer without a key (its record and batches stay, and
a later `--rotate` issues a new key). Each record also holds the customer's own output prefixes (where its
results may go) and image prefixes (where its images and manifests must come from).

Customers are kept apart by default: a customer created without image prefixes gets
`s3://<images bucket>/<customer>/` (under the first allowed image location), and a record without any
(written before that default) reads the same. Only a customer created with `all_images` may read every
allowed image location of the deployment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

from tagging_platform.s3 import S3UriError, read_bytes, split_uri
from tagging_platform.settings import Settings

CUSTOMER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}\Z")
KEY_PREFIX = "tp_"
# A record read from S3 is reused this long: a rotated or revoked key stops working within it.
CACHE_S = 10.0


class CustomerError(ValueError):
    """A customer or key that cannot be created as asked; the message says why."""


@dataclass(frozen=True)
class Customer:
    name: str
    output_prefixes: tuple[str, ...]
    # Where its images and manifests may come from: never empty (see default_image_prefix).
    image_prefixes: tuple[str, ...]

    @property
    def default_output(self) -> str:
        return self.output_prefixes[0]

    def may_write(self, location: str) -> bool:
        location = location if location.endswith("/") else location + "/"
        return location.startswith(self.output_prefixes)

    def may_read(self, uri: str) -> bool:
        """An image or manifest URI inside the customer's image prefixes."""
        return uri.startswith(self.image_prefixes)


def default_image_prefix(customer: str, settings: Settings) -> str:
    """The customer's own folder in the deployment's first image location: s3://images/<customer>/."""
    return f"{_as_uri_prefix(settings.allowed_image_prefixes[0])}{customer}/"


def _as_uri_prefix(entry: str) -> str:
    """A settings entry ("bucket" or "bucket/prefix/") as an s3:// prefix that ends with "/"."""
    entry = entry.removeprefix("s3://")
    return f"s3://{entry}" if "/" in entry else f"s3://{entry}/"


def normalise_prefix(value: str, allowed: Sequence[str], what: str) -> str:
    """An s3:// location ending with "/" inside one of the `allowed` settings entries, or CustomerError."""
    try:
        bucket, key = split_uri(value)
    except S3UriError as exc:
        raise CustomerError(f"{what} {value!r}: {exc}") from None
    if {".", ".."} & set(unquote(key).split("/")):
        raise CustomerError(f"{what} {value!r}: no '.' or '..' segments (literal or percent-encoded)")
    location = f"s3://{bucket}/{key}" if not key or key.endswith("/") else f"s3://{bucket}/{key}/"
    prefixes = tuple(_as_uri_prefix(p) for p in allowed)
    if not location.startswith(prefixes):
        raise CustomerError(f"{what} {location} is outside this deployment's allowed locations [{', '.join(allowed)}]")
    return location


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class CustomerStore:
    """Reads and writes customer records under `s3://<warehouse>/<api_customers_prefix><customer>/`."""

    def __init__(self, s3_client, settings: Settings) -> None:
        self.s3 = s3_client
        self.settings = settings
        self._cache: dict[str, tuple[float, dict | None]] = {}
        self._lock = threading.Lock()

    def record_key(self, customer: str) -> str:
        return f"{self.settings.api_customers_prefix}{customer}/customer.json"

    def batches_prefix(self, customer: str) -> str:
        return f"{self.settings.api_customers_prefix}{customer}/batches/"

    def create(
        self,
        customer: str,
        output_prefixes: Sequence[str] = (),
        image_prefixes: Sequence[str] = (),
        *,
        all_images: bool = False,
        rotate: bool = False,
    ) -> tuple[str, Customer]:
        """Create (or with `rotate`, replace) the customer's key; returns the key, shown this once only.

        Images and manifests come from `image_prefixes`, by default the customer's own folder
        (default_image_prefix); `all_images` lets the customer read every allowed image location instead.
        """
        if not CUSTOMER_NAME.match(customer):
            raise CustomerError(
                f"customer name {customer!r}: lowercase letters, digits and '-', at most 40, starting with a letter or digit"
            )
        settings = self.settings
        outputs = [
            normalise_prefix(p, settings.allowed_output_prefixes, "output prefix")
            for p in (output_prefixes or [f"s3://{settings.output_bucket}/{customer}/"])
        ]
        if all_images and image_prefixes:
            raise CustomerError("give image prefixes or all_images (every allowed image location), not both")
        images = [
            normalise_prefix(p, settings.allowed_image_prefixes, "image prefix")
            for p in (image_prefixes or ([] if all_images else [default_image_prefix(customer, settings)]))
        ]
        existing = self._read(customer)
        if existing is not None and not rotate:
            raise CustomerError(f"customer {customer} already has a key; pass --rotate to replace it")
        key = f"{KEY_PREFIX}{customer}_{secrets.token_urlsafe(32)}"
        record = {
            "customer": customer,
            "key_sha256": hash_key(key),
            "key_hint": key[: len(KEY_PREFIX) + len(customer) + 5] + "...",
            "output_prefixes": outputs,
            "image_prefixes": images,
            "all_images": all_images,
            "created_at": (existing or {}).get("created_at") or _now(),
            "key_created_at": _now(),
        }
        self.s3.put_object(
            Bucket=settings.warehouse_bucket,
            Key=self.record_key(customer),
            Body=json.dumps(record, indent=2).encode(),
            ContentType="application/json",
        )
        with self._lock:
            self._cache.pop(customer, None)
        return key, self._customer(record)

    def revoke(self, customer: str) -> None:
        """Remove the customer's key: it is refused (401) once the API's cached record expires (CACHE_S)."""
        record = self._read(customer) if CUSTOMER_NAME.match(customer) else None
        if record is None:
            raise CustomerError(f"no customer {customer!r}: nothing to revoke")
        record.update(key_sha256=None, key_hint=None, key_revoked_at=_now())
        self.s3.put_object(
            Bucket=self.settings.warehouse_bucket,
            Key=self.record_key(customer),
            Body=json.dumps(record, indent=2).encode(),
            ContentType="application/json",
        )
        with self._lock:
            self._cache.pop(customer, None)

    def authenticate(self, key: str) -> Customer | None:
        """The customer a presented key belongs to, or None for a malformed, unknown or replaced key."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        customer, sep, secret = key[len(KEY_PREFIX) :].partition("_")
        if not sep or not secret or not CUSTOMER_NAME.match(customer):
            return None
        record = self._cached(customer)
        if record is None or not record["key_sha256"] or not hmac.compare_digest(hash_key(key), record["key_sha256"]):
            return None
        return self._customer(record)

    def _customer(self, record: dict) -> Customer:
        if record.get("all_images"):
            images = tuple(_as_uri_prefix(p) for p in self.settings.allowed_image_prefixes)
        else:
            images = tuple(record.get("image_prefixes") or ()) or (
                default_image_prefix(record["customer"], self.settings),
            )
        return Customer(record["customer"], tuple(record["output_prefixes"]), images)

    def _cached(self, customer: str) -> dict | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(customer)
        if hit and now - hit[0] < CACHE_S:
            return hit[1]
        record = self._read(customer)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[customer] = (now, record)
        return record

    def _read(self, customer: str) -> dict | None:
        body = read_bytes(self.s3, self.settings.warehouse_bucket, self.record_key(customer))
        return None if body is None else json.loads(body)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
