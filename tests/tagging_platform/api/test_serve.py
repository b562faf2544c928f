"""How the API runs: the `tagging-platform api` command over real HTTP, and the Kubernetes manifest that runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests
import yaml

from tagging_platform.embedded import free_port
from tagging_platform.settings import Settings
from tests.conftest import REPO


def test_the_command_serves_the_api_on_loopback(api_settings, keys, model_ref):
    port = free_port()
    env = {**os.environ, **api_settings.as_env(), "TP_API_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tagging_platform.cli", "api"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                response = requests.get(
                    f"http://127.0.0.1:{port}/v1/models", headers={"X-API-Key": keys["acme"]}, timeout=5
                )
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()[-3000:]
                time.sleep(0.5)
        assert response.status_code == 200
        assert "mobilenet_v2" in {m["name"] for m in response.json()["models"]}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert process.returncode in (0, -signal.SIGTERM)


def test_the_deployment_runs_that_command_safely_and_autoscales():
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all((REPO / "deploy" / "api.yaml").read_text())}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["tagging-platform", "api"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # Every TP_* variable set there is a real setting, and the values parse.
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = Settings.variable_names()
    assert {name for name in env if name.startswith("TP_")} <= fields
    settings = Settings.from_env({**{k: v for k, v in env.items() if k.startswith("TP_")}, "TP_DEPLOYMENT": "k8s"})
    assert settings.api_port == int(container["ports"][0]["containerPort"]) == 8080
    service_port = docs["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == container["ports"][0]["name"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert 1 < hpa["minReplicas"] < hpa["maxReplicas"]
