"""The k8s executor (executors.py) against the dagster and dagster-k8s it is pinned to.

dagster-k8s offers no public hook for a step's health check or a pod's placement, so executors.py narrows the
classes of the objects `k8s_job_executor` builds and relies on some of their internals. These tests build the
executor for real (a kubeconfig that points nowhere: nothing connects at construction) and check each internal it
relies on, so an upgrade that changes one fails here, naming it, instead of in a cluster.
"""

import inspect

import dagster as dg
import pytest
from dagster._core.definitions.job_base import InMemoryJob

import executors
from definitions import k8s_executor_config
from tagging_platform.settings import Settings

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: nobody, user: {token: unused}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody, namespace: tagging}}]
current-context: nowhere
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)
    config = {
        "retries": {"enabled": {}},
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "unschedulable_timeout_s": 123,
        "step_health_check_interval_s": 7,
        "gpu_node_selector": "pool=gpu",
        "gpu_toleration_key": "gpu-taint",
    }

    @dg.op
    def noop():
        pass

    job = InMemoryJob(dg.GraphDefinition("g", node_defs=[noop]).to_job())
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.InitExecutorContext(
            job=job, executor_def=executors.k8s_step_executor, executor_config=config, instance=instance
        )
        yield executors.k8s_step_executor.executor_creation_fn(context)


def test_the_executor_narrows_what_k8s_job_executor_builds(built):
    assert type(built) is executors._Executor
    handler = built._step_handler
    assert type(handler) is executors.SchedulingAwareK8sStepHandler
    assert (handler.unschedulable_timeout_s, handler.gpu_node_selector, handler.gpu_toleration_key) == (
        123.0,
        "pool=gpu",
        "gpu-taint",
    )
    assert built._check_step_health_interval_seconds == 7


def _params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# (the internal executors.py relies on, whether the pinned version still has it)
INTERNALS = [
    (
        "StepDelegatingExecutor.log_failure_or_retry_event_after_error(step_context, err_info, known_state)",
        lambda: (
            _params(executors.StepDelegatingExecutor.log_failure_or_retry_event_after_error)
            == ["self", "step_context", "err_info", "known_state"]
        ),
    ),
    (
        "StepDelegatingExecutor reads self._check_step_health_interval_seconds and self._step_handler",
        lambda: all(
            name in inspect.getsource(executors.StepDelegatingExecutor)
            for name in ("self._check_step_health_interval_seconds", "self._step_handler.check_step_health")
        ),
    ),
    (
        "K8sStepHandler._get_container_context(step_handler_context), _get_step_key, _get_k8s_step_job_name",
        lambda: all(
            _params(getattr(executors.K8sStepHandler, name)) == ["self", "step_handler_context"]
            for name in ("_get_container_context", "_get_step_key", "_get_k8s_step_job_name", "check_step_health")
        ),
    ),
    (
        "K8sStepHandler.launch_step and check_step_health call self._get_container_context (the pod's placement)",
        lambda: all(
            "self._get_container_context(" in inspect.getsource(getattr(executors.K8sStepHandler, name))
            for name in ("launch_step", "check_step_health")
        ),
    ),
    (
        "CheckStepHealthResult.unhealthy(reason) and .is_healthy",
        lambda: (
            _params(executors.CheckStepHealthResult.unhealthy) == ["reason"]
            and not executors.CheckStepHealthResult.unhealthy(reason="x").is_healthy
        ),
    ),
    (
        "DagsterEvent.step_failure_event(step_context, step_failure_data, ...)",
        lambda: _params(dg.DagsterEvent.step_failure_event)[:2] == ["step_context", "step_failure_data"],
    ),
    (
        "StepFailureData(error, user_failure_data)",
        lambda: {"error", "user_failure_data"} <= set(_params(executors.StepFailureData)),
    ),
    (
        "K8sContainerContext is a NamedTuple with run_k8s_config and namespace",
        lambda: {"run_k8s_config", "namespace"} <= set(executors.K8sContainerContext._fields),
    ),
    (
        "UserDefinedDagsterK8sConfig is a NamedTuple with pod_spec_config and container_config",
        lambda: {"pod_spec_config", "container_config"} <= set(executors.UserDefinedDagsterK8sConfig._fields),
    ),
    (
        "k8s_job_executor.config_schema.config_type.fields holds the options definitions.py sets",
        lambda: (
            {"max_concurrent", "env_vars", "step_k8s_config"}
            <= set(executors.k8s_job_executor.config_schema.config_type.fields)
        ),
    ),
]


@pytest.mark.parametrize("internal, holds", INTERNALS, ids=[i for i, _ in INTERNALS])
def test_the_pinned_dagster_k8s_still_has(internal, holds):
    assert holds(), f"the pinned dagster/dagster-k8s changed an internal executors.py relies on: {internal}"


def test_the_step_handler_has_a_kubernetes_client_with_what_the_health_check_calls(built):
    client = built._step_handler._api_client
    assert callable(client.core_api.list_namespaced_pod) and callable(client.delete_job), (
        "dagster-k8s's DagsterKubernetesClient no longer has core_api.list_namespaced_pod and delete_job"
    )


def test_the_deployment_config_is_valid_for_the_executor():
    config = k8s_executor_config(Settings.from_env())
    fields = executors.k8s_step_executor.config_schema.config_type.fields
    assert set(config) <= set(fields), set(config) - set(fields)
