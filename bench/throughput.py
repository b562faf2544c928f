"""Throughput benchmark: the engine (tuned, and at the fixed batch 32 in float32) against the model's ceiling per
precision and batch, decode alone, a naive loop, Ray Data and a whole Dagster run."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import psutil
from PIL import Image

from bench.common import RESULTS, ROOT, emit, log, machine, show, table, write_results
from tagging_platform import engine, models, photos, tuning
from tagging_platform.embedded import EmbeddedS3, create_buckets, free_port
from tagging_platform.s3 import make_client
from tagging_platform.settings import PROCESS_ENV, Settings


class Plan(NamedTuple):
    images: int
    naive_images: int
    batch_sizes: tuple[int, ...]
    ceiling_s: float
    rounds: int
    ray_rounds: int
    memory_images: tuple[int, ...]
    quiet_wait_s: float


# Ray pays for its actors' start-up in every run, about as long as its 2,000 images: one round of it.
FULL = Plan(
    images=2_000,
    naive_images=300,
    batch_sizes=(1, 4, 8, 16, 32),
    ceiling_s=2.5,
    rounds=2,
    ray_rounds=1,
    memory_images=(2_000, 8_000),
    quiet_wait_s=30.0,
)
QUICK = Plan(
    images=200,
    naive_images=50,
    batch_sizes=(4, 32),
    ceiling_s=0.75,
    rounds=2,
    ray_rounds=1,
    memory_images=(),
    quiet_wait_s=2.0,
)

SEED = 20_240_611
LONG_SIDE = (300, 1_600)
QUALITY = (85, 95)
IMAGE_BUCKET = "images"
IMAGE_PREFIX = "bench/"
OUTPUT_BUCKET = "tags"
# The engine's batch before it was measured: the `engine_fixed` contender, in float32.
BATCH = 32
SAMPLE_S = 0.2
# Listening sockets are read from /proc for every process of the tree: once a second is enough.
LISTENER_EVERY = 5
RUN_TIMEOUT_S = 900
# Other people's work shares this machine: each contender starts once the rest of it is this quiet, or
# after the plan's quiet_wait_s, and what the rest of the machine used during its window is reported.
QUIET_CORES = 0.3
# Without this Ray rewrites `_node_ip_address="127.0.0.1"` to the machine's network address (its
# `resolve_ip_for_localhost`) and then binds GCS, raylet, workers and agents to every interface.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

TARGETS = {
    "engine_tuned_vs_fixed": 1.5,
    "engine_vs_naive": 3.0,
    "engine_vs_ray_data": 2.0,
    "engine_vs_serial_bound": 0.9,
    "dagster_run_vs_engine": 0.7,
    "top5_containment": 0.995,
}
MEMORY_LIMIT_MB = 1_536.0
MEMORY_SPREAD = 0.10


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.contender:
        _child(args)
        return
    started = time.perf_counter()
    plan = QUICK if args.quick else FULL
    out = args.out or RESULTS / ("throughput-quick.json" if args.quick else "throughput.json")
    log(f"making {plan.images:,} JPEGs from {len(photos.PHOTOGRAPHS)} photographs (seed {SEED}) ...")
    images = make_images(plan.images)
    port = free_port()
    settings = Settings.from_env({"TP_S3_ENDPOINT": f"http://127.0.0.1:{port}"})
    server = EmbeddedS3(port).start(settings)
    try:
        client = make_client(settings)
        upload_started = time.perf_counter()
        _upload(client, images)
        upload_s = time.perf_counter() - upload_started
        log(f"uploaded {len(images):,} images ({sum(map(len, images)) / 2**20:,.0f} MB) in {upload_s:.1f} s")
        ref = models.publish_model(client, settings.model_bucket, *models.builtin_model())
        runner = _Runner(settings.s3_endpoint, ref, plan, args.quick)
        # The first load on a machine measures the precision gate and probes the batch size, then stores both:
        # done here, outside the turns, every engine turn below is a later step that reads them.
        tuned = runner.run("tune", 0, PROCESS_ENV, rounds=1)
        # The ceiling and both engines take turns, one round each per turn, so that the machine's drift
        # (other people's work) falls on all three alike and cannot fake their ratios.
        turns = [
            {
                "ceiling": runner.run("ceiling", plan.images, PROCESS_ENV, rounds=1),
                "engine": runner.run("engine", plan.images, PROCESS_ENV, rounds=1, keep_tags=True),
                "engine_fixed": runner.run("engine_fixed", plan.images, PROCESS_ENV, rounds=1, keep_tags=True),
            }
            for _ in range(plan.rounds)
        ]
        contenders = {name: _best_turn([turn[name] for turn in turns]) for name in turns[0]}
        contenders["decode"] = runner.run("decode", plan.images, PROCESS_ENV)
        contenders["naive"] = runner.run("naive", plan.naive_images, {})
        # Ray Data runs the engine's own decode and predict at the engine's tuned precision and batch size.
        tuned_batch = contenders["engine"]["chunk_stats"]["batch_size"]
        contenders["ray_data"] = runner.run(
            "ray_data", plan.images, RAY_LOOPBACK_ENV, rounds=plan.ray_rounds, batch=tuned_batch
        )
        contenders["dagster_run"] = runner.run("dagster_run", plan.images, {}, rounds=1)
        memory = {n: runner.run("engine", n, PROCESS_ENV, rounds=1) for n in plan.memory_images}
    finally:
        server.stop()
    results = summarise(contenders, memory, plan, args.quick, upload_s, time.perf_counter() - started)
    results["tuning"] = tuned
    write_results(out, results)
    show(render(results), out, f" after {results['bench_wall_s'] / 60:.1f} min")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="200 images and fewer cases, for a smoke run of ~3 minutes"
    )
    parser.add_argument("--out", type=Path, help="results file (default bench/results/throughput.json)")
    parser.add_argument(
        "--contender", choices=sorted(CONTENDERS), help="internal: measure one contender in this process"
    )
    parser.add_argument("--endpoint", help="internal: the embedded S3 server")
    parser.add_argument("--model", help="internal: the registered model, as JSON")
    parser.add_argument("--images", type=int, help="internal: how many images the contender reads")
    parser.add_argument("--rounds", type=int, help="internal: measured rounds, the best one counts")
    parser.add_argument("--keep-tags", action="store_true", help="internal: report each image's top-5")
    parser.add_argument("--batch", type=int, default=BATCH, help="internal: Ray Data's batch size")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# Images


def make_images(count: int) -> list[bytes]:
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(make_image, range(count), chunksize=25))


def make_image(index: int) -> bytes:
    """One seeded crop of a real photograph, resized to 300-1,600 px on its long side, as a JPEG."""
    rng = random.Random(f"{SEED}-{index}")
    original = _photograph(rng.choice(sorted(photos.PHOTOGRAPHS)))
    width, height = original.size
    crop_w, crop_h = int(width * rng.uniform(0.4, 1.0)), int(height * rng.uniform(0.4, 1.0))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    crop = original.crop((left, top, left + crop_w, top + crop_h))
    scale = rng.randint(*LONG_SIDE) / max(crop_w, crop_h)
    resized = crop.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.LANCZOS)
    return photos.jpeg(resized, quality=rng.randint(*QUALITY))


@functools.cache
def _photograph(name: str) -> Image.Image:
    return photos.photograph(name)


def image_uri(index: int) -> str:
    return f"s3://{IMAGE_BUCKET}/{IMAGE_PREFIX}{index:05d}.jpg"


def _upload(client, images: list[bytes]) -> None:
    def put(item: tuple[int, bytes]) -> None:
        index, data = item
        client.put_object(
            Bucket=IMAGE_BUCKET, Key=f"{IMAGE_PREFIX}{index:05d}.jpg", Body=data, ContentType="image/jpeg"
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, enumerate(images)))


# ---------------------------------------------------------------------------------------------------
# Parent side: fresh child processes, sampled


class _TreeSampler(threading.Thread):
    """A child's process tree every SAMPLE_S: summed RSS, cumulative CPU, listening sockets; also this process's CPU
    (the embedded S3 server's, which every contender but the ceiling loads) and the whole machine's."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.me = psutil.Process()
        self.stopped = threading.Event()
        # Keyed by (pid, start time), so a process that has exited keeps the CPU it used.
        self.cpu: dict[tuple[int, float], float] = {}
        # (wall-clock time, the tree's CPU, this process's CPU, the whole machine's busy CPU), cumulative.
        self.series: list[tuple[float, float, float, float]] = []
        self.peak_rss = 0
        self.peak_private = 0
        self.max_processes = 0
        self.listeners: set[str] = set()
        self._ticks = 0

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = private = 0
        listeners = self._ticks % LISTENER_EVERY == 0
        self._ticks += 1
        for process in processes:
            try:
                with process.oneshot():
                    memory = process.memory_info()
                    rss += memory.rss
                    private += memory.rss - memory.shared
                    times = process.cpu_times()
                    self.cpu[(process.pid, process.create_time())] = times.user + times.system
                    name = process.name()
                if listeners:
                    self.listeners |= {
                        f"{c.laddr.ip}:{c.laddr.port} ({name})"
                        for c in process.net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN
                    }
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_private = max(self.peak_private, private)
        self.max_processes = max(self.max_processes, len(processes))
        own = self.me.cpu_times()
        self.series.append((time.time(), sum(self.cpu.values()), own.user + own.system, _machine_busy_s()))

    def between(self, start: float, end: float, column: int) -> float:
        """CPU seconds used between two wall-clock times, interpolated between samples."""
        return _interpolate(self.series, end, column) - _interpolate(self.series, start, column)


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - times.iowait


def _interpolate(series: list[tuple[float, ...]], at: float, column: int) -> float:
    if not series:
        return 0.0
    before = [s for s in series if s[0] <= at]
    after = [s for s in series if s[0] >= at]
    if not before:
        return series[0][column]
    if not after:
        return series[-1][column]
    low, high = before[-1], after[0]
    if high[0] == low[0]:
        return low[column]
    return low[column] + (high[column] - low[column]) * (at - low[0]) / (high[0] - low[0])


class _Runner:
    def __init__(self, endpoint: str, ref: models.ModelRef, plan: Plan, quick: bool) -> None:
        self.endpoint = endpoint
        self.ref = ref
        self.plan = plan
        self.quick = quick

    def run(
        self,
        name: str,
        images: int,
        env: dict[str, str],
        *,
        rounds: int | None = None,
        keep_tags: bool = False,
        batch: int = BATCH,
    ) -> dict:
        """Run one contender in a fresh interpreter whose environment is ours less PROCESS_ENV, plus `env`."""
        rounds = rounds or self.plan.rounds
        quiet = _wait_for_quiet(self.plan.quiet_wait_s)
        log(f"{name}: {images:,} images, {rounds} round(s), in a fresh process ...")
        command = [
            sys.executable,
            "-m",
            "bench.throughput",
            "--contender",
            name,
            "--endpoint",
            self.endpoint,
            "--model",
            json.dumps(self.ref.as_dict()),
            "--images",
            str(images),
            "--rounds",
            str(rounds),
            "--batch",
            str(batch),
        ]
        command += ["--quick"] * self.quick + ["--keep-tags"] * keep_tags
        # The naive loop and `dagster dev` must start from default process settings, whatever ours are.
        child_env = {k: v for k, v in os.environ.items() if k not in PROCESS_ENV} | env
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, text=True)
        sampler = _TreeSampler(child.pid)
        sampler.start()
        stdout, _ = child.communicate()
        sampler.stopped.set()
        sampler.join()
        if child.returncode != 0:
            raise RuntimeError(f"contender {name} exited with {child.returncode}")
        result = json.loads(stdout.strip().splitlines()[-1])
        window = result.pop("window")
        cpu_s = sampler.between(*window, column=1)
        server_cpu_s = sampler.between(*window, column=2)
        other_cpu_s = max(0.0, sampler.between(*window, column=3) - cpu_s - server_cpu_s)
        # The root's CPU after the last sample would be lost, so it reports its own; the rest is sampled.
        result.update(
            process_wall_s=round(time.perf_counter() - started, 1),
            self_peak_rss_mb=result.pop("peak_rss_mb"),
            peak_rss_mb=round(sampler.peak_rss / 2**20, 1),
            # RSS less file-backed and shared pages: what the tree holds for itself, once for the whole tree.
            peak_private_mb=round(sampler.peak_private / 2**20, 1),
            cpu_s=round(cpu_s, 1),
            cpu_s_per_image=round(cpu_s / result["measured_images"], 4) if result.get("measured_images") else None,
            s3_server_cpu_s=round(server_cpu_s, 1),
            other_load_cores=round(other_cpu_s / (window[1] - window[0]), 2),
            busy_cores_before=quiet,
            process_cpu_s=round(sum(sampler.cpu.values()), 1),
            processes_max=sampler.max_processes,
            listeners=sorted(sampler.listeners),
            only_loopback_listeners=all(_is_loopback(entry) for entry in sampler.listeners),
        )
        log(f"{name}: {result['ips']:,.1f} images/s, peak RSS {result['peak_rss_mb']:,.0f} MB, {result['cpu_s']} CPU s")
        return result


