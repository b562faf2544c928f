"""The fault matrix's platform: embedded S3 behind a fault-injecting proxy, a code server, webserver and daemon
as separate processes on PostgreSQL storage, and the bookkeeping that says whether every image landed once."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pyarrow.parquet as pq
import pytest

from tagging_platform import local, photos, publishing
from tagging_platform.dagster_client import DagsterClient
from tagging_platform.embedded import EmbeddedS3, free_port
from tagging_platform.s3 import make_client
from tagging_platform.settings import PROCESS_ENV, Settings
from tests.conftest import REPO
from tests.faults.s3_proxy import S3FaultProxy

RESULTS = REPO / "bench" / "results" / "faults.json"
# Four photographs in chunks of two: every fault meets a run with several tag_chunk steps.
IMAGES_PER_MANIFEST = 4
CHUNK_IMAGES = 2
CHECKPOINT_IMAGES = 1
RUN_TIMEOUT_S = 420


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.5):
    """The condition's first truthy value, or a test failure naming what never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


class FaultPlatform:
    """The local platform taken apart so each piece can fail on its own: moto's server, the proxy every
    platform process talks to (TP_S3_ENDPOINT), a gRPC code server that owns the run workers (as a user
    code deployment does in the Helm chart), and the webserver and daemon, each restartable."""

    def __init__(self, home: Path, postgres_url: str) -> None:
        self.home = home
        self.postgres_url = postgres_url
        self.s3_port = free_port()
        self.code_port = free_port()
        self.ui_port = free_port()
        self.proxy = S3FaultProxy(self.s3_port)
        overrides = {
            "TP_S3_ENDPOINT": self.proxy.endpoint,
            "TP_MAX_CHUNK_IMAGES": str(CHUNK_IMAGES),
            "TP_MIN_CHUNK_IMAGES": "1",
            # A row per image and a checkpoint per row: a step killed mid-chunk has committed what it tagged.
            "TP_BATCH_SIZE": "1",
            "TP_CHECKPOINT_IMAGES": str(CHECKPOINT_IMAGES),
            "TP_FETCH_WORKERS": "2",
            "TP_SENSOR_INTERVAL_S": "2",
            "TP_METRICS_PUSHGATEWAY": "",
        }
        # What the platform's processes use: every S3 request goes through the proxy.
        self.settings = Settings.from_env({**os.environ, **overrides})
        # What the test uses to upload and to check: straight to the server, never faulted.
        self.direct = Settings.from_env(
            {**os.environ, **overrides, "TP_S3_ENDPOINT": f"http://127.0.0.1:{self.s3_port}"}
        )
        self.dagster = DagsterClient(f"http://127.0.0.1:{self.ui_port}")
        self.processes: dict[str, subprocess.Popen] = {}
        self._s3_server: EmbeddedS3 | None = None
        self.instance = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **PROCESS_ENV, **self.settings.as_env(), "DAGSTER_HOME": str(self.home)}

    def s3(self):
        return make_client(self.direct)

    def start(self) -> FaultPlatform:
        self._s3_server = EmbeddedS3(self.s3_port).start(self.direct)
        self.proxy.start()
        # The local deployment's own instance settings (run queue, per-batch run limit, GPU pool, run monitoring).
        (self.home / "dagster.yaml").write_text(local.instance_yaml(self.settings, self.postgres_url))
        (self.home / "workspace.yaml").write_text(
            f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {self.code_port}\n"
            "      location_name: tagging\n"
        )
        import dagster as dg

        self.instance = dg.DagsterInstance.from_config(str(self.home))
        from definitions import build_definitions

        # The default model, registered before any manifest arrives (what the model registry sensor does first).
        assert (
            build_definitions(self.settings)
            .resolve_job_def("publish_model")
            .execute_in_process(instance=self.instance)
            .success
        )
        bin_dir = Path(sys.executable).parent
        self._spawn(
            "code_server",
            [
                str(bin_dir / "dagster"),
                "api",
                "grpc",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.code_port),
                "-f",
                str(REPO / "definitions.py"),
                "-d",
                str(REPO),
                "--location-name",
                "tagging",
            ],
        )
        self.start_webserver()
        self.start_daemon()
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.home / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start_webserver(self) -> None:
        self._spawn(
            "webserver",
            [
                str(Path(sys.executable).parent / "dagster-webserver"),
                "-w",
                str(self.home / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.ui_port),
            ],
        )
        wait_for(self.dagster.is_up, 240, "the Dagster webserver", poll_s=1)

    def start_daemon(self) -> None:
        self._spawn(
            "daemon",
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(self.home / "workspace.yaml")],
        )

    def stop_process(self, name: str) -> None:
        """Stop one of the processes this platform started (its whole process group), and wait for it."""
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop(self) -> None:
        self.proxy.release_all()
        for name in ("daemon", "webserver", "code_server"):
            if name in self.processes:
                self.stop_process(name)
        self.proxy.stop()
        if self.instance is not None:
            self.instance.dispose()
        if self._s3_server:
            self._s3_server.stop()

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}" for path in sorted(self.home.glob("*.log"))
        )

    # --- manifests and runs ----------------------------------------------------------------------------

    def upload_images(self, images: dict[str, bytes]) -> list[str]:
        """Upload the photographs as images never seen before: bytes after the JPEG's end marker (which
        decoders ignore) give each a new ETag, so no earlier batch's tags are reused and every image is
        fetched and tagged while the fault is on."""
        client, prefix = self.s3(), f"faults-{uuid.uuid4().hex[:8]}/"
        for name, data in images.items():
            client.put_object(Bucket="images", Key=prefix + name, Body=data + prefix.encode())
        return [f"s3://images/{prefix}{name}" for name in images]

    def submit(self, partition: str, uris: list[str]) -> str:
        """Drop a manifest into the manifest bucket, as a customer does; the sensor takes it from there."""
        key = f"{self.settings.manifest_prefix}{partition}.json"
        body = json.dumps({"id": partition, "images": uris}).encode()
        self.s3().put_object(Bucket=self.settings.manifest_bucket, Key=key, Body=body)
        return key

    def runs(self, partition: str) -> list:
        import dagster as dg

        return self.instance.get_runs(
            filters=dg.RunsFilter(job_name="tag_manifest", tags={"dagster/partition": partition})
        )

    def wait_for_finished_runs(self, partition: str, count: int = 1, timeout_s: float = RUN_TIMEOUT_S) -> list:
        def finished():
            runs = self.runs(partition)
            done = [r for r in runs if r.is_finished]
            return runs if len(done) >= count and len(done) == len(runs) else None

        try:
            return wait_for(finished, timeout_s, f"{count} finished run(s) of {partition}", poll_s=2)
        except BaseException:
            print(self.log_tail())
            raise

    def wait_for_success(self, partition: str, timeout_s: float = 2 * RUN_TIMEOUT_S) -> list:
        """The partition's runs once one has succeeded and none is still going: a failed run's automatic
        retry (the instance's run_retries) is created a daemon tick after the failure, so waiting for all
        runs to be finished is not enough."""

        def succeeded():
            runs = self.runs(partition)
            done = all(r.is_finished for r in runs)
            return runs if done and any(r.status.value == "SUCCESS" for r in runs) else None

        try:
            return wait_for(succeeded, timeout_s, f"a successful run of {partition}", poll_s=2)
        except BaseException:
            print(self.log_tail())
            raise

    def wait_for_step(self, partition: str, step_prefix: str, timeout_s: float = RUN_TIMEOUT_S) -> tuple[str, str, int]:
        """(run id, step key, pid) of the first step process of a step matching the prefix to start."""

        def started():
            for run in self.runs(partition):
                for record in self.instance.all_logs(run.run_id):
                    event = record.dagster_event
                    if (
                        event
                        and event.event_type_value == "STEP_WORKER_STARTED"
                        and event.step_key.startswith(step_prefix)
                    ):
                        return run.run_id, event.step_key, int(event.event_specific_data.metadata["pid"].value)
            return None

        return wait_for(started, timeout_s, f"a {step_prefix} step of {partition} to start", poll_s=0.5)

    def manifest_sensor_ticks_since(self, since: float) -> int:
        [state] = [s for s in self.instance.all_instigator_state() if s.instigator_name == "manifest_sensor"]
        ticks = self.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
        return sum(1 for tick in ticks if tick.timestamp > since)

    def step_events(self, run_id: str, event_type: str) -> list:
        return [
            r.dagster_event
            for r in self.instance.all_logs(run_id)
            if r.dagster_event and r.dagster_event.event_type_value == event_type
        ]


