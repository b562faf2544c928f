"""Batch status read from a real Dagster instance over GraphQL: queued, failed and succeeded runs, checks, counts."""

from __future__ import annotations

import json

import pytest

from tagging_platform.api.app import create_app
from tagging_platform.api.batches import STATES
from tagging_platform.embedded import free_port

from tests.tagging_platform.api.conftest import ApiServer


@pytest.fixture
def run_stub(dagster_webserver):
    """Runs the stand-in tag_manifest job for a batch (its partition) in the webserver's instance; returns the run id."""
    import dagster as dg

    from tests.tagging_platform.api import stub_dagster

    _, home = dagster_webserver
    instance = dg.DagsterInstance.from_config(str(home))

    def run(batch_id: str, fail_with: str = "") -> str:
        instance.add_dynamic_partitions("manifests", [batch_id])
        result = stub_dagster.defs.resolve_job_def("tag_manifest").execute_in_process(
            instance=instance,
            partition_key=batch_id,
            run_config={"ops": {"image_tags": {"config": {"fail_with": fail_with}}}},
            raise_on_error=False,
        )
        return result.run_id

    yield run
    instance.dispose()


@pytest.fixture
def submitted(http, upload_images, photographs):
    uris = upload_images(dict(list(photographs.items())[:3]))
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
        "location": location, "format": "jsonl", "images": 3, "tagged": 2, "errors": 1, "objects": 3, "files": 1,
        "parts": [{"key": prefix + "part-00000.jsonl", "objects": 3, "bytes": 10, "sha256": "0"}],
        "run_id": run_id, "completed_at": "2026-11-24T00:00:00+00:00",
    }
    s3.put_object(Bucket=bucket, Key=prefix + "_COMPLETE.json", Body=json.dumps(marker).encode())
    body = http("GET", f"/v1/batches/{batch_id}").json()
    assert body["state"] == "succeeded" and body["progress"] == 1.0 and body["error"] is None
    assert body["counts"] == {"images": 3, "tagged": 2, "errors": 1}
    assert body["result"]["location"] == location
    assert body["result"]["marker"] == location + "_COMPLETE.json"
    assert body["result"]["parts"] == [f"{location}part-00000.jsonl"]
    assert sorted((c["name"], c["passed"], c["severity"]) for c in body["checks"]) == [
        ("error_rate", False, "WARN"),
        ("every_image_accounted_for", True, "ERROR"),
    ]
    assert all(c["asset"] == "image_tags" for c in body["checks"])


def test_progress_while_running_comes_from_finished_chunks(api, submitted, s3, api_settings):
    batches = api.app.state.batches
    batch_id = submitted["batch_id"]
    for index, (tagged, errors) in enumerate([(2, 0), (0, 1)]):
        s3.put_object(
            Bucket=api_settings.warehouse_bucket,
            Key=f"chunks/partition={batch_id}/model=m-0/chunk-{index:05d}-x.parquet",
            Body=b"",
            Metadata={"stats": json.dumps({"images": tagged + errors, "tagged": tagged, "errors": errors})},
        )
    assert batches._chunk_counts(batch_id, {"images": 3}) == {"images": 3, "tagged": 2, "errors": 1}


def test_every_dagster_run_status_maps_to_a_batch_state():
    import dagster as dg

    assert set(STATES) == {status.value for status in dg.DagsterRunStatus}
    assert set(STATES.values()) == {"queued", "running", "succeeded", "failed"}


def test_status_is_503_when_dagster_is_unreachable(api_settings, keys, submitted):
    import requests

    settings = api_settings.replace(dagster_url=f"http://127.0.0.1:{free_port()}")
    with ApiServer(create_app(settings)) as server:
        response = requests.get(
            f"{server.url}/v1/batches/{submitted['batch_id']}", headers={"X-API-Key": keys["acme"]}, timeout=60
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "dagster_unavailable"
