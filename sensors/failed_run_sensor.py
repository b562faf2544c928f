"""A backstop for Dagster's automatic run retries: a failed batch run that nothing retried gets a new run."""

import time
from datetime import UTC, datetime

import dagster as dg

from assets.jobs import tag_manifest_job

# Dagster's retry daemon acts on a failure within seconds; after this long, nobody will.
GRACE_S = 60.0
# Failed runs older than this are an operator's matter, not a transient fault's.
LOOKBACK_S = 6 * 3600.0
BACKSTOP_ATTEMPT = "tagging/backstop_attempt"
RETRY_OF = "tagging/retry_of"


def build_failed_run_sensor(grace_s: float = GRACE_S) -> dg.SensorDefinition:
    @dg.sensor(
        name="failed_run_sensor",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts a new run for a batch whose failed run was not retried (e.g. Dagster's storage "
        "dropped the connection while the retry daemon handled the failure); its finished chunks are skipped.",
        job=tag_manifest_job,
    )
    def failed_run_sensor(context: dg.SensorEvaluationContext):
        """Dagster's retry daemon handles each run failure once: if its storage fails it at that moment, it
        logs the error, moves its cursor on, and the batch stays failed. This sensor has no cursor to lose:
        each tick looks again, and the run key (the failed run's id) asks for each backstop run once."""
        instance = context.instance
        now = time.time()
        records = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name=tag_manifest_job.name,
                statuses=[dg.DagsterRunStatus.FAILURE],
                updated_after=datetime.fromtimestamp(now - LOOKBACK_S, UTC),
            )
        )
        requests = []
        for record in records:
            run = record.dagster_run
            partition = run.tags.get("dagster/partition")
            if not partition or record.update_timestamp.timestamp() > now - grace_s:
                continue
            # A rejected manifest fails the same way every time (assets/intake.py).
            if run.tags.get("dagster/retry_on_asset_or_op_failure") == "false":
                continue
            attempts = int(run.tags.get("dagster/retry_number", 0)) + int(run.tags.get(BACKSTOP_ATTEMPT, 0))
            # Dagster's retries and this sensor's together, up to the instance's run_retries.max_retries.
            if attempts >= instance.run_retries_max_retries:
                continue
            # Dagster's retry, a newer version of the manifest or a re-tag: the batch has moved on.
            later = instance.get_run_records(
                filters=dg.RunsFilter(
                    job_name=tag_manifest_job.name,
                    tags={"dagster/partition": partition},
                    created_after=record.create_timestamp,
                ),
                limit=1,
            )
            if later:
                continue
            context.log.warning(f"run {run.run_id} of batch {partition} failed and was not retried: starting another")
            kept = {k: v for k, v in run.tags.items() if k.startswith("tagging/")}
            backstop = str(int(run.tags.get(BACKSTOP_ATTEMPT, 0)) + 1)
            requests.append(
                dg.RunRequest(
                    run_key=f"retry-of-{run.run_id}",
                    partition_key=partition,
                    tags={**kept, RETRY_OF: run.run_id, BACKSTOP_ATTEMPT: backstop},
                )
            )
        return requests or dg.SkipReason("no failed batch run left without a retry")

    return failed_run_sensor
