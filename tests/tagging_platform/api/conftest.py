"""The API over real HTTP: uvicorn on a free loopback port, the session's embedded S3 server, a real Dagster webserver."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tagging_platform.api.keys import CustomerStore
from tagging_platform.dagster_client import DagsterClient
from tagging_platform.embedded import free_port
from tagging_platform.settings import Settings

STUB = Path(__file__).with_name("stub_dagster.py")
MAX_BODY = 1024 * 1024


class ApiServer:
    """uvicorn serving an app in a background thread of the test process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
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
    except Exception:
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
    return settings.replace(
        dagster_url=dagster_webserver[0], api_max_body_bytes=MAX_BODY, api_max_tag_images=3
    )


@pytest.fixture(scope="session")
def api(api_settings: Settings, model_ref):
    from tagging_platform.api.app import create_app

    with ApiServer(create_app(api_settings)) as server:
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
