"""The real Kubernetes API server the k8s tests run against, and Dagster instances that launch runs on it.

`k8s_cluster` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node simulator on
loopback (building the control plane from Debian's source package on first use, ~7 min once per machine), or
reuses a cluster started by `make cluster-up`. Each session works in its own namespace with the ServiceAccount,
Role and instance ConfigMap that dagster-k8s's K8sRunLauncher needs; the launcher and every run worker and step
talk to the API server with that ServiceAccount's token, so the Role is proven sufficient.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tagging_platform.settings import PROCESS_ENV
from tests.conftest import REPO

NAMESPACE_PREFIX = "tp-test-"
JOB_IMAGE = "tagging-platform:test"  # ignored by the node simulator: the local .venv is the image


def deployed_role_rules() -> list[dict]:
    """The rules of the Role that deploy/service-accounts.yaml gives run workers: the tests run under exactly it."""
    import yaml

    docs = yaml.safe_load_all((REPO / "deploy" / "service-accounts.yaml").read_text())
    [role] = [d for d in docs if d["kind"] == "Role"]
    return role["rules"]


@pytest.fixture(scope="session")
def k8s_cluster():
    from k8s_cluster import cluster

    started = False
    if not cluster.is_running():
        cluster.up(python=sys.executable)
        started = True
    yield cluster.Cluster()
    if started and not os.environ.get("TP_K8S_KEEP_CLUSTER"):
        cluster.down()


@pytest.fixture(scope="session")
def k8s_api(k8s_cluster):
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))
    return kubernetes.client.CoreV1Api(client), kubernetes.client.BatchV1Api(client), client


@pytest.fixture(scope="session")
def k8s_namespace(k8s_api, k8s_cluster, tmp_path_factory):
    """A namespace with the dagster ServiceAccount, its Role, the instance ConfigMap; a kubeconfig with its token."""
    import kubernetes

    core, _, client = k8s_api
    rbac = kubernetes.client.RbacAuthorizationV1Api(client)
    name = f"{NAMESPACE_PREFIX}{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_service_account(name, {"metadata": {"name": "dagster"}})
    rbac.create_namespaced_role(name, {"metadata": {"name": "dagster"}, "rules": deployed_role_rules()})
    rbac.create_namespaced_role_binding(
        name,
        {
            "metadata": {"name": "dagster"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dagster"},
            "subjects": [{"kind": "ServiceAccount", "name": "dagster", "namespace": name}],
        },
    )
    core.create_namespaced_config_map(
        name,
        {
            "metadata": {"name": "dagster-instance"},
            "data": {"dagster.yaml": "# written per test under DAGSTER_HOME\n"},
        },
    )
    deadline = time.monotonic() + 60
    while not (core.read_namespaced_service_account("dagster", name).secrets or []):
        assert time.monotonic() < deadline, "the token controller made no token for the dagster ServiceAccount"
        time.sleep(0.2)
    secret = core.read_namespaced_service_account("dagster", name).secrets[0].name
    token = base64.b64decode(core.read_namespaced_secret(secret, name).data["token"]).decode()
    from k8s_cluster.cluster import write_kubeconfig

    kubeconfig = write_kubeconfig(
        tmp_path_factory.mktemp("k8s") / "dagster-sa.kubeconfig",
        k8s_cluster.server,
        token,
        k8s_cluster.state / "pki" / "ca.crt",
        namespace=name,
    )
    yield name, kubeconfig
    core.delete_namespace(name)


class K8sDagster:
    """A Dagster instance whose runs are launched by K8sRunLauncher onto the test cluster."""

    def __init__(self, home: Path, namespace: str, kubeconfig: Path, env: dict[str, str]):
        self.home = home
        self.namespace = namespace
        self.env = env
        launcher_env = [f"{k}={v}" for k, v in env.items()]
        config = {
            "run_launcher": {
                "module": "dagster_k8s",
                "class": "K8sRunLauncher",
                "config": {
                    "load_incluster_config": False,
                    "kubeconfig_file": str(kubeconfig),
                    "job_namespace": namespace,
                    "job_image": JOB_IMAGE,
                    "image_pull_policy": "IfNotPresent",
                    "service_account_name": "dagster",
                    "instance_config_map": "dagster-instance",
                    "dagster_home": str(home),
                    "env_vars": launcher_env,
                },
            },
            # Submitted runs go straight to the launcher: the tests launch runs themselves, as the sensor would,
            # and need no daemon to dequeue them (the default coordinator queues them for one).
            "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
            "telemetry": {"enabled": False},
        }
        (home / "dagster.yaml").write_text(json.dumps(config, indent=2))
        import dagster as dg

        self.instance = dg.DagsterInstance.from_config(str(home))

    def launch(self, partition: str) -> str:
        """`dagster job launch` of tag_manifest for a partition, as an operator or the sensor would; the run id."""
        run_id = str(uuid.uuid4())
        launched = subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "job",
                "launch",
                "-w",
                str(REPO / "workspace.yaml"),
                "-j",
                "tag_manifest",
                "--run-id",
                run_id,
                "--tags",
                json.dumps({"dagster/partition": partition}),
            ],
            cwd=REPO,
            env={**os.environ, **self.env, "DAGSTER_HOME": str(self.home)},
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
        return run_id

    def wait(self, run_id: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return run
            if time.monotonic() > deadline:
                status = run.status if run else None
                pytest.fail(f"run {run_id} still {status} after {timeout_s} s")
            time.sleep(1)

    def events(self, run_id: str):
        return [r.dagster_event for r in self.instance.all_logs(run_id) if r.dagster_event is not None]


@pytest.fixture
def k8s_dagster(k8s_namespace, settings, embedded_s3, tmp_path, model_ref):
    """Factory: a K8sDagster whose pods get the session's settings under TP_DEPLOYMENT=k8s, plus overrides."""
    namespace, kubeconfig = k8s_namespace

    def make(**overrides: str) -> K8sDagster:
        home = tmp_path / f"dagster_home_{uuid.uuid4().hex[:6]}"
        home.mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith("TP_")},
            **PROCESS_ENV,
            "TP_DEPLOYMENT": "k8s",
            "TP_S3_ENDPOINT": settings.s3_endpoint,  # the embedded server plays AWS S3
            "AWS_ACCESS_KEY_ID": "embedded",
            "AWS_SECRET_ACCESS_KEY": "embedded",
            "AWS_DEFAULT_REGION": settings.aws_region,
            "TP_MAX_CHUNK_IMAGES": "2",
            "TP_MIN_CHUNK_IMAGES": "1",
            "DAGSTER_STEP_DELEGATING_EXECUTOR_SLEEP_SECONDS": "0.5",
            **overrides,
        }
        return K8sDagster(home, namespace, kubeconfig, env)

    return make


class PodRecorder:
    """Watches a namespace's pods and keeps every state each pod was seen in (phase, node, scheduling)."""

    def __init__(self, core, namespace: str):
        self.core = core
        self.namespace = namespace
        self.seen: dict[str, list[dict]] = {}
        self.pods: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        from kubernetes import watch

        w = watch.Watch()
        while not self._stop.is_set():
            try:
                for event in w.stream(self.core.list_namespaced_pod, self.namespace, timeout_seconds=5):
                    pod = event["object"]
                    self.pods[pod.metadata.name] = pod
                    scheduled = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
                    self.seen.setdefault(pod.metadata.name, []).append(
                        {
                            "t": time.monotonic(),
                            "phase": pod.status.phase,
                            "node": pod.spec.node_name,
                            "unschedulable": scheduled.message
                            if scheduled is not None and scheduled.status == "False"
                            else None,
                        }
                    )
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - the watch restarts
                time.sleep(0.5)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
