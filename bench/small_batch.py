"""Where a small batch's seconds go: `POST /v1/batches` of 10 photographs to `succeeded`, against `make api`'s stack
(embedded S3, dagster dev with its daemon and sensors, the API), split by the Dagster event log of each run.

    python -m bench.small_batch [--batches 3] [--images 10] [--out bench/results/small_batch.json]

Each batch is submitted only after the previous one finished, so every figure is one batch alone on the platform.
Each round times the path before the API launched runs (a manifest dropped into the bucket: the sensor's tick, a
process per step) and then `POST /v1/batches` (the API's own launch, one process for a small batch's steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Self

import requests

from bench.common import RESULTS, log, machine, write_results
from tagging_platform import photos
from tagging_platform.api.keys import CustomerStore
from tagging_platform.embedded import free_port
from tagging_platform.local import LocalPlatform

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "completed_with_errors", "failed")
PATHS = ("sensor", "api")


class Api:
    """The API (uvicorn) in a thread of this process, as `tagging-platform api --dev` serves it."""

    def __init__(self, settings) -> None:
        import uvicorn

        from tagging_platform.api.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings.replace(api_public_url=self.url))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start within 60 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_for_models(url: str, headers: dict, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not requests.get(f"{url}/v1/models", headers=headers, timeout=30).json()["models"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no model registered within {timeout_s:.0f} s")
        time.sleep(1)


def submit_and_wait(url: str, headers: dict, uris: list[str], timeout_s: float = 300, poll_s: float = 0.2) -> dict:
    """Submit one batch and follow its status URL until it is over; the wall-clock moments of each state."""
    started = time.time()
    response = requests.post(f"{url}/v1/batches", json={"images": uris}, headers=headers, timeout=60)
    response.raise_for_status()
    accepted = response.json()
    moments = {"submitted": started, "accepted": time.time()}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = requests.get(accepted["status_url"], headers=headers, timeout=60).json()
        moments.setdefault(body["state"], time.time())
        if body["state"] in TERMINAL:
            return {
                "batch_id": accepted["batch_id"],
                "state": body["state"],
                "run_id": body["run"]["run_id"],
                "moments": moments,
                "counts": body["counts"],
            }
        time.sleep(poll_s)
    raise TimeoutError(f"batch {accepted['batch_id']} did not finish within {timeout_s:.0f} s")


def drop_and_wait(client, settings, dagster, uris: list[str], timeout_s: float = 600, poll_s: float = 0.2) -> dict:
    """The path before the API launched runs: a manifest dropped into the bucket, the sensor's run (a process per
    step); followed in Dagster, as the API's status reads it."""
    from tagging_platform.manifests import partition_key_for

    key = f"{settings.manifest_prefix}bench/{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.json"
    started = time.time()
    client.put_object(
        Bucket=settings.manifest_bucket,
        Key=key,
        Body=json.dumps({"images": uris, "output": "s3://tags/bench/"}).encode(),
    )
    moments = {"submitted": started, "accepted": time.time()}
    partition = partition_key_for(key, settings.manifest_prefix)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = dagster.latest_run("tag_manifest", {"dagster/partition": partition})
        if run and run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            moments["succeeded" if run["status"] == "SUCCESS" else "failed"] = time.time()
            return {
                "batch_id": partition,
                "state": "succeeded" if run["status"] == "SUCCESS" else "failed",
                "run_id": run["runId"],
                "moments": moments,
            }
        time.sleep(poll_s)
    raise TimeoutError(f"manifest {key} did not finish within {timeout_s:.0f} s")


