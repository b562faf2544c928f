"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (v1.20.2, built once from Debian's source package by build.sh) and the node simulator.

Everything listens on 127.0.0.1 only. State (certificates, tokens, etcd data, logs, pids, kubeconfig) lives
in one directory, by default ~/.cache/tagging-platform/cluster; `up` starts from an empty etcd every time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "v1.20.2"
CACHE = Path(os.environ.get("TP_K8S_CACHE", Path.home() / ".cache" / "tagging-platform"))
BIN = CACHE / f"kubernetes-{K8S_VERSION}" / "bin"
STATE = Path(os.environ.get("TP_K8S_STATE", CACHE / "cluster"))
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
KUBELET_PORT = 10250
ADMIN_TOKEN = "tagging-platform-admin-token"
# Order matters: stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-simulator")
NODES = {
    # The pool every non-GPU pod (run workers, plan/merge/publish steps) lands on.
    "tp-cpu-node": {"labels": {"tagging.platform/pool": "cpu"}, "gpus": 0, "taints": []},
    # The GPU pool: labelled for the tag_chunk node selector, tainted so only pods tolerating it land here.
    "tp-gpu-node": {
        "labels": {"tagging.platform/pool": "gpu", "node.kubernetes.io/instance-type": "g5.xlarge"},
        "gpus": 2,
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    },
}


@dataclass
class Cluster:
    state: Path = STATE

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{APISERVER_PORT}"

    def pid_file(self, component: str) -> Path:
        return self.state / "pids" / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.state / "logs" / f"{component}.log"


