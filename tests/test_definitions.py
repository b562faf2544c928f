"""The definitions load, for each deployment, with every asset, check, sensor and job the platform promises."""

import json

import dagster as dg
import pytest

from definitions import build_definitions, defs
from tagging_platform.settings import Settings

ASSETS = {"tagger_model", "manifest", "image_tags", "published_tags", "tag_quality_metrics", "tag_quality_history"}
CHECKS = {
    ("image_tags", "every_image_accounted_for"),
    ("image_tags", "error_rate"),
    ("image_tags", "low_confidence_share"),
    ("tag_quality_history", "tag_distribution_drift"),
    ("published_tags", "canary_predictions_match"),
}


def _asset_names(definitions: dg.Definitions) -> set[str]:
    graph = definitions.resolve_asset_graph()
    return {key.to_user_string() for key in graph.get_all_asset_keys()}


def _check_names(definitions: dg.Definitions) -> set[tuple[str, str]]:
    graph = definitions.resolve_asset_graph()
    return {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}


def test_definitions_load_with_every_asset_check_sensor_and_job():
    assert _asset_names(defs) == ASSETS
    assert _check_names(defs) == CHECKS
    assert {s.name for s in defs.sensors} == {
        "manifest_sensor",
        "model_registry_sensor",
        "failed_run_sensor",
        "quality_history_automation",
    }
    assert {s.name for s in defs.schedules} == {"canary_schedule"}
    for job in ("tag_manifest", "publish_model"):
        assert defs.resolve_job_def(job).name == job


def test_the_completeness_check_blocks_publishing():
    graph = defs.resolve_asset_graph()
    blocking = {key.name for key in graph.asset_check_keys if graph.get_check_spec(key).blocking}
    assert blocking == {"every_image_accounted_for"}


def test_manifest_assets_share_one_dynamic_partition_per_manifest():
    graph = defs.resolve_asset_graph()
    for name in ASSETS - {"tagger_model", "tag_quality_history"}:
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "manifests"
    assert graph.get(dg.AssetKey("tagger_model")).partitions_def is None
    assert graph.get(dg.AssetKey("tag_quality_history")).partitions_def is None


@pytest.mark.parametrize("name", ["manifest_sensor", "model_registry_sensor", "failed_run_sensor"])
def test_the_sensors_run_by_default(name):
    assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


def test_the_canary_runs_every_half_hour_unless_a_setting_stops_it():
    schedule = build_definitions(Settings.from_env({})).resolve_schedule_def("canary_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("*/30 * * * *", "UTC")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "tag_manifest"  # the customers' job, not one of its own

    settings = Settings.from_env({"TP_CANARY_ENABLED": "0", "TP_CANARY_CRON": "0 * * * *"})
    stopped = build_definitions(settings).resolve_schedule_def("canary_schedule")
    assert (stopped.cron_schedule, stopped.default_status) == ("0 * * * *", dg.DefaultScheduleStatus.STOPPED)


def test_one_setting_switches_intake_to_s3_events():
    definitions = build_definitions(Settings.from_env({"TP_INTAKE": "events"}))
    assert {s.name for s in definitions.sensors} == {
        "manifest_events_sensor",
        "model_registry_sensor",
        "failed_run_sensor",
        "quality_history_automation",
    }
    assert definitions.resolve_sensor_def("manifest_events_sensor").default_status == dg.DefaultSensorStatus.RUNNING


@pytest.mark.parametrize("deployment, executor", [("local", "local_step_executor"), ("k8s", "k8s")])
def test_each_deployment_chooses_its_executor(deployment, executor):
    definitions = build_definitions(Settings.from_env({"TP_DEPLOYMENT": deployment}))
    assert definitions.resolve_job_def("tag_manifest").executor_def.name == executor
    assert _asset_names(definitions) == ASSETS


def test_the_run_config_the_api_launches_small_batches_with_is_the_local_executors():
    from tagging_platform.intake import IN_PROCESS

    job = build_definitions(Settings.from_env({"TP_DEPLOYMENT": "local"})).resolve_job_def("tag_manifest")
    # A launch with config the executor refuses would leave the batch to the sensor's grace: a minute lost.
    assert set(dg.validate_run_config(job, IN_PROCESS)["execution"]["local_step_executor"]) == {"in_process"}
    # Any other run (the sensor's, a backfill, the UI's) has a process per step, forked from the preloaded server.
    default = dg.validate_run_config(job, {})["execution"]["local_step_executor"]
    assert default["multiprocess"]["start_method"] == {"forkserver": {"preload_modules": ["definitions"]}}


def test_tag_chunk_steps_ask_kubernetes_for_a_gpu_on_the_gpu_pool():
    job = defs.resolve_job_def("tag_manifest")
    tag_chunk = next(node for node in job.graph.iterate_op_defs() if node.name == "tag_chunk")
    k8s = json.loads(tag_chunk.tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Where the pod goes is the executor's, from TP_GPU_NODE_SELECTOR / TP_GPU_TOLERATION_KEY
    # (tests/deploy/test_deploy_truth.py), so the op's tags never name a pool of their own.
    assert "pod_spec_config" not in k8s
    others = [op for op in job.graph.iterate_op_defs() if op.name != "tag_chunk"]
    assert others and all("dagster-k8s/config" not in op.tags for op in others)
