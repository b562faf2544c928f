"""Fixtures of the API over real HTTP (uvicorn on a free loopback port, the session's embedded S3 server, a real Dagster
webserver), shared by tests/tagging_platform/api/ and tests/security/: one webserver and one server per session."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Self

import pytest
import requests

from tagging_platform.api.keys import CustomerStore
from tagging_platform.dagster_client import DagsterClient, DagsterError
from tagging_platform.embedded import free_port
from tagging_platform.settings import Settings

STUB = Path(__file__).resolve().parent / "tagging_platform" / "api" / "stub_dagster.py"
MAX_BODY = 1024 * 1024


class ApiServer:
    """uvicorn serving an app in a background thread of the test process."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @classmethod
    def serving(cls, settings: Settings) -> ApiServer:
        """The API of these settings, its public URL (the links it returns) being where this server listens."""
        from tagging_platform.api.app import create_app

        port = free_port()
        return cls(create_app(settings.replace(api_public_url=f"http://127.0.0.1:{port}")), port)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def dagster_webserver(tmp_path_factory):
    """`dagster-webserver` on a free port over a fresh instance, loading the stand-in job; yields (url, home)."""
    home = tmp_path_factory.mktemp("api-dagster-home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    log = (home / "webserver.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-f", str(STUB)],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        cwd=STUB.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        DagsterClient(url).wait_until_up(120)
    except DagsterError:
        process.kill()
        raise RuntimeError((home / "webserver.log").read_text()[-3000:]) from None
    yield url, home
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def api_settings(settings: Settings, embedded_s3, dagster_webserver) -> Settings:
    # The per-customer limits are off here: many tests submit as acme, and test_limits.py has servers of its own.
    return settings.replace(
        dagster_url=dagster_webserver[0],
        api_max_body_bytes=MAX_BODY,
        api_max_tag_images=3,
        api_max_active_batches=0,
        api_tag_rate_per_s=0,
        # The stand-in job's runs are the tests' own (run_stub): the API launches none of its own here.
        api_launch_runs=False,
    )


@pytest.fixture(scope="session")
def api(api_settings: Settings, model_ref):
    with ApiServer.serving(api_settings) as server:
        yield server


@pytest.fixture(scope="session")
def keys(api_settings: Settings, s3) -> dict[str, str]:
    """API keys of two customers: acme (outputs under s3://tags/acme/) and globex (s3://tags/globex/)."""
    store = CustomerStore(s3, api_settings)
    return {name: store.create(name, rotate=True)[0] for name in ("acme", "globex")}


@pytest.fixture
def http(api, keys):
    """requests against the server, as acme unless told otherwise: http("POST", "/v1/...", as_="globex", ...)."""

    def call(method: str, path: str, as_: str | None = "acme", **kwargs) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if as_:
            headers.setdefault("Authorization", f"Bearer {keys[as_]}")
        return requests.request(method, api.url + path, headers=headers, timeout=120, **kwargs)

    return call


@pytest.fixture
def customer_images(s3):
    """Uploads named images into a customer's own folder (acme's unless told), s3://images/<customer>/test-.../."""

    def upload(images: dict[str, bytes], customer: str = "acme") -> list[str]:
        prefix = f"{customer}/test-{uuid.uuid4().hex[:8]}/"
        for name, data in images.items():
            s3.put_object(Bucket="images", Key=prefix + name, Body=data)
        return [f"s3://images/{prefix}{name}" for name in images]

    return upload


@pytest.fixture
def run_stub(dagster_webserver):
    """Runs the stand-in tag_manifest job for a batch (its partition) in the webserver's instance; returns the run id."""
    import dagster as dg

    from tests.tagging_platform.api import stub_dagster

    _, home = dagster_webserver
    instance = dg.DagsterInstance.from_config(str(home))

    def run(batch_id: str, fail_with: str = "") -> str:
        instance.add_dynamic_partitions("manifests", [batch_id])
        result = stub_dagster.defs.resolve_job_def("tag_manifest").execute_in_process(
            instance=instance,
            partition_key=batch_id,
            run_config={"ops": {"image_tags": {"config": {"fail_with": fail_with}}}},
            raise_on_error=False,
        )
        return result.run_id

    yield run
    instance.dispose()
