"""What deploy/ and docs/operations.md claim, checked against each other and against the code.

Every selector selects something shipped, every pod the deployment runs is hardened, the run workers' Role is
exactly what the code's Kubernetes calls need (and the guide says so in words generated from the Role), no IAM
role writes what is not its job, every TP_ variable an operator is told to set is read, every path named exists.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import inspect
import ipaddress
import json
import re

import pytest
import yaml
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from kubernetes.client import ApiClient

from assets.model import REGISTRY_SERVICE_ACCOUNT
from assets.tagging import GPU_STEP_TAGS
from executors import HARDENED_STEP_POD, placed_on_gpu_pool
from tagging_platform.settings import PROCESS_ENV, Settings
from tests.conftest import REPO
from tests.deploy.test_deploy import DEPLOY, POLICIES, docs_of, grants, manifests, settings_configmap

GUIDE = REPO / "docs" / "operations.md"
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
RELEASE = "dagster"  # helm upgrade --install dagster ... (docs/operations.md)


# ---- Every pod the deployment runs, as the API server would get it ------------------------------------------------


def _dagster_k8s_pod(component: str, *configs: dict) -> dict:
    """A run or step worker's pod, built by dagster-k8s's own Job builder from the user-defined configs, in order."""
    merged = K8sContainerContext()
    for config in configs:  # as the step handler merges the executor's, the op's and the run's configs
        merged = merged.merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config)))
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="REGISTRY/tagging-platform:IMAGE_TAG",
            dagster_home="/opt/dagster/dagster_home",
            instance_config_map="dagster-instance",
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name=f"dagster-{component}",
        pod_name=f"dagster-{component}",
        component=component,
        user_defined_k8s_config=merged.run_k8s_config,
    )
    template = ApiClient().sanitize_for_serialization(job)["spec"]["template"]
    return template


def _chart_pod(component: str, labels: dict, values: dict, init_containers: bool) -> dict:
    """A pod of the Dagster chart, as its templates place the values: podSecurityContext on the pod, securityContext
    on every container (the init containers' included), volumes and mounts as given."""
    container = {
        "name": component,
        "securityContext": values.get("securityContext", {}),
        "volumeMounts": values.get("volumeMounts", []),
    }
    spec = {
        "securityContext": values.get("podSecurityContext", {}),
        "containers": [container],
        "volumes": values.get("volumes", []),
    }
    if init_containers:
        spec["initContainers"] = [{"name": "check-db-ready", "securityContext": values.get("securityContext", {})}]
    return {"metadata": {"labels": labels}, "spec": spec}


@functools.cache
def shipped_pods() -> dict[str, dict]:
    """name -> pod template ({metadata: {labels}, spec}) of every pod deploy/ and the Dagster chart start."""
    pods = {
        f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]
        for _, doc in manifests()
        if doc["kind"] == "Deployment"
    }
    chart = {"app.kubernetes.io/name": "dagster", "app.kubernetes.io/instance": RELEASE}
    pods["chart/webserver"] = _chart_pod(
        "dagster-webserver", {**chart, "component": "dagster-webserver"}, VALUES["dagsterWebserver"], True
    )
    pods["chart/daemon"] = _chart_pod(
        "dagster-daemon",
        {**chart, "component": "dagster-daemon", "deployment": "daemon"},
        VALUES["dagsterDaemon"],
        True,
    )
    for deployment in VALUES["dagster-user-deployments"]["deployments"]:
        pods[f"chart/user-deployment/{deployment['name']}"] = _chart_pod(
            deployment["name"],
            {**chart, "component": "user-deployments", "deployment": deployment["name"]},
            deployment,
            False,
        )
    run = VALUES["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    pods["run worker"] = _dagster_k8s_pod(
        "run_worker", {"pod_spec_config": run["podSpecConfig"], "container_config": run["containerConfig"]}
    )
    settings = Settings.from_env(settings_configmap())
    gpu = placed_on_gpu_pool(
        UserDefinedDagsterK8sConfig.from_dict(GPU_STEP_TAGS["dagster-k8s/config"]),
        settings.gpu_node_selector,
        settings.gpu_toleration_key,
    )
    pods["step: tag_chunk"] = _dagster_k8s_pod(
        "step_worker",
        HARDENED_STEP_POD,
        {"container_config": gpu.container_config, "pod_spec_config": gpu.pod_spec_config},
    )
    pods["step: tagger_model"] = _dagster_k8s_pod(
        "step_worker", HARDENED_STEP_POD, {"pod_spec_config": {"service_account_name": REGISTRY_SERVICE_ACCOUNT}}
    )
    pods["step: other"] = _dagster_k8s_pod("step_worker", HARDENED_STEP_POD)
    return pods


