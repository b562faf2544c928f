"""A kubelet stand-in for the test cluster: registers Ready nodes (one tainted GPU node with `nvidia.com/gpu`
capacity, one CPU node), runs every pod bound to them as a local process, and reports its status.

For each pod the real scheduler binds to one of our nodes, the first container's command + args run as a
local process (the pod's image is ignored: the local virtual environment plays the image), with the pod's
env (plain values, fieldRef, ConfigMap and Secret references, envFrom) and working directory. Its phase goes
Running, then Succeeded or Failed with the exit code in the container status, as a kubelet reports it. The
container's output is served over HTTPS on 127.0.0.1:10250 (`/containerLogs/<ns>/<pod>/<container>`), which
is where kube-apiserver proxies `kubectl logs` / `read_namespaced_pod_log`. Deleting a pod stops its process
(SIGTERM, SIGKILL after the grace period); the annotation `sim.tagging.platform/kill: OOMKilled` kills the
container at once with SIGKILL, as the kernel's OOM killer would, so tests can fail a pod mid-step.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.server
import logging
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import kubernetes
from kubernetes import watch
from kubernetes.client.rest import ApiException

from k8s_cluster.cluster import NODES

KILL_ANNOTATION = "sim.tagging.platform/kill"
log = logging.getLogger("node-simulator")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodProcess:
    def __init__(self, process: subprocess.Popen, container: str, started_at: str):
        self.process = process
        self.container = container
        self.started_at = started_at
        self.kill_reason: str | None = None
        self.deleted = False


class NodeSimulator:
    def __init__(self, kubeconfig: str, state: Path, workdir: str, path_prefix: str):
        self.api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=kubeconfig))
        self.logs = state / "pods"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.path_prefix = path_prefix
        self.running: dict[str, PodProcess] = {}  # pod uid -> process
        self.seen: set[str] = set()  # uids started (or failed to start)
        self.lock = threading.Lock()

    # Nodes -----------------------------------------------------------------------------------------------
    def register_nodes(self, port: int) -> None:
        for name, spec in NODES.items():
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        **spec["labels"],
                    },
                },
            }
            try:
                self.api.create_node(body)
            except ApiException as error:
                if error.status != 409:
                    raise
            capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
            if spec["gpus"]:
                capacity["nvidia.com/gpu"] = str(spec["gpus"])
            self.api.patch_node_status(
                name,
                {
                    "status": {
                        "capacity": capacity,
                        "allocatable": capacity,
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "message": "node simulator ready",
                                "lastHeartbeatTime": _now(),
                                "lastTransitionTime": _now(),
                            },
                            *(
                                {
                                    "type": t,
                                    "status": "False",
                                    "reason": "KubeletHasSufficient",
                                    "lastHeartbeatTime": _now(),
                                    "lastTransitionTime": _now(),
                                }
                                for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
                            ),
                        ],
                        "addresses": [
                            {"type": "InternalIP", "address": "127.0.0.1"},
                            {"type": "Hostname", "address": name},
                        ],
                        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                        "nodeInfo": {
                            "machineID": name,
                            "systemUUID": name,
                            "bootID": name,
                            "kernelVersion": os.uname().release,
                            "osImage": "tagging-platform node simulator",
                            "containerRuntimeVersion": "local://1.0",
                            "kubeletVersion": "v1.20.2",
                            "kubeProxyVersion": "v1.20.2",
                            "operatingSystem": "linux",
                            "architecture": "amd64",
                        },
                    }
                },
            )
            # Admission adds node.kubernetes.io/not-ready at creation; without a node lifecycle controller
            # nobody would lift it, so the "kubelet" sets the taints it wants itself.
            node = self.api.read_node(name)
            node.spec.taints = [kubernetes.client.V1Taint(**t) for t in spec["taints"]] or None
            self.api.replace_node(name, node)

    # Pods ------------------------------------------------------------------------------------------------
    def _env(self, pod) -> dict[str, str]:
        namespace = pod.metadata.namespace
        container = pod.spec.containers[0]
        env = {
            "PATH": f"{self.path_prefix}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "HOSTNAME": pod.metadata.name,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": "6443",
        }
        for source in container.env_from or []:
            if source.config_map_ref:
                data = self._config_map(namespace, source.config_map_ref.name, source.config_map_ref.optional)
            else:
                data = self._secret(namespace, source.secret_ref.name, source.secret_ref.optional)
            env.update({(source.prefix or "") + k: v for k, v in data.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from
            if ref.field_ref:
                env[var.name] = {
                    "metadata.name": pod.metadata.name,
                    "metadata.namespace": namespace,
                    "metadata.uid": pod.metadata.uid,
                    "spec.nodeName": pod.spec.node_name,
                    "spec.serviceAccountName": pod.spec.service_account_name or "default",
                    "status.podIP": "127.0.0.1",
                    "status.hostIP": "127.0.0.1",
                }.get(ref.field_ref.field_path, "")
            elif ref.config_map_key_ref:
                data = self._config_map(namespace, ref.config_map_key_ref.name, ref.config_map_key_ref.optional)
                if ref.config_map_key_ref.key in data:
                    env[var.name] = data[ref.config_map_key_ref.key]
            elif ref.secret_key_ref:
                data = self._secret(namespace, ref.secret_key_ref.name, ref.secret_key_ref.optional)
                if ref.secret_key_ref.key in data:
                    env[var.name] = data[ref.secret_key_ref.key]
        return env

    def _config_map(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            return self.api.read_namespaced_config_map(name, namespace).data or {}
        except ApiException:
            if optional:
                return {}
            raise

    def _secret(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            data = self.api.read_namespaced_secret(name, namespace).data or {}
        except ApiException:
            if optional:
                return {}
            raise
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.logs / f"{namespace}_{pod}_{container}.log"

    def start(self, pod) -> None:
        uid = pod.metadata.uid
        with self.lock:
            if uid in self.seen:
                return
            self.seen.add(uid)
        container = pod.spec.containers[0]
        argv = [*(container.command or []), *(container.args or [])]
        started_at = _now()
        log_file = self.log_path(pod.metadata.namespace, pod.metadata.name, container.name).open("ab")
        try:
            env = self._env(pod)
            cwd = (
                container.working_dir
                if container.working_dir and os.path.isdir(container.working_dir)
                else self.workdir
            )
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except Exception as error:  # noqa: BLE001 - reported as the container's failure, like a runtime would
            log_file.write(f"failed to start container: {error}\n".encode())
            log_file.close()
            self._report_terminated(pod, container.name, started_at, 128, "ContainerCannotRun", str(error))
            return
        log_file.close()
        entry = PodProcess(process, container.name, started_at)
        with self.lock:
            self.running[uid] = entry
        log.info("started %s/%s pid %s: %s", pod.metadata.namespace, pod.metadata.name, process.pid, argv[:4])
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": started_at,
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": started_at}
                    for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
                ],
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": f"local://{container.image}",
                        "containerID": f"local://{process.pid}",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": started_at}},
                    }
                ],
            },
        )
        threading.Thread(target=self._wait, args=(pod, entry), daemon=True).start()

    def _wait(self, pod, entry: PodProcess) -> None:
        code = entry.process.wait()
        with self.lock:
            self.running.pop(pod.metadata.uid, None)
        if entry.deleted:
            return
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a container runtime reports
        reason = entry.kill_reason or ("Completed" if exit_code == 0 else "Error")
        log.info("%s/%s exited %s (%s)", pod.metadata.namespace, pod.metadata.name, exit_code, reason)
        self._report_terminated(pod, entry.container, entry.started_at, exit_code, reason, None)

    def _report_terminated(self, pod, container: str, started_at: str, exit_code: int, reason: str, message) -> None:
        finished = _now()
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": finished,
            "containerID": f"local://{pod.metadata.uid}",
        }
        if message:
            terminated["message"] = message
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "conditions": [
                    {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished}
                    for t in ("Ready", "ContainersReady")
                ],
                "containerStatuses": [
                    {
                        "name": container,
                        "image": pod.spec.containers[0].image,
                        "imageID": f"local://{pod.spec.containers[0].image}",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            },
        )

    def _patch_status(self, pod, status: dict) -> None:
        try:
            self.api.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
        except ApiException as error:
            if error.status != 404:
                log.warning("status of %s: %s", pod.metadata.name, error.reason)

    def stop(self, pod, grace_s: float, reason: str | None = None, delete: bool = True) -> None:
        with self.lock:
            entry = self.running.get(pod.metadata.uid)
        if entry is not None:
            if delete:
                entry.deleted = True
            entry.kill_reason = reason
            pgid = entry.process.pid
            try:
                if grace_s <= 0:
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    os.killpg(pgid, signal.SIGTERM)
                    try:
                        entry.process.wait(timeout=grace_s)
                    except subprocess.TimeoutExpired:
                        os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if delete:
            try:
                self.api.delete_namespaced_pod(
                    pod.metadata.name,
                    pod.metadata.namespace,
                    grace_period_seconds=0,
                    body=kubernetes.client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions={"uid": pod.metadata.uid}
                    ),
                )
            except ApiException as error:
                if error.status not in (404, 409):
                    log.warning("delete %s: %s", pod.metadata.name, error.reason)

    def handle(self, event_type: str, pod) -> None:
        if pod.spec.node_name not in NODES:
            return
        uid = pod.metadata.uid
        if event_type == "DELETED":
            with self.lock:
                entry = self.running.get(uid)
            if entry is not None:
                entry.deleted = True
                threading.Thread(target=self.stop, args=(pod, 0, None, False), daemon=True).start()
            return
        if pod.metadata.deletion_timestamp is not None:
            grace = pod.metadata.deletion_grace_period_seconds or 0
            threading.Thread(target=self.stop, args=(pod, grace), daemon=True).start()
            return
        kill = (pod.metadata.annotations or {}).get(KILL_ANNOTATION)
        if kill:
            with self.lock:
                entry = self.running.get(uid)
            if entry is not None and entry.kill_reason is None:
                log.info("killing %s/%s (%s)", pod.metadata.namespace, pod.metadata.name, kill)
                self.stop(pod, 0, reason=kill, delete=False)
            return
        if pod.status.phase == "Pending":
            threading.Thread(target=self.start, args=(pod,), daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                pods = self.api.list_pod_for_all_namespaces()
                for pod in pods.items:
                    self.handle("ADDED", pod)
                stream = watch.Watch().stream(
                    self.api.list_pod_for_all_namespaces,
                    resource_version=pods.metadata.resource_version,
                    timeout_seconds=300,
                )
                for event in stream:
                    self.handle(event["type"], event["object"])
            except ApiException as error:
                if error.status != 410:
                    log.warning("watch: %s", error)
                    time.sleep(1)
            except Exception:
                log.exception("watch failed")
                time.sleep(1)

    def shutdown(self, *_):
        with self.lock:
            entries = list(self.running.values())
        for entry in entries:
            entry.deleted = True
            try:
                os.killpg(entry.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)


def serve_logs(simulator: NodeSimulator, port: int, cert: str, key: str) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404)
                return
            path = simulator.log_path(parts[1], parts[2], parts[3])
            if not path.exists():
                self.send_error(404, f"no logs for {parts[1]}/{parts[2]}/{parts[3]}")
                return
            data = path.read_bytes()
            query = urllib.parse.parse_qs(url.query)
            if "tailLines" in query:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-int(query["tailLines"][0]) :]) if int(query["tailLines"][0]) else b""
            if "limitBytes" in query:
                data = data[: int(query["limitBytes"][0])]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--path-prefix", required=True, help="PATH entries put first: the 'image' (a venv's bin)")
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--port", type=int, default=10250)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    simulator = NodeSimulator(args.kubeconfig, args.state, args.workdir, args.path_prefix)
    signal.signal(signal.SIGTERM, simulator.shutdown)
    signal.signal(signal.SIGINT, simulator.shutdown)
    serve_logs(simulator, args.port, args.tls_cert, args.tls_key)
    simulator.register_nodes(args.port)
    log.info("nodes %s ready", ", ".join(NODES))
    simulator.run()


if __name__ == "__main__":
    main()
