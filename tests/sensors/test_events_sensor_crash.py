"""A real daemon killed between recording a run request and deleting its message: the redelivery starts no second run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from tagging_platform.events import configure_notifications
from tagging_platform.manifests import partition_key_for
from tagging_platform.s3 import make_client
from tagging_platform.settings import PROCESS_ENV, Settings
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def _wait(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def _queue_total(sqs, url):
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_a_daemon_killed_before_deleting_the_message_starts_no_second_run(embedded_s3, s3, tmp_path):
    from definitions import build_definitions

    overrides = {
        "TP_INTAKE": "events",
        "TP_MANIFEST_PREFIX": "crash/",
        "TP_MANIFEST_QUEUE": "crash-events",
        "TP_MANIFEST_DEAD_LETTER_QUEUE": "crash-events-dead-letter",
        "TP_SENSOR_INTERVAL_S": "3",
        "TP_QUEUE_VISIBILITY_S": "4",
    }
    settings = Settings.from_env({**os.environ, **overrides})
    sqs = make_client(settings, "sqs")
    queue_url = configure_notifications(s3, sqs, settings)
    for message in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])  # S3's test event
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **PROCESS_ENV, **settings.as_env(), "DAGSTER_HOME": str(home)}
    instance = dg.DagsterInstance.from_config(str(home))
    assert build_definitions(settings).resolve_job_def("publish_model").execute_in_process(instance=instance).success

    def start_daemon():
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
            cwd=REPO,
            env=env,
            stdout=(tmp_path / "daemon.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def runs_for(partition):
        return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))

    key = f"crash/{uuid.uuid4().hex[:6]}.json"
    partition = partition_key_for(key, "crash/")
    daemon = start_daemon()
    try:
        # Outside the allowed buckets, so its run fails fast at validation: only the count of runs matters.
        s3.put_object(Bucket="manifests", Key=key, Body=json.dumps({"images": ["s3://elsewhere/a.jpg"]}).encode())
        _wait(lambda: runs_for(partition), 120, "the sensor to request the run")
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        assert _queue_total(sqs, queue_url) == 1, "the message was deleted before the kill: nothing to test"

        # A crash after the run was recorded but before the cursor was stored leaves the old cursor.
        [state] = [s for s in instance.all_instigator_state() if s.instigator_name == "manifest_events_sensor"]
        instance.update_instigator_state(state.with_data(state.instigator_data._replace(cursor="[]")))
        time.sleep(int(overrides["TP_QUEUE_VISIBILITY_S"]) + 1)  # the message becomes visible again

        daemon = start_daemon()
        _wait(lambda: _queue_total(sqs, queue_url) == 0, 120, "the redelivered message to be handled and deleted")
        time.sleep(4)  # one more tick, in case a second run were on its way
        assert len(runs_for(partition)) == 1
        # The redelivered request was matched to the recorded run: "already created" when the kill came
        # before the run was launched, "already completed" when it came after.
        assert re.search(r"already (created|completed) with (the )?run key", (tmp_path / "daemon.log").read_text())
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        s3.put_bucket_notification_configuration(Bucket="manifests", NotificationConfiguration={})
