"""deploy/'s manifests sent to the real API server as a server-side dry run: admission, defaulting and the server's own
validation run, nothing is stored. The test cluster is Kubernetes 1.20, which does not serve a few newer API
versions the manifests use; those are named here and covered by the schema validation in tests/deploy."""

import copy

import pytest
import yaml
from kubernetes.utils import FailToCreateError, create_from_dict

from tests.conftest import REPO
from tests.deploy.test_deploy import manifests

pytestmark = [pytest.mark.k8s]

# (apiVersion, kind) the 1.20 test server cannot take: GA after 1.20, or a custom resource (Karpenter).
NOT_SERVED_BY_1_20 = {
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("karpenter.sh/v1", "NodePool"),
    ("karpenter.k8s.aws/v1", "EC2NodeClass"),
}


def test_every_manifest_the_test_server_serves_passes_a_server_side_dry_run(k8s_api, k8s_namespace):
    _, _, client = k8s_api
    namespace, _ = k8s_namespace
    sent, skipped = [], set()
    for name, doc in manifests():
        if (doc["apiVersion"], doc["kind"]) in NOT_SERVED_BY_1_20:
            skipped.add((doc["apiVersion"], doc["kind"]))
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        create_from_dict(client, doc, namespace=namespace, dry_run="All")
        sent.append(name)
    assert skipped == NOT_SERVED_BY_1_20
    kinds = {n.split(":")[1].split("/")[0] for n in sent}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "NetworkPolicy",
        "Ingress",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    } <= kinds


def test_the_dry_run_rejects_what_the_server_would_reject(k8s_api, k8s_namespace):
    _, _, client = k8s_api
    namespace, _ = k8s_namespace
    [configmap] = yaml.safe_load_all((REPO / "deploy" / "settings-configmap.yaml").read_text())
    broken = copy.deepcopy(configmap)
    broken["metadata"] = {"name": "Not_A_Valid_Name", "namespace": namespace}
    with pytest.raises(FailToCreateError, match="Invalid value"):
        create_from_dict(client, broken, namespace=namespace, dry_run="All")


def test_a_rehearsal_applies_what_the_server_serves_and_the_api_pod_from_its_own_spec_answers_a_key(
    k8s_api, settings, embedded_s3, s3, model_ref
):
    """deploy/ applied for real into a namespace of its own, then the API pod the Deployment's own spec starts.

    What the test environment changes, and only that: the namespace; one replica (every pod of the node simulator
    shares the host's loopback, so two would want one port); a free loopback port for the API; settings pointing
    at the embedded S3 server instead of AWS (env overrides the ConfigMap's envFrom, as in a pod); the local
    checkout on PYTHONPATH (it plays the image). The other Deployments are created with no replicas: the node
    simulator runs a container's command, and theirs (the Pushgateway's, oauth2-proxy's) are their images' own.
    """
    import time
    import uuid

    import requests

    from tagging_platform.api.keys import CustomerStore
    from tagging_platform.embedded import free_port

    core, _, client = k8s_api
    namespace = f"tp-rehearsal-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    port = free_port()
    overrides = {
        **settings.as_env(),
        "TP_DEPLOYMENT": "k8s",
        "TP_API_HOST": "127.0.0.1",
        "TP_API_PORT": str(port),
        "AWS_ACCESS_KEY_ID": "embedded",
        "AWS_SECRET_ACCESS_KEY": "embedded",
        "PYTHONPATH": str(REPO),
        "TP_API_PRELOAD_DEFAULT_MODEL": "0",
    }
    applied = []
    try:
        # In the guide's order: identities and settings before the workloads that read them.
        for name, doc in sorted(manifests(), key=lambda item: item[1]["kind"] == "Deployment"):
            if (doc["apiVersion"], doc["kind"]) in NOT_SERVED_BY_1_20:
                continue
            doc = copy.deepcopy(doc)
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects", []):
                subject["namespace"] = namespace
            if doc["kind"] == "Deployment":
                is_api = doc["metadata"]["name"] == "tagging-platform-api"
                doc["spec"]["replicas"] = 1 if is_api else 0
                if is_api:
                    [container] = doc["spec"]["template"]["spec"]["containers"]
                    container["ports"][0]["containerPort"] = port
                    kept = [e for e in container["env"] if e["name"] not in overrides]
                    container["env"] = kept + [{"name": k, "value": v} for k, v in overrides.items()]
            create_from_dict(client, doc, namespace=namespace)
            applied.append(name)
        assert any(n.startswith("api.yaml:Deployment") for n in applied) and any("Ingress" in n for n in applied)

        # The pod the Deployment's ReplicaSet made, scheduled and started by the node simulator.
        deadline = time.monotonic() + 120
        while True:
            pods = core.list_namespaced_pod(
                namespace, label_selector="app.kubernetes.io/name=tagging-platform-api"
            ).items
            if [p.status.phase for p in pods] == ["Running"]:
                break
            assert time.monotonic() < deadline, [(p.metadata.name, p.status.phase) for p in pods]
            time.sleep(1)
        [pod] = pods
        assert pod.spec.node_name == "tp-cpu-node" and pod.spec.security_context.run_as_non_root
        [container] = pod.spec.containers
        assert container.command == ["tagging-platform", "api"]

        # The readiness probe as a kubelet runs it: the spec's path on the port its name resolves to.
        probe = container.readiness_probe.http_get
        probe_port = next(p.container_port for p in container.ports if p.name == probe.port)
        base = f"http://127.0.0.1:{probe_port}"
        startup = container.startup_probe
        deadline = time.monotonic() + startup.period_seconds * startup.failure_threshold
        while True:
            try:
                ready = requests.get(base + probe.path, timeout=container.readiness_probe.timeout_seconds)
                if ready.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            log = core.read_namespaced_pod_log(pod.metadata.name, namespace)
            assert time.monotonic() < deadline, f"{probe.path} never answered 200:\n{log[-3000:]}"
            time.sleep(1)
        assert ready.json()["checks"]["s3"] == "ok"

        key, _ = CustomerStore(s3, settings).create("rehearsal", rotate=True)
        answered = requests.get(f"{base}/v1/batches", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert answered.status_code == 200, answered.text
        assert requests.get(f"{base}/v1/batches", timeout=60).status_code == 401
    finally:
        core.delete_namespace(namespace)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the simulator stops the pod's process when the pod goes
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except requests.ConnectionError:
                break
            time.sleep(1)
