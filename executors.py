"""The k8s deployment's executor (beside definitions.py, which composes it): dagster-k8s's `k8s_job_executor`
(one Job per step) that also gives up on a step pod the cluster cannot schedule.

A step pod that can never be placed (no node with enough GPUs, the GPU pool cordoned or at its quota) stays
Pending forever, and so would the run: dagster-k8s only fails a step when its Job fails, and a Job whose pod is
never scheduled never fails. Here the step health check also looks at the Job's pod: Pending with
`PodScheduled=False (Unschedulable)` for longer than `unschedulable_timeout_s` fails the step with the
scheduler's own explanation (`0/2 nodes are available: 1 Insufficient nvidia.com/gpu, ...`) and deletes the
Job, so the pending pod stops asking an autoscaler for a node. The op's retry policy is not applied to that
failure: the wait already covered the time capacity had to appear, and retrying would wait again.

It also sizes `tag_chunk` pods by the model's resource profile (tagging_platform.models.ResourceProfile): the
op's tags ask for a GPU, and the handler places such a pod on the GPU pool (the node selector and toleration of
TP_GPU_NODE_SELECTOR / TP_GPU_TOLERATION_KEY, deploy/gpu-nodepool.yaml); a manifest whose model is declared
CPU-only gets CPU pods without a GPU request. The step handler decides this at launch, when the `manifest` step
has already resolved the model.
"""

import datetime as dt

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEvent,
    DagsterEventType,
    Field,
    InitExecutorContext,
    IntSource,
    executor,
    multiple_process_executor_requirements,
)

# Not public (dagster-k8s's executor is built on them and offers no hook for a step's health check or a pod's
# placement): StepFailureData, CheckStepHealthResult, StepDelegatingExecutor, K8sContainerContext, K8sStepHandler,
# UserDefinedDagsterK8sConfig. tests/test_executors.py names whichever the pinned dagster or dagster-k8s changes.
from dagster._core.execution.plan.objects import StepFailureData
from dagster._core.executor.step_delegating import CheckStepHealthResult, StepDelegatingExecutor
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.executor import K8sStepHandler
from dagster_k8s.job import UserDefinedDagsterK8sConfig

UNSCHEDULABLE = "Step pod unschedulable"

# Every step pod runs as the image's non-root user on a read-only root filesystem (writable /tmp only), with no
# capabilities and no Kubernetes API token: a step only reads and writes S3 and Dagster's storage.
HARDENED_STEP_POD = {
    "pod_spec_config": {
        "automount_service_account_token": False,
        "security_context": {
            "run_as_non_root": True,
            "run_as_user": 10001,
            "run_as_group": 10001,
            "fs_group": 10001,
            "seccomp_profile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "tmp", "empty_dir": {}}],
    },
    "container_config": {
        "security_context": {
            "read_only_root_filesystem": True,
            "allow_privilege_escalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volume_mounts": [{"name": "tmp", "mount_path": "/tmp"}],
    },
}


def placed_on_gpu_pool(
    config: UserDefinedDagsterK8sConfig, node_selector: str, toleration_key: str
) -> UserDefinedDagsterK8sConfig:
    """A tag_chunk pod's config for a GPU model: the GPU pool's node label ("key=value") and its taint tolerated."""
    key, _, value = node_selector.partition("=")
    pod = {
        **config.pod_spec_config,
        "node_selector": {key: value},
        "tolerations": [{"key": toleration_key, "operator": "Exists", "effect": "NoSchedule"}],
    }
    return config._replace(pod_spec_config=pod)


def sized_for_cpu(config: UserDefinedDagsterK8sConfig, memory: str) -> UserDefinedDagsterK8sConfig:
    """A tag_chunk pod's config for a CPU-only model: no GPU request, off the GPU pool, the model's memory."""
    container = {k: v for k, v in config.container_config.items() if k != "resources"}
    container["resources"] = {"requests": {"cpu": "1", "memory": memory}, "limits": {"memory": memory}}
    pod = {k: v for k, v in config.pod_spec_config.items() if k not in ("node_selector", "tolerations")}
    return config._replace(container_config=container, pod_spec_config=pod)


def manifest_profile(instance, partition: str) -> dict[str, str]:
    """The resource profile of the model a manifest uses, as its `manifest` materialization recorded it."""
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("manifest"), asset_partitions=[partition]), limit=1
    ).records or [None]
    metadata = record.asset_materialization.metadata if record else {}
    return {k: metadata[k].value for k in ("accelerator", "memory") if k in metadata}


