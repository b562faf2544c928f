"""The local deployment as one object: the embedded S3 server plus `dagster dev` (webserver and daemon)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from tagging_platform.dagster_client import DagsterClient
from tagging_platform.embedded import EmbeddedS3, free_port
from tagging_platform.s3 import make_client
from tagging_platform.settings import PROCESS_ENV, Settings

_INSTANCE_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # A queued run starts within a second, not the default five: most local batches take under a minute.
    dequeue_interval_seconds: 1
concurrency:
  runs:
    max_concurrent_runs: 2
    # One run per batch at a time: a manifest changed while its run is in progress queues its new run behind
    # it, so the older version's run completes on what it read and the newest version's run lands last.
    tag_concurrency_limits:
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      # At most TP_RUNS_PER_CUSTOMER runs of one customer's batches at a time (run tag tagging/customer,
      # tagging_platform/intake.py): a customer's burst queues behind its own runs while others' start.
      - key: tagging/customer
        value:
          applyLimitPerUniqueValue: true
        limit: {runs_per_customer}
  # One GPU budget for all batches: every tag_chunk step takes a slot of the "gpu" pool (assets/tagging.py),
  # the only pool, whose limit is TP_MAX_GPUS; a step that finds none free waits for one.
  pools:
    default_limit: {max_gpus}
    granularity: op
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
# A run that failed around its steps' own retries is retried from the failure, e.g. when Dagster's storage
# dropped the connection that recorded a step's end (the step then counts as failed): the retry skips every
# chunk already written. A rejected manifest marks its run as not worth retrying (assets/intake.py).
run_retries:
  enabled: true
  max_retries: 2
"""

_POSTGRES_YAML = """\
storage:
  postgres:
    postgres_url: "{url}"
"""


def instance_yaml(settings: Settings, postgres_url: str | None = None) -> str:
    """The local Dagster instance's dagster.yaml: run queue (per-customer limit TP_RUNS_PER_CUSTOMER), GPU pool sized
    from TP_MAX_GPUS, storage."""
    text = _INSTANCE_YAML.format(max_gpus=settings.max_gpus, runs_per_customer=settings.runs_per_customer)
    if postgres_url:
        # SQLAlchemy reads a bare postgresql:// as psycopg 3; dagster-postgres ships psycopg2.
        text += _POSTGRES_YAML.format(url=postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    return text


class LocalPlatform:
    """Starts everything a local run needs on loopback, and stops it all on exit.

    `settings_overrides` are TP_* settings for every process (the daemon, the code server, the
    step processes); `postgres_url` puts Dagster's storage on PostgreSQL instead of SQLite.
    """

    def __init__(
        self,
        workspace: Path,
        *,
        s3_port: int | None = None,
        ui_port: int | None = None,
        dagster_home: Path | None = None,
        postgres_url: str | None = None,
        settings_overrides: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.workspace = workspace.resolve()
        self.s3_port = s3_port or free_port()
        self.ui_port = ui_port or free_port()
        self.dagster_home = dagster_home or Path(tempfile.mkdtemp(prefix="tagging-platform-"))
        self.postgres_url = postgres_url
        endpoint = {"TP_S3_ENDPOINT": f"http://127.0.0.1:{self.s3_port}"}
        self.settings = Settings.from_env({**os.environ, **(settings_overrides or {}), **endpoint})
        self.log_path = log_path or self.dagster_home / "dagster.log"
        self.ui_url = f"http://127.0.0.1:{self.ui_port}"
        self.dagster = DagsterClient(self.ui_url)
        self._s3: EmbeddedS3 | None = None
        self._process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **PROCESS_ENV, **self.settings.as_env(), "DAGSTER_HOME": str(self.dagster_home)}

    def s3(self):
        return make_client(self.settings)

    def start(self, timeout_s: float = 180) -> LocalPlatform:
        self._s3 = EmbeddedS3(self.s3_port).start(self.settings)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(instance_yaml(self.settings, self.postgres_url))
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(self.workspace),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.ui_port),
            ],
            cwd=self.workspace.parent,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not self.dagster.is_up():
            if self._process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self._process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dagster dev did not answer within {timeout_s:.0f} s; see {self.log_path}")
            time.sleep(1)
        return self

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        if self._s3:
            self._s3.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def wait_for_run(self, partition: str, timeout_s: float, poll_s: float = 2.0, on_wait=None) -> dict:
        """The partition's tag_manifest run, once it has finished."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            runs = self.dagster.runs(job="tag_manifest", tags={"dagster/partition": partition})
            finished = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            if finished:
                return finished[0]
            if on_wait:
                on_wait(runs)
            time.sleep(poll_s)
        raise TimeoutError(f"no finished run for partition {partition!r} within {timeout_s:.0f} s; see {self.log_path}")
