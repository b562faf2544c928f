"""`make bench-load`: the customers' API under sustained traffic, against `make api`'s stack (`tagging-platform api
--dev`: the embedded S3 server, dagster dev, the API), every server on 127.0.0.1. Writes bench/results/load.json
and bench/results/load.png (latency, the API's memory and the batches over time).

    python -m bench.load [--users 1,4,16,64] [--tag-s 30] [--batches 100] [--customers 10] [--mixed-batches 20]

Phases, in order, every loop bounded in count and time:
  small   a 10-image batch, one at a time (three of them): seconds from POST /v1/batches to succeeded, by phase;
  tag     POST /v1/tag (locust, bench/load_users.py) at each number of concurrent clients, each level after a round
          of the engine alone on the same photographs: images/s against the engine's, p50/p95/p99, errors;
  batches `--batches` batches of 10 images from `--customers` customers submitted within `--submit-window-s`:
          every batch succeeded, every image published exactly once by exactly one run, time to drain, per customer
          the slowest batch;
  mixed   POST /v1/tag traffic while `--mixed-batches` batches drain;
  memory  the API process's resident memory, threads, open files and sockets before and after all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import requests

from bench.common import RESULTS, log, machine, write_results
from tagging_platform import engine, models, photos
from tagging_platform.api.keys import CustomerStore
from tagging_platform.dagster_client import DagsterClient
from tagging_platform.embedded import free_port
from tagging_platform.s3 import make_client, split_uri
from tagging_platform.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "completed_with_errors", "failed")
BATCH_IMAGES = 10


class Stack:
    """`tagging-platform api --dev` on free loopback ports, as a child process whose pid is the API's."""

    def __init__(self, log_path: Path, overrides: dict[str, str]) -> None:
        self.api_port, self.s3_port, self.ui_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.log_path = log_path
        self.env = {**os.environ, **overrides}
        self.settings = Settings.from_env({**self.env, "TP_S3_ENDPOINT": f"http://127.0.0.1:{self.s3_port}"})
        self.dagster = DagsterClient(f"http://127.0.0.1:{self.ui_port}")
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 600) -> Stack:
        command = [
            str(Path(sys.executable).with_name("tagging-platform")),
            "api",
            "--dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.api_port),
            "--s3-port",
            str(self.s3_port),
            "--dagster-port",
            str(self.ui_port),
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while "API docs at" not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`tagging-platform api --dev` did not come up; see {self.log_path}")
            time.sleep(1)
        while True:
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer within {timeout_s:.0f} s; see {self.log_path}")
            time.sleep(0.5)

    @property
    def dagster_home(self) -> Path:
        return Path(re.search(r"DAGSTER_HOME=([^)\s]+)", self.log_path.read_text(errors="replace")).group(1))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class ProcessWatch:
    """The API process's resident memory, threads, open files and sockets, sampled twice a second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def snapshot(self) -> dict:
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        links = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass  # closed between the listing and the read
        return {
            "t": time.time(),
            "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
            "threads": int(fields["Threads"]),
            "fds": len(links),
            "sockets": sum(link.startswith("socket:") for link in links),
        }

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.samples.append(self.snapshot())
            except (OSError, KeyError):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peak_between(self, start: float, end: float) -> float:
        inside = [s["rss_mb"] for s in self.samples if start <= s["t"] <= end]
        return max(inside) if inside else 0.0


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds every core spent busy since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_now(api_pid: int) -> tuple[float, float, float]:
    """CPU seconds so far of the API process, of this process's finished children, and of the whole machine."""
    return process_cpu_s(api_pid), children_cpu_s(), machine_cpu_s()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- tag -------------------------------------------------------------------------------------------------------


def locust_round(url: str, key: str, users: int, duration_s: float) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load_users",
            "--url",
            url,
            "--key",
            key,
            "--users",
            str(users),
            "--duration-s",
            str(duration_s),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=duration_s + 300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def engine_round(client, settings: Settings, tagger, uris: list[str]) -> dict:
    """The engine (fetch from S3, decode, batched inference) on the same photographs, in this process."""
    ref = tagger.ref
    [spec] = engine.chunk_specs(
        "bench-load", "s3://manifests/bench-load.json", "-", list(range(len(uris))), uris, ref, len(uris)
    )
    started = time.perf_counter()
    rows, stats = tagger.tag(client, spec, "bench-load")
    elapsed = time.perf_counter() - started
    return {"images": len(rows), "errors": stats.errors, "images_per_s": round(len(rows) / elapsed, 2)}


def engine_memory_round(tagger, payloads: list[bytes], workers: int = 4) -> dict:
    """The engine's decode and inference alone on the photographs' bytes (nothing fetched), at its batch size:
    what the API does with an upload, without HTTP."""
    import torch

    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(payloads), tagger.batch_size):
            pixels = list(pool.map(tagger.pixels, payloads[start : start + tagger.batch_size]))
            tagger.predict(tagger.normalise(torch.stack(pixels)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "images": len(payloads),
        "images_per_s": round(len(payloads) / elapsed, 2),
        "images_per_cpu_s": round(len(payloads) / cpu, 2),
    }


# --- batches ---------------------------------------------------------------------------------------------------


def submit_batches(url: str, plan: list[tuple[str, str, list[str]]], window_s: float) -> list[dict]:
    """POST each (customer, key, images) at its even share of the window; what each answer said, and when."""
    started = time.time()

    def submit(item: tuple[int, tuple[str, str, list[str]]]) -> dict:
        number, (customer, key, uris) = item
        time.sleep(max(0.0, started + number * window_s / len(plan) - time.time()))
        sent = time.time()
        response = requests.post(
            f"{url}/v1/batches", json={"images": uris}, headers={"Authorization": f"Bearer {key}"}, timeout=120
        )
        body = response.json()
        return {
            "customer": customer,
            "key": key,
            "uris": uris,
            "submitted": sent,
            "accepted": time.time(),
            "http": response.status_code,
            "batch_id": body.get("batch_id"),
            "status_url": body.get("status_url"),
            "error": None if response.status_code == 202 else body,
        }

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(submit, enumerate(plan)))