def test_tag_chunk_pods_go_to_the_gpu_pool_the_settings_name():
    from definitions import k8s_executor_config

    settings = Settings.from_env(
        {
            **settings_configmap(),
            "TP_GPU_NODE_SELECTOR": "pool.example/gpu=a10g",
            "TP_GPU_TOLERATION_KEY": "example.com/gpu",
        }
    )
    config = k8s_executor_config(settings)
    assert (config["gpu_node_selector"], config["gpu_toleration_key"]) == ("pool.example/gpu=a10g", "example.com/gpu")
    placed = placed_on_gpu_pool(
        UserDefinedDagsterK8sConfig.from_dict(GPU_STEP_TAGS["dagster-k8s/config"]),
        config["gpu_node_selector"],
        config["gpu_toleration_key"],
    )
    assert placed.pod_spec_config["node_selector"] == {"pool.example/gpu": "a10g"}
    assert placed.pod_spec_config["tolerations"] == [
        {"key": "example.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert placed.container_config["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_the_executor_starts_at_most_twice_tp_max_gpus_step_jobs_as_the_guide_says():
    from definitions import k8s_executor_config

    settings = Settings.from_env(settings_configmap())
    assert k8s_executor_config(settings)["max_concurrent"] == 2 * settings.max_gpus
    guide = " ".join(GUIDE.read_text().split())
    assert "the executor starts at most twice as many step Jobs at once" in guide


def test_the_pods_built_here_are_those_the_manifests_and_values_ship():
    pods = shipped_pods()
    assert {
        "Deployment/tagging-platform-api",
        "Deployment/pushgateway",
        "Deployment/dagster-ui-auth-proxy",
        "chart/webserver",
        "chart/daemon",
        "chart/user-deployment/tagging-platform",
        "run worker",
        "step: tag_chunk",
    } <= set(pods)
    assert pods["run worker"]["spec"]["serviceAccountName"] == "tagging-platform"
    assert pods["step: tagger_model"]["spec"]["serviceAccountName"] == REGISTRY_SERVICE_ACCOUNT
    assert pods["step: tag_chunk"]["spec"]["nodeSelector"] == {"tagging.platform/pool": "gpu"}


@pytest.mark.parametrize("name", sorted(shipped_pods()))
def test_every_pod_runs_non_root_without_capabilities_on_a_read_only_root(name):
    spec = shipped_pods()[name]["spec"]
    pod_context = spec.get("securityContext") or {}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        context = container.get("securityContext") or {}
        where = f"{name}, container {container['name']}"
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, f"{where}: may run as root"
        assert context.get("runAsUser", pod_context.get("runAsUser")) not in (0, None), f"{where}: no non-root user id"
        assert context.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem"
        assert context.get("allowPrivilegeEscalation") is False, f"{where}: may escalate privileges"
        assert context.get("capabilities") == {"drop": ["ALL"]}, f"{where}: keeps Linux capabilities"
        assert not context.get("privileged"), where
    # A read-only root needs somewhere to write: every mount names a volume of the pod.
    volumes = {v["name"] for v in spec.get("volumes", [])}
    mounts = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
    assert mounts <= volumes, f"{name}: mounts {mounts - volumes} have no volume"


# ---- Selectors: each one selects something this deployment ships -------------------------------------------------


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label selector semantics: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def selected(selector: dict) -> list[str]:
    return [name for name, pod in shipped_pods().items() if selects(selector, pod["metadata"]["labels"])]


# Pods the cluster itself runs, reached across namespaces: (namespace labels, pod labels or None for any pod).
CLUSTER_PROVIDED = [
    ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"}),  # CoreDNS on EKS
    ({"kubernetes.io/metadata.name": "monitoring"}, None),  # the cluster's Prometheus
]


def test_selectors_match_every_pod_they_mean_and_only_shipped_pods():
    assert selects({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["2"]}]}, {"a": "1"})
    for _, doc in manifests():
        name, spec = f"{doc['kind']}/{doc['metadata']['name']}", doc.get("spec", {})
        if doc["kind"] == "Deployment":
            template_labels = spec["template"]["metadata"]["labels"]
            assert selects(spec["selector"], template_labels), f"{name}: its selector misses its own pods"
            for constraint in spec["template"]["spec"].get("topologySpreadConstraints", []):
                assert selects(constraint["labelSelector"], template_labels), name
        elif doc["kind"] == "Service":
            assert selected({"matchLabels": spec["selector"]}), f"{name} selects no shipped pod"
        elif doc["kind"] == "PodDisruptionBudget":
            assert selected(spec["selector"]), f"{name} guards no shipped pod"
        elif doc["kind"] == "NetworkPolicy":
            assert selected(spec["podSelector"]), f"{name} applies to no shipped pod"
            peers = [
                p
                for rule in [*spec.get("ingress", []), *spec.get("egress", [])]
                for p in rule.get("from", rule.get("to", []))
            ]
            for peer in peers:
                if "namespaceSelector" in peer:
                    wanted = (
                        peer["namespaceSelector"]["matchLabels"],
                        (peer.get("podSelector") or {}).get("matchLabels"),
                    )
                    assert wanted in CLUSTER_PROVIDED, f"{name}: {peer} is nothing this deployment or EKS runs"
                elif "podSelector" in peer:
                    assert selected(peer["podSelector"]), f"{name}: peer {peer['podSelector']} selects no shipped pod"


