"""GPU economics with the shipped settings: what a 1M-image manifest costs alone, with two more arriving
together, and when 900,000 of its images were tagged before (reuse decided at planning, on the embedded S3).

The plans come from the planner with `Settings()` (what a deployment gets without overrides). The reuse case
measures planning for real: the index holds 900,000 ETags in the embedded S3 server and the lookup, the
split into reused rows and images left to tag, and the write of the reused rows run at full size. Listing
the images' ETags runs at LISTED_IMAGES objects (moto stores a PUT every few milliseconds, so a million
would take hours to upload) and is scaled to the manifest by its pages, which is how its cost grows.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import RESULTS, log, machine, show, table, write_results
from tagging_platform import engine, reuse
from tagging_platform.models import ModelRef
from tagging_platform.planning import plan_for
from tagging_platform.settings import Settings

IMAGES = 1_000_000
TAGGED_BEFORE = 900_000
MANIFESTS_TOGETHER = 3
LISTED_IMAGES = 20_000
UPLOAD_THREADS = 16
REUSE_TARGET = 0.15
MODEL = ModelRef("mobilenet_v2", "sha256:" + "e" * 64, "models")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.economics", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS / "economics.json")
    args = parser.parse_args(argv)
    results = measure()
    write_results(args.out, results)
    show(render(results), args.out)


def measure() -> dict:
    settings = Settings()
    alone = plan_for(settings, IMAGES)
    together, held = [], 0
    for _ in range(MANIFESTS_TOGETHER):
        # Each sees the GPUs the ones planned before it hold (their pods), as plan_chunks does from the pool.
        plan = plan_for(settings, IMAGES, gpus_held=held)
        together.append(plan)
        held += plan.pods
    planning = _reuse_planning()
    rest = plan_for(settings, IMAGES - TAGGED_BEFORE)
    return {
        "machine": machine(),
        "settings": {
            k: getattr(settings, k)
            for k in (
                "ms_per_image",
                "startup_s",
                "max_gpus",
                "deadline_min",
                "min_chunk_images",
                "max_chunk_images",
                "checkpoint_images",
                "checkpoint_s",
                "gpu_hour_usd",
            )
        },
        "one_manifest": _row(alone),
        "three_manifests_together": {
            "plans": [_row(p) for p in together],
            "gpu_hours": round(sum(p.gpu_hours for p in together), 3),
            "cost_usd": round(sum(p.cost_usd for p in together), 2),
            "last_done_min": round(max(p.wall_s for p in together) / 60, 1),
            "startup_share": round(
                sum(p.chunks * settings.startup_s for p in together) / 3600 / sum(p.gpu_hours for p in together), 4
            ),
        },
        "tagged_before": {
            **planning,
            "plan_of_the_rest": _row(rest),
            "gpu_hours_share_of_first": round(rest.gpu_hours / alone.gpu_hours, 4),
            "target": f"GPU-hours <= {REUSE_TARGET:.0%} of the first manifest's",
            "meets_target": rest.gpu_hours <= REUSE_TARGET * alone.gpu_hours,
        },
    }


def _row(plan) -> dict:
    return {
        "images": plan.images,
        "chunks": plan.chunks,
        "chunk_images": plan.chunk_images,
        "pods": plan.pods,
        "waves": plan.waves,
        "wall_min": round(plan.wall_s / 60, 1),
        "gpu_hours": round(plan.gpu_hours, 3),
        "startup_share": round(plan.startup_share, 4),
        "cost_usd": round(plan.cost_usd, 2),
        "meets_deadline": plan.meets_deadline,
        "reasons": list(plan.reasons),
    }


def _etag(i: int) -> str:
    return hashlib.md5(f"image-{i}".encode()).hexdigest()


def _reuse_planning() -> dict:
    from tagging_platform import embedded

    port = embedded.free_port()
    settings = Settings.from_env({"TP_S3_ENDPOINT": f"http://127.0.0.1:{port}"})
    server = embedded.EmbeddedS3(port).start(settings)
    try:
        client = embedded.s3_client(settings)
        bucket = settings.warehouse_bucket
        started = time.perf_counter()
        index_mb = _write_index(client, bucket)
        log(f"economics: index of {TAGGED_BEFORE:,} ETags ({index_mb:.1f} MB) in {time.perf_counter() - started:.1f} s")
        listing = _listing(client)
        uris = [f"s3://images/econ/{i:07d}.jpg" for i in range(IMAGES)]
        # The manifest's ETags as the listing gives them: the first 900,000 are in the index.
        etags = [_etag(i) if i < TAGGED_BEFORE else _etag(IMAGES + i) for i in range(IMAGES)]
        started = time.perf_counter()
        found = reuse.split_by_index(
            client,
            bucket,
            MODEL,
            {"manifest": "s3://manifests/incoming/econ.json", "partition": "econ"},
            "bench",
            list(range(IMAGES)),
            uris,
            etags,
        )
        split_s = time.perf_counter() - started
        started = time.perf_counter()
        engine.plan_batch(client, bucket, "econ", "manifest-etag", MODEL, found.rows)
        write_s = time.perf_counter() - started
    finally:
        server.stop()
    assert found.rows.num_rows == TAGGED_BEFORE and len(found.images) == IMAGES - TAGGED_BEFORE
    listing_s = listing["seconds_per_image"] * IMAGES
    return {
        "images": IMAGES,
        "tagged_before": TAGGED_BEFORE,
        "index_etags": TAGGED_BEFORE,
        "index_mb": round(index_mb, 1),
        "listing": listing,
        "listing_s_scaled_to_manifest": round(listing_s, 1),
        "lookup_and_split_s": round(split_s, 1),
        "write_reused_rows_s": round(write_s, 1),
        "planning_s": round(listing_s + split_s + write_s, 1),
        "reused": found.rows.num_rows,
        "left_to_tag": len(found.images),
    }


def _write_index(client, bucket: str) -> float:
    """The index objects an earlier batch's merge would have written, made columnar (record() goes row by row)."""
    now = datetime.now(UTC)
    tag = [{"name": "tabby", "confidence": 0.9, "parents": ["cat", "animal"]}]
    index = pa.table(
        {
            "etag": pa.array([_etag(i) for i in range(TAGGED_BEFORE)], pa.string()),
            "tags": pa.array([tag] * TAGGED_BEFORE, reuse.INDEX_SCHEMA.field("tags").type),
            "top_tag": pa.array(["tabby"] * TAGGED_BEFORE, pa.string()),
            "top_confidence": pa.array([0.9] * TAGGED_BEFORE, pa.float64()),
            "tagged_at": pa.array([now] * TAGGED_BEFORE, pa.timestamp("ms", tz="UTC")),
            "origin": pa.array(
                [
                    {
                        "manifest": "s3://manifests/incoming/earlier.json",
                        "partition": "earlier",
                        "run_id": "r",
                        "chunk": 0,
                    }
                ]
                * TAGGED_BEFORE,
                reuse.INDEX_SCHEMA.field("origin").type,
            ),
        },
        schema=reuse.INDEX_SCHEMA,
    ).sort_by("etag")
    sink = pa.BufferOutputStream()
    pq.write_table(index, sink, compression="zstd", row_group_size=4096)
    body = sink.getvalue().to_pybytes()
    client.put_object(Bucket=bucket, Key=reuse.index_key(MODEL, "earlier"), Body=body)
    return len(body) / 2**20