def follow(batches: list[dict], timeout_s: float, poll_s: float = 3.0) -> None:
    """Poll every unfinished batch's status until all are over or the time is up; records each state's moment."""
    deadline = time.monotonic() + timeout_s
    pending = [b for b in batches if b["http"] == 202]

    def poll(batch: dict) -> None:
        try:
            response = requests.get(
                batch["status_url"], headers={"Authorization": f"Bearer {batch['key']}"}, timeout=60
            )
        except requests.RequestException:
            return
        if response.status_code != 200:
            return
        body = response.json()
        batch.setdefault("moments", {}).setdefault(body["state"], time.time())
        batch["state"], batch["status"] = body["state"], body

    with ThreadPoolExecutor(4) as pool:
        while pending and time.monotonic() < deadline:
            list(pool.map(poll, pending))
            pending = [b for b in pending if b.get("state") not in TERMINAL]
            if pending:
                time.sleep(poll_s)


def verify(client, dagster: DagsterClient, batches: list[dict]) -> dict:
    """Every image in the published objects exactly once, tagged, by the batch's one run."""
    problems: list[str] = []
    runs_per_batch = []
    for batch in batches:
        status = batch.get("status") or {}
        if batch.get("state") != "succeeded":
            problems.append(f"{batch.get('batch_id')}: {batch.get('state', 'not accepted')}")
            continue
        published: dict[str, int] = defaultdict(int)
        for part in status["result"]["parts"]:
            bucket, key = split_uri(part)
            for line in client.get_object(Bucket=bucket, Key=key)["Body"].iter_lines():
                record = json.loads(line)
                if record["status"] == "ok" and record["tags"]:
                    published[record["image"]] += 1
        if sorted(published) != sorted(batch["uris"]) or set(published.values()) != {1}:
            problems.append(f"{batch['batch_id']}: published {dict(published)} for {len(batch['uris'])} images")
        runs = dagster.runs(job="tag_manifest", tags={"dagster/partition": batch["batch_id"]})
        runs_per_batch.append(len(runs))
        if len(runs) != 1:
            problems.append(f"{batch['batch_id']}: {len(runs)} runs")
    return {
        "batches": len(batches),
        "succeeded": sum(b.get("state") == "succeeded" for b in batches),
        "every_image_exactly_once": not problems,
        "runs_per_batch": sorted(set(runs_per_batch)),
        "problems": problems[:20],
    }


