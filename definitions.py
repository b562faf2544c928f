"""Composes the platform: assets, checks, jobs, sensors, the canary schedule, and resources and executor for the deployment."""

import dagster as dg

from assets import all_assets, all_checks
from assets.jobs import publish_model_job, tag_manifest_job
from executors import HARDENED_STEP_POD, k8s_step_executor
from resources import build_resources
from sensors import build_canary_schedule, build_failed_run_sensor, build_manifest_sensor, build_model_registry_sensor
from sensors.ticks import every_interval
from tagging_platform.settings import PROCESS_ENV, Settings


def k8s_executor_config(settings: Settings) -> dict:
    """The k8s executor's config: dagster-k8s's k8s_job_executor options plus ours (executors.py)."""
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
        # The image, namespace and service account come from the K8sRunLauncher on the instance.
        # dagster-k8s's k8s_job_executor, plus failing a step whose pod stays unschedulable (executors.py).
        return k8s_step_executor.configured(k8s_executor_config(settings))
    # Each step process forks from a server that has imported the definitions once, instead of importing
    # dagster, pandas, pyarrow, boto3 and the platform again for every step.
    return dg.multiprocess_executor.configured(
        {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": ["definitions"]}}}
    )


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