def _wait_for_quiet(limit_s: float) -> float:
    """Cores busy elsewhere on the machine, measured over a second, once under QUIET_CORES or after limit_s."""
    deadline = time.perf_counter() + limit_s
    while True:
        busy = psutil.cpu_percent(interval=1.0) / 100 * psutil.cpu_count()
        if busy < QUIET_CORES or time.perf_counter() > deadline:
            return round(busy, 2)


def _is_loopback(listener: str) -> bool:
    address = listener.split(" ")[0].rsplit(":", 1)[0]
    return address.startswith(("127.", "::ffff:127.")) or address in ("::1", "::ffff:127.0.0.1")


# ---------------------------------------------------------------------------------------------------
# Child side: one contender per fresh process


def _child(args: argparse.Namespace) -> None:
    plan = QUICK if args.quick else FULL
    settings = Settings.from_env({"TP_S3_ENDPOINT": args.endpoint})
    client = make_client(settings)
    ref = models.ModelRef(**json.loads(args.model))
    # Beyond the uploaded objects the URIs repeat: a chunk may list an image twice, at different positions.
    uris = [image_uri(i % plan.images) for i in range(args.images)]
    contender = CONTENDERS[args.contender]
    if args.contender == "ray_data":
        contender = functools.partial(contender, batch=args.batch)
    result = contender(client, settings, ref, uris, args.rounds, plan, args.keep_tags)
    emit({**result, "self_cpu_s": round(time.process_time(), 1)})