def batch_figures(batches: list[dict]) -> dict:
    finished = [b for b in batches if b.get("state") in TERMINAL]
    first = min(b["submitted"] for b in batches)
    per_customer: dict[str, list[dict]] = defaultdict(list)
    for b in finished:
        per_customer[b["customer"]].append(b)

    def started(b: dict) -> float:
        run = (b.get("status") or {}).get("run") or {}
        return _epoch(run.get("started_at")) or b["moments"].get("running", b["moments"][b["state"]])

    return {
        "submitted_within_s": round(max(b["submitted"] for b in batches) - first, 1),
        "rejected": sum(b["http"] != 202 for b in batches),
        "drain_s": round(max(b["moments"][b["state"]] for b in finished) - first, 1) if finished else None,
        "turnaround_s": _spread([b["moments"][b["state"]] - b["submitted"] for b in finished]),
        "queue_wait_s": _spread([started(b) - b["submitted"] for b in finished]),
        "slowest_per_customer_s": {
            c: {
                "turnaround": round(max(b["moments"][b["state"]] - b["submitted"] for b in bs), 1),
                "queue_wait": round(max(started(b) - b["submitted"] for b in bs), 1),
            }
            for c, bs in sorted(per_customer.items())
        },
    }


def _epoch(iso: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp() if iso else None


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 1),
        "median": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }


