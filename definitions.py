"""Composes the platform: assets, checks, jobs, sensors, the canary schedule, and resources and executor for the deployment."""

import dagster as dg

from assets import all_assets, all_checks
from assets.jobs import publish_model_job, tag_manifest_job
from resources import build_resources
from sensors import build_canary_schedule, build_failed_run_sensor, build_manifest_sensor, build_model_registry_sensor
from sensors.ticks import every_interval
from tagging_platform.settings import PROCESS_ENV, Settings

# Local steps run in processes forked from a server that has imported the definitions once, instead of importing
# dagster, pandas, pyarrow, boto3 and the platform again for every step; {"in_process": true} in a run's config
# runs every step in the run's own process instead (a one-chunk batch: nothing to run side by side, no process
# to start per step). The API asks for it when it launches a small batch (tagging_platform/api/launch.py).
LOCAL_MULTIPROCESS = {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": ["definitions"]}}}


@dg.configured(dg.multi_or_in_process_executor, config_schema={"in_process": dg.Field(bool, default_value=False)})
def local_step_executor(config: dict) -> dict:
    return {"in_process": {}} if config["in_process"] else {"multiprocess": LOCAL_MULTIPROCESS}


def k8s_executor_config(settings: Settings) -> dict:
    """The k8s executor's config: dagster-k8s's k8s_job_executor options plus ours (executors.py)."""
    from executors import HARDENED_STEP_POD

    return {
        "max_concurrent": settings.max_gpus * 2,
        "env_vars": [f"{k}={v}" for k, v in PROCESS_ENV.items()],
        "unschedulable_timeout_s": settings.step_unschedulable_timeout_s,
        "gpu_node_selector": settings.gpu_node_selector,
        "gpu_toleration_key": settings.gpu_toleration_key,
        "step_k8s_config": HARDENED_STEP_POD,
    }


def executor_for(settings: Settings) -> dg.ExecutorDefinition:
    if settings.deployment == "k8s":
        # Imported here: dagster-k8s and the Kubernetes client would add to every local run's start otherwise.
        from executors import k8s_step_executor

        # The image, namespace and service account come from the K8sRunLauncher on the instance.
        # dagster-k8s's k8s_job_executor, plus failing a step whose pod stays unschedulable (executors.py).
        return k8s_step_executor.configured(k8s_executor_config(settings))
    return local_step_executor


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[tag_manifest_job, publish_model_job],
        sensors=[
            build_manifest_sensor(settings),
            build_model_registry_sensor(settings),
            build_failed_run_sensor(),
            # Keeps tag_quality_history current after every manifest; running from the start.
            dg.AutomationConditionSensorDefinition(
                "quality_history_automation",
                target=dg.AssetSelection.keys("tag_quality_history"),
                **every_interval(settings),
            ),
        ],
        schedules=[build_canary_schedule(settings)],
        resources=build_resources(settings),
        executor=executor_for(settings),
    )


defs = build_definitions(Settings.from_env())
