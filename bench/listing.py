"""Listing a folder's ETags as one range against ranges side by side (tagging_platform.reuse.current_etags).

    python -m bench.listing [--keys 10000] [--rounds 3] [--out bench/results/listing.json]

Puts --keys small objects into one folder of the embedded S3 server, then takes turns: all their ETags listed
as one range (pages one after the other), then as ranges of reuse._RANGE_KEYS listed side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import RESULTS, log, machine, write_results
from tagging_platform import reuse
from tagging_platform.embedded import EmbeddedS3, create_buckets, free_port
from tagging_platform.s3 import make_client
from tagging_platform.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.listing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "listing.json")
    args = parser.parse_args(argv)
    port = free_port()
    settings = Settings.from_env({"TP_S3_ENDPOINT": f"http://127.0.0.1:{port}"})
    server = EmbeddedS3(port).start(settings)
    try:
        client = make_client(settings)
        create_buckets(client, settings)
        keys = [f"bench/{i:06d}.jpg" for i in range(args.keys)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: client.put_object(Bucket="images", Key=k, Body=b"x"), keys))
        uris = [f"s3://images/{k}" for k in keys]
        seconds: dict[str, list[float]] = {"one_range": [], "ranges": []}
        ranged = reuse._RANGE_KEYS
        for _ in range(args.rounds):
            for label, size in (("one_range", len(keys) + 1), ("ranges", ranged)):
                reuse._RANGE_KEYS = size
                started = time.perf_counter()
                etags = reuse.current_etags(client, uris)
                seconds[label].append(round(time.perf_counter() - started, 2))
                if not all(etags):
                    raise RuntimeError(f"{label}: {etags.count(None)} ETags missing")
        reuse._RANGE_KEYS = ranged
    finally:
        server.stop()
    result = {
        "machine": machine(),
        "keys": args.keys,
        "range_keys": ranged,
        "seconds": seconds,
        "one_range_over_ranges": round(
            statistics.median(seconds["one_range"]) / statistics.median(seconds["ranges"]), 2
        ),
    }
    write_results(args.out, result)
    log(f"{args.out}: {result}")


if __name__ == "__main__":
    main()
