"""Submitting a batch (a validated manifest written where the manifest sensor finds it) and reading its status.

Nothing is stored twice: the manifest bucket holds what was submitted, Dagster holds the run and
its checks (read over GraphQL), and the output location holds the completion marker with the
counts. The only record the API keeps itself is which customer submitted which batch, under the
customer's prefix (`<api_customers_prefix><customer>/batches/<batch id>.json`), which is also
what keeps one customer away from another's batches.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from tagging_platform import intake, layout, models, publishing
from tagging_platform.api.errors import ApiError
from tagging_platform.api.keys import Customer, CustomerStore
from tagging_platform.api.launch import Launcher
from tagging_platform.api.limits import ActiveBatchLimit
from tagging_platform.dagster_client import DagsterClient, DagsterError
from tagging_platform.manifests import (
    Manifest,
    ManifestError,
    parse_manifest,
    partition_key_for,
)
from tagging_platform.s3 import S3UriError, is_not_found, list_objects, read_bytes, split_uri
from tagging_platform.settings import Settings

JOB = "tag_manifest"
PARTITION_TAG = "dagster/partition"
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
# Dagster run status -> the batch state while the run is not over; a finished run's state is batch_state's.
STATES = {
    "QUEUED": "queued",
    "NOT_STARTED": "queued",
    "MANAGED": "queued",
    "STARTING": "queued",
    "STARTED": "running",
    "CANCELING": "running",
    "SUSPENDED": "running",
    "SUCCESS": "finished",
    "FAILURE": "failed",
    "CANCELED": "failed",
}
# Every state a customer sees (docs/api.md "Batch states" says when each holds).
BATCH_STATES = ("queued", "running", "succeeded", "completed_with_errors", "failed")
# An error message quoting a manifest's content is cut to this many characters.
MAX_MESSAGE_CHARS = 300
_MAX_CHUNKS_READ = 2_000
# "dagster._core.definitions.events.Failure: manifest ... rejected: ..." -> "manifest ... rejected: ..."
_EXCEPTION_NAME = re.compile(r"\A(?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception|Failure): ")


def _now() -> datetime:
    return datetime.now(UTC)


class Batches:
    def __init__(self, s3_client, settings: Settings, customers: CustomerStore, dagster: DagsterClient) -> None:
        self.s3 = s3_client
        self.settings = settings
        self.customers = customers
        self.dagster = dagster
        self.launcher = Launcher(s3_client, settings, dagster)
        # A finished run's checks and failures never change: read its event log once.
        self._finished: OrderedDict[str, tuple[list, list]] = OrderedDict()
        self._lock = threading.Lock()
        self.active = ActiveBatchLimit(settings.api_max_active_batches, self._newest_ids, self._run_over)

    # --- submit -----------------------------------------------------------------------------------------

    def submit(self, customer: Customer, **request: Any) -> dict[str, Any]:
        """The batch accepted (its record), or 429 when the customer has as many unfinished batches as it may."""
        return self.active.admit(customer.name, lambda: self._submit(customer, **request))

    def _submit(self, customer: Customer, **request: Any) -> dict[str, Any]:
        parsed, document, ref = self._validated(customer, **request)
        return self._accept(customer, parsed, document, ref)

    def _validated(
        self,
        customer: Customer,
        *,
        images: list | None = None,
        manifest_uri: str | None = None,
        model: str | None = None,
        output: str | None = None,
        reference: str | None = None,
        publish_options: dict[str, Any] | None = None,
    ) -> tuple[Manifest, dict[str, Any], models.ModelRef]:
        """The manifest as the customer may run it: parsed, its document as written, its model pinned.

        `publish_options`: the native manifest's output_format, max_labels and min_confidence, as given.
        """
        if (images is None) == (manifest_uri is None):
            raise ApiError(
                422,
                "invalid_request",
                'give exactly one of "images" (the manifest itself) or "manifest" (an s3:// URI)',
            )
        if manifest_uri is not None:
            source = self._read_manifest(customer, manifest_uri)
            images, model, output, reference = (
                list(source.images),
                model or source.model,
                output or source.output,
                reference or source.id,
            )
            given = {name: getattr(source, name) for name in ("output_format", "max_labels", "min_confidence")}
            publish_options = {**{k: v for k, v in given.items() if v is not None}, **(publish_options or {})}
        output = output if output is not None else customer.default_output
        if isinstance(output, str) and not customer.may_write(output):
            raise ApiError(
                403,
                "output_forbidden",
                f"output {output[:200]} is outside your output locations [{', '.join(customer.output_prefixes)}]",
                {"field": "output", "allowed": list(customer.output_prefixes)},
            )
        document = {"images": images, "output": output, **(publish_options or {})}
        if model is not None:
            document["model"] = model
        if reference is not None:
            document["id"] = reference
        parsed = self._parse(json.dumps(document).encode(), "the request")
        for number, uri in enumerate(parsed.images, 1):
            if not customer.may_read(uri):
                raise ApiError(
                    403,
                    "image_forbidden",
                    f"entry {number}: {uri[:200]} is outside your image locations",
                    {"field": "images", "entry": number},
                )
        document["output"] = parsed.output  # normalised: ends with "/"
        ref = self._resolve_model(parsed.model or self.settings.default_model)
        if parsed.model:
            # Pinned to the version validated now: a model registered later never changes this batch.
            document["model"] = f"{ref.name}@{ref.version}"
        return parsed, document, ref

    def _accept(
        self, customer: Customer, parsed: Manifest, document: dict[str, Any], ref: models.ModelRef
    ) -> dict[str, Any]:
        """The batch's record, then its manifest written, then its run launched (where the API launches runs)."""
        settings = self.settings
        name = f"{_now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        manifest_key = f"{settings.manifest_prefix}{customer.name}/{name}.json"
        batch_id = partition_key_for(manifest_key, settings.manifest_prefix)
        record = {
            "batch_id": batch_id,
            "customer": customer.name,
            "manifest": f"s3://{settings.manifest_bucket}/{manifest_key}",
            "images": len(parsed.images),
            "model": {"name": ref.name, "version": ref.version, "pinned": bool(parsed.model)},
            "output": parsed.output,
            "result_location": publishing.output_location(parsed.output, batch_id, ref),
            "reference": parsed.id,
            "submitted_at": _now().isoformat(timespec="seconds"),
        }
        record_key = self._record_key(customer, batch_id)
        # The record first: a manifest whose record is missing would run but be invisible to its customer.
        self.s3.put_object(
            Bucket=settings.warehouse_bucket,
            Key=record_key,
            Body=json.dumps(record).encode(),
            ContentType="application/json",
        )
        body = json.dumps(document).encode()
        launching = self.launcher.enabled
        try:
            written = self.s3.put_object(
                Bucket=settings.manifest_bucket,
                Key=manifest_key,
                Body=body,
                ContentType="application/json",
                # Tells the manifest sensor to leave this manifest to the launch below for a while.
                Metadata={intake.LAUNCHED_BY: "api"} if launching else {},
            )
        except Exception:
            self.s3.delete_object(Bucket=settings.warehouse_bucket, Key=record_key)
            raise
        if launching:
            obj = intake.ManifestObject(
                settings.manifest_bucket, manifest_key, written["ETag"].strip('"'), len(body), time.time()
            )
            self.launcher.launch(obj, batch_id, len(parsed.images))
        return record

    def _newest_ids(self, customer: str, count: int) -> list[str]:
        """The customer's `count` newest batch ids (a batch id starts with its submission time)."""
        prefix = self.customers.batches_prefix(customer)
        keys = sorted(
            (item["Key"] for item in list_objects(self.s3, self.settings.warehouse_bucket, prefix)), reverse=True
        )
        return [key[len(prefix) :].removesuffix(".json") for key in keys[:count]]

    def _run_over(self, batch_id: str) -> bool:
        """Whether the batch's run has finished; a batch with no run yet, or whose run is unknown, has not."""
        try:
            run = self.dagster.latest_run(JOB, {PARTITION_TAG: batch_id})
        except DagsterError:
            return False
        return bool(run) and STATES.get(run["status"]) in ("finished", "failed")

    def _read_manifest(self, customer: Customer, uri: str) -> Manifest:
        try:
            bucket, key = split_uri(uri)
        except S3UriError as exc:
            raise ApiError(422, "invalid_manifest", f'field "manifest": {exc}', {"field": "manifest"}) from None
        # Refused before anything is read: whether an object outside them exists is never told.
        if not key or key.endswith("/") or not customer.may_read(uri):
            raise ApiError(
                403,
                "manifest_forbidden",
                f"{uri[:200]} is not a manifest inside your image locations",
                {"field": "manifest", "allowed": list(customer.image_prefixes)},
            )
        if {".", ".."} & set(unquote(key).split("/")):
            raise ApiError(
                422,
                "invalid_manifest",
                f'field "manifest": {uri[:200]}: the key contains a "." or ".." path segment (literal or percent-encoded)',
                {"field": "manifest"},
            )
        limit = self.settings.api_max_manifest_bytes
        try:
            response = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_not_found(exc):
                raise ApiError(
                    422, "manifest_not_found", f"{uri[:200]} does not exist", {"field": "manifest"}
                ) from None
            raise
        if response["ContentLength"] > limit:
            response["Body"].close()
            raise ApiError(
                413, "manifest_too_large", f"{uri[:200]} is larger than {limit} bytes", {"field": "manifest"}
            )
        return self._parse(response["Body"].read(), uri)

    def _parse(self, data: bytes, source: str) -> Manifest:
        settings = self.settings
        try:
            return parse_manifest(
                data,
                source,
                allowed_image_prefixes=settings.allowed_image_prefixes,
                allowed_output_prefixes=settings.allowed_output_prefixes,
                max_images=settings.max_manifest_images,
                max_bytes=settings.api_max_manifest_bytes,
            )
        except ManifestError as exc:
            # The parser quotes at most a bounded piece of an entry; the whole message is bounded too.
            message = str(exc)
            message = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."
            raise ApiError(422, "invalid_manifest", message) from None

    def _resolve_model(self, spec: str) -> models.ModelRef:
        try:
            return models.resolve_model(self.s3, self.settings.model_bucket, spec)
        except models.ModelError as exc:
            raise ApiError(422, "unknown_model", str(exc), {"field": "model"}) from None

    # --- read -------------------------------------------------------------------------------------------

    def _record_key(self, customer: Customer, batch_id: str) -> str:
        return f"{self.customers.batches_prefix(customer.name)}{batch_id}.json"

    def record(self, customer: Customer, batch_id: str) -> dict[str, Any]:
        """The customer's own record of a batch; another customer's batch is as unknown as a missing one."""
        # Every batch id the API gives a customer starts with its name: anything else is not looked up at all.
        if not BATCH_ID.match(batch_id) or not batch_id.startswith(f"{customer.name}-"):
            raise ApiError(404, "batch_not_found", f"no batch {batch_id[:200]!r}")
        body = read_bytes(self.s3, self.settings.warehouse_bucket, self._record_key(customer, batch_id))
        if body is None:
            raise ApiError(404, "batch_not_found", f"no batch {batch_id!r}")
        return json.loads(body)

    def list(self, customer: Customer, limit: int) -> list[dict[str, Any]]:
        """The customer's batches, newest first (batch ids start with the submission time)."""
        prefix = self.customers.batches_prefix(customer.name)
        keys = sorted(
            (item["Key"] for item in list_objects(self.s3, self.settings.warehouse_bucket, prefix)), reverse=True
        )
        keys = keys[:limit]
        with ThreadPoolExecutor(8) as pool:
            bodies = pool.map(
                lambda k: self.s3.get_object(Bucket=self.settings.warehouse_bucket, Key=k)["Body"].read(), keys
            )
            return [json.loads(b) for b in bodies]

    def status(self, customer: Customer, batch_id: str) -> dict[str, Any]:
        record = self.record(customer, batch_id)
        try:
            run = self.dagster.latest_run(JOB, {PARTITION_TAG: batch_id})
        except DagsterError as exc:
            raise ApiError(503, "dagster_unavailable", f"batch status is unavailable right now: {exc}") from None
        images = record["images"]
        state = STATES.get(run["status"], "running") if run else "queued"
        checks: list[dict[str, Any]] = []
        error = None
        counts = {"images": images, "tagged": 0, "errors": 0}
        result = None
        if state in ("finished", "failed"):
            raw_checks, failures = self._finished_events(run["runId"])
            checks = [
                {
                    "name": c["checkName"],
                    "asset": "/".join(c["assetKey"]["path"]),
                    "passed": bool(c["success"]),
                    "severity": c["severity"],
                }
                for c in raw_checks
            ]
            marker = self._marker(record, run["runId"])
            if marker is not None:
                counts = {"images": marker["images"], "tagged": marker["tagged"], "errors": marker["errors"]}
                result = {
                    "location": marker["location"],
                    "marker": marker["location"] + publishing.MARKER_NAME,
                    "format": marker["format"],
                    "objects": marker["objects"],
                    "parts": [f"s3://{split_uri(marker['location'])[0]}/{p['key']}" for p in marker.get("parts", [])],
                }
            if state == "finished":
                state, error = batch_state(counts, checks, published=marker is not None)
            else:
                first = failures[0] if failures else None
                message = first["error"].strip().splitlines()[0] if first and first["error"].strip() else None
                message = _EXCEPTION_NAME.sub("", message) if message else None
                if run["status"] == "CANCELED":
                    message = "the run was canceled"
                error = {"step": first["step"] if first else None, "message": message or "the run failed"}
        if state in ("running", "failed") and result is None:
            counts = self._chunk_counts(batch_id, record)
        done = counts["tagged"] + counts["errors"]
        # 1.0 only once the run is over: a running batch whose images are all tagged still publishes.
        finished = state in ("succeeded", "completed_with_errors") or (state == "failed" and result is not None)
        progress = 1.0 if finished else (round(min(done / images, 0.99), 4) if images else 0.0)
        return {
            "batch_id": batch_id,
            "state": state,
            "progress": progress,
            "counts": counts,
            "checks": checks,
            "result": result,
            "error": error,
            "run": (
                {
                    "run_id": run["runId"],
                    "status": run["status"],
                    "started_at": _iso(run.get("startTime")),
                    "ended_at": _iso(run.get("endTime")),
                }
                if run
                else None
            ),
            "model": {"name": record["model"]["name"], "version": record["model"]["version"]},
            "output": record["output"],
            "manifest": record["manifest"],
            "reference": record.get("reference"),
            "submitted_at": record["submitted_at"],
        }

    def _finished_events(self, run_id: str) -> tuple[list, list]:
        with self._lock:
            if run_id in self._finished:
                self._finished.move_to_end(run_id)
                return self._finished[run_id]
        try:
            events = self.dagster.run_events(run_id)
        except DagsterError as exc:
            raise ApiError(503, "dagster_unavailable", f"batch status is unavailable right now: {exc}") from None
        with self._lock:
            self._finished[run_id] = events
            while len(self._finished) > 1_000:
                self._finished.popitem(last=False)
        return events

    def _marker(self, record: dict[str, Any], run_id: str) -> dict[str, Any] | None:
        """The completion marker this run published under the batch's output (any model version)."""
        bucket, prefix = split_uri(f"{record['output']}{record['batch_id']}/")
        markers = [marker for _, marker in publishing.find_markers(self.s3, bucket, prefix)]
        own = [m for m in markers if m.get("run_id") == run_id]
        return (own or sorted(markers, key=lambda m: m.get("completed_at", "")))[-1] if (own or markers) else None

    def _chunk_counts(self, batch_id: str, record: dict[str, Any]) -> dict[str, int]:
        """Live counts while a run is under way: each finished chunk's stored figures, else its latest progress."""
        bucket = self.settings.warehouse_bucket
        model = record["model"]
        short_version = models.ModelRef(model["name"], model["version"], "").short_version
        prefix = layout.model_prefix(batch_id, model["name"], short_version)
        results: dict[str, str] = {}
        progress: dict[str, str] = {}
        for item in itertools.islice(list_objects(self.s3, bucket, prefix), _MAX_CHUNKS_READ):
            name = item["Key"][len(prefix) :]
            if name.startswith("progress/chunk-"):
                progress[name[len("progress/chunk-") :][:5]] = item["Key"]
            elif name.startswith("chunk-"):
                results[name[len("chunk-") :][:5]] = item["Key"]

        def figures(item: tuple[str, bool]) -> dict[str, Any]:
            key, is_result = item
            try:
                if is_result:
                    return json.loads(
                        self.s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("stats", "{}")
                    )
                return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except (ClientError, ValueError):
                return {}

        wanted = [(key, True) for key in results.values()]
        wanted += [(key, False) for index, key in progress.items() if index not in results]
        with ThreadPoolExecutor(8) as pool:
            stats = list(pool.map(figures, wanted[:_MAX_CHUNKS_READ]))
        return {
            "images": record["images"],
            "tagged": sum(int(s.get("tagged", 0)) for s in stats),
            "errors": sum(int(s.get("errors", 0)) for s in stats),
        }