def image_key_matcher(uris: list[str]):
    """A proxy hold predicate for GETs of these images (path-style requests: /bucket/key)."""
    paths = {"/" + uri.removeprefix("s3://") for uri in uris}
    return lambda method, path: method == "GET" and path.split("?")[0] in paths


def submit_watched(platform: FaultPlatform, partition: str, uris: list[str], watcher: MarkerWatcher) -> str:
    """Upload the manifest and tell the watcher how many images a marker for this version must carry."""
    key = platform.submit(partition, uris)
    etag = platform.s3().head_object(Bucket=platform.settings.manifest_bucket, Key=key)["ETag"].strip('"')
    watcher.expected[etag] = len(uris)
    return etag


# --- what landed -------------------------------------------------------------------------------------------


@dataclass
class Accounting:
    expected: int
    warehouse: Counter = field(default_factory=Counter)
    published: Counter = field(default_factory=Counter)
    tagged: int = 0
    errored: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self, expected_uris: list[str]) -> dict:
        seen = self.warehouse + self.published
        return {
            "images_expected": self.expected,
            "tagged": self.tagged,
            "errored": self.errored,
            "duplicated": sum(n - 1 for n in self.warehouse.values() if n > 1)
            + sum(n - 1 for n in self.published.values() if n > 1),
            "lost": sum(1 for uri in expected_uris if self.warehouse[uri] == 0 or self.published[uri] == 0),
            "unexpected": sum(1 for uri in seen if uri not in set(expected_uris)),
        }