def planned_unschedulable_timeout(instance, run_id: str) -> float | None:
    """The unschedulable limit of the run's plan (plan_chunks' `planned` output): node start-up plus the waves
    ahead of a chunk's pod. None before planning, or for a run with nothing to tag."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
        event = record.dagster_event
        if (
            event.step_key.endswith("plan_chunks")
            and event.event_specific_data.step_output_handle.output_name == "planned"
        ):
            plan = event.event_specific_data.metadata.get("plan")
            return float(plan.value["unschedulable_timeout_s"]) if plan else None
    return None


class SchedulingAwareK8sStepHandler(K8sStepHandler):
    # Node start-up (TP_STEP_UNSCHEDULABLE_TIMEOUT_S): the limit of every step pod but tag_chunk's.
    unschedulable_timeout_s: float = 900.0
    gpu_node_selector: str = "tagging.platform/pool=gpu"
    gpu_toleration_key: str = "nvidia.com/gpu"

    def _get_container_context(self, step_handler_context) -> K8sContainerContext:
        """tag_chunk asks for a GPU (its op tags) on the GPU pool; a manifest whose model is CPU-only gets CPU pods."""
        context = super()._get_container_context(step_handler_context)
        step_key = self._get_step_key(step_handler_context)
        if step_handler_context.get_step_context(step_key).step.op_name != "tag_chunk":
            return context
        partition = step_handler_context.dagster_run.tags.get("dagster/partition")
        if partition not in self._profiles:
            # Once per batch: this runs again on every health check of every chunk's step.
            self._profiles[partition] = manifest_profile(step_handler_context.instance, partition) if partition else {}
        profile = self._profiles[partition]
        if profile.get("accelerator") != "cpu":
            return context._replace(
                run_k8s_config=placed_on_gpu_pool(
                    context.run_k8s_config, self.gpu_node_selector, self.gpu_toleration_key
                )
            )
        return context._replace(run_k8s_config=sized_for_cpu(context.run_k8s_config, profile["memory"]))

    def check_step_health(self, step_handler_context) -> CheckStepHealthResult:
        result = super().check_step_health(step_handler_context)
        if not result.is_healthy:
            return result
        job_name = self._get_k8s_step_job_name(step_handler_context)
        namespace = self._get_container_context(step_handler_context).namespace
        pods = self._api_client.core_api.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        now = dt.datetime.now(dt.UTC)
        for pod in pods:
            if pod.status.phase != "Pending" or pod.spec.node_name:
                continue
            unschedulable = next(
                (
                    c
                    for c in pod.status.conditions or []
                    if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                ),
                None,
            )
            waited = (now - pod.metadata.creation_timestamp).total_seconds()
            limit = self._unschedulable_limit(step_handler_context)
            if unschedulable is None or waited < limit:
                continue
            self._api_client.delete_job(job_name=job_name, namespace=namespace)
            return CheckStepHealthResult.unhealthy(
                reason=(
                    f"{UNSCHEDULABLE}: pod {pod.metadata.name} of Kubernetes job {job_name} could not be scheduled"
                    f" for {waited:.0f} s (limit {limit:.0f} s: TP_STEP_UNSCHEDULABLE_TIMEOUT_S plus the waves of"
                    f" the plan ahead of it): {unschedulable.message}. The job was deleted."
                )
            )
        return result

    def _unschedulable_limit(self, step_handler_context) -> float:
        """A tag_chunk pod may wait for the waves of its plan ahead of it as well as for a node to start."""
        step_key = self._get_step_key(step_handler_context)
        if step_handler_context.get_step_context(step_key).step.op_name != "tag_chunk":
            return self.unschedulable_timeout_s
        run_id = step_handler_context.dagster_run.run_id
        if run_id not in self._planned_limits:
            # Once per run: the plan does not change while its chunks run.
            planned = planned_unschedulable_timeout(step_handler_context.instance, run_id)
            self._planned_limits[run_id] = max(planned or 0.0, self.unschedulable_timeout_s)
        return self._planned_limits[run_id]


class _Executor(StepDelegatingExecutor):
    def log_failure_or_retry_event_after_error(self, step_context, err_info, known_state) -> DagsterEvent:
        if UNSCHEDULABLE in (err_info.message or ""):
            return DagsterEvent.step_failure_event(
                step_context=step_context, step_failure_data=StepFailureData(error=err_info, user_failure_data=None)
            )
        return super().log_failure_or_retry_event_after_error(step_context, err_info, known_state)


@executor(
    name="k8s",
    config_schema={
        **k8s_job_executor.config_schema.config_type.fields,
        "unschedulable_timeout_s": Field(IntSource, is_required=False, default_value=900),
        "step_health_check_interval_s": Field(IntSource, is_required=False, default_value=10),
        "gpu_node_selector": Field(str, is_required=False, default_value="tagging.platform/pool=gpu"),
        "gpu_toleration_key": Field(str, is_required=False, default_value="nvidia.com/gpu"),
    },
    requirements=multiple_process_executor_requirements(),
)
def k8s_step_executor(init_context: InitExecutorContext):
    """`k8s_job_executor` plus the scheduling deadline above; every other option is dagster-k8s's own."""
    config = dict(init_context.executor_config)
    timeout = config.pop("unschedulable_timeout_s")
    interval = config.pop("step_health_check_interval_s")
    gpu_node_selector = config.pop("gpu_node_selector")
    gpu_toleration_key = config.pop("gpu_toleration_key")
    base = k8s_job_executor.executor_creation_fn(
        InitExecutorContext(
            job=init_context.job,
            executor_def=k8s_job_executor,
            executor_config=config,
            instance=init_context.instance,
        )
    )
    # Same objects, narrower classes: dagster-k8s builds them, we only add the two behaviours above.
    handler = base._step_handler
    if type(base) is not StepDelegatingExecutor or type(handler) is not K8sStepHandler:
        raise TypeError(
            f"dagster-k8s's k8s_job_executor built a {type(base).__name__} with a {type(handler).__name__}, not the"
            " StepDelegatingExecutor with a K8sStepHandler that executors.k8s_step_executor narrows"
        )
    base.__class__ = _Executor
    base._check_step_health_interval_seconds = interval
    handler.__class__ = SchedulingAwareK8sStepHandler
    handler.unschedulable_timeout_s = float(timeout)
    handler.gpu_node_selector = gpu_node_selector
    handler.gpu_toleration_key = gpu_toleration_key
    handler._profiles = {}  # partition -> the manifest's resource profile
    handler._planned_limits = {}  # run id -> its tag_chunk pods' unschedulable limit
    return base