def batch_state(counts: dict[str, int], checks: list[dict[str, Any]], *, published: bool) -> tuple[str, dict | None]:
    """The state of a batch whose run succeeded, and the error that explains a failure.

    failed: nothing trustworthy was published (no completion marker), a check of severity ERROR did not
    pass (every_image_accounted_for, error_rate over its error threshold), or not one image was tagged.
    completed_with_errors: published, no ERROR check failed, some images are error rows.
    succeeded: published, no ERROR check failed, every image tagged.
    """
    if not published:
        return "failed", {"step": None, "message": "the run finished but published no completion marker"}
    failed_checks = [c for c in checks if not c["passed"] and c["severity"] == "ERROR"]
    if failed_checks:
        names = ", ".join(f"{c['name']} ({c['asset']})" for c in failed_checks)
        message = f"check{'s' if len(failed_checks) > 1 else ''} of severity ERROR failed: {names}; "
        message += f"{counts['tagged']} of {counts['images']} images tagged, {counts['errors']} errors"
        return "failed", {"step": "checks", "message": message}
    if counts["images"] and not counts["tagged"]:
        return "failed", {"step": None, "message": f"no image could be tagged: {counts['errors']} errors"}
    if counts["errors"]:
        return "completed_with_errors", None
    return "succeeded", None


def _iso(timestamp: float | None) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