def published_location(client, settings: Settings, partition: str) -> list[str]:
    """The prefixes under the batch's default output location that hold a completion marker."""
    prefix = f"{settings.output_prefix}{partition}/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.output_bucket, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return [k.removesuffix(publishing.MARKER_NAME) for k in keys if k.endswith(publishing.MARKER_NAME)]


def check_marker(client, bucket: str, location_prefix: str) -> tuple[dict | None, list[dict], list[str]]:
    """The marker, the objects of the parts it lists, and every way the parts contradict it."""
    try:
        marker = json.loads(
            client.get_object(Bucket=bucket, Key=location_prefix + publishing.MARKER_NAME)["Body"].read()
        )
    except client.exceptions.NoSuchKey:
        return None, [], []
    problems, objects = [], []
    for part in marker["parts"]:
        try:
            body = client.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        except client.exceptions.NoSuchKey:
            problems.append(f"marker lists {part['key']}, which does not exist")
            continue
        if hashlib.sha256(body).hexdigest() != part["sha256"]:
            problems.append(f"{part['key']} does not match the checksum in the marker")
        lines = [json.loads(line) for line in body.splitlines()]
        if len(lines) != part["objects"]:
            problems.append(f"{part['key']} holds {len(lines)} objects, the marker says {part['objects']}")
        objects += lines
    if len(objects) != marker["images"]:
        problems.append(f"the marker says {marker['images']} images, its parts hold {len(objects)}")
    return marker, objects, problems


def account(platform: FaultPlatform, partition: str, uris: list[str]) -> Accounting:
    """Every manifest image in the warehouse table and in the published objects, counted."""
    client, settings = platform.s3(), platform.settings
    result = Accounting(expected=len(uris))
    key = f"assets/image_tags/manifest={partition}/data.parquet"
    try:
        body = client.get_object(Bucket=settings.warehouse_bucket, Key=key)["Body"].read()
        rows = pq.read_table(io.BytesIO(body)).select(["image", "status"]).to_pylist()
    except client.exceptions.NoSuchKey:
        result.problems.append(f"no warehouse table at s3://{settings.warehouse_bucket}/{key}")
        rows = []
    result.warehouse = Counter(row["image"] for row in rows)
    result.tagged = sum(1 for row in rows if row["status"] == "ok")
    result.errored = sum(1 for row in rows if row["status"] == "error")
    locations = published_location(client, settings, partition)
    if len(locations) != 1:
        result.problems.append(f"expected one completed output location, found {locations}")
    for location in locations:
        marker, objects, problems = check_marker(client, settings.output_bucket, location)
        result.problems += problems
        result.published.update(obj["image"] for obj in objects)
        if marker is None:
            result.problems.append(f"the marker under {location} went away after the run")
            continue
        listed = {part["key"] for part in marker["parts"]} | {location + publishing.MARKER_NAME}
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.output_bucket, Prefix=location)
        stray = {item["Key"] for page in pages for item in page.get("Contents", [])} - listed
        if stray:
            result.problems.append(f"objects beside the marker's parts: {sorted(stray)}")
        if marker["images"] != len(uris) or marker["tagged"] + marker["errors"] != len(uris):
            result.problems.append(f"marker totals {marker['images']}/{marker['tagged']}/{marker['errors']}")
    return result


