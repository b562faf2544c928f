"""What an operator deploys (deploy/) is valid and least-privilege, checked without a cloud account.

Every Kubernetes manifest is validated against the Kubernetes 1.30 schemas (kubernetes-validate, offline) and,
in tests/k8s/test_deploy_dry_run.py, by a server-side dry run on the test cluster. The official Dagster Helm
chart cannot be had offline (its repository is not a package registry), so deploy/values.yaml is checked for
what it must say, and the run worker it configures is built with dagster-k8s's own Job builder and validated
like the manifests.
"""

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dagster_k8s.job import UserDefinedDagsterK8sConfig

from assets.tagging import GPU_STEP_TAGS
from executors import HARDENED_STEP_POD, placed_on_gpu_pool
from tagging_platform.settings import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
K8S_SCHEMA_VERSION = "1.30.0"
# Custom resources: their schemas come with the operator (Karpenter), not with Kubernetes.
CUSTOM_KINDS = {"NodePool", "EC2NodeClass"}


def manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "values.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


def docs_of(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def settings_configmap() -> dict[str, str]:
    [configmap] = docs_of("settings-configmap.yaml")
    return configmap["data"]


@pytest.mark.parametrize("name,doc", manifests(), ids=[n for n, _ in manifests()])
def test_every_kubernetes_manifest_is_valid_against_the_kubernetes_schema(name, doc):
    if doc["kind"] in CUSTOM_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)
        return
    kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)


def test_a_manifest_with_a_misspelt_field_is_rejected_by_the_same_validation():
    [(_, deployment)] = [(n, d) for n, d in manifests() if d["kind"] == "Deployment" and "api" in n]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_SCHEMA_VERSION, strict=True)