def _best(rounds: list[dict]) -> dict:
    """The fastest round's figures, with every round's rate: this machine drifts 20-30% within an hour."""
    best = max(rounds, key=lambda r: r["ips"])
    return {
        "ips": round(best["ips"], 2),
        "wall_s": round(best["wall_s"], 2),
        "measured_images": best["images"],
        "rounds_ips": [round(r["ips"], 2) for r in rounds],
        "window": [best["t0"], best["t1"]],
    }


def _best_turn(turns: list[dict]) -> dict:
    """A contender's fastest turn, with every turn's rate."""
    best = dict(max(turns, key=lambda r: r["ips"]))
    best["turns_ips"] = [r["ips"] for r in turns]
    return best


def _timed(images: int, work) -> dict:
    t0, started = time.time(), time.perf_counter()
    extra = work() or {}
    wall = time.perf_counter() - started
    return {"images": images, "wall_s": wall, "ips": images / wall, "t0": t0, "t1": time.time(), **extra}


def _ceiling(client, settings, ref, uris, rounds, plan, keep_tags) -> dict:
    """The compiled model alone on random inputs, per precision the CPU computes natively and per batch size."""
    import torch

    card = models.read_card(client, ref)
    artifact = models.load_artifact(client, ref, card)
    # Emulated bfloat16 (a CPU without native support) runs many times slower than float32: not a contender.
    precisions = [tuning.FLOAT32, *filter(None, [tuning.native_lower_precision("cpu")])]
    forms = {
        **{
            precision: engine._prepare_for_inference(models.load_network(card, artifact, "cpu"), card, "cpu", precision)
            for precision in precisions
        },
        "plain": models.load_network(card, artifact, "cpu"),
    }
    rates = {form: dict.fromkeys(plan.batch_sizes, 0.0) for form in forms}
    t0 = time.time()
    for _ in range(rounds):
        for form, network in forms.items():
            for size in plan.batch_sizes:
                inputs = torch.randn(size, 3, card.preprocessing.crop, card.preprocessing.crop)
                if form != "plain":
                    inputs = inputs.to(tuning.torch_dtype(form)).contiguous(memory_format=torch.channels_last)
                rates[form][size] = max(rates[form][size], _forward_rate(network, inputs, plan.ceiling_s))
    best = {form: max(by_size, key=by_size.get) for form, by_size in rates.items()}
    tuned = max(precisions, key=lambda precision: rates[precision][best[precision]])
    return {
        "ips": round(rates[tuned][best[tuned]], 2),
        "precision": tuned,
        "fixed_ips": round(rates[tuning.FLOAT32][BATCH], 2) if BATCH in plan.batch_sizes else None,
        "plain_ips": round(rates["plain"][best["plain"]], 2),
        "best_batch": best,
        "ips_by_batch": {form: {str(k): round(v, 2) for k, v in by_size.items()} for form, by_size in rates.items()},
        "precisions_measured": precisions,
        "cpu_bf16_native": tuning.native_lower_precision("cpu") is not None,
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(time.time() - t0, 1),
        "window": [t0, time.time()],
    }


