"""Batch status read from a real Dagster instance over GraphQL: queued, failed and succeeded runs, checks, counts."""

from __future__ import annotations

import json

import pytest

from tagging_platform.api.app import create_app
from tagging_platform.api.batches import STATES, batch_state
from tagging_platform.embedded import free_port
from tests.tagging_platform.api.conftest import ApiServer


@pytest.fixture
def submitted(http, customer_images, photographs):
    uris = customer_images(dict(list(photographs.items())[:3]))
    response = http("POST", "/v1/batches", json={"images": uris})
    assert response.status_code == 202, response.text
    return response.json()


def test_a_failed_run_is_failed_with_the_steps_reason(http, submitted, run_stub):
    reason = "manifest s3://manifests/x.json rejected: entry 2: s3://other/b.jpg is outside the allowed image locations"
    run_id = run_stub(submitted["batch_id"], fail_with=reason)
    body = http("GET", f"/v1/batches/{submitted['batch_id']}").json()
    assert body["state"] == "failed"
    assert body["run"]["run_id"] == run_id and body["run"]["status"] == "FAILURE"
    assert body["error"] == {"step": "image_tags", "message": reason}
    assert body["result"] is None and body["counts"] == {"images": 3, "tagged": 0, "errors": 0}


def test_a_succeeded_run_reports_counts_checks_and_where_the_tags_are(http, submitted, run_stub, s3):
    batch_id = submitted["batch_id"]
    run_id = run_stub(batch_id)
    # Without the completion marker a finished run has published nothing a customer can trust.
    unpublished = http("GET", f"/v1/batches/{batch_id}").json()
    assert unpublished["state"] == "failed" and "no completion marker" in unpublished["error"]["message"]
    location = submitted["result_location"]
    bucket, prefix = location.removeprefix("s3://").split("/", 1)
    marker = {
        "location": location,
        "format": "jsonl",
        "images": 3,
        "tagged": 2,
        "errors": 1,
        "objects": 3,
        "files": 1,
        "parts": [{"key": prefix + "part-00000.jsonl", "objects": 3, "bytes": 10, "sha256": "0"}],
        "run_id": run_id,
        "completed_at": "2026-11-24T00:00:00+00:00",
    }
    s3.put_object(Bucket=bucket, Key=prefix + "_COMPLETE.json", Body=json.dumps(marker).encode())
    body = http("GET", f"/v1/batches/{batch_id}").json()
    # One image of three is an error row and no check of severity ERROR failed (error_rate failed as a WARN).
    assert body["state"] == "completed_with_errors" and body["progress"] == 1.0 and body["error"] is None
    assert body["counts"] == {"images": 3, "tagged": 2, "errors": 1}
    assert body["result"]["location"] == location
    assert body["result"]["marker"] == location + "_COMPLETE.json"
    assert body["result"]["parts"] == [f"{location}part-00000.jsonl"]
    assert sorted((c["name"], c["passed"], c["severity"]) for c in body["checks"]) == [
        ("error_rate", False, "WARN"),
        ("every_image_accounted_for", True, "ERROR"),
    ]
    assert all(c["asset"] == "image_tags" for c in body["checks"])


def test_progress_while_running_comes_from_chunk_results_and_chunk_progress(
    api, keys, submitted, s3, api_settings, model_ref
):
    """A finished chunk's stored figures, else the figures a running chunk last wrote; other models' chunks not."""
    batches = api.app.state.batches
    batch_id = submitted["batch_id"]
    bucket = api_settings.warehouse_bucket
    folder = f"chunks/partition={batch_id}/model=mobilenet_v2-{model_ref.short_version}/"
    s3.put_object(  # chunk 0 is done: its result's figures replace its last progress
        Bucket=bucket,
        Key=f"{folder}chunk-00000-x.parquet",
        Body=b"",
        Metadata={"stats": json.dumps({"images": 2, "tagged": 2, "errors": 0})},
    )
    s3.put_object(
        Bucket=bucket, Key=f"{folder}progress/chunk-00000.json", Body=b'{"images": 2, "tagged": 1, "errors": 0}'
    )
    s3.put_object(
        Bucket=bucket, Key=f"{folder}progress/chunk-00001.json", Body=b'{"images": 1, "tagged": 0, "errors": 1}'
    )
    s3.put_object(  # an earlier model version's chunk of the same batch
        Bucket=bucket,
        Key=f"chunks/partition={batch_id}/model=mobilenet_v2-0000000000000000/chunk-00000-y.parquet",
        Body=b"",
        Metadata={"stats": json.dumps({"images": 3, "tagged": 3, "errors": 0})},
    )
    record = batches.record(api.app.state.customers.authenticate(keys["acme"]), batch_id)
    assert batches._chunk_counts(batch_id, record) == {"images": 3, "tagged": 2, "errors": 1}