def test_the_gpu_node_pool_scales_to_zero_and_takes_exactly_the_tag_chunk_pods():
    settings = Settings.from_env(settings_configmap())
    [pool] = [d for d in docs_of("gpu-nodepool.yaml") if d["kind"] == "NodePool"]
    template = pool["spec"]["template"]
    selector_key, selector_value = settings.gpu_node_selector.split("=")
    assert template["metadata"]["labels"] == {selector_key: selector_value}
    assert template["spec"]["taints"] == [
        {"key": settings.gpu_toleration_key, "value": "present", "effect": "NoSchedule"}
    ]
    # The step pods' own selector and toleration are the pool's: the executor places them with the ConfigMap's settings.
    config = UserDefinedDagsterK8sConfig.from_dict(GPU_STEP_TAGS["dagster-k8s/config"])
    pod_spec = placed_on_gpu_pool(config, settings.gpu_node_selector, settings.gpu_toleration_key).pod_spec_config
    assert pod_spec["node_selector"] == {selector_key: selector_value}
    assert [t["key"] for t in pod_spec["tolerations"]] == [settings.gpu_toleration_key]
    # Empty nodes go (no minimum size exists in a NodePool), and the pool never outgrows what the planner plans for.
    assert pool["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert pool["spec"]["limits"]["nvidia.com/gpu"] == settings_configmap()["TP_MAX_GPUS"]
    [node_class] = [d for d in docs_of("gpu-nodepool.yaml") if d["kind"] == "EC2NodeClass"]
    assert template["spec"]["nodeClassRef"]["name"] == node_class["metadata"]["name"]
    assert node_class["spec"]["metadataOptions"]["httpTokens"] == "required"


# ---- IAM: each role gets exactly what its pods call, on exactly its buckets -------------------------------------

POLICIES = {
    "pipeline": "pipeline-policy.json",
    "registry": "registry-policy.json",
    "daemon": "daemon-policy.json",
    "api": "api-policy.json",
}
WAREHOUSE = "arn:aws:s3:::acme-tagging-warehouse"
QUEUE = "arn:aws:sqs:us-east-1:ACCOUNT_ID:manifest-events"
DEAD_LETTER_QUEUE = "arn:aws:sqs:us-east-1:ACCOUNT_ID:manifest-events-dead-letter"

# role -> (action, resource) pairs. Changing a policy means changing this table, in review.
EXPECTED_GRANTS = {
    # Run workers and tagging steps: read models, never write them; the warehouse's tables, never its api/ records.
    "pipeline": {
        ("s3:GetObject", "arn:aws:s3:::acme-customer-images/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-manifests/incoming/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-models/*"),
        ("s3:GetObject", f"{WAREHOUSE}/batches/*"),
        ("s3:GetObject", f"{WAREHOUSE}/canary/*"),
        *{
            (a, f"{WAREHOUSE}/{p}/*")
            for a in ("s3:GetObject", "s3:PutObject")
            for p in ("assets", "chunks", "reuse", "dagster")
        },
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-output/*"),
        ("s3:PutObject", "arn:aws:s3:::acme-tagging-output/*"),
        ("s3:DeleteObject", "arn:aws:s3:::acme-tagging-output/*"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-models"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-warehouse"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-output"),
    },
    # The publish_model step (tagger_model): the only pod that writes the model bucket.
    "registry": {
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-models/*"),
        ("s3:PutObject", "arn:aws:s3:::acme-tagging-models/*"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-models"),
        ("s3:ListBucket", WAREHOUSE),
        *{(a, f"{WAREHOUSE}/{p}/*") for a in ("s3:GetObject", "s3:PutObject") for p in ("assets", "dagster")},
    },
    "daemon": {
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-manifests"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-models"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-manifests/incoming/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-models/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-warehouse/batches/*"),
        ("s3:PutObject", "arn:aws:s3:::acme-tagging-warehouse/batches/*"),
        ("s3:PutObject", "arn:aws:s3:::acme-tagging-warehouse/canary/*"),  # the canary schedule's photographs
        # Both queues found by name; the dead-letter queue's depth read (tagging_platform/events.py).
        *{(a, q) for a in ("sqs:GetQueueUrl", "sqs:GetQueueAttributes") for q in (QUEUE, DEAD_LETTER_QUEUE)},
        ("sqs:ReceiveMessage", QUEUE),
        ("sqs:DeleteMessage", QUEUE),
        ("sqs:SendMessage", DEAD_LETTER_QUEUE),  # a malformed record copied there
    },
    "api": {
        ("s3:GetObject", "arn:aws:s3:::acme-customer-images/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-models/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-manifests/incoming/*"),
        ("s3:PutObject", "arn:aws:s3:::acme-tagging-manifests/incoming/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-warehouse/api/*"),
        ("s3:PutObject", "arn:aws:s3:::acme-tagging-warehouse/api/*"),
        ("s3:DeleteObject", "arn:aws:s3:::acme-tagging-warehouse/api/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-warehouse/chunks/*"),
        ("s3:GetObject", "arn:aws:s3:::acme-tagging-output/*"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-warehouse"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-output"),
        ("s3:ListBucket", "arn:aws:s3:::acme-tagging-models"),
    },
}

# boto3 call -> the IAM action it needs.
CALL_ACTIONS = {
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "put_object": "s3:PutObject",
    "delete_object": "s3:DeleteObject",
    "delete_objects": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
    "get_paginator": "s3:ListBucket",
    "receive_message": "sqs:ReceiveMessage",
    "delete_message_batch": "sqs:DeleteMessage",
    "get_queue_url": "sqs:GetQueueUrl",
    "get_queue_attributes": "sqs:GetQueueAttributes",
    "send_message": "sqs:SendMessage",
}
# Calls only the embedded (local) S3/SQS set-up makes; production buckets and queues are made by the operator.
LOCAL_ONLY_CALLS = {
    "create_bucket",
    "list_buckets",
    "create_queue",
    "put_bucket_notification_configuration",
    "head_bucket",
}


def grants(role: str) -> set[tuple[str, str]]:
    policy = json.loads((DEPLOY / "iam" / POLICIES[role]).read_text())
    assert policy["Version"] == "2012-10-17"
    pairs = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                pairs.add((action, resource))
    return pairs


@pytest.mark.parametrize("role", sorted(POLICIES))
def test_each_iam_role_is_granted_exactly_what_it_needs(role):
    granted = grants(role)
    assert not [a for a, _ in granted if "*" in a], "no wildcard actions"
    assert not [r for _, r in granted if r in ("*", "arn:aws:s3:::*")], "no account-wide resources"
    assert granted == EXPECTED_GRANTS[role]


def test_the_policies_name_only_the_deployments_buckets_and_nobody_writes_customer_images():
    data = settings_configmap()
    image_buckets = {p.split("/")[0] for p in data["TP_ALLOWED_IMAGE_PREFIXES"].split(",")}
    buckets = image_buckets | {
        data[k] for k in ("TP_MANIFEST_BUCKET", "TP_OUTPUT_BUCKET", "TP_WAREHOUSE_BUCKET", "TP_MODEL_BUCKET")
    }
    every = set().union(*(grants(role) for role in POLICIES))
    named = {r.removeprefix("arn:aws:s3:::").split("/")[0] for _, r in every if r.startswith("arn:aws:s3:::")}
    assert named == buckets
    images = data["TP_ALLOWED_IMAGE_PREFIXES"].split(",")[0].split("/")[0]  # the customers' bucket
    assert {a for a, r in every if r.startswith(f"arn:aws:s3:::{images}")} == {"s3:GetObject"}
    manifests_arn = f"arn:aws:s3:::{data['TP_MANIFEST_BUCKET']}/{data['TP_MANIFEST_PREFIX']}*"
    assert ("s3:PutObject", manifests_arn) not in grants("pipeline"), "tagging never rewrites a customer's manifest"


def test_every_aws_call_the_code_makes_is_an_action_some_role_is_granted():
    calls = set()
    for path in [
        *(REPO / "tagging_platform").rglob("*.py"),
        *(REPO / "assets").glob("*.py"),
        *(REPO / "resources").glob("*.py"),
        *(REPO / "sensors").glob("*.py"),
    ]:
        calls |= set(
            re.findall(r"\.(\w+)\((?:\s*Bucket=|\s*QueueUrl=|\s*QueueName=|\s*\"list_objects_v2\")", path.read_text())
        )
    calls -= LOCAL_ONLY_CALLS | {"paginate"}  # a paginator's calls are its get_paginator("...")'s
    assert {"get_object", "put_object", "get_paginator", "receive_message"} <= calls  # the scan finds calls at all
    unknown = calls - set(CALL_ACTIONS)
    assert not unknown, f"AWS calls with no IAM action mapped (add them to a policy and to CALL_ACTIONS): {unknown}"
    granted_actions = {a for role in POLICIES for a, _ in grants(role)}
    assert {CALL_ACTIONS[c] for c in calls} <= granted_actions


# ---- Pods: non-root, read-only root filesystem, no open doors -----------------------------------------------------


def test_step_pods_run_as_non_root_on_a_read_only_root_filesystem_without_an_api_token():
    pod = HARDENED_STEP_POD["pod_spec_config"]
    container = HARDENED_STEP_POD["container_config"]
    assert pod["security_context"]["run_as_non_root"] is True and pod["security_context"]["run_as_user"] != 0
    assert pod["automount_service_account_token"] is False
    assert container["security_context"]["read_only_root_filesystem"] is True
    assert container["security_context"]["capabilities"] == {"drop": ["ALL"]}
    assert [m["mount_path"] for m in container["volume_mounts"]] == ["/tmp"]


def test_every_deployment_runs_non_root_with_a_read_only_root_filesystem():
    deployments = [d for _, d in manifests() if d["kind"] == "Deployment"]
    assert len(deployments) >= 3
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, deployment["metadata"]["name"]
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            assert context.get("readOnlyRootFilesystem") is True, (deployment["metadata"]["name"], container["name"])
            assert context.get("allowPrivilegeEscalation") is False, (deployment["metadata"]["name"], container["name"])


def test_the_run_worker_the_helm_values_configure_is_a_valid_hardened_job():
    """The chart hands runK8sConfig to K8sRunLauncher; build the run worker's Job with dagster-k8s from it."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    run_config = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    user_config = UserDefinedDagsterK8sConfig.from_dict(
        {"pod_spec_config": run_config["podSpecConfig"], "container_config": run_config["containerConfig"]}
    )
    context = K8sContainerContext(namespace="tagging", run_k8s_config=user_config)
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="REGISTRY/tagging-platform:0.1.0",
            dagster_home="/opt/dagster/dagster_home",
            instance_config_map="dagster-instance",
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-example",
        pod_name="dagster-run-example",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )
    from kubernetes.client import ApiClient

    manifest = ApiClient().sanitize_for_serialization(job)  # the API's field names, as kubectl would send it
    kubernetes_validate.validate(manifest, K8S_SCHEMA_VERSION, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tagging-platform"
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_the_dagster_ui_is_only_reachable_through_the_authenticating_proxy():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    webserver = values["dagsterWebserver"]
    assert webserver["service"]["type"] == "ClusterIP"
    assert not values.get("ingress", {}).get("enabled", False)
    ingresses = [d for _, d in manifests() if d["kind"] == "Ingress" and d["metadata"]["name"] == "dagster-ui"]
    backends = {
        p["backend"]["service"]["name"] for i in ingresses for r in i["spec"]["rules"] for p in r["http"]["paths"]
    }
    assert backends == {"dagster-ui-auth-proxy"}
    [proxy] = [
        d for _, d in manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "dagster-ui-auth-proxy"
    ]
    args = proxy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--upstream=http://dagster-dagster-webserver.") for a in args)
    env = proxy["spec"]["template"]["spec"]["containers"][0]["env"]
    assert all("secretKeyRef" in e["valueFrom"] for e in env), "the proxy's secrets come from a Secret"
    [policy] = [
        d for _, d in manifests() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "dagster-webserver"
    ]
    allowed = {f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in policy["spec"]["ingress"][0]["from"]}
    assert allowed == {"dagster-ui-auth-proxy", "tagging-platform-api"}


def test_run_and_step_pods_accept_no_connections_and_reach_only_dns_s3_postgres_the_api_server_and_metrics():
    [policy] = [
        d for _, d in manifests() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "dagster-workers"
    ]
    selector = policy["spec"]["podSelector"]["matchExpressions"]
    assert selector == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["run_worker", "step_worker"]}
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["ingress"] == []
    ports = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 5432), ("TCP", 9091)}
    blocks = [t["ipBlock"]["cidr"] for rule in policy["spec"]["egress"] for t in rule["to"] if "ipBlock" in t]
    assert "0.0.0.0/0" not in blocks and all(
        "except" not in t.get("ipBlock", {}) for r in policy["spec"]["egress"] for t in r["to"]
    )


# ---- Secrets: none in the repository ----------------------------------------------------------------------------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}\b"),
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH )?PRIVATE KEY-----"),
    "password in config": re.compile(
        r"(?i)^\s*[\w.]*password\s*[:=]\s*['\"]?(?!from-a-secret|\$|<|\{)[^\s'\"#]{6,}", re.MULTILINE
    ),
}


def test_no_credentials_are_committed():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert len(files) > 50
    found = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in {".png", ".jpg", ".parquet", ".gz", ".pth"} or "bad_manifests" in name:
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}: {what}" for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    assert not found


def test_the_secret_scan_finds_a_planted_key(tmp_path):
    # Assembled here so that this file does not hold what the scan looks for.
    planted = (
        "aws_access_key_id = "
        + "AKIA"
        + "ABCDEFGHIJKLMNOP\naws_secret_access_key = "
        + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
    )
    assert SECRET_PATTERNS["AWS access key id"].search(planted) and SECRET_PATTERNS["AWS secret access key"].search(
        planted
    )
    assert SECRET_PATTERNS["password in config"].search("  postgresqlPassword: hunter2hunter2\n")
    assert not SECRET_PATTERNS["password in config"].search("  postgresqlPassword: from-a-secret\n")


def test_the_image_runs_as_a_non_root_user_and_bakes_in_no_credentials():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in {"0", "root"}
    assert not re.search(r"(?i)^\s*(ENV|ARG)\b.*(SECRET|PASSWORD|TOKEN|AWS_ACCESS_KEY)", dockerfile, re.MULTILINE)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert (
        '"torch==2.14.1"' in pyproject and "pip install ." in dockerfile
    )  # the image gets the pinned CUDA-capable torch


def test_the_s3_manifest_notification_sends_only_new_manifests_to_the_queue():
    config = json.loads((DEPLOY / "manifest-notifications.json").read_text())
    [queue] = config["QueueConfigurations"]
    assert queue["Events"] == ["s3:ObjectCreated:*"]
    assert queue["Filter"]["Key"]["FilterRules"] == [
        {"Name": "prefix", "Value": settings_configmap()["TP_MANIFEST_PREFIX"]}
    ]
    daemon = grants("daemon")
    assert {("sqs:ReceiveMessage", queue["QueueArn"]), ("sqs:DeleteMessage", queue["QueueArn"])} <= daemon
    assert Path(DEPLOY / "manifest-queues.md").exists()


def test_production_runs_one_run_per_batch_and_retries_a_failed_run_as_the_fault_tests_do():
    from tagging_platform.local import instance_yaml

    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    daemon = values["dagsterDaemon"]
    production = Settings.from_env(settings_configmap())
    local = yaml.safe_load(instance_yaml(production))
    assert (
        values["concurrency"]["runs"]["tagConcurrencyLimits"] == local["concurrency"]["runs"]["tag_concurrency_limits"]
    )
    # One GPU budget: the pool every tag_chunk step takes a slot of is limited to TP_MAX_GPUS, per step.
    pools = values["concurrency"]["pools"]
    assert (pools["defaultLimit"], pools["granularity"]) == (production.max_gpus, "op")
    assert local["concurrency"]["pools"] == {"default_limit": production.max_gpus, "granularity": "op"}
    assert daemon["runRetries"] == {"enabled": True, "maxRetries": local["run_retries"]["max_retries"]}


def test_dagster_limits_each_customers_runs_alike_locally_and_in_production():
    """One customer's burst waits behind its own runs: a per-customer run limit on the run tag the sensor sets."""
    from tagging_platform.intake import CUSTOMER_TAG
    from tagging_platform.local import instance_yaml

    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())["concurrency"]["runs"]
    production = Settings.from_env(settings_configmap())
    local = yaml.safe_load(instance_yaml(Settings()))["concurrency"]["runs"]
    for settings, limits in (
        (production, values["tagConcurrencyLimits"]),
        (production, yaml.safe_load(instance_yaml(production))["concurrency"]["runs"]["tag_concurrency_limits"]),
        (Settings(), local["tag_concurrency_limits"]),
    ):
        per_customer = [limit for limit in limits if limit["key"] == CUSTOMER_TAG]
        assert per_customer == [
            {"key": CUSTOMER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": settings.runs_per_customer}
        ]
    # Room is left for other customers' runs, in production and locally.
    assert production.runs_per_customer < values["maxConcurrentRuns"]
    assert Settings().runs_per_customer < local["max_concurrent_runs"]
