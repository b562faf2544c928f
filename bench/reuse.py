"""Reuse benchmark: a manifest, then one that overlaps it by 90%, each a whole run of the local platform.

Both go the way a customer's manifest goes (bench/throughput.py's `dagster_run`): `dagster dev` with its
daemon and sensor on the embedded S3 server, the manifest uploaded, timed from its PUT to the completion
marker. The second manifest lists 90% of the first one's pictures (the same bytes under new keys: reuse
goes by ETag, not by name) and 10% new ones. Checks that the overlapping images got identical tags and
writes bench/results/reuse.json: first_s, overlap_s, speedup, reused, tagged.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import RESULTS, ROOT, log, machine, show, table, write_results
from bench.throughput import RUN_TIMEOUT_S, _timeline, _wait_for_marker, _wait_for_registration, make_images
from tagging_platform import cli, publishing
from tagging_platform.local import LocalPlatform
from tagging_platform.manifests import partition_key_for

TARGET_SPEEDUP = 5.0


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    started = time.perf_counter()
    overlap = round(args.images * args.overlap)
    fresh = args.images - overlap
    log(f"making {args.images + fresh:,} JPEGs from real photographs ...")
    pictures = make_images(args.images + fresh)
    first_images = [(f"{i:05d}.jpg", pictures[i]) for i in range(args.images)]
    # The same bytes under other names, then pictures the first manifest does not have.
    second_images = [(f"again-{i:05d}.jpg", pictures[i]) for i in range(overlap)]
    second_images += [(f"new-{i:05d}.jpg", pictures[args.images + i]) for i in range(fresh)]
    overrides = {"TP_SENSOR_INTERVAL_S": "1"}
    with (
        tempfile.TemporaryDirectory(prefix="bench-reuse-") as home,
        LocalPlatform(ROOT / "workspace.yaml", dagster_home=Path(home), settings_overrides=overrides) as platform,
    ):
        _wait_for_registration(platform)
        first = _run(platform, f"reuse-first-{uuid.uuid4().hex[:6]}", first_images)
        second = _run(platform, f"reuse-overlap-{uuid.uuid4().hex[:6]}", second_images)
    by_name, objects = first.pop("objects"), second.pop("objects")
    reused = sum(1 for obj in objects.values() if "reused_from" in obj)
    identical = all(objects[f"again-{i:05d}.jpg"]["tags"] == by_name[f"{i:05d}.jpg"]["tags"] for i in range(overlap))
    lineage = all(
        objects[f"again-{i:05d}.jpg"].get("reused_from", {}).get("run_id") == first["run_id"] for i in range(overlap)
    )
    results = {
        "machine": machine(),
        "images": args.images,
        "overlap_images": overlap,
        "new_images": fresh,
        "first_s": first["wall_s"],
        "overlap_s": second["wall_s"],
        "speedup": round(first["wall_s"] / second["wall_s"], 2),
        "reused": reused,
        "tagged": len(objects) - reused,
        "identical_tags": identical,
        "lineage_names_first_run": lineage,
        "tag_chunk_speedup": round(first["tag_chunk_s"] / second["tag_chunk_s"], 2),
        "target": {"speedup": f">= {TARGET_SPEEDUP:g}", "met": first["wall_s"] / second["wall_s"] >= TARGET_SPEEDUP},
        "measured_from": "each manifest's PUT to its completion marker, through the sensor, one Dagster run each",
        "runs": {"first": first, "overlap": second},
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    out = args.out or RESULTS / ("reuse.json" if args.images == 2_000 else f"reuse-{args.images}.json")
    write_results(out, results)
    show(render(results), out)
    if not (identical and lineage and reused == overlap):
        raise SystemExit("reused tags differ from the first run's, or not every overlapping image was reused")


def _run(platform: LocalPlatform, name: str, images: list[tuple[str, bytes]]) -> dict:
    """Upload the images and their manifest; the run's wall time from the manifest's PUT to the marker."""
    client = platform.s3()
    log(f"{name}: uploading {len(images):,} images ...")
    key = cli.upload_batch(client, platform.settings, name, images)
    # The manifest is upload_batch's last PUT: the sensor can see nothing before it.
    t0, measured_from = time.time(), time.perf_counter()
    partition = partition_key_for(key, platform.settings.manifest_prefix)
    wall_s = _wait_for_marker(platform, partition) - measured_from
    run = platform.wait_for_run(partition, timeout_s=RUN_TIMEOUT_S, poll_s=0.5)
    if run["status"] != "SUCCESS":
        raise RuntimeError(f"the Dagster run ended {run['status']}; see {platform.log_path}")
    timeline = _timeline(platform.dagster, run["runId"], t0)
    chunk_steps = [marks for step, marks in timeline["steps"].items() if "tag_chunk" in step]
    log(f"{name}: {len(images):,} images in {wall_s:.1f} s")
    return {
        "partition": partition,
        "run_id": run["runId"],
        "wall_s": round(wall_s, 2),
        "tag_chunk_s": round(sum(m.get("duration_s", 0.0) for m in chunk_steps), 2),
        "tag_chunks": len(chunk_steps),
        "tag_chunk_stats": timeline["tag_chunk_stats"],
        "steps": timeline["steps"],
        "objects": _published(client, platform.settings, partition),
    }


def _published(client, settings, partition: str) -> dict[str, dict]:
    """The published objects of a batch by image file name, read through its completion marker."""
    prefix = f"{settings.output_prefix}{partition}/"
    listed = client.list_objects_v2(Bucket=settings.output_bucket, Prefix=prefix).get("Contents", [])
    [marker_key] = [item["Key"] for item in listed if item["Key"].endswith(publishing.MARKER_NAME)]
    marker = json.loads(client.get_object(Bucket=settings.output_bucket, Key=marker_key)["Body"].read())

    def part(key: str) -> list[dict]:
        body = client.get_object(Bucket=settings.output_bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in body.splitlines()]

    with ThreadPoolExecutor(8) as pool:
        objects = [obj for part_objects in pool.map(part, [p["key"] for p in marker["parts"]]) for obj in part_objects]
    return {obj["image"].rsplit("/", 1)[-1]: obj for obj in objects}


def render(results: dict) -> str:
    rows = [
        ["first", results["images"], 0, results["runs"]["first"]["tag_chunk_s"], results["first_s"]],
        [
            "overlap",
            results["images"],
            results["reused"],
            results["runs"]["overlap"]["tag_chunk_s"],
            results["overlap_s"],
        ],
    ]
    summary = (
        f"speedup {results['speedup']:.2f}x (target {results['target']['speedup']}: "
        f"{'met' if results['target']['met'] else 'NOT met'}), tag_chunk steps {results['tag_chunk_speedup']:.2f}x; "
        f"identical tags for the {results['overlap_images']:,} overlapping images: {results['identical_tags']}"
    )
    title = f"Reuse of earlier tags ({results['machine']['cores']} cores, whole local runs)"
    return (
        table(title, ["manifest", "images", "reused", "tag_chunk s", "manifest PUT -> marker s"], rows) + "\n" + summary
    )


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reuse", description=__doc__)
    parser.add_argument("--images", type=int, default=2_000, help="images in each manifest (default 2,000)")
    parser.add_argument("--overlap", type=float, default=0.9, help="share of the second manifest seen in the first")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/reuse.json for 2,000 images)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
