"""The GraphQL client against a real `dagster-webserver` (the API tests' stand-in job): what it reads, how it fails."""

import uuid

import pytest

from tagging_platform.dagster_client import DagsterClient, DagsterError


def test_runs_latest_run_and_events_of_a_partition(dagster_webserver, run_stub):
    batch = f"client-{uuid.uuid4().hex[:8]}"
    first = run_stub(batch)
    second = run_stub(batch, fail_with="no GPU today")
    client = DagsterClient(dagster_webserver[0])
    tags = {"dagster/partition": batch}
    assert {r["runId"] for r in client.runs(job="tag_manifest", tags=tags)} == {first, second}
    latest = client.latest_run("tag_manifest", tags)
    assert (latest["runId"], latest["status"]) == (second, "FAILURE")
    checks, failures = client.run_events(first)
    assert {(c["checkName"], c["success"]) for c in checks} == {
        ("every_image_accounted_for", True),
        ("error_rate", False),
    }
    assert failures == []
    _, failures = client.run_events(second)
    assert [f["step"] for f in failures] == ["image_tags"] and "no GPU today" in failures[0]["error"]
    starts = client.log_events(first, "... on MessageEvent { stepKey eventType }")
    assert "image_tags" in [e["stepKey"] for e in starts if e.get("eventType") == "STEP_START"]


def test_a_query_dagster_rejects_raises_its_errors(dagster_webserver):
    client = DagsterClient(dagster_webserver[0])
    assert client.is_up()
    with pytest.raises(DagsterError, match="answered with errors.*noSuchField"):
        client.query("{ noSuchField }")
    with pytest.raises(DagsterError, match="AssetNotFoundError|not found|No asset"):
        client.data_version("no_such_asset")


def test_an_unreachable_dagster_is_a_dagster_error():
    client = DagsterClient("http://127.0.0.1:9", timeout_s=5)
    assert not client.is_up()
    with pytest.raises(DagsterError, match="127.0.0.1:9 is unreachable"):
        client.runs()
