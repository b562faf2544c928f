"""Scale benchmark: manifests of 1M and 10M images, the listing sensor over a 100k-object bucket, the planner, and
the GPU economics of the shipped settings (bench/economics.py, written to economics.json)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from bench import economics
from bench.common import RESULTS, emit, log, machine, peak_rss_mb, run_fresh, show, table, write_results
from tagging_platform import intake
from tagging_platform.manifests import parse_manifest
from tagging_platform.planning import plan_chunks, planning_options
from tagging_platform.settings import PROCESS_ENV, Settings


class Sizes(NamedTuple):
    parse_images: int
    big_images: int
    objects: int


FULL = Sizes(parse_images=1_000_000, big_images=10_000_000, objects=100_000)
QUICK = Sizes(parse_images=100_000, big_images=1_000_000, objects=5_000)

FORMATS = ("native", "sagemaker", "jsonl")
# The shipped settings' planner inputs, so the figures are what a deployment does without overrides.
PLAN = {k: v for k, v in planning_options(Settings()).items() if k not in ("deadline_min", "gpu_hour_usd")}
PARSE_DEADLINE_MIN = 60
PARSE_TARGET_S = 10.0
PARSE_TARGET_MB = 500.0
PLANNER_IMAGES = 1_000_000
DEADLINES_MIN = (20, 30, 60, 120, 240)
GPU_HOUR_USD = 2.5

TICK_TARGET_S = 10.0
MAX_KEYS_PER_TICK = 10_000
NEW_MANIFESTS = 10
UPLOAD_THREADS = 16
# moto's server handles about 120 PUTs/s on a 2-core machine whatever the client does (each PUT costs
# ~6 ms of server-side Python), so 100,000 objects would take ~14 minutes over HTTP. The PUT rate is
# measured on a first batch; when the rest would overrun this budget it is stored straight into the
# server's in-process backend instead. The ticks list through HTTP either way, so what they measure is
# the same: the bucket's contents, not how they got there.
UPLOAD_BUDGET_S = 360.0
PROBE_OBJECTS = 2_000
MANIFEST_BODY = b'{"images":["s3://images/a.jpg"]}'

# Built a batch at a time so that the parent stays small while it writes a 10M-image manifest.
WRITE_BATCH = 100_000
# (head, entry, separator, tail) of each format; entries are distinct images under s3://images/.
SHAPES = {
    "native": ('{"id":"bench","model":"mobilenet_v2","images":[', '"s3://images/{}"', ",", "]}\n"),
    "sagemaker": ('[{"prefix":"s3://images/"},', '"{}"', ",", "]\n"),
    "jsonl": ("", '{{"source-ref":"s3://images/{}"}}', "\n", "\n"),
}


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.one == "parse":
        emit(_parse_case(Path(args.path)))
        return
    if args.one == "sensor":
        emit(_sensor_case(args.objects))
        return
    sizes = QUICK if args.quick else FULL
    # A smoke run must not overwrite the full run's results.
    out = args.out or RESULTS / ("scale-quick.json" if args.quick else "scale.json")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        parse = {fmt: _against_target(_measure_parse(workdir, fmt, sizes.parse_images)) for fmt in FORMATS}
        big = _per_million(_measure_parse(workdir, "jsonl", sizes.big_images))
    log(f"sensor: {sizes.objects:,} objects in a fresh process ...")
    sensor = run_fresh("bench.scale", ["--one", "sensor", "--objects", str(sizes.objects)])
    results = {
        "machine": machine(),
        "quick": args.quick,
        "parse_1m": parse,
        "parse_10m_jsonl": big,
        "sensor_tick_100k": sensor,
        "planner_1m": _planner(),
    }
    write_results(out, results)
    if not args.quick:
        log("economics: plans with the shipped settings, and planning a 1M manifest against a 900,000-ETag index ...")
        economics_results = economics.measure()
        write_results(RESULTS / "economics.json", economics_results)
        print(economics.render(economics_results), flush=True)
    show(render(results), out)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run of a minute or two")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/scale.json)")
    parser.add_argument("--one", choices=("parse", "sensor"), help="internal: measure one case in this process")
    parser.add_argument("--path", help="internal: the manifest a parse case reads")
    parser.add_argument("--objects", type=int, help="internal: the bucket size of a sensor case")
    return parser.parse_args(argv)


def write_manifest(path: Path, fmt: str, images: int) -> None:
    head, entry, separator, tail = SHAPES[fmt]
    with path.open("w", encoding="ascii") as out:
        out.write(head)
        for start in range(0, images, WRITE_BATCH):
            if start:
                out.write(separator)
            stop = min(images, start + WRITE_BATCH)
            out.write(separator.join(entry.format(_image_key(i)) for i in range(start, stop)))
        out.write(tail)


def _image_key(i: int) -> str:
    # Shaped like a camera upload: ~45-character keys, 10,000 to a folder.
    return f"customer-a/2024/06/{i // 10_000:04d}/IMG_{i:08d}.jpg"


def _measure_parse(workdir: Path, fmt: str, images: int) -> dict:
    path = workdir / f"manifest-{fmt}-{images}.json"
    log(f"{fmt}: writing {images:,} images ...")
    write_manifest(path, fmt, images)
    manifest_mb = path.stat().st_size / 2**20
    log(f"{fmt}: reading, parsing, tabling and planning {manifest_mb:,.0f} MB in a fresh process ...")
    # The manifest asset runs in a step process, and every step process gets PROCESS_ENV's malloc settings.
    result = run_fresh("bench.scale", ["--one", "parse", "--path", str(path)], env=PROCESS_ENV)
    path.unlink()
    if result["format"] != fmt or result["images"] != images:
        raise RuntimeError(f"the {fmt} manifest of {images} images was read as {result['format']}, {result['images']}")
    return {"manifest_mb": round(manifest_mb, 1), **result}


def _against_target(result: dict) -> dict:
    met = result["seconds"] < PARSE_TARGET_S and result["peak_rss_mb"] < PARSE_TARGET_MB
    return {**result, "target": f"< {PARSE_TARGET_S:g} s and < {PARSE_TARGET_MB:g} MB", "meets_target": met}


def _per_million(result: dict) -> dict:
    millions = result["images"] / 1e6
    return {
        **result,
        "mb_per_million_images": round(result["peak_rss_mb"] / millions, 1),
        "table_mb_per_million_images": round(result["table_mb"] / millions, 1),
        "peak_rss_over_table": round(result["peak_rss_mb"] / result["table_mb"], 2),
    }


def _parse_case(path: Path) -> dict:
    """Child: what the manifest asset does with a manifest's body, then the plan, timed phase by phase."""
    imports_mb = peak_rss_mb()
    started = time.perf_counter()
    # A stream, as an S3 response body is: JSON Lines is parsed as it is read, never held whole, so
    # reading is part of parsing.
    with path.open("rb") as stream:
        manifest = parse_manifest(stream, f"file://{path}", allowed_image_prefixes=("images",))
    parsed = time.perf_counter()
    frame = manifest.table()
    tabled = time.perf_counter()
    plan = plan_chunks(len(frame), deadline_min=PARSE_DEADLINE_MIN, **PLAN)
    planned = time.perf_counter()
    return {
        "format": manifest.format,
        "images": len(frame),
        "seconds": round(planned - started, 3),
        "parse_s": round(parsed - started, 3),
        "table_s": round(tabled - parsed, 3),
        "plan_s": round(planned - tabled, 6),
        "rss_after_imports_mb": round(imports_mb, 1),
        "table_mb": round(frame.memory_usage(deep=True).sum() / 2**20, 1),
        "plan": plan.as_dict(),
    }