# --- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The per-customer /v1/tag rate limit would cap every level at the limit and answer the rest with 429: the
    # levels measure what the API can serve, so the stack runs with the limit the bench is given (0: none).
    overrides = {"TP_API_TAG_RATE_PER_S": f"{args.tag_rate_per_s:g}"}
    stack = Stack(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-load-{os.getpid()}.log", overrides)
    result: dict = {"machine": {**machine(), "load_average_at_start": load_average()}, "config": vars(args).copy()}
    result["config"]["out"] = str(args.out)
    started = time.time()
    log(f"starting `tagging-platform api --dev` (log: {stack.log_path}) ...")
    stack.start()
    try:
        _run(stack, args, result, started)
    finally:
        stack.stop()
    result["machine"]["load_average_at_end"] = load_average()
    result["wall_s"] = round(time.time() - started, 1)
    write_results(args.out, result)
    log(f"wrote {args.out} and {args.out.with_suffix('.png')} in {result['wall_s']:.0f} s")


def _run(stack: Stack, args, result: dict, started: float) -> None:
    client = make_client(stack.settings)
    store = CustomerStore(client, stack.settings)
    customers = {f"load{n:02d}": store.create(f"load{n:02d}", rotate=True)[0] for n in range(args.customers)}
    first_key = next(iter(customers.values()))
    headers = {"Authorization": f"Bearer {first_key}"}
    deadline = time.monotonic() + 300
    while not requests.get(f"{stack.url}/v1/models", headers=headers, timeout=30).json()["models"]:
        if time.monotonic() > deadline:
            raise RuntimeError("no model registered within 300 s")
        time.sleep(1)

    # Distinct photographs (seeded crops) for every batch, so that none is reused from another batch's tags.
    wanted = BATCH_IMAGES * (args.small + args.batches + args.mixed_batches)
    log(f"uploading {wanted} photographs ...")
    crops = photos.sample_set(variants_per_photo=-(-wanted // len(photos.PHOTOGRAPHS)))[:wanted]
    names = list(customers)
    placed = []
    for number, (name, data) in enumerate(crops):
        customer = names[(number // BATCH_IMAGES) % len(names)]
        placed.append((customer, f"{customer}/load/{name}", data))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.put_object(Bucket="images", Key=p[1], Body=p[2]), placed))
    plan = []
    for start in range(0, len(placed), BATCH_IMAGES):
        group = placed[start : start + BATCH_IMAGES]
        plan.append((group[0][0], customers[group[0][0]], [f"s3://images/{key}" for _, key, _ in group]))
    small_plan, batch_plan, mixed_plan = (
        plan[: args.small],
        plan[args.small : args.small + args.batches],
        plan[args.small + args.batches :],
    )

    pid = stack.process.pid
    with ProcessWatch(pid) as watch:
        # Warm before the baseline: the default model loaded (the API preloads it in the background) and run at
        # the batch sizes concurrent requests make, then memory steady for a few seconds.
        for users in (1, 4, 16):
            locust_round(stack.url, first_key, users, 5)
        result["memory_before"] = _steady(watch)
        phases: list[dict] = []

        if args.small:
            result["small_batch"] = _small(stack, small_plan, phases)
        tag_levels = _tag(stack, client, first_key, args, phases, watch)
        result["tag"] = tag_levels
        if args.batches:
            result["batches"] = _batches(stack, client, batch_plan, args, phases, watch)
        if args.mixed_batches:
            result["mixed"] = _mixed(stack, client, first_key, mixed_plan, args, phases, watch)
        time.sleep(args.settle_s)  # keep-alive connections time out, idle request threads end
        after = watch.snapshot()
        before = result["memory_before"]
        result["memory_after"] = after
        result["memory"] = {
            "rss_before_mb": before["rss_mb"],
            "rss_after_mb": after["rss_mb"],
            "rss_after_over_before": round(after["rss_mb"] / before["rss_mb"], 3),
            "peak_rss_mb": after["peak_rss_mb"],
            "threads_before_after": [before["threads"], after["threads"]],
            "fds_before_after": [before["fds"], after["fds"]],
            "sockets_before_after": [before["sockets"], after["sockets"]],
        }
        result["phases"] = phases
        samples = watch.samples
    _plot(args.out.with_suffix(".png"), result, samples, started)
    for phase in phases:
        phase.pop("samples", None)  # every request's latency is in the plot; the JSON keeps the figures


def _steady(watch: ProcessWatch, within: float = 0.01, timeout_s: float = 60.0) -> dict:
    """A snapshot once resident memory moved less than `within` over 5 s (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    last = watch.snapshot()
    while time.monotonic() < deadline:
        time.sleep(5)
        now = watch.snapshot()
        if abs(now["rss_mb"] - last["rss_mb"]) <= within * last["rss_mb"]:
            return now
        last = now
    return last


def _small(stack: Stack, plan: list, phases: list) -> dict:
    import dagster as dg

    from bench.small_batch import breakdown, submit_and_wait

    t0 = time.time()
    rows = []
    with dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        for customer, key, uris in plan:
            done = submit_and_wait(stack.url, {"Authorization": f"Bearer {key}"}, uris)
            run = instance.get_run_by_id(done["run_id"])
            rows.append(
                {
                    "state": done["state"],
                    "launched_by": run.tags.get("tagging/launched_by", "sensor"),
                    **breakdown(instance, done["run_id"], done["moments"]),
                }
            )
            log(f"small batch: {done['state']} in {rows[-1]['total_s']} s {rows[-1]['phases_s']}")
    phases.append({"phase": "small", "start": t0, "end": time.time()})
    totals = [r["total_s"] for r in rows]
    return {"images": BATCH_IMAGES, "total_s": _spread(totals), "batches": rows}


def _tag(stack: Stack, client, key: str, args, phases: list, watch: ProcessWatch) -> list[dict]:
    # The engine's rounds run here, between the API's, while the API is idle: the same photographs from S3.
    ref = models.resolve_model(client, stack.settings.model_bucket, stack.settings.default_model)
    uris, payloads = [], []
    for name, data in photos.sample_set(variants_per_photo=1):
        client.put_object(Bucket="images", Key=f"bench-load/{name}", Body=data)
        uris.append(f"s3://images/bench-load/{name}")
        payloads.append(data)
    tagger = engine.Tagger.load(client, ref, device=stack.settings.device)
    levels = []

    def engines() -> dict:
        memory = engine_memory_round(tagger, payloads * args.engine_repeats)
        return {
            "s3": engine_round(client, stack.settings, tagger, uris * args.engine_repeats)["images_per_s"],
            "memory": memory["images_per_s"],
            "memory_per_cpu_s": memory["images_per_cpu_s"],
        }

    # TorchScript optimises its graph over the first calls of each batch shape: a round of each, untimed, first.
    engines()
    for users in args.users:
        before = engines()
        t0, cpu0 = time.time(), cpu_now(stack.process.pid)
        figures = locust_round(stack.url, key, users, args.tag_s)
        t1, cpu1 = time.time(), cpu_now(stack.process.pid)
        after = engines()
        samples = figures.pop("samples")
        phases.append({"phase": f"tag x{users}", "start": t0, "end": t1, "samples": samples})
        level = {**figures, "api_peak_rss_mb": watch.peak_between(t0, t1)}
        level.update(_cpu_split(figures, t1 - t0, [b - a for a, b in zip(cpu0, cpu1, strict=True)], before, after))
        # Two baselines: the engine as a batch runs it (fetching from the embedded S3 server), and its decode and
        # inference alone on the same bytes; each measured just before and just after the API's round.
        for kind, label in (("s3", "engine"), ("memory", "engine_memory")):
            rates = [before[kind], after[kind]]
            level[f"{label}_images_per_s"] = rates
            level[f"api_over_{label}"] = round(figures["images_per_s"] / statistics.mean(rates), 3)
            level[f"api_over_{label}_spread"] = [
                round(figures["images_per_s"] / max(rates), 3),
                round(figures["images_per_s"] / min(rates), 3),
            ]
        log(
            f"/v1/tag x{users}: {level['images_per_s']} images/s (engine {level['engine_images_per_s']}, from memory "
            f"{level['engine_memory_images_per_s']}), p50 {level['p50_ms']} ms, "
            f"p99 {level['p99_ms']} ms, {level['errors']} errors; cores {level['cpu_cores']}, "
            f"per CPU-second {level['api_over_engine_memory_per_cpu_s']} of the engine's"
        )
        levels.append(level)
    return levels


def _cpu_split(figures: dict, wall_s: float, cpu_s: list[float], before: dict, after: dict) -> dict:
    """Where the two cores went during a level: the API process, the load generator (locust, a child of this
    process, started and ended within the level) and everything else; and the API's images per CPU-second of its
    own against the engine's decode and inference on the same bytes, which does not depend on who else ran."""
    api, client, machine = cpu_s
    images = figures["images_per_s"] * figures["duration_s"]
    engine_per_cpu_s = statistics.mean([before["memory_per_cpu_s"], after["memory_per_cpu_s"]])
    api_per_cpu_s = images / api if api else 0.0
    return {
        "cpu_cores": {
            "api": round(api / wall_s, 2),
            "load_generator": round(client / wall_s, 2),
            "rest": round(max(0.0, machine - api - client) / wall_s, 2),
        },
        "api_images_per_cpu_s": round(api_per_cpu_s, 2),
        "engine_memory_images_per_cpu_s": [before["memory_per_cpu_s"], after["memory_per_cpu_s"]],
        "api_over_engine_memory_per_cpu_s": round(api_per_cpu_s / engine_per_cpu_s, 3),
    }


def _batches(stack: Stack, client, plan: list, args, phases: list, watch: ProcessWatch) -> dict:
    t0 = time.time()
    log(f"submitting {len(plan)} batches within {args.submit_window_s:.0f} s ...")
    batches = submit_batches(stack.url, plan, args.submit_window_s)
    follow(batches, args.drain_timeout_s)
    t1 = time.time()
    phases.append(
        {
            "phase": "batches",
            "start": t0,
            "end": t1,
            "done": sorted(b["moments"][b["state"]] for b in batches if b.get("state") in TERMINAL),
        }
    )
    figures = {
        **batch_figures(batches),
        **verify(client, stack.dagster, batches),
        "api_peak_rss_mb": watch.peak_between(t0, t1),
    }
    log(
        f"batches: {figures['succeeded']}/{figures['batches']} succeeded, drained in {figures['drain_s']} s, "
        f"exactly once: {figures['every_image_exactly_once']}"
    )
    return figures


def _mixed(stack: Stack, client, key: str, plan: list, args, phases: list, watch: ProcessWatch) -> dict:
    t0 = time.time()
    rounds: list[dict] = []
    drained = threading.Event()

    def traffic() -> None:
        # Rounds of /v1/tag traffic until the batches drained, at most --mixed-tag-s in all.
        while not drained.is_set() and time.time() - t0 < args.mixed_tag_s:
            rounds.append(locust_round(stack.url, key, args.mixed_users, min(20.0, args.mixed_tag_s)))

    tagging = threading.Thread(target=traffic)
    tagging.start()
    batches = submit_batches(stack.url, plan, args.submit_window_s)
    follow(batches, args.drain_timeout_s)
    drained.set()
    tagging.join()
    t1 = time.time()
    samples = [s for r in rounds for s in r.pop("samples")]
    latencies = sorted(ms for _, ms, ok in samples if ok)
    outcome = {
        "users": args.mixed_users,
        "rounds": len(rounds),
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "images_per_s": round(statistics.mean(r["images_per_s"] for r in rounds), 2) if rounds else 0.0,
        **{
            f"p{q}_ms": round(latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))], 1)
            if latencies
            else None
            for q in (50, 95, 99)
        },
    }
    phases.append(
        {
            "phase": "mixed",
            "start": t0,
            "end": t1,
            "samples": samples,
            "done": sorted(b["moments"][b["state"]] for b in batches if b.get("state") in TERMINAL),
        }
    )
    figures = {
        "tag": outcome,
        "batches": {**batch_figures(batches), **verify(client, stack.dagster, batches)},
        "api_peak_rss_mb": watch.peak_between(t0, t1),
    }
    log(
        f"mixed: /v1/tag x{args.mixed_users} {outcome.get('images_per_s')} images/s p99 {outcome.get('p99_ms')} ms; "
        f"batches drained in {figures['batches']['drain_s']} s"
    )
    return figures