def breakdown(instance, run_id: str, moments: dict) -> dict:
    """Seconds between the moments the API, the run record and the run's event log show, in order."""
    import dagster as dg

    record = instance.get_run_record_by_id(run_id)
    events = instance.all_logs(run_id)
    first: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    for entry in events:
        if entry.dagster_event is None:
            continue
        kind = entry.dagster_event.event_type_value
        first.setdefault(kind, entry.timestamp)
        step = entry.dagster_event.step_key
        if step and kind in ("STEP_START", "STEP_SUCCESS", "STEP_WORKER_STARTING", "STEP_WORKER_STARTED"):
            steps.setdefault(step, {}).setdefault(kind, entry.timestamp)
    created = record.create_timestamp.timestamp()
    launched = first.get(dg.DagsterEventType.RUN_STARTING.value, created)
    started = first.get(dg.DagsterEventType.RUN_START.value, launched)
    ended = first.get(dg.DagsterEventType.RUN_SUCCESS.value) or first.get(dg.DagsterEventType.RUN_FAILURE.value)
    step_rows = []
    for key, times in sorted(steps.items(), key=lambda kv: kv[1].get("STEP_START", 0)):
        begin = times.get("STEP_WORKER_STARTING", times.get("STEP_START"))
        step_rows.append(
            {
                "step": key,
                "from_run_start_s": round(begin - started, 2),
                "process_start_s": round(times.get("STEP_START", begin) - begin, 2),
                "run_s": round(times.get("STEP_SUCCESS", begin) - times.get("STEP_START", begin), 2),
            }
        )
    last_step_end = max((t.get("STEP_SUCCESS", 0) for t in steps.values()), default=started)
    done = moments.get("succeeded", moments.get("completed_with_errors", moments.get("failed")))
    return {
        "total_s": round(done - moments["submitted"], 2),
        "phases_s": {
            "submit_answered": round(moments["accepted"] - moments["submitted"], 2),
            "until_run_created (sensor tick or direct launch)": round(created - moments["accepted"], 2),
            "queued_to_launched (run coordinator)": round(launched - created, 2),
            "run_worker_start (process, imports, definitions)": round(started - launched, 2),
            "steps (first step start to last step end)": round(last_step_end - started, 2),
            "run_end_after_last_step": round(ended - last_step_end, 2) if ended else None,
            "status_seen_after_run_end": round(done - ended, 2) if ended else None,
        },
        "steps": step_rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "small_batch.json")
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, default=list(PATHS), help="which paths to time (default both)"
    )
    args = parser.parse_args(argv)
    import dagster as dg

    with LocalPlatform(ROOT / "workspace.yaml") as platform:
        settings = platform.settings.replace(dagster_url=platform.ui_url)
        client = platform.s3()
        key, _ = CustomerStore(client, settings).create("bench", ["s3://tags/bench/"])
        headers = {"Authorization": f"Bearer {key}"}
        # Different photographs (seeded crops) for every batch: none is reused from an earlier batch's tags.
        wanted = 2 * args.images * args.batches
        images = photos.sample_set(variants_per_photo=-(-wanted // len(photos.PHOTOGRAPHS)))[:wanted]
        uris = []
        for name, data in images:
            client.put_object(Bucket="images", Key=f"bench/{name}", Body=data)
            uris.append(f"s3://images/bench/{name}")
        instance = dg.DagsterInstance.from_config(str(platform.dagster_home))
        with Api(settings) as api:
            wait_for_models(api.url, headers)
            rows = []
            load = [os.getloadavg()[0]]
            for number in range(args.batches):
                # Interleaved: the path before (a dropped manifest, the sensor, a process per step), then the API's.
                for path in args.paths:
                    group = uris[(2 * number + (path == "api")) * args.images :][: args.images]
                    if path == "api":
                        done = submit_and_wait(api.url, headers, group)
                    else:
                        done = drop_and_wait(client, settings, platform.dagster, group)
                    run = instance.get_run_by_id(done["run_id"])
                    row = {
                        "round": number + 1,
                        "path": path,
                        "state": done["state"],
                        "launched_by": run.tags.get("tagging/launched_by", "sensor"),
                        "executor": "in_process" if "in_process" in str(run.run_config) else "multiprocess",
                        **breakdown(instance, done["run_id"], done["moments"]),
                    }
                    log(f"round {number + 1} {path}: {done['state']} in {row['total_s']} s: {row['phases_s']}")
                    rows.append(row)
                    load.append(os.getloadavg()[0])
    result = {
        "what": f"{args.images} photographs to succeeded, one batch at a time: a manifest dropped for the sensor "
        "(the path before the API launched runs) and POST /v1/batches, interleaved",
        "machine": {**machine(), "load_average_1min": [round(x, 1) for x in load]},
        "batches": rows,
    }
    for path in args.paths:
        totals = [r["total_s"] for r in rows if r["path"] == path]
        result[f"{path}_total_s"] = {"median": statistics.median(totals), "min": min(totals), "max": max(totals)}
    write_results(args.out, result)
    log(f"{args.out}: " + ", ".join(f"{path} path {result[f'{path}_total_s']}" for path in args.paths))


if __name__ == "__main__":
    main()
