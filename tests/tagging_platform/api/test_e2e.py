"""A batch submitted over HTTP runs through the whole platform (embedded S3, dagster dev with its daemon and
sensors, the real model) and its status, followed over HTTP, ends `succeeded` with published tags."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tagging_platform import intake, photos
from tagging_platform.api.keys import CustomerStore
from tagging_platform.embedded import free_port
from tagging_platform.local import LocalPlatform
from tests.conftest import REPO
from tests.tagging_platform.api.conftest import ApiServer

pytestmark = pytest.mark.e2e


def test_a_batch_submitted_over_http_ends_succeeded_with_published_tags(tmp_path):
    overrides = {
        "TP_MAX_CHUNK_IMAGES": "2",
        "TP_MIN_CHUNK_IMAGES": "1",
        "TP_SENSOR_INTERVAL_S": "2",
        "TP_API_LAUNCH_GRACE_S": "4",
    }
    with LocalPlatform(
        REPO / "workspace.yaml", settings_overrides=overrides, dagster_home=tmp_path / "home"
    ) as platform:
        settings = platform.settings.replace(dagster_url=platform.ui_url)
        client = platform.s3()
        key, _ = CustomerStore(client, settings).create("e2e", ["s3://tags/e2e/"])
        headers = {"Authorization": f"Bearer {key}"}
        images = photos.sample_set(variants_per_photo=1)[:3]
        uris = []
        for name, data in images:
            client.put_object(Bucket="images", Key=f"e2e/{name}", Body=data)
            uris.append(f"s3://images/e2e/{name}")
        with ApiServer.serving(settings) as api:
            # The model registry sensor registers the built-in models on its first ticks.
            deadline = time.monotonic() + 300
            while not requests.get(f"{api.url}/v1/models", headers=headers, timeout=30).json()["models"]:
                assert time.monotonic() < deadline, platform.log_path.read_text()[-5000:]
                time.sleep(2)

            response = requests.post(
                f"{api.url}/v1/batches", json={"images": uris, "model": "mobilenet_v2"}, headers=headers, timeout=60
            )
            assert response.status_code == 202, response.text
            accepted = response.json()

            states = []
            deadline = time.monotonic() + 600
            while True:
                status = requests.get(accepted["status_url"], headers=headers, timeout=60)
                assert status.status_code == 200, status.text
                body = status.json()
                if not states or states[-1] != body["state"]:
                    states.append(body["state"])
                if body["state"] in ("succeeded", "completed_with_errors", "failed"):
                    break
                assert time.monotonic() < deadline, (states, platform.log_path.read_text()[-5000:])
                time.sleep(2)

            assert body["state"] == "succeeded", (body, platform.log_path.read_text()[-5000:])
            assert states[0] == "queued"
            assert body["progress"] == 1.0 and body["error"] is None
            assert body["counts"] == {"images": 3, "tagged": 3, "errors": 0}
            assert {c["name"] for c in body["checks"] if c["passed"]} >= {"every_image_accounted_for", "error_rate"}
            assert body["result"]["location"] == accepted["result_location"]
            assert body["result"]["location"].startswith(f"s3://tags/e2e/{accepted['batch_id']}/mobilenet_v2/")
            published = []
            for part in body["result"]["parts"]:
                bucket, part_key = part.removeprefix("s3://").split("/", 1)
                published += [
                    json.loads(line) for line in client.get_object(Bucket=bucket, Key=part_key)["Body"].iter_lines()
                ]
            assert sorted(obj["image"] for obj in published) == sorted(uris)
            assert all(obj["status"] == "ok" and obj["tags"] for obj in published)
            assert {obj["model"]["version"] for obj in published} == {accepted["model"]["version"]}
            assert {obj["run_id"] for obj in published} == {body["run"]["run_id"]}

            # The API launched this run itself; the sensor, once the manifest's grace was over, requested the same
            # run key (its cursor remembers the manifest) and Dagster started nothing more: one run for the batch.
            runs = platform.dagster.runs(job="tag_manifest", tags={"dagster/partition": accepted["batch_id"]})
            assert [r["runId"] for r in runs] == [body["run"]["run_id"]]
            assert {t["key"]: t["value"] for t in runs[0]["tags"]}["tagging/launched_by"] == "api"
            manifest_key = accepted["manifest"].removeprefix("s3://manifests/")
            assert manifest_key in _sensor_cursor(platform).seen

        # An API that cannot reach Dagster to launch: the sensor starts the batch's run after the grace, once.
        unreachable = settings.replace(dagster_url=f"http://127.0.0.1:{free_port()}")
        with ApiServer.serving(unreachable) as api:
            response = requests.post(f"{api.url}/v1/batches", json={"images": uris[:1]}, headers=headers, timeout=60)
            assert response.status_code == 202, response.text
        batch_id = response.json()["batch_id"]
        run = platform.wait_for_run(batch_id, timeout_s=600)
        assert run["status"] == "SUCCESS", platform.log_path.read_text()[-5000:]
        runs = platform.dagster.runs(job="tag_manifest", tags={"dagster/partition": batch_id})
        assert [r["runId"] for r in runs] == [run["runId"]]
        assert "tagging/launched_by" not in {t["key"] for t in run["tags"]}


def _sensor_cursor(platform: LocalPlatform) -> intake.ScanCursor:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(platform.dagster_home)) as instance:
        [state] = [s for s in instance.all_instigator_state() if s.name == intake.LISTING_SENSOR]
        return intake.ScanCursor.parse(state.instigator_data.cursor)