def _plot(path: Path, result: dict, samples: list[dict], started: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem, done) = plt.subplots(3, 1, figsize=(11, 9), sharex=True, height_ratios=[3, 1.5, 1.5])
    for phase in result["phases"]:
        for axis in (lat, mem, done):
            axis.axvspan(phase["start"] - started, phase["end"] - started, alpha=0.06, color="gray")
        lat.text(phase["start"] - started, 1.02, phase["phase"], transform=lat.get_xaxis_transform(), fontsize=7)
        if phase.get("samples"):
            xs = [t - started for t, _, _ in phase["samples"]]
            lat.scatter(xs, [ms for _, ms, _ in phase["samples"]], s=2, alpha=0.4, label=phase["phase"])
        if phase.get("done"):
            done.step(
                [t - started for t in phase["done"]],
                range(1, len(phase["done"]) + 1),
                where="post",
                label=phase["phase"],
            )
    lat.set_yscale("log")
    lat.set_ylabel("POST /v1/tag latency, ms")
    lat.legend(loc="upper left", fontsize=7, markerscale=4)
    mem.plot([s["t"] - started for s in samples], [s["rss_mb"] for s in samples], lw=1)
    mem.set_ylabel("API RSS, MB")
    done.set_ylabel("batches finished")
    done.set_xlabel("seconds since the stack started")
    if any(p.get("done") for p in result["phases"]):
        done.legend(loc="upper left", fontsize=7)
    fig.suptitle(
        f"make bench-load ({machine()['cores']} cores; load average at start {result['machine']['load_average_at_start']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    parser.add_argument("--tag-s", type=float, default=30.0, help="seconds of /v1/tag traffic per level")
    parser.add_argument(
        "--tag-rate-per-s", type=float, default=0.0, help="the stack's per-customer /v1/tag limit (0: none)"
    )
    parser.add_argument(
        "--engine-repeats", type=int, default=10, help="the photographs this many times per engine round"
    )
    parser.add_argument("--small", type=int, default=3, help="10-image batches timed one at a time")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--customers", type=int, default=10)
    parser.add_argument("--submit-window-s", type=float, default=60.0)
    parser.add_argument("--drain-timeout-s", type=float, default=1500.0)
    parser.add_argument("--mixed-batches", type=int, default=20)
    parser.add_argument("--mixed-users", type=int, default=4)
    parser.add_argument("--mixed-tag-s", type=float, default=600.0, help="at most this long of /v1/tag traffic")
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = parser.parse_args(argv)
    if min(args.users) < 1 or args.tag_s <= 0 or args.customers < 1:
        parser.error("--users, --tag-s and --customers must be positive")
    if args.tag_rate_per_s < 0:
        parser.error("--tag-rate-per-s must be 0 (no limit) or positive")
    return args


if __name__ == "__main__":
    main()