def _listing(client) -> dict:
    """The ETags of LISTED_IMAGES images in one folder, as plan_reuse reads them (listings, not HEADs)."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"econ/{i:07d}.jpg" for i in range(LISTED_IMAGES)]
    started = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda key: client.put_object(Bucket="images", Key=key, Body=key.encode()), keys))
    log(f"economics: {LISTED_IMAGES:,} images uploaded in {time.perf_counter() - started:.0f} s")
    uris = [f"s3://images/{key}" for key in keys]
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        etags = reuse.current_etags(client, uris)
        rounds.append(time.perf_counter() - started)
    assert all(etags)
    best = min(rounds)
    return {
        "images_listed": LISTED_IMAGES,
        "rounds_s": [round(r, 2) for r in rounds],
        "best_s": round(best, 2),
        "seconds_per_image": best / LISTED_IMAGES,
        "note": "moto's listing, scaled to the manifest by image count (pages of 1,000 keys); AWS S3's pages differ",
    }


def render(results: dict) -> str:
    headers = ["case", "chunks", "chunk images", "pods", "waves", "wall min", "GPU-hours", "start-up share", "cost $"]

    def cells(name: str, r: dict) -> list:
        return [
            name,
            r["chunks"],
            r["chunk_images"],
            r["pods"],
            r["waves"],
            r["wall_min"],
            r["gpu_hours"],
            f"{r['startup_share']:.1%}",
            r["cost_usd"],
        ]

    together = results["three_manifests_together"]
    before = results["tagged_before"]
    rows = [cells("1M images", results["one_manifest"])]
    rows += [cells(f"3 x 1M together: #{i + 1}", r) for i, r in enumerate(together["plans"])]
    rows.append(cells("1M, 900k tagged before", before["plan_of_the_rest"]))
    return "\n\n".join(
        [
            f"machine: {results['machine']}",
            table(
                "GPU economics with the shipped settings (10 ms/image, 300 s start-up, 8 GPUs, 60 min)", headers, rows
            ),
            (
                f"3 x 1M together: {together['gpu_hours']} GPU-hours, ${together['cost_usd']}, last done after "
                f"{together['last_done_min']} min, start-up {together['startup_share']:.1%}"
            ),
            (
                f"1M with 900k tagged before: planning {before['planning_s']} s"
                f" (listing {before['listing_s_scaled_to_manifest']} s scaled from"
                f" {before['listing']['images_listed']:,} images, lookup + split {before['lookup_and_split_s']} s,"
                f" reused rows written {before['write_reused_rows_s']} s);"
                f" GPU-hours {before['gpu_hours_share_of_first']:.1%} of the first (target <= {REUSE_TARGET:.0%})"
            ),
        ]
    )


if __name__ == "__main__":
    main()
