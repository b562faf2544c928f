"""Fixtures for real parts: the embedded S3 server over HTTP, Dagster instances, PostgreSQL, the real model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tagging_platform import intake, models, photos, publishing
from tagging_platform.embedded import EmbeddedS3, free_port
from tagging_platform.s3 import make_client
from tagging_platform.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# The API's server fixtures, shared by tests/tagging_platform/api/ and tests/security/.
pytest_plugins = ["tests.api_fixtures"]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings pointing at the session's embedded S3 server; exported so step processes see them too."""
    overrides = {
        "TP_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "TP_MAX_CHUNK_IMAGES": "4",
        "TP_MIN_CHUNK_IMAGES": "1",
        "TP_FETCH_WORKERS": "2",
        "TP_BATCH_SIZE": "4",
        # Platforms started by tests keep the canary's schedule stopped: a half-hour tick would add a run to
        # whatever test is running then. The canary's own tests evaluate the schedule themselves.
        "TP_CANARY_ENABLED": "0",
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    yield Settings.from_env()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def embedded_s3(settings: Settings):
    port = int(settings.s3_endpoint.rsplit(":", 1)[1])
    server = EmbeddedS3(port).start(settings)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(embedded_s3, settings: Settings):
    return make_client(settings)


@pytest.fixture(scope="session")
def model_ref(s3, settings: Settings) -> models.ModelRef:
    card, artifact = models.builtin_model()
    return models.publish_model(s3, settings.model_bucket, card, artifact)


@pytest.fixture(scope="session")
def photographs() -> dict[str, bytes]:
    return dict(photos.sample_set(variants_per_photo=1))


@pytest.fixture
def upload_images(s3, settings: Settings):
    """Uploads named images under a fresh prefix and returns their URIs in order."""

    def upload(images: dict[str, bytes]) -> list[str]:
        prefix = f"test-{uuid.uuid4().hex[:8]}/"
        uris = []
        for name, data in images.items():
            s3.put_object(Bucket="images", Key=prefix + name, Body=data)
            uris.append(f"s3://images/{prefix}{name}")
        return uris

    return upload


@pytest.fixture
def instance(tmp_path):
    from dagster import DagsterInstance

    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        yield instance


def apt_install(*packages: str) -> None:
    """Install Debian packages a test needs on a fresh machine, waiting for another install to finish first."""
    wait_for_lock = ["-o", "DPkg::Lock::Timeout=900"]
    subprocess.run(["apt-get", *wait_for_lock, "update", "-q"], check=True, capture_output=True)
    installed = subprocess.run(
        ["apt-get", *wait_for_lock, "install", "-y", "-q", *packages],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    assert installed.returncode == 0, f"apt-get install {' '.join(packages)} failed:\n{installed.stderr[-2000:]}"


def record_manifest(s3, settings: Settings, partition: str, body: dict | bytes, suffix: str = ".json") -> None:
    """Upload a manifest and record its partition, as the sensor does before it requests the run."""
    key = f"{settings.manifest_prefix}{partition}{suffix}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    s3.put_object(Bucket=settings.manifest_bucket, Key=key, Body=data)
    head = s3.head_object(Bucket=settings.manifest_bucket, Key=key)
    obj = intake.ManifestObject(settings.manifest_bucket, key, head["ETag"].strip('"'), head["ContentLength"], 0.0)
    intake.record_partition(s3, settings.warehouse_bucket, partition, obj)


def read_published(s3, bucket: str, prefix: str) -> tuple[dict, list[dict]]:
    """The one completion marker under a prefix and every tag object its parts hold."""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    [marker_key] = [k for k in keys if k.endswith(publishing.MARKER_NAME)]
    marker = json.loads(s3.get_object(Bucket=bucket, Key=marker_key)["Body"].read())
    objects = [
        json.loads(line)
        for part in marker["parts"]
        for line in s3.get_object(Bucket=bucket, Key=part["key"])["Body"].read().splitlines()
    ]
    return marker, objects


@pytest.fixture
def step_environment(monkeypatch):
    """Sets environment variables for the step processes of the runs this test executes in its own process.

    Local steps fork from a server started with the first run (definitions.py, forkserver): they see the
    environment of that moment. A run worker is one process per run, so a run's steps always agree with it;
    a test process runs many jobs, so the server is restarted for the variables this test sets.
    """
    import multiprocessing.forkserver

    def set_for_steps(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        multiprocessing.forkserver._forkserver._stop()

    yield set_for_steps
    multiprocessing.forkserver._forkserver._stop()


@pytest.fixture(scope="session")
def pushgateway() -> str:
    """A Prometheus Pushgateway (Debian's) on a free loopback port."""
    if not shutil.which("prometheus-pushgateway"):
        apt_install("prometheus-pushgateway")
    port = free_port()
    server = subprocess.Popen(
        ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("the Pushgateway did not start")
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server on 127.0.0.1:5432, started (or installed from Debian's packages) if none runs."""
    import psycopg2

    def connectable() -> bool:
        try:
            psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3).close()
        except psycopg2.OperationalError:
            return False
        return True

    if not connectable():
        if not shutil.which("pg_ctlcluster"):
            apt_install("postgresql")
        version = max(os.listdir("/etc/postgresql"))
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
        deadline = time.monotonic() + 60
        while not connectable():
            if time.monotonic() > deadline:
                pytest.fail("PostgreSQL on 127.0.0.1:5432 did not start (trust auth for user postgres is expected)")
            time.sleep(1)
    return "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh database for one test, dropped afterwards."""
    import psycopg2

    name = f"tagging_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"{postgres_server}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server}/{name}"
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="session")
def definitions(settings: Settings, embedded_s3):
    from definitions import build_definitions

    return build_definitions(settings)


@pytest.fixture
def registered_instance(instance, definitions):
    """A Dagster instance in which the default model has been registered (the publish_model job ran)."""
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=instance).success
    return instance
