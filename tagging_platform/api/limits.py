"""Overload refused, not queued forever: per-customer limits answered with 429, `Retry-After` and the limit's name.

Two limits, each per customer and per API process:
- `POST /v1/tag`: a token bucket of `api_tag_burst` requests refilled at `api_tag_rate_per_s` a second;
- `POST /v1/batches`: at most `api_max_active_batches` unfinished batches (accepted, and whose run has not
  finished). A customer's count starts, the first time a process sees the customer, from its newest batch
  records; it then follows what this process accepts. The check and the acceptance hold one lock per customer,
  so a burst of concurrent submissions cannot all pass the check before any is counted.

Dagster's run queue bounds the runs each customer has in progress as well (`tagging/customer` run tag, in the
local instance and the Helm values): that is what keeps one customer's batches from holding back another's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from tagging_platform.api.errors import ApiError

# Retry-After for a refused batch: when a run ends is not known, and a batch takes tens of seconds at least.
BATCH_RETRY_AFTER_S = 30


class TagRateLimit:
    """A token bucket per customer: `burst` requests at once, refilled at `rate_per_s`; rate 0 means no limit."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # customer -> (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, customer: str, now: float | None = None) -> None:
        """One request's token, or 429 rate_limited saying when the next one is due."""
        if self.rate_per_s <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._buckets.get(customer, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
            if tokens >= 1:
                self._buckets[customer] = (tokens - 1, now)
                return
            self._buckets[customer] = (tokens, now)
        wait_s = max(1, math.ceil((1 - tokens) / self.rate_per_s))
        raise ApiError(
            429,
            "rate_limited",
            f"more than {self.rate_per_s:g} POST /v1/tag requests a second (bursts of {self.burst}) from your key: "
            f"the limit TP_API_TAG_RATE_PER_S; retry after {wait_s} s",
            {
                "limit": "TP_API_TAG_RATE_PER_S",
                "rate_per_s": self.rate_per_s,
                "burst": self.burst,
                "retry_after_s": wait_s,
            },
        )


class ActiveBatchLimit:
    """At most `limit` unfinished batches per customer (0: no limit).

    `newest(customer, n)` gives the customer's n newest batch ids (to start a count), `finished(batch_id)`
    whether a batch's run is over; both are asked only when a customer is at its limit or first seen.
    """

    def __init__(
        self, limit: int, newest: Callable[[str, int], Iterable[str]], finished: Callable[[str], bool]
    ) -> None:
        self.limit = limit
        self._newest = newest
        self._finished = finished
        self._active: dict[str, set[str]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def admit(self, customer: str, accept: Callable[[], dict]) -> dict:
        """`accept()` (which submits the batch and returns its record) when the customer is under its limit; else
        429 too_many_batches. The customer's lock is held across both, so concurrent submissions count one by one."""
        if self.limit <= 0:
            return accept()
        with self._lock:
            lock = self._locks.setdefault(customer, threading.Lock())
        with lock:
            active = self._active.get(customer)
            if active is None:
                active = self._active[customer] = set(self._newest(customer, self.limit))
            if len(active) >= self.limit:
                active -= {batch_id for batch_id in list(active) if self._finished(batch_id)}
            if len(active) >= self.limit:
                raise ApiError(
                    429,
                    "too_many_batches",
                    f"you have {len(active)} unfinished batches, the most a customer may have (the limit "
                    f"TP_API_MAX_ACTIVE_BATCHES is {self.limit}); retry once one has finished",
                    {
                        "limit": "TP_API_MAX_ACTIVE_BATCHES",
                        "max_active_batches": self.limit,
                        "retry_after_s": BATCH_RETRY_AFTER_S,
                    },
                )
            record = accept()
            active.add(record["batch_id"])
            return record