def _forward_rate(network, inputs, seconds: float) -> float:
    import torch

    with torch.inference_mode():
        # TorchScript's profiling executor optimises a frozen graph over its first calls for each shape.
        for _ in range(3):
            network(inputs)
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            network(inputs)
            calls += 1
    return calls * inputs.shape[0] / (time.perf_counter() - started)


def _decode(client, settings, ref, uris, rounds, plan, keep_tags) -> dict:
    tagger = engine.Tagger(models.read_card(client, ref), ref, None, "cpu", fetch_workers=settings.fetch_workers)

    def work() -> dict:
        with ThreadPoolExecutor(tagger.fetch_workers, thread_name_prefix="fetch-decode") as pool:
            decoded = list(
                pool.map(lambda item: _drop_pixels(tagger._fetch_and_decode(client, *item)), enumerate(uris))
            )
        return {
            "errors": sum(d.error is not None for d in decoded),
            "fetch_s": sum(d.fetch_s for d in decoded),
            "decode_s": sum(d.decode_s for d in decoded),
        }

    measured = [_timed(len(uris), work) for _ in range(rounds)]
    best = max(measured, key=lambda r: r["ips"])
    return {
        **_best(measured),
        "fetch_workers": tagger.fetch_workers,
        "errors": best["errors"],
        "fetch_ms_per_image": round(1000 * best["fetch_s"] / len(uris), 2),
        "decode_ms_per_image": round(1000 * best["decode_s"] / len(uris), 2),
    }


def _drop_pixels(decoded):
    # Only the timings are kept: holding every tensor would make memory, not decoding, the limit.
    return dataclasses.replace(decoded, pixels=None)


def _naive(client, settings, ref, uris, rounds, plan, keep_tags) -> dict:
    import torch
    from torchvision.models import MobileNet_V2_Weights

    card = models.read_card(client, ref)
    network = models.load_network(card, models.load_artifact(client, ref, card), "cpu")
    preprocess = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    top5: list[list[str]] = []

    def work() -> None:
        top5.clear()
        for index, uri in enumerate(uris):
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            image = Image.open(io.BytesIO(data)).convert("RGB")
            with torch.no_grad():
                probabilities = network(preprocess(image).unsqueeze(0)).softmax(dim=1)[0]
            confidences, classes = probabilities.topk(5)
            labels = [card.labels[c] for c in classes.tolist()]
            top5.append(labels)
            body = json.dumps(
                {"image": uri, "tags": [{"name": n, "confidence": p} for n, p in zip(labels, confidences.tolist())]}
            )
            client.put_object(Bucket=OUTPUT_BUCKET, Key=f"bench-naive/{index:05d}.json", Body=body.encode())

    measured = [_timed(len(uris), work) for _ in range(rounds)]
    return {**_best(measured), "torch_threads": torch.get_num_threads(), "top5": top5}


def _tune(client, settings, ref, uris, rounds, plan, keep_tags) -> dict:
    """The first loads of the model on this machine: the gate in the device's lower precision, the probe per precision.

    Its "ips" is the probe's best rate in the precision the engine will run.
    """
    t0 = time.time()
    taggers = {p: engine.Tagger.load(client, ref, device="cpu", precision=p) for p in ("auto", tuning.FLOAT32)}
    probes = {
        tagger.precision: {
            "batch_size": tagger.batch_size,
            "memory_format": tagger.memory_format,
            "source": tagger.batch_choice.source,
            "ips": tagger.batch_choice.rates,
            "load_s": round(tagger.load_s, 1),
        }
        for tagger in taggers.values()
    }
    chosen = taggers["auto"]
    return {
        "ips": max(chosen.batch_choice.rates.values(), default=0.0),
        "wall_s": round(time.time() - t0, 1),
        "window": [t0, time.time()],
        "precision": chosen.precision,
        "probe": probes,
        "gate": tuning.read_gate(client, ref),
        "machine": tuning.machine_identity("cpu"),
        "cpu_bf16_native": tuning.native_lower_precision("cpu") == "bfloat16",
    }


