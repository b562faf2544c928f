"""The canary end to end: a schedule tick, then the customers' tag_manifest run of its batch on the real model."""

import dataclasses
import json
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import dagster as dg
from prometheus_client.parser import text_string_to_metric_families

from definitions import build_definitions
from tagging_platform import canary, publishing
from tagging_platform.metrics import CANARY_JOB
from tagging_platform.settings import Settings
from tests.conftest import record_manifest

CANARY_CHECK = dg.AssetCheckKey(dg.AssetKey("published_tags"), "canary_predictions_match")


def tag_manifest_job():
    """Rebuilt in every step process, which reads the same settings from the environment."""
    return build_definitions(Settings.from_env()).resolve_job_def("tag_manifest")


def _canary_run_tags(definitions, instance) -> dict[str, str]:
    """What the schedule asks for at one of its ticks (the daemon launches a run with these tags)."""
    with dg.build_schedule_context(
        instance_ref=instance.get_ref(),
        scheduled_execution_time=datetime.now(UTC).replace(microsecond=0),
        resources=dict(definitions.resources),
        repository_def=definitions.get_repository_def(),
    ) as context:
        [request] = definitions.resolve_schedule_def("canary_schedule").evaluate_tick(context).run_requests
    return request.tags


def _canary_check(result) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.asset_check_key == CANARY_CHECK]
    return evaluation


def _pushed(gateway: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{gateway}/metrics", timeout=5).read().decode()
    return {
        sample.name + (f"{{result={sample.labels['result']}}}" if "result" in sample.labels else ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("job") == CANARY_JOB and sample.name.startswith("tagging_canary")
    }


def test_the_canary_passes_on_the_real_model_and_says_so_to_prometheus(
    registered_instance, definitions, s3, settings, pushgateway, step_environment
):
    instance = registered_instance
    step_environment(TP_METRICS_PUSHGATEWAY=pushgateway)
    tags = _canary_run_tags(definitions, instance)
    started = time.time()

    result = dg.execute_job(dg.reconstructable(tag_manifest_job), instance=instance, tags=tags)

    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["every_image_accounted_for"].passed  # the customers' checks ran on the canary too
    check = evaluations["canary_predictions_match"]
    photographs = len(canary.load_expectations())
    assert check.passed, check.description
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["photographs"].value == photographs and check.metadata["drifted"].value == 0
    assert check.description == f"{photographs}/{photographs} canary photographs as expected"
    assert check.metadata["verdicts"].value.count("| pass |") == photographs
    # Published like a customer's batch, in the default output location.
    markers = [
        o["Key"]
        for o in s3.list_objects_v2(
            Bucket=settings.output_bucket, Prefix=f"{settings.output_prefix}{canary.PARTITION}/"
        )["Contents"]
        if o["Key"].endswith(publishing.MARKER_NAME)
    ]
    marker = json.loads(s3.get_object(Bucket=settings.output_bucket, Key=markers[0])["Body"].read())
    assert marker["run_id"] == result.run_id and marker["tagged"] == photographs

    pushed = _pushed(pushgateway)
    assert pushed["tagging_canary_passed"] == 1
    assert started <= pushed["tagging_canary_last_run_timestamp_seconds"] <= time.time()
    assert pushed["tagging_canary_images{result=pass}"] == photographs
    assert pushed["tagging_canary_images{result=fail}"] == 0

    # The quality history follows the customers' batches only: the canary would be their latest batch every
    # half hour, and its drift from them would hide theirs.
    history_job = definitions.resolve_implicit_global_asset_job_def()
    history = history_job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("tag_quality_history")])
    assert history.success
    assert history.output_for_node("tag_quality_history").empty


def test_the_canary_fails_with_the_image_and_the_expected_and_actual_tags_when_an_expectation_changes(
    registered_instance, definitions, settings, pushgateway, tmp_path
):
    instance = registered_instance
    shipped = [dataclasses.asdict(e) for e in canary.load_expectations()]
    for entry in shipped:
        if entry["photograph"] == "chelsea":
            entry.update(any_tag=["espresso"], any_parent=[])
    changed = tmp_path / "canary.json"
    changed.write_text(json.dumps({"photographs": shipped}))
    changed_settings = settings.replace(canary_expectations=str(changed), metrics_pushgateway=pushgateway)
    tags = _canary_run_tags(definitions, instance)

    # In one process: the settings (the changed file) travel with the definitions, not the environment.
    job = build_definitions(changed_settings).resolve_job_def("tag_manifest")
    result = job.execute_in_process(instance=instance, tags=tags)

    assert result.success  # a drifted canary is a failed check, not a failed run
    check = _canary_check(result)
    assert not check.passed
    assert check.metadata["drifted"].value == 1
    [drifted] = check.metadata["drifted_images"].value
    assert drifted["image"] == f"{settings.canary_image_prefix}chelsea.jpg"
    assert drifted["expected"] == "'espresso' in the top 1"
    assert drifted["actual"] and all(name != "espresso" for name, _ in drifted["actual"])
    got = ", ".join(f"{name} {confidence:.2f}" for name, confidence in drifted["actual"])
    assert check.description.endswith(
        f"chelsea ({settings.canary_image_prefix}chelsea.jpg): expected 'espresso' in the top 1, got {got}"
    )
    assert check.metadata["expectations"].value == str(changed)
    pushed = _pushed(pushgateway)
    assert pushed["tagging_canary_passed"] == 0
    assert pushed["tagging_canary_images{result=fail}"] == 1


def test_a_customer_batch_leaves_the_canary_check_skipped(
    registered_instance, definitions, s3, settings, photographs, upload_images
):
    instance = registered_instance
    partition = f"customer-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": upload_images({"coffee.jpg": photographs["coffee.jpg"]})})
    instance.add_dynamic_partitions("manifests", [partition])

    result = definitions.resolve_job_def("tag_manifest").execute_in_process(instance=instance, partition_key=partition)

    assert result.success
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {
        "every_image_accounted_for",
        "error_rate",
        "low_confidence_share",
    }
    # Planned with the run and never evaluated in a run that succeeded: the UI shows the check as skipped.
    [record] = instance.event_log_storage.get_asset_check_execution_history(CANARY_CHECK, limit=1)
    assert (record.run_id, record.partition, record.status.value) == (result.run_id, partition, "PLANNED")
