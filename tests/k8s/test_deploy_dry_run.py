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
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "Ingress", "ServiceAccount", "Role", "RoleBinding"} <= kinds


def test_the_dry_run_rejects_what_the_server_would_reject(k8s_api, k8s_namespace):
    _, _, client = k8s_api
    namespace, _ = k8s_namespace
    [configmap] = yaml.safe_load_all((REPO / "deploy" / "settings-configmap.yaml").read_text())
    broken = copy.deepcopy(configmap)
    broken["metadata"] = {"name": "Not_A_Valid_Name", "namespace": namespace}
    with pytest.raises(FailToCreateError, match="Invalid value"):
        create_from_dict(client, broken, namespace=namespace, dry_run="All")
