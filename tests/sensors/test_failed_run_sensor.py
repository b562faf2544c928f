"""The failed-run sensor retries a failed batch run that nothing retried, once, and leaves every other run alone."""

import uuid

import dagster as dg
import pytest

from sensors.failed_run_sensor import BACKSTOP_ATTEMPT, RETRY_OF, build_failed_run_sensor


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}}) as instance:
        yield instance


def _run(instance, partition: str, status=dg.DagsterRunStatus.FAILURE, **tags) -> dg.DagsterRun:
    run = dg.DagsterRun(
        job_name="tag_manifest",
        run_id=str(uuid.uuid4()),
        status=status,
        tags={"dagster/partition": partition, "tagging/manifest": f"s3://manifests/{partition}.json", **tags},
    )
    return instance.add_run(run)


def _evaluate(instance, grace_s: float = 0.0):
    sensor = build_failed_run_sensor(grace_s=grace_s)
    return sensor(dg.build_sensor_context(instance=instance))


def test_a_failed_run_nothing_retried_gets_one_new_run_of_its_batch(instance):
    failed = _run(instance, "batch-a")
    [request] = _evaluate(instance)
    assert request.partition_key == "batch-a" and request.run_key == f"retry-of-{failed.run_id}"
    assert request.tags[RETRY_OF] == failed.run_id and request.tags[BACKSTOP_ATTEMPT] == "1"
    assert request.tags["tagging/manifest"] == "s3://manifests/batch-a.json"


def test_a_batch_that_moved_on_is_left_alone(instance):
    _run(instance, "batch-b")
    _run(instance, "batch-b", status=dg.DagsterRunStatus.STARTED, **{"dagster/parent_run_id": "x"})  # Dagster's retry
    assert isinstance(_evaluate(instance), dg.SkipReason)


@pytest.mark.parametrize(
    "tags",
    [
        {"dagster/retry_on_asset_or_op_failure": "false"},  # a rejected manifest
        {"dagster/retry_number": "2"},  # Dagster's retries are used up
        {"dagster/retry_number": "1", BACKSTOP_ATTEMPT: "1"},
    ],
)
def test_runs_not_worth_retrying_are_left_alone(instance, tags):
    _run(instance, "batch-c", **tags)
    assert isinstance(_evaluate(instance), dg.SkipReason)


def test_dagsters_own_retry_gets_its_chance_first(instance):
    _run(instance, "batch-d")
    assert isinstance(_evaluate(instance, grace_s=60.0), dg.SkipReason)
    assert not isinstance(_evaluate(instance, grace_s=0.0), dg.SkipReason)


def test_successful_runs_are_not_retried(instance):
    _run(instance, "batch-e", status=dg.DagsterRunStatus.SUCCESS)
    assert isinstance(_evaluate(instance), dg.SkipReason)