def _engine(client, settings, ref, uris, rounds, plan, keep_tags) -> dict:
    """The engine tuned: the precision the gate allows and the batch size measured best (probed on its first load)."""
    options = {"precision": "auto", "batch_size": 0}
    return _engine_with(client, settings, ref, uris, rounds, keep_tags, options)


def _engine_fixed(client, settings, ref, uris, rounds, plan, keep_tags) -> dict:
    """The engine as it ran before it was tuned: batch 32, float32."""
    options = {"precision": tuning.FLOAT32, "batch_size": BATCH}
    return _engine_with(client, settings, ref, uris, rounds, keep_tags, options)


def _engine_with(client, settings, ref, uris, rounds, keep_tags, tuned: dict) -> dict:
    import torch

    options = {**tuned, "fetch_workers": settings.fetch_workers, "top_k": 5, "min_confidence": 0.0}

    def load() -> engine.Tagger:
        return engine.Tagger.load(client, ref, device="cpu", **options)

    measured = []
    for _ in range(rounds):
        # A fresh manifest ETag per round gives a fresh result key: run_chunk skips a chunk it finds done.
        spec = engine.ChunkSpec(
            partition="bench",
            manifest="s3://manifests/bench.json",
            manifest_etag=uuid.uuid4().hex,
            index=0,
            positions=tuple(range(len(uris))),
            images=tuple(uris),
            model=ref,
        )
        stats: list[engine.ChunkStats] = []
        measured.append(
            _timed(
                len(uris),
                lambda stats=stats, spec=spec: stats.append(
                    engine.run_chunk(client, settings.warehouse_bucket, spec, "bench", load)
                ),
            )
        )
        measured[-1].update(stats=stats[0].as_dict(), spec=spec)
    best = max(measured, key=lambda r: r["ips"])
    result = {
        **_best(measured),
        **options,
        "torch_threads": torch.get_num_threads(),
        "timed": "run_chunk, which loads the model (Tagger.load) before tagging and writes the Parquet after",
        "tag_ips": best["stats"]["images_per_s"],
        "chunk_stats": best["stats"],
    }
    if keep_tags:
        rows = engine.read_chunk(client, settings.warehouse_bucket, best["spec"]).sort_by("position").to_pylist()
        result["top5"] = [[t["name"] for t in row["tags"] or []] for row in rows]
        result["top1"] = [row["top_tag"] for row in rows]
    return result


def _ray_data(client, settings, ref, uris, rounds, plan, keep_tags, batch: int = BATCH) -> dict:
    import pyarrow.fs
    import ray
    import ray.data

    started = time.perf_counter()
    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=os.cpu_count(),
        runtime_env={"env_vars": dict(PROCESS_ENV)},
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    init_s = time.perf_counter() - started
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    host = settings.s3_endpoint.removeprefix("http://")
    filesystem = pyarrow.fs.S3FileSystem(
        endpoint_override=host, scheme="http", access_key="embedded", secret_key="embedded", region=settings.aws_region
    )
    cpus = os.cpu_count()
    actor_args = (settings.s3_endpoint, ref.as_dict())

    def stage(cls, actors: int):
        # A whole core per actor, as Ray schedules them; Ray sets an actor's OMP_NUM_THREADS to its num_cpus.
        return functools.partial(
            ray.data.Dataset.map_batches,
            fn=cls,
            fn_constructor_args=actor_args,
            batch_size=batch,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
        )

    variants = {
        "fused": [stage(_RayFused, cpus)],
        "staged": [stage(_RayFetchDecode, max(1, cpus - 1)), stage(_RayModel, 1)],
    }
    by_variant = {}
    try:
        for variant, stages in variants.items():
            measured = []
            for round_ in range(rounds):
                prefix = f"bench-ray/{variant}-{round_}-{uuid.uuid4().hex[:8]}"

                def work(stages=stages, prefix=prefix) -> dict:
                    ds = ray.data.from_items(
                        [{"image": u} for u in uris], override_num_blocks=math.ceil(len(uris) / batch)
                    )
                    for apply in stages:
                        ds = apply(ds)
                    # Writing is I/O: at its default of a whole core it waits for actors that hold every core.
                    ds.write_json(f"{OUTPUT_BUCKET}/{prefix}", filesystem=filesystem, ray_remote_args={"num_cpus": 0})
                    return {"prefix": prefix}

                measured.append(_timed(len(uris), work))
                written = _count_json_lines(client, OUTPUT_BUCKET, measured[-1]["prefix"])
                if written != len(uris):
                    raise RuntimeError(f"ray_data {variant} wrote {written} rows for {len(uris)} images")
            by_variant[variant] = _best(measured)
        env_at_start = ray.get(ray.remote(num_cpus=0)(_process_env_at_start).remote())
    finally:
        ray.shutdown()
    better = max(by_variant, key=lambda v: by_variant[v]["ips"])
    return {
        **by_variant[better],
        "variant": better,
        "variants": {
            v: {k: r[k] for k in ("ips", "wall_s", "measured_images", "rounds_ips")} for v, r in by_variant.items()
        },
        "ray_init_s": round(init_s, 1),
        "batch_size": batch,
        "given": "the engine's tuned batch size; its actors load the model with Tagger.load, so the same precision",
        "process_env_at_worker_start": env_at_start,
        "ray_version": ray.__version__,
    }