class _TimedListing:
    """The S3 client as scan_manifests uses it, adding up the time its listing calls take."""

    def __init__(self, client) -> None:
        self._client = client
        self.seconds = 0.0

    def list_objects_v2(self, **kwargs):
        started = time.perf_counter()
        try:
            return self._client.list_objects_v2(**kwargs)
        finally:
            self.seconds += time.perf_counter() - started


class _ListingSensor:
    """The listing sensor's intake work per tick; the cursor is kept serialized, as Dagster keeps it."""

    def __init__(self, client, bucket: str, prefix: str, budget_s: float) -> None:
        self.listing = _TimedListing(client)
        self.bucket = bucket
        self.prefix = prefix
        self.budget_s = budget_s
        self.raw_cursor = ""
        self.scan_complete = False

    def tick(self) -> tuple[list[intake.ManifestObject], float]:
        started = time.perf_counter()
        found, cursor = intake.scan_manifests(
            self.listing,
            self.bucket,
            self.prefix,
            intake.ScanCursor.parse(self.raw_cursor),
            max_keys=MAX_KEYS_PER_TICK,
            budget_s=self.budget_s,
        )
        self.raw_cursor = cursor.serialize()
        self.scan_complete = cursor.after == ""
        return found, time.perf_counter() - started


def _sensor_case(objects: int) -> dict:
    """Child: a bucket of `objects` manifests already seen by the sensor, then NEW_MANIFESTS new ones."""
    # Imported here, not at the top: the parse children's peak RSS should not include boto3 and moto.
    from tagging_platform import embedded
    from tagging_platform.s3 import make_client

    port = embedded.free_port()
    settings = Settings.from_env({"TP_S3_ENDPOINT": f"http://127.0.0.1:{port}"})
    server = embedded.EmbeddedS3(port).start(settings)
    try:
        client = make_client(settings)
        bucket, prefix = settings.manifest_bucket, settings.manifest_prefix
        keys = [f"{prefix}batch-{i:07d}.json" for i in range(objects)]
        seeding = _seed(client, bucket, keys)

        sensor = _ListingSensor(client, bucket, prefix, settings.sensor_tick_budget_s)
        catch_up = []
        while not sensor.scan_complete:
            found, seconds = sensor.tick()
            catch_up.append(seconds)
            log(f"sensor: catch-up tick {len(catch_up)}: {len(found):,} found in {seconds:.2f} s")

        # Spread through the key order, as real names are, so finding all of them takes a full scan.
        positions = ((2 * k + 1) * objects // (2 * NEW_MANIFESTS) for k in range(NEW_MANIFESTS))
        new_keys = {f"{prefix}batch-{i:07d}-new.json" for i in positions}
        for key in sorted(new_keys):
            client.put_object(Bucket=bucket, Key=key, Body=MANIFEST_BODY)
        # The cursor's design promises every upload within two full scans; more than that is a bug.
        ticks, scans, found_new, found_again, cursor_bytes = [], 0, set(), 0, 0
        listing_before = sensor.listing.seconds
        while new_keys - found_new and scans < 2:
            found, seconds = sensor.tick()
            ticks.append(seconds)
            scans += sensor.scan_complete
            found_new |= {obj.key for obj in found} & new_keys
            found_again += sum(obj.key not in new_keys for obj in found)
            cursor_bytes = max(cursor_bytes, len(sensor.raw_cursor))
            log(f"sensor: tick {len(ticks)}: {len(found_new)}/{NEW_MANIFESTS} new found, {seconds:.2f} s")
        listing_s = sensor.listing.seconds - listing_before
    finally:
        server.stop()
    return {
        "objects": objects,
        **seeding,
        "max_keys_per_tick": MAX_KEYS_PER_TICK,
        "tick_budget_s": settings.sensor_tick_budget_s,
        "catch_up_ticks": len(catch_up),
        "catch_up_max_tick_s": round(max(catch_up), 3),
        "ticks_to_find_new": len(ticks),
        "tick_s": [round(t, 3) for t in ticks],
        "max_tick_s": round(max(ticks), 3),
        "mean_tick_s": round(statistics.mean(ticks), 3),
        "total_s_to_find_all_new": round(sum(ticks), 3),
        "found_new": len(found_new),
        "found_again": found_again,
        "listing_share": round(listing_s / sum(ticks), 3),
        "max_cursor_kb": round(cursor_bytes / 1024, 1),
        "target": f"every tick < {TICK_TARGET_S:g} s",
        "meets_target": max(ticks) < TICK_TARGET_S,
    }


def _seed(client, bucket: str, keys: list[str]) -> dict:
    """Put the bucket's existing manifests in place: through the S3 API while that fits UPLOAD_BUDGET_S."""
    started = time.perf_counter()
    probe, rest = keys[:PROBE_OBJECTS], keys[PROBE_OBJECTS:]
    _upload(client, bucket, probe)
    rate = len(probe) / (time.perf_counter() - started)
    log(f"sensor: {len(probe):,} PUTs at {rate:,.0f}/s; all {len(keys):,} would take {len(keys) / rate:,.0f} s")
    if len(rest) / rate <= UPLOAD_BUDGET_S:
        step = max(1, len(rest) // 10)
        for start in range(0, len(rest), step):
            _upload(client, bucket, rest[start : start + step])
            done = len(probe) + min(len(rest), start + step)
            log(f"sensor: uploaded {done:,}/{len(keys):,} ({time.perf_counter() - started:,.0f} s)")
        through_api = len(keys)
    else:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        log(f"sensor: over the {UPLOAD_BUDGET_S:g} s budget; storing the other {len(rest):,} in the server's backend")
        # The account moto gives the embedded server's credentials, in the partition of us-east-1.
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key in rest:
            backend.put_object(bucket, key, MANIFEST_BODY)
        through_api = len(probe)
    return {
        "seeded_through_s3_api": through_api,
        "seeded_in_process": len(keys) - through_api,
        "s3_put_per_s": round(rate, 1),
        "projected_s3_upload_s": round(len(keys) / rate, 1),
        "seed_s": round(time.perf_counter() - started, 1),
    }


def _upload(client, bucket: str, keys: list[str]) -> None:
    # One client for all threads: boto3 clients are thread-safe, and one connection pool is cheaper.
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        # list() so that a failed PUT raises here instead of being dropped with its future.
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=MANIFEST_BODY), keys))