def test_a_selector_for_a_label_nobody_carries_is_caught():
    assert not selected({"matchLabels": {"app.kubernetes.io/name": "tagging-api"}})
    assert not selected({"matchLabels": {"component": "dagster-dagit"}})


def test_every_ingress_and_service_points_at_a_shipped_service_port_and_pod_port():
    services = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "Service"}
    pods = shipped_pods()
    for _, ingress in [(n, d) for n, d in manifests() if d["kind"] == "Ingress"]:
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, ingress["metadata"]["name"]
                assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    for name, service in services.items():
        ports = {
            p["name"]
            for pod in selected({"matchLabels": service["spec"]["selector"]})
            for c in pods[pod]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, f"Service/{name}: no such container port"


def _prometheus_label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def scrape_targets(job: dict) -> list[str]:
    """The shipped objects a scrape job keeps, applying its `keep` relabel rules as Prometheus's discovery would."""
    [discovery] = job["kubernetes_sd_configs"]
    if discovery["role"] == "service":
        candidates = {
            f"Service/{d['metadata']['name']}": {"__meta_kubernetes_service_name": d["metadata"]["name"]}
            for _, d in manifests()
            if d["kind"] == "Service"
        }
    else:  # role pod: one target per container port, with the pod's labels
        candidates = {}
        for name, pod in shipped_pods().items():
            for container in pod["spec"]["containers"]:
                for port in container.get("ports", []):
                    meta = {
                        f"__meta_kubernetes_pod_label_{_prometheus_label(k)}": v
                        for k, v in pod["metadata"]["labels"].items()
                    }
                    meta["__meta_kubernetes_pod_container_port_name"] = port.get("name", "")
                    candidates[f"{name}:{port.get('name')}"] = meta
    kept = []
    for target, meta in candidates.items():
        rules = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
        if all(
            re.fullmatch(r["regex"], r.get("separator", ";").join(meta.get(s, "") for s in r["source_labels"]))
            for r in rules
        ):
            kept.append(target)
    return kept


def test_every_prometheus_scrape_job_keeps_the_objects_it_is_for():
    jobs = {
        j["job_name"]: j
        for j in yaml.safe_load((DEPLOY / "prometheus" / "scrape-configs.yml").read_text())["scrape_configs"]
    }
    assert scrape_targets(jobs["tagging-steps"]) == ["Service/pushgateway"]
    assert scrape_targets(jobs["tagging-api"]) == ["Deployment/tagging-platform-api:http"]
    broken = json.loads(json.dumps(jobs["tagging-api"]).replace("tagging-platform-api", "tagging-api"))
    assert scrape_targets(broken) == []  # the label the API's pods once did not carry


# ---- The run workers' Role: exactly what the code calls --------------------------------------------------------

# The run worker's step handler calls (dagster-k8s's K8sStepHandler and ours, executors.py); owner
# references are off (the executor's default), so the handler never reads its own pod.
STEP_HANDLER_METHODS = ("launch_step", "check_step_health", "terminate_step")
_VERBS = {"create": "create", "read": "get", "list": "list", "delete": "delete", "patch": "patch", "replace": "update"}


def _rbac_rule(method: str) -> tuple[str, str, str]:
    """A kubernetes client method (create_namespaced_job, read_namespaced_pod_log...) as (apiGroup, resource, verb)."""
    verb, kind = re.fullmatch(r"(create|read|list|delete|patch|replace)_namespaced_(\w+)", method).groups()
    kind, _, sub = kind.partition("_")
    group = {"job": "batch"}.get(kind, "")
    return group, f"{kind}s" + (f"/{sub}" if sub else ""), _VERBS[verb]


def _calls_in(function) -> set[str]:
    source = inspect.getsource(function)
    return set(re.findall(r"\b(?:core_api|batch_api)\.(\w+)\(", source)) | {
        f"client.{m}" for m in re.findall(r"_api_client\.(\w+)\(", source)
    }


def kubernetes_calls_of_the_run_worker() -> set[tuple[str, str, str]]:
    from dagster_k8s.client import DagsterKubernetesClient
    from dagster_k8s.executor import K8sStepHandler

    from executors import SchedulingAwareK8sStepHandler

    pending = set()
    for handler in (K8sStepHandler, SchedulingAwareK8sStepHandler):
        for method in STEP_HANDLER_METHODS:
            if method in vars(handler):
                pending |= _calls_in(vars(handler)[method])
    rules, seen = set(), set()
    while pending:
        call = pending.pop()
        if call in seen:
            continue
        seen.add(call)
        if call.startswith("client."):  # a DagsterKubernetesClient method: its own calls, and the helpers it uses
            function = getattr(DagsterKubernetesClient, call.removeprefix("client."))
            source = inspect.getsource(function)
            pending |= _calls_in(function)
            pending |= {
                f"client.{m}"
                for m in re.findall(r"\bself\.(\w+)\(", source)
                if callable(getattr(DagsterKubernetesClient, m, None))
            }
        else:
            rules.add(_rbac_rule(call))
    return rules


def role_rules() -> set[tuple[str, str, str]]:
    [role] = [d for d in docs_of("service-accounts.yaml") if d["kind"] == "Role"]
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def role_sentence(rules: set[tuple[str, str, str]]) -> str:
    """The guide's sentence about the run workers' Role, written from the Role itself."""
    words = {
        "jobs": "Jobs",
        "jobs/status": "a Job's status",
        "pods": "Pods",
        "pods/log": "a Pod's log",
        "events": "Events",
    }
    by_resource: dict[str, list[str]] = {}
    for _, resource, verb in sorted(rules, key=lambda r: (r[1], list(_VERBS.values()).index(r[2]))):
        by_resource.setdefault(resource, []).append(verb)
    parts = [f"{' and '.join(verbs)} {words.get(resource, resource)}" for resource, verbs in by_resource.items()]
    return "Run workers may " + "; ".join(parts) + " in their namespace, and nothing else"


def test_the_role_grants_exactly_what_the_run_workers_kubernetes_calls_need():
    needed = kubernetes_calls_of_the_run_worker()
    assert ("batch", "jobs", "create") in needed and ("", "pods", "list") in needed  # the scan finds the calls at all
    assert role_rules() == needed


def test_the_guide_says_what_the_role_grants_in_words_made_from_the_role():
    sentence = role_sentence(role_rules())
    guide = " ".join(GUIDE.read_text().split())
    assert sentence in guide, f"docs/operations.md should say: {sentence!r}"
    assert role_sentence(role_rules() | {("", "secrets", "get")}) not in guide


# ---- IAM: only the role whose job it is writes customers' records and the model bucket ---------------------------

WRITES = {"s3:PutObject", "s3:DeleteObject"}
# What only one role may write: customers and their key hashes (the API), the model registry (publish_model).
GUARDED = {
    "arn:aws:s3:::acme-tagging-warehouse/api/customers/acme/customer.json": "api",
    "arn:aws:s3:::acme-tagging-models/mobilenet_v2/latest.json": "registry",
    "arn:aws:s3:::acme-tagging-models/mobilenet_v2/3f0c/model.pt": "registry",
}


def writers(role_grants: dict[str, set[tuple[str, str]]], arn: str) -> set[str]:
    return {
        role
        for role, pairs in role_grants.items()
        for action, resource in pairs
        if action in WRITES and fnmatch.fnmatchcase(arn, resource)
    }


def test_no_iam_role_writes_api_records_or_models_except_the_one_whose_job_it_is():
    every = {role: grants(role) for role in POLICIES}
    for arn, owner in GUARDED.items():
        assert writers(every, arn) == {owner}, arn
    # The check sees through a wildcard: the warehouse's whole bucket would include api/.
    widened = {**every, "pipeline": every["pipeline"] | {("s3:PutObject", "arn:aws:s3:::acme-tagging-warehouse/*")}}
    assert writers(widened, next(iter(GUARDED))) == {"api", "pipeline"}


def test_each_service_account_that_assumes_an_iam_role_has_its_policy_file_and_regional_sts():
    accounts = [d for d in [*docs_of("service-accounts.yaml"), *docs_of("api.yaml")] if d["kind"] == "ServiceAccount"]
    roles = set()
    for account in accounts:
        annotations = account["metadata"]["annotations"]
        roles.add(annotations["eks.amazonaws.com/role-arn"].rsplit("/", 1)[1].removeprefix("tagging-platform-"))
        assert annotations["eks.amazonaws.com/sts-regional-endpoints"] == "true", account["metadata"]["name"]
    assert roles == set(POLICIES)
    assert REGISTRY_SERVICE_ACCOUNT in {a["metadata"]["name"] for a in accounts}


# ---- Settings and paths that deploy/ and the docs name ---------------------------------------------------------


def named_variables(text: str) -> set[str]:
    return set(re.findall(r"\bTP_[A-Z0-9_]+\b", text))


# Named in the docs for the reader's own shell, never read by the platform: the curl examples' `$TP_API_KEY`.
SHELL_ONLY = {"TP_API_KEY"}


def test_every_tp_variable_deploy_and_the_docs_name_is_a_setting_the_code_reads():
    read = set(Settings().as_env()) | SHELL_ONLY
    texts = {
        p.relative_to(REPO).as_posix(): p.read_text()
        for p in [*DEPLOY.rglob("*"), *(REPO / "docs").glob("*.md")]
        if p.is_file() and p.suffix != ".png"
    }
    unread = {f"{name}: {v}" for name, text in texts.items() for v in named_variables(text) - read}
    assert not unread, f"named but read by nothing: {sorted(unread)}"
    assert "TP_GPU_NODE_SELECTR" not in read and named_variables("set TP_GPU_NODE_SELECTR=x") - read  # a typo is caught
    # Every ConfigMap entry is a setting or a process variable the settings module sets for every process.
    assert set(settings_configmap()) <= read | set(PROCESS_ENV)
    assert {k: settings_configmap()[k] for k in PROCESS_ENV} == PROCESS_ENV


PATH = re.compile(
    r"\b(?:deploy|docs|tests|tagging_platform|assets|resources|sensors|bench|k8s_cluster)/"
    r"[A-Za-z0-9_./-]*[A-Za-z0-9_]\.(?:py|yaml|yml|json|md|dot|png|sh|txt)\b"
)


def test_every_file_path_named_in_code_docs_and_deploy_exists():
    sources = [
        REPO / "README.md",
        REPO / "Makefile",
        REPO / "definitions.py",
        *(REPO / "docs").glob("*.md"),
        *(p for p in DEPLOY.rglob("*") if p.is_file()),
        *(
            p
            for d in ("tagging_platform", "assets", "resources", "sensors", "k8s_cluster", "bench")
            for p in (REPO / d).rglob("*.py")
        ),
    ]
    named = {(src.relative_to(REPO).as_posix(), path) for src in sources for path in PATH.findall(src.read_text())}
    assert len(named) > 30
    missing = sorted(f"{src} names {path}" for src, path in named if not (REPO / path).exists())
    assert not missing, missing
    assert PATH.findall("see deploy/prometheus.yaml") == ["deploy/prometheus.yaml"]  # what the scan catches


# ---- The SQS intake, the network, the image, the chart, the database, the API's way in ----------------------------


def test_production_runs_the_sqs_intake_on_the_queues_the_policy_and_notification_name():
    data = settings_configmap()
    assert data["TP_INTAKE"] == "events"
    [queue] = json.loads((DEPLOY / "manifest-notifications.json").read_text())["QueueConfigurations"]
    assert queue["QueueArn"].rsplit(":", 1)[1] == data["TP_MANIFEST_QUEUE"]
    daemon = grants("daemon")
    for name in (data["TP_MANIFEST_QUEUE"], data["TP_MANIFEST_DEAD_LETTER_QUEUE"]):
        assert ("sqs:GetQueueUrl", f"arn:aws:sqs:us-east-1:ACCOUNT_ID:{name}") in daemon, name
    # The queues exist before the bucket notifies them: S3 refuses a notification to a queue that is not there.
    for text in (GUIDE.read_text(), (DEPLOY / "manifest-queues.md").read_text()):
        create = re.search(rf"aws sqs create-queue --queue-name {data['TP_MANIFEST_QUEUE']}(?![\w-])", text)
        assert create and create.start() < text.index("put-bucket-notification-configuration")


def test_the_network_policies_allow_no_public_address_and_reach_sts_and_s3_through_the_endpoint_subnet():
    guide = GUIDE.read_text()
    vpc = ipaddress.ip_network(re.search(r"VPC `(10\.\d+\.\d+\.\d+/\d+)`", guide).group(1))
    endpoint_subnet = re.search(r"endpoint subnets? `(10\.\d+\.\d+\.\d+/\d+)`", guide).group(1)
    blocks = [
        t["ipBlock"]["cidr"]
        for _, d in manifests()
        if d["kind"] == "NetworkPolicy"
        for rule in d["spec"].get("egress", [])
        for t in rule["to"]
        if "ipBlock" in t
    ]
    assert blocks and all(ipaddress.ip_network(b).subnet_of(vpc) for b in blocks), blocks
    assert endpoint_subnet in blocks
    [created] = re.findall(
        r"for service in ([a-z0-9. ]+); do\s+aws ec2 create-vpc-endpoint .*?"
        r"--service-name com\.amazonaws\.us-east-1\.\$service",
        guide,
        re.DOTALL,
    )
    assert {"s3", "sts", "sqs"} <= set(created.split()), f"the guide's interface endpoints: {created}"


def test_the_image_has_one_immutable_tag_set_at_install_and_the_chart_is_pinned_to_dagsters_version():
    api = next(d for d in docs_of("api.yaml") if d["kind"] == "Deployment")
    [container] = api["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "REGISTRY/tagging-platform:IMAGE_TAG"
    image = VALUES["dagster-user-deployments"]["deployments"][0]["image"]
    assert (image["repository"], image["tag"]) == ("REGISTRY/tagging-platform", "IMAGE_TAG")
    guide = GUIDE.read_text()
    assert re.search(r"docker build .*-f deploy/Dockerfile .*-t \$REGISTRY/tagging-platform:\$TAG", guide)
    assert "docker push $REGISTRY/tagging-platform:$TAG" in guide and "IMMUTABLE" in guide
    assert "s|IMAGE_TAG|$TAG|" in guide and "image.tag=$TAG" in guide
    assert "helm repo add dagster https://dagster-io.github.io/helm" in guide
    version = importlib.metadata.version("dagster")
    for text in (guide, (DEPLOY / "values.yaml").read_text()):
        assert re.findall(r"dagster/dagster --version (\S+)", text) == [version]


def test_dagster_reaches_postgresql_over_tls_with_a_password_from_a_described_secret():
    assert VALUES["postgresql"]["postgresqlParams"]["sslmode"] in ("require", "verify-ca", "verify-full")
    assert "postgresqlPassword" not in VALUES["postgresql"] and VALUES["generatePostgresqlPasswordSecret"] is False
    secret = VALUES["global"]["postgresqlSecretName"]
    guide = GUIDE.read_text()
    assert f"kubectl create secret generic {secret}" in guide and "--from-literal=postgresql-password=" in guide
    assert "kubectl create secret generic dagster-ui-auth-proxy" in guide
    proxy = next(d for d in docs_of("ui-auth-proxy.yaml") if d["kind"] == "Deployment")
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in proxy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert all(f"--from-literal={k}=" in guide for k in keys)


def test_customers_reach_the_api_over_tls_and_it_scales_on_cpu_alone():
    [ingress] = [d for d in docs_of("api.yaml") if d["kind"] == "Ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert {"HTTPS": 443} in json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"])
    assert annotations["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"].startswith("arn:aws:acm:")
    assert ingress["spec"]["tls"] and ingress["spec"]["rules"][0]["host"] in ingress["spec"]["tls"][0]["hosts"]
    [hpa] = [d for d in docs_of("api.yaml") if d["kind"] == "HorizontalPodAutoscaler"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_the_pushgateway_keeps_its_data_on_a_persistent_volume():
    docs = docs_of("pushgateway.yaml")
    [claim] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--persistence.file=/data/metrics" in args and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_the_guide_says_where_each_built_in_model_runs_as_its_card_does():
    from tagging_platform import models

    guide = " ".join(GUIDE.read_text().split())
    for name in models.BUILTIN_MODELS:
        card, _ = models.builtin_model(name)
        assert f"`{name}` is registered with `accelerator: {card.profile.accelerator}`" in guide, name


def test_the_dagster_webserver_service_name_is_the_one_the_api_and_proxy_use():
    # The chart names the webserver's Service after the release; both clients must use the same host.
    api = next(d for d in docs_of("api.yaml") if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    proxy = next(d for d in docs_of("ui-auth-proxy.yaml") if d["kind"] == "Deployment")
    upstream = next(
        a for a in proxy["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--upstream=")
    )
    assert env["TP_DAGSTER_URL"] == upstream.removeprefix("--upstream=")
    assert env["TP_DAGSTER_URL"].startswith(f"http://{RELEASE}-")