def _count_json_lines(client, bucket: str, prefix: str) -> int:
    lines = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            lines += client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().count(b"\n")
    return lines


def _process_env_at_start() -> bool:
    """Whether PROCESS_ENV reached a worker's environment at exec, where glibc reads it, not only os.environ."""
    environ = Path("/proc/self/environ").read_bytes().split(b"\0")
    return all(f"{k}={v}".encode() in environ for k, v in PROCESS_ENV.items())


class _RayTagger:
    """The engine's own decode and predict (and compiled model, where it predicts), in a Ray actor."""

    predicts = True

    def __init__(self, endpoint: str, ref: dict) -> None:
        self.client = make_client(Settings.from_env({"TP_S3_ENDPOINT": endpoint}))
        model = models.ModelRef(**ref)
        if self.predicts:
            self.tagger = engine.Tagger.load(self.client, model, device="cpu", top_k=5, min_confidence=0.0)
        else:
            self.tagger = engine.Tagger(models.read_card(self.client, model), model, None, "cpu")

    def fetch_decode(self, uris):
        import numpy as np

        pixels = []
        for uri in uris:
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            pixels.append(self.tagger.pixels(self.client.get_object(Bucket=bucket, Key=key)["Body"].read()).numpy())
        return np.stack(pixels)

    def predict(self, uris, pixels) -> dict:
        import torch

        predictions = self.tagger.predict(torch.from_numpy(pixels))
        return {
            "image": uris,
            "top_tag": [top for _, top, _ in predictions],
            "top_confidence": [conf for _, _, conf in predictions],
            "tags": [json.dumps(kept) for kept, _, _ in predictions],
        }


class _RayFused(_RayTagger):
    def __call__(self, batch: dict) -> dict:
        return self.predict(batch["image"], self.fetch_decode(batch["image"]))


class _RayFetchDecode(_RayTagger):
    predicts = False

    def __call__(self, batch: dict) -> dict:
        return {"image": batch["image"], "pixels": self.fetch_decode(batch["image"])}


class _RayModel(_RayTagger):
    def __call__(self, batch: dict) -> dict:
        return self.predict(batch["image"], batch["pixels"])


class _SharedS3:
    """Stands in for LocalPlatform's own embedded server: the Dagster run reads the parent's, like every contender."""

    def __init__(self, port: int) -> None:
        self.port = port

    def start(self, settings: Settings) -> _SharedS3:
        create_buckets(make_client(settings), settings)
        return self

    def stop(self) -> None:
        pass


def _dagster_run(client, settings, ref, uris, rounds, plan, keep_tags) -> dict:
    from tagging_platform import cli, local
    from tagging_platform.manifests import partition_key_for

    local.EmbeddedS3 = _SharedS3
    with ThreadPoolExecutor(16) as pool:
        images = list(pool.map(lambda i: (f"{i:05d}.jpg", _get(client, uris[i])), range(len(uris))))
    overrides = {"TP_MAX_CHUNK_IMAGES": str(len(uris)), "TP_MIN_CHUNK_IMAGES": "1", "TP_SENSOR_INTERVAL_S": "1"}
    port = int(settings.s3_endpoint.rsplit(":", 1)[1])
    with tempfile.TemporaryDirectory(prefix="bench-dagster-") as home:
        started = time.perf_counter()
        platform = local.LocalPlatform(
            ROOT / "workspace.yaml", s3_port=port, dagster_home=Path(home), settings_overrides=overrides
        )
        with platform:
            up_s = time.perf_counter() - started
            registration_s = _wait_for_registration(platform)
            upload_started = time.perf_counter()
            key = cli.upload_batch(platform.s3(), platform.settings, f"bench-{uuid.uuid4().hex[:8]}", images)
            # The manifest is upload_batch's last PUT: the sensor can see nothing before it.
            t0, measured_from = time.time(), time.perf_counter()
            upload_s = measured_from - upload_started
            partition = partition_key_for(key, platform.settings.manifest_prefix)
            marker_s = _wait_for_marker(platform, partition) - measured_from
            t1 = time.time()
            run = platform.wait_for_run(partition, timeout_s=RUN_TIMEOUT_S, poll_s=0.5)
            run_end_s = time.perf_counter() - measured_from
            if run["status"] != "SUCCESS":
                raise RuntimeError(f"the Dagster run ended {run['status']}; see {platform.log_path}")
            timeline = _timeline(platform.dagster, run["runId"], t0)
    return {
        "ips": round(len(uris) / marker_s, 2),
        "wall_s": round(marker_s, 2),
        "measured_images": len(uris),
        "window": [t0, t1],
        "measured_from": "the manifest's PUT (upload_batch's last request) to the completion marker",
        "to_run_end_s": round(run_end_s, 2),
        "platform_start_s": round(up_s, 1),
        "model_registration_s": round(registration_s, 1),
        "upload_batch_s": round(upload_s, 1),
        "upload_batch_note": "upload_batch PUTs its own copy of every image (same bytes) before the manifest; not timed",
        **timeline,
    }