class MarkerWatcher:
    """Reads the batch's output location over and over while a fault runs: a completion marker must never
    be visible before every part it lists is there, whole, and every manifest image is in them."""

    def __init__(self, platform: FaultPlatform, partition: str, expected: dict[str, int]) -> None:
        """`expected`: the image count of each manifest version (ETag) the batch may be published for."""
        self.platform, self.partition, self.expected = platform, partition, expected
        self.looks = 0
        self.markers_seen = 0
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _watch(self) -> None:
        client, settings = self.platform.s3(), self.platform.settings
        while not self._stop.wait(0.5):
            try:
                for location in published_location(client, settings, self.partition):
                    marker, _objects, problems = check_marker(client, settings.output_bucket, location)
                    if marker is None:
                        continue  # removed between the listing and the read: a publish is starting again
                    self.markers_seen += 1
                    if marker["images"] != self.expected.get(marker["manifest_etag"]):
                        problems.append(f"marker for {marker['images']} images of manifest {marker['manifest_etag']}")
                    if problems and self._same_marker(client, settings.output_bucket, location, marker):
                        # Still the marker we started from: a reader trusting it would have read these parts.
                        self.violations += [f"{location}: {p}" for p in problems]
                self.looks += 1
            except client.exceptions.NoSuchKey:
                continue  # a part or marker removed between listing and reading: a publish is under way

    @staticmethod
    def _same_marker(client, bucket: str, location: str, marker: dict) -> bool:
        """A reader re-reads the marker after its parts; only if it is unchanged were the parts its parts."""
        again, _, _ = check_marker(client, bucket, location)
        return again is not None and again["completed_at"] == marker["completed_at"]


# --- the platform and the results file ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def fault_database(postgres_server: str):
    import psycopg2

    name = f"tagging_faults_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"{postgres_server}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield name, f"{postgres_server}/{name}"
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="session")
def fault_platform(fault_database, tmp_path_factory):
    _, url = fault_database
    platform = FaultPlatform(tmp_path_factory.mktemp("fault-platform"), url)
    try:
        platform.start()
        yield platform
    finally:
        platform.stop()


@pytest.fixture
def platform(fault_platform: FaultPlatform):
    """The shared platform, healthy again for the next test: no faults, nothing held, every process up."""
    proxy = fault_platform.proxy
    proxy.faults()
    yield fault_platform
    proxy.faults()
    proxy.release_all()
    if proxy.is_down:
        proxy.restore()
    if "daemon" not in fault_platform.processes:
        fault_platform.start_daemon()
    if "webserver" not in fault_platform.processes:
        fault_platform.start_webserver()


@pytest.fixture(scope="session")
def manifest_photographs() -> dict[str, bytes]:
    return dict(list(photos.sample_set(variants_per_photo=1))[:IMAGES_PER_MANIFEST])


class FaultResults:
    """One row per fault for bench/results/faults.json, written when the session ends; rows of faults
    that did not run this session are kept from the previous file."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def record(self, fault: str, row: dict) -> None:
        self.rows[fault] = row

    def write(self) -> None:
        if not self.rows:
            return
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        faults = {**previous.get("faults", {}), **self.rows}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps(
                {
                    "generated_by": "make test-faults (tests/faults/)",
                    "images_per_manifest": IMAGES_PER_MANIFEST,
                    "chunk_images": CHUNK_IMAGES,
                    "checkpoint_images": CHECKPOINT_IMAGES,
                    "faults": faults,
                },
                indent=2,
            )
            + "\n"
        )


@pytest.fixture(scope="session")
def fault_results():
    results = FaultResults()
    yield results
    results.write()


def assert_every_image_once(
    platform: FaultPlatform,
    results: FaultResults,
    fault: str,
    partition: str,
    uris: list[str],
    watcher: MarkerWatcher,
    runs: list,
    **details,
) -> dict:
    """Count what landed, record the fault's row (before asserting, so a failure is in the file too), and
    assert: each image once in the warehouse and once in the published objects, nothing else, the marker
    consistent with its parts, and never a marker before its parts while the fault was on."""
    accounting = account(platform, partition, uris)
    row = {
        **accounting.as_dict(uris),
        "runs": [run.status.value for run in reversed(runs)],  # oldest first (the instance lists newest first)
        "marker_reads_checked": watcher.markers_seen,
        "published_problems": accounting.problems + watcher.violations,
        **details,
    }
    results.record(fault, row)
    assert accounting.problems == []
    assert watcher.violations == []
    assert watcher.looks > 0, "the output location was never looked at while the fault was on"
    assert (row["lost"], row["duplicated"], row["unexpected"]) == (0, 0, 0), row
    assert row["tagged"] + row["errored"] == len(uris)
    return row