def ensure_built(quiet: bool = False) -> Path:
    """The three control-plane binaries, built from Debian's source package on first use (about 7 minutes)."""
    binaries = [BIN / b for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    if all(b.exists() for b in binaries) and shutil.which("etcd"):
        return BIN
    start = time.monotonic()
    print(f"building Kubernetes {K8S_VERSION} control plane into {BIN} (once per machine, ~7 min)", file=sys.stderr)
    subprocess.run(["bash", str(HERE / "build.sh")], check=True, stdout=None if not quiet else subprocess.DEVNULL)
    if not shutil.which("etcd"):
        raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
    print(f"built in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return BIN


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _pid(cluster: Cluster, component: str) -> int | None:
    try:
        pid = int(cluster.pid_file(component).read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _get(url: str, token: str = ADMIN_TOKEN, timeout: float = 2.0) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def is_running(cluster: Cluster | None = None) -> bool:
    cluster = cluster or Cluster()
    if not cluster.kubeconfig.exists() or any(_pid(cluster, c) is None for c in COMPONENTS):
        return False
    try:
        return _get(f"{cluster.server}/readyz")[0] == 200
    except OSError:
        return False


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _write_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists():
        return
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=tagging-platform-test-ca",
        cwd=pki,
    )
    (pki / "apiserver.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    )
    for name, cn in (("apiserver", "kube-apiserver"), ("kubelet", "tp-node-simulator")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
            cwd=pki,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "3650",
            "-extfile",
            "apiserver.ext",
            cwd=pki,
        )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, token: str, ca_file: Path, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tp", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "tp", "user": {"token": token}}],
        "contexts": [{"name": "tp", "context": {"cluster": "tp", "user": "tp", "namespace": namespace}}],
        "current-context": "tp",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def _start(cluster: Cluster, component: str, argv: list[str], env: dict | None = None) -> None:
    log = cluster.log_file(component).open("ab")
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env or os.environ.copy(),
        cwd=cluster.state,
    )
    cluster.pid_file(component).write_text(str(process.pid))


def _wait(what: str, condition, timeout_s: float, cluster: Cluster, component: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        if _pid(cluster, component) is None:
            tail = cluster.log_file(component).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{component} exited while waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            tail = cluster.log_file(component).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}:\n{tail}")
        time.sleep(0.2)


def up(cluster: Cluster | None = None, python: str | None = None) -> Cluster:
    """Start a fresh cluster (building the binaries first if needed); returns once both nodes are Ready."""
    cluster = cluster or Cluster()
    if is_running(cluster):
        return cluster
    down(cluster)
    binaries = ensure_built()
    start = time.monotonic()
    for sub in ("pids", "logs"):
        (cluster.state / sub).mkdir(parents=True, exist_ok=True)
    for old in (cluster.state / "logs").glob("*.log"):
        old.unlink()
    shutil.rmtree(cluster.state / "etcd", ignore_errors=True)
    shutil.rmtree(cluster.state / "pods", ignore_errors=True)
    pki = cluster.state / "pki"
    _write_pki(pki)
    (cluster.state / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
    kubeconfig = write_kubeconfig(cluster.kubeconfig, cluster.server, ADMIN_TOKEN, pki / "ca.crt")

    _start(
        cluster,
        "etcd",
        [
            "etcd",
            "--name=tp",
            f"--data-dir={cluster.state / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{ETCD_PORT}",
            f"--advertise-client-urls=http://127.0.0.1:{ETCD_PORT}",
            f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
            f"--initial-cluster=tp=http://127.0.0.1:{ETCD_PEER_PORT}",
            "--quota-backend-bytes=1073741824",
            "--log-level=warn",
        ],
    )
    _wait(
        "etcd",
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{ETCD_PORT}/health", timeout=1).status == 200,
        30,
        cluster,
        "etcd",
    )
    _start(
        cluster,
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={APISERVER_PORT}",
            "--insecure-port=0",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={cluster.state / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--feature-gates=TTLAfterFinished=true",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'kubelet.crt'}",
            f"--kubelet-client-key={pki / 'kubelet.key'}",
            "--allow-privileged=true",
            "--v=1",
        ],
    )
    _wait("kube-apiserver /readyz", lambda: _get(f"{cluster.server}/readyz")[0] == 200, 90, cluster, "kube-apiserver")
    _start(
        cluster,
        "kube-controller-manager",
        [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--feature-gates=TTLAfterFinished=true",
            "--leader-elect=false",
            "--port=0",
            "--bind-address=127.0.0.1",
            "--secure-port=10257",
            "--v=1",
        ],
    )
    _start(
        cluster,
        "kube-scheduler",
        [
            str(binaries / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--port=0",
            "--bind-address=127.0.0.1",
            "--secure-port=10259",
            "--v=1",
        ],
    )
    python = python or sys.executable
    venv_bin = str(Path(python).parent)
    _start(
        cluster,
        "node-simulator",
        [
            python,
            "-m",
            "k8s_cluster.node_simulator",
            f"--kubeconfig={kubeconfig}",
            f"--state={cluster.state}",
            f"--workdir={REPO}",
            f"--path-prefix={venv_bin}",
            f"--tls-cert={pki / 'kubelet.crt'}",
            f"--tls-key={pki / 'kubelet.key'}",
            f"--port={KUBELET_PORT}",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    def ready() -> bool:
        status, body = _get(f"{cluster.server}/api/v1/nodes")
        nodes = json.loads(body).get("items", []) if status == 200 else []
        ready_nodes = {
            n["metadata"]["name"]
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
            and not any(t["key"].startswith("node.kubernetes.io/") for t in n.get("spec", {}).get("taints", []))
        }
        status, body = _get(f"{cluster.server}/api/v1/namespaces/default/serviceaccounts/default")
        return ready_nodes == set(NODES) and status == 200

    _wait("Ready nodes and the default ServiceAccount", ready, 90, cluster, "node-simulator")
    for component in COMPONENTS:
        if _pid(cluster, component) is None:
            raise RuntimeError(f"{component} is not running: {cluster.log_file(component).read_text()[-3000:]}")
    (cluster.state / "started.json").write_text(json.dumps({"seconds": round(time.monotonic() - start, 1)}))
    return cluster


def down(cluster: Cluster | None = None) -> None:
    """Stop every component this state directory started (by pid, never by name)."""
    cluster = cluster or Cluster()
    for component in reversed(COMPONENTS):
        pid = _pid(cluster, component)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        cluster.pid_file(component).unlink(missing_ok=True)


def memory_mib(cluster: Cluster | None = None) -> dict[str, float]:
    """Resident memory of each running component (MiB)."""
    cluster = cluster or Cluster()
    sizes = {}
    for component in COMPONENTS:
        pid = _pid(cluster, component)
        if pid is None:
            continue
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes[component] = int(line.split()[1]) / 1024
    return sizes