@pytest.mark.parametrize(
    ("counts", "failed_checks", "published", "state", "message"),
    [
        ((3, 3, 0), [], True, "succeeded", None),
        ((3, 3, 0), [("low_confidence_share", "WARN")], True, "succeeded", None),
        ((3, 2, 1), [("error_rate", "WARN")], True, "completed_with_errors", None),
        # The batch: every image missing, error_rate failed with severity ERROR.
        ((10_000, 0, 10_000), [("error_rate", "ERROR")], True, "failed", "error_rate (image_tags)"),
        ((3, 0, 3), [], True, "failed", "no image could be tagged: 3 errors"),
        ((3, 2, 0), [("every_image_accounted_for", "ERROR")], True, "failed", "every_image_accounted_for"),
        ((3, 3, 0), [], False, "failed", "no completion marker"),
    ],
)
def test_a_finished_run_is_succeeded_only_when_every_image_was_tagged_and_no_error_check_failed(
    counts, failed_checks, published, state, message
):
    images, tagged, errors = counts
    checks = [{"name": "every_image_accounted_for", "asset": "image_tags", "passed": True, "severity": "ERROR"}]
    checks += [
        {"name": name, "asset": "image_tags", "passed": False, "severity": severity} for name, severity in failed_checks
    ]
    got, error = batch_state({"images": images, "tagged": tagged, "errors": errors}, checks, published=published)
    assert got == state
    assert (error is None) if message is None else (message in error["message"])


def test_every_dagster_run_status_maps_to_a_batch_state():
    import dagster as dg

    assert set(STATES) == {status.value for status in dg.DagsterRunStatus}
    assert set(STATES.values()) == {"queued", "running", "finished", "failed"}


def test_status_is_503_when_dagster_is_unreachable(api_settings, keys, submitted):
    import requests

    settings = api_settings.replace(dagster_url=f"http://127.0.0.1:{free_port()}")
    with ApiServer(create_app(settings)) as server:
        response = requests.get(
            f"{server.url}/v1/batches/{submitted['batch_id']}", headers={"X-API-Key": keys["acme"]}, timeout=60
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "dagster_unavailable"


def test_the_api_launches_the_batchs_run_with_the_sensors_run_key(api_settings, keys, customer_images, photographs, s3):
    """Against the stand-in job: the run the API launches is the one the sensor's request for the manifest finds."""
    import requests

    from tagging_platform import intake
    from tagging_platform.dagster_client import DagsterClient

    # A process per step: the stand-in job has Dagster's default executor, not the platform's in-process choice.
    settings = api_settings.replace(api_launch_runs=True, in_process_max_images=0)
    uris = customer_images(dict(list(photographs.items())[:2]))
    with ApiServer.serving(settings) as server:
        response = requests.post(
            f"{server.url}/v1/batches", json={"images": uris}, headers={"X-API-Key": keys["acme"]}, timeout=60
        )
    assert response.status_code == 202, response.text
    accepted = response.json()
    bucket, key = accepted["manifest"].removeprefix("s3://").split("/", 1)
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {intake.LAUNCHED_BY: "api"}  # the sensor leaves it to this launch for a while
    [run] = DagsterClient(settings.dagster_url).runs(
        job="tag_manifest", tags={"dagster/partition": accepted["batch_id"]}
    )
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/run_key"] == f"{key}@{head['ETag'].strip(chr(34))}"
    assert tags["dagster/sensor_name"] == intake.LISTING_SENSOR
    assert tags["tagging/manifest"] == accepted["manifest"] and tags["tagging/launched_by"] == "api"
    assert tags[intake.CUSTOMER_TAG] == "acme"  # Dagster's per-customer run limit applies to the API's launches too
    assert (
        intake.read_partition(s3, settings.warehouse_bucket, accepted["batch_id"])["manifest"] == accepted["manifest"]
    )


def test_a_failed_launch_still_accepts_the_batch_for_the_sensor(api_settings, keys, customer_images, photographs, s3):
    import requests

    settings = api_settings.replace(api_launch_runs=True, dagster_url=f"http://127.0.0.1:{free_port()}")
    uris = customer_images(dict(list(photographs.items())[:1]))
    with ApiServer.serving(settings) as server:
        response = requests.post(
            f"{server.url}/v1/batches", json={"images": uris}, headers={"X-API-Key": keys["acme"]}, timeout=60
        )
    assert response.status_code == 202, response.text
    bucket, key = response.json()["manifest"].removeprefix("s3://").split("/", 1)
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
