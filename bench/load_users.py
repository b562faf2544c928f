"""One locust load of `POST /v1/tag` (headless, locust's Python API), in its own process: locust patches the
standard library for gevent when imported, which the rest of the load benchmark must not have.

    python -m bench.load_users --url URL --key KEY --users 16 --duration-s 30

Each simulated client posts one real photograph per request, in turn, with no pause between requests, for
`--duration-s` seconds (at most `--max-requests` requests in all). Prints one JSON line: counts, images/s,
latency percentiles and every request's (time, milliseconds, ok) for the plot.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment

from tagging_platform import photos


def multipart_bodies() -> list[tuple[bytes, str]]:
    """(body, content type) of each photograph's upload, built once: the load generator shares the cores with
    the API it measures, so its work per request is kept to sending bytes."""
    from urllib3 import encode_multipart_formdata  # after locust's import, which patches ssl for gevent first

    return [encode_multipart_formdata({"image": (name, data, "image/jpeg")}) for name, data in photos.sample_set(1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"the load goes to loopback only, not {args.url}")
    turn = itertools.cycle(multipart_bodies())
    samples: list[tuple[float, float, bool]] = []

    class TagClient(FastHttpUser):
        host = args.url
        wait_time = constant(0)
        network_timeout = 120.0

        @task
        def tag(self) -> None:
            if len(samples) >= args.max_requests:
                self.environment.runner.quit()
                return
            body, content_type = next(turn)
            self.client.post(
                "/v1/tag",
                data=body,
                headers={"Authorization": f"Bearer {args.key}", "Content-Type": content_type},
                name="/v1/tag",
            )

    @events.request.add_listener
    def record(response_time, exception, **_):
        samples.append((time.time(), float(response_time), exception is None))

    env = Environment(user_classes=[TagClient], events=events)
    runner = env.create_local_runner()
    started = time.time()
    runner.start(args.users, spawn_rate=args.users)
    gevent.spawn_later(args.duration_s, runner.quit)
    runner.greenlet.join()
    elapsed = time.time() - started
    total = env.stats.total
    ok = [s for s in samples if s[2]]
    print(
        json.dumps(
            {
                "users": args.users,
                "duration_s": round(elapsed, 1),
                "requests": total.num_requests,
                "errors": total.num_failures,
                "images_per_s": round(len(ok) / elapsed, 2) if elapsed else 0.0,
                "p50_ms": total.get_response_time_percentile(0.5),
                "p95_ms": total.get_response_time_percentile(0.95),
                "p99_ms": total.get_response_time_percentile(0.99),
                "max_ms": round(total.max_response_time or 0.0, 1),
                "error_kinds": {str(k): v.occurrences for k, v in env.stats.errors.items()},
                "samples": [(round(t, 3), round(ms, 1), good) for t, ms, good in samples],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