def _get(client, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _wait_for_registration(platform) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < RUN_TIMEOUT_S:
        runs = platform.dagster.runs(job="publish_model")
        if any(r["status"] == "SUCCESS" for r in runs):
            return time.perf_counter() - started
        if any(r["status"] in ("FAILURE", "CANCELED") for r in runs):
            raise RuntimeError(f"model registration failed; see {platform.log_path}")
        time.sleep(0.5)
    raise TimeoutError("the model registration run did not finish")


def _wait_for_marker(platform, partition: str) -> float:
    from tagging_platform.publishing import MARKER_NAME

    client, settings = platform.s3(), platform.settings
    prefix = f"{settings.output_prefix}{partition}/"
    deadline = time.perf_counter() + RUN_TIMEOUT_S
    while time.perf_counter() < deadline:
        listed = client.list_objects_v2(Bucket=settings.output_bucket, Prefix=prefix).get("Contents", [])
        if any(item["Key"].endswith(MARKER_NAME) for item in listed):
            return time.perf_counter()
        time.sleep(0.2)
    raise TimeoutError(f"no completion marker under s3://{settings.output_bucket}/{prefix}; see {platform.log_path}")


_RUN_TIMES = """
query RunTimes($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { creationTime startTime endTime } } }"""

_TIMELINE_EVENTS = """
  ... on MessageEvent { timestamp stepKey eventType }
  ... on ExecutionStepOutputEvent {
    metadataEntries { label ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue } }
  }
"""


def _timeline(dagster, run_id: str, t0: float) -> dict:
    """Where a run's time went, in seconds from the manifest's PUT, from its event log."""
    events = dagster.log_events(run_id, _TIMELINE_EVENTS)
    run = dagster.query(_RUN_TIMES, {"runId": run_id})["runOrError"]
    steps: dict[str, dict] = {}
    tag_chunk_stats = {}
    for event in events:
        at = int(event["timestamp"]) / 1000 - t0
        step = event.get("stepKey")
        kind = event.get("eventType")
        if step and kind in ("STEP_WORKER_STARTING", "STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
            steps.setdefault(step, {})[kind.lower()] = round(at, 2)
        if step and "tag_chunk" in step and event["__typename"] == "ExecutionStepOutputEvent":
            tag_chunk_stats = {e["label"]: e.get("floatValue", e.get("intValue")) for e in event["metadataEntries"]}
    for marks in steps.values():
        if "step_start" in marks and "step_success" in marks:
            marks["duration_s"] = round(marks["step_success"] - marks["step_start"], 2)
        if "step_worker_starting" in marks and "step_start" in marks:
            marks["process_start_s"] = round(marks["step_start"] - marks["step_worker_starting"], 2)
    tag_chunk = next((marks for key, marks in steps.items() if "tag_chunk" in key), {})
    return {
        "run_created_s": round(run["creationTime"] - t0, 2),
        "run_started_s": round(run["startTime"] - t0, 2),
        "run_ended_s": round(run["endTime"] - t0, 2),
        "tag_chunk_step_s": tag_chunk.get("duration_s"),
        "tag_chunk_stats": tag_chunk_stats,
        "steps": dict(sorted(steps.items(), key=lambda item: item[1].get("step_start", math.inf))),
    }


CONTENDERS = {
    "tune": _tune,
    "ceiling": _ceiling,
    "decode": _decode,
    "naive": _naive,
    "engine": _engine,
    "engine_fixed": _engine_fixed,
    "ray_data": _ray_data,
    "dagster_run": _dagster_run,
}


# ---------------------------------------------------------------------------------------------------
# Results


def summarise(contenders: dict, memory: dict, plan: Plan, quick: bool, upload_s: float, wall_s: float) -> dict:
    naive_top5 = contenders["naive"].pop("top5")
    compared = len(naive_top5)
    agreement = {}
    for name in ("engine", "engine_fixed"):
        top5, top1 = contenders[name].pop("top5"), contenders[name].pop("top1")
        agreement[name] = {
            "top1_agreement": round(sum(top1[i] == naive_top5[i][0] for i in range(compared)) / compared, 4),
            "top5_containment": round(sum(naive_top5[i][0] in top5[i] for i in range(compared)) / compared, 4),
        }
    tuned = contenders["engine"]["chunk_stats"]
    ips = {name: result["ips"] for name, result in contenders.items()}
    serial_bound = 1 / (1 / ips["ceiling"] + 1 / ips["decode"])
    results = {
        "machine": machine(),
        "quick": quick,
        "images": plan.images,
        "naive_images": plan.naive_images,
        "plan_batch_sizes": list(plan.batch_sizes),
        "naive_note": f"the naive loop reads the first {plan.naive_images:,} of the {plan.images:,} images: it is too slow for all",
        "upload_s": round(upload_s, 1),
        "ceiling_ips": ips["ceiling"],
        "ceiling_precision": contenders["ceiling"]["precision"],
        "ceiling_ips_by_batch": contenders["ceiling"]["ips_by_batch"],
        "ceiling_plain_ips": contenders["ceiling"]["plain_ips"],
        "decode_ips": ips["decode"],
        "naive_ips": ips["naive"],
        "engine_ips": ips["engine"],
        "engine_fixed_ips": ips["engine_fixed"],
        "engine_tuned": {
            k: tuned[k] for k in ("precision", "batch_size", "memory_format", "batch_source", "probe_ips")
        },
        "engine_tuned_vs_fixed": round(ips["engine"] / ips["engine_fixed"], 3),
        "ray_data_ips": ips["ray_data"],
        "dagster_run_ips": ips["dagster_run"],
        "serial_bound_ips": round(serial_bound, 2),
        "engine_vs_ceiling": round(ips["engine"] / ips["ceiling"], 3),
        "engine_vs_serial_bound": round(ips["engine"] / serial_bound, 3),
        "engine_vs_naive": round(ips["engine"] / ips["naive"], 3),
        "engine_vs_ray_data": round(ips["engine"] / ips["ray_data"], 3),
        "ray_data_given": {"batch_size": contenders["ray_data"]["batch_size"], "precision": tuned["precision"]},
        "dagster_run_vs_engine": round(ips["dagster_run"] / ips["engine"], 3),
        "engine_peak_rss_mb": contenders["engine"]["peak_rss_mb"],
        "ray_data_peak_rss_mb": contenders["ray_data"]["peak_rss_mb"],
        "top1_agreement": agreement["engine"]["top1_agreement"],
        "top5_containment": agreement["engine"]["top5_containment"],
        "agreement_with_naive": agreement,
        "agreement_images": compared,
    }
    if memory:
        low, high = (memory[n]["peak_rss_mb"] for n in plan.memory_images)
        results.update(
            {
                f"engine_peak_rss_mb_{plan.memory_images[0]}": low,
                f"engine_peak_rss_mb_{plan.memory_images[1]}": high,
                "engine_memory_spread": round(abs(high - low) / low, 3),
                "engine_memory_cases": memory,
            }
        )
    results["targets"] = _targets(results)
    results["contenders"] = contenders
    results["bench_wall_s"] = round(wall_s, 1)
    return results


def _targets(results: dict) -> dict:
    targets = {
        name: {"value": results[name], "target": f">= {minimum:g}", "met": results[name] >= minimum}
        for name, minimum in TARGETS.items()
    }
    peaks = [v for k, v in results.items() if k.startswith("engine_peak_rss_mb_")] or [results["engine_peak_rss_mb"]]
    spread = results.get("engine_memory_spread")
    targets["engine_memory"] = {
        "value": {"peak_rss_mb": peaks, "spread": spread},
        "target": f"< {MEMORY_LIMIT_MB:g} MB, within {MEMORY_SPREAD:.0%} between 2,000 and 8,000 images",
        "met": max(peaks) < MEMORY_LIMIT_MB and (spread is None or spread <= MEMORY_SPREAD),
        **({"note": "--quick skips the 8,000-image case: only the limit is checked"} if spread is None else {}),
    }
    return targets


def render(results: dict) -> str:
    rows = [
        (
            name,
            r.get("measured_images", "-"),
            r["ips"],
            r["wall_s"],
            r["peak_rss_mb"],
            r["cpu_s"],
            r["s3_server_cpu_s"],
            "yes" if r["only_loopback_listeners"] else "NO",
        )
        for name, r in results["contenders"].items()
    ]
    ceiling = results["contenders"]["ceiling"]
    rows.insert(1, ("ceiling (plain eager)", "-", ceiling["plain_ips"], "-", "-", "-", "-", "-"))
    if ceiling.get("fixed_ips"):
        rows.insert(2, (f"ceiling (float32, batch {BATCH})", "-", ceiling["fixed_ips"], "-", "-", "-", "-", "-"))
    ray = results["contenders"]["ray_data"]
    for variant, r in ray["variants"].items():
        rows.append((f"  ray_data {variant}", r.get("measured_images", "-"), r["ips"], r["wall_s"], "-", "-", "-", "-"))
    for images, r in results.get("engine_memory_cases", {}).items():
        rows.append(
            (
                f"engine, {int(images):,}-image chunk",
                images,
                r["ips"],
                r["wall_s"],
                r["peak_rss_mb"],
                r["cpu_s"],
                r["s3_server_cpu_s"],
                "-",
            )
        )
    contenders = table(
        f"Throughput on {results['machine']['cores']} cores, no accelerator ({results['images']:,} images)",
        ("contender", "images", "images/s", "wall s", "peak RSS MB", "CPU s", "S3 server CPU s", "loopback only"),
        rows,
    )
    figures = [(k, results[k]) for k in ("serial_bound_ips", "engine_vs_ceiling", "top1_agreement")]
    figures += [(f"engine tuned: {k}", v) for k, v in results["engine_tuned"].items()]
    figures += [
        (f"{name} vs naive: {k}", v) for name, a in results["agreement_with_naive"].items() for k, v in a.items()
    ]
    ceiling_rows = [
        (form, *(by_size.get(str(size), "-") for size in results["plan_batch_sizes"]))
        for form, by_size in results["ceiling_ips_by_batch"].items()
    ]
    targets = [(name, _shown(t["value"]), t["target"], t["met"]) for name, t in results["targets"].items()]
    probe_rows = [
        (precision, f"{probe['batch_size']}/{probe['memory_format']}", _shown(probe["ips"]))
        for precision, probe in results.get("tuning", {}).get("probe", {}).items()
    ]
    return "\n\n".join(
        [
            contenders,
            table("Ceiling, images/s per batch size", ("form", *map(str, results["plan_batch_sizes"])), ceiling_rows),
            table(
                "Batch probe on the first load, images/s per batch/format", ("precision", "chosen", "cells"), probe_rows
            ),
            table("Derived", ("figure", "value"), figures),
            table("Targets", ("target", "value", "wanted", "met"), targets),
        ]
    )


def _shown(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return f"{value:,.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