def _planner() -> dict:
    plans = [
        plan_chunks(PLANNER_IMAGES, deadline_min=deadline, gpu_hour_usd=GPU_HOUR_USD, **PLAN)
        for deadline in DEADLINES_MIN
    ]
    return {
        "parameters": {"images": PLANNER_IMAGES, **PLAN, "gpu_hour_usd": GPU_HOUR_USD},
        "plans": [
            {"deadline_min": deadline, **plan.as_dict(), "summary": plan.describe()}
            for deadline, plan in zip(DEADLINES_MIN, plans)
        ],
    }


def render(results: dict) -> str:
    parse = results["parse_1m"]
    big = results["parse_10m_jsonl"]
    sensor = results["sensor_tick_100k"]
    planner = results["planner_1m"]
    size = f"{next(iter(parse.values()))['images']:,}"
    sections = [
        f"machine: {results['machine']}{'  (--quick sizes)' if results['quick'] else ''}",
        table(
            f"Read + parse + table + plan, {size} images, fresh process each (target < 10 s and < 500 MB peak RSS)",
            [
                "format",
                "manifest MB",
                "read + parse s",
                "table s",
                "total s",
                "imports MB",
                "peak RSS MB",
                "table MB",
                "meets target",
            ],
            [
                [
                    fmt,
                    r["manifest_mb"],
                    r["parse_s"],
                    r["table_s"],
                    r["seconds"],
                    r["rss_after_imports_mb"],
                    r["peak_rss_mb"],
                    r["table_mb"],
                    r["meets_target"],
                ]
                for fmt, r in parse.items()
            ],
        ),
        table(
            f"JSON Lines, {big['images']:,} images (no target)",
            [
                "manifest MB",
                "total s",
                "peak RSS MB",
                "table MB",
                "RSS MB / 1M images",
                "table MB / 1M images",
                "peak RSS / table",
            ],
            [
                [
                    big["manifest_mb"],
                    big["seconds"],
                    big["peak_rss_mb"],
                    big["table_mb"],
                    big["mb_per_million_images"],
                    big["table_mb_per_million_images"],
                    big["peak_rss_over_table"],
                ]
            ],
        ),
        table(
            f"Listing sensor, {sensor['objects']:,} objects + {sensor['found_new']} new found, "
            f"max_keys={sensor['max_keys_per_tick']:,}, budget {sensor['tick_budget_s']:g} s (target: every tick < 10 s)",
            [
                "via S3 API",
                "in-process",
                "PUT/s",
                "catch-up ticks",
                "ticks to find new",
                "max tick s",
                "mean tick s",
                "total s",
                "found new",
                "found again",
                "listing share",
                "cursor KB",
                "meets target",
            ],
            [
                [
                    sensor["seeded_through_s3_api"],
                    sensor["seeded_in_process"],
                    sensor["s3_put_per_s"],
                    sensor["catch_up_ticks"],
                    sensor["ticks_to_find_new"],
                    sensor["max_tick_s"],
                    sensor["mean_tick_s"],
                    sensor["total_s_to_find_all_new"],
                    sensor["found_new"],
                    sensor["found_again"],
                    f"{sensor['listing_share']:.0%}",
                    sensor["max_cursor_kb"],
                    sensor["meets_target"],
                ]
            ],
        ),
        table(
            f"Planner, {planner['parameters']['images']:,} images at 10 ms, 5 min start-up, 8 GPUs, "
            f"${GPU_HOUR_USD:.2f}/GPU-hour, chunks of {PLAN['min_chunk_images']:,} to {PLAN['max_chunk_images']:,}",
            [
                "deadline min",
                "chunks",
                "chunk images",
                "pods",
                "waves",
                "wall min",
                "GPU-hours",
                "cost $",
                "start-up share",
                "meets deadline",
            ],
            [
                [
                    p["deadline_min"],
                    p["chunks"],
                    p["chunk_images"],
                    p["pods"],
                    p["waves"],
                    p["wall_s"] / 60,
                    p["gpu_hours"],
                    p["cost_usd"],
                    f"{p['startup_share']:.1%}",
                    p["meets_deadline"],
                ]
                for p in planner["plans"]
            ],
        ),
    ]
    return "\n\n".join(sections)


if __name__ == "__main__":
    main()
