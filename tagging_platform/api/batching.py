"""Dynamic batching of synchronous tagging: requests that arrive together share one forward pass.

Each `POST /v1/tag` decodes its own images (a bad file fails its own request before it gets here), then hands
its model inputs to `TagBatcher.predict` and waits. One worker thread per process runs the forward passes:
it takes the model whose oldest waiting request arrived first, waits until that request has waited
`api_tag_batch_window_ms` or the model's waiting images reach `api_tag_max_batch`, and runs every waiting
request of that model (whole requests, up to the maximum) as one batch, then hands each request back exactly
its own rows. Requests that arrive while a pass runs are batched for the next one, as Triton's dynamic batcher
and TorchServe's max_batch_delay do. A forward pass that fails is retried request by request, so one request
that makes the model fail fails alone.

The worker starts with the first request and ends once nothing has been waiting for IDLE_S: an idle
process holds no thread for it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tagging_platform.engine import Tagger

# The worker thread ends after this long with nothing to run (and starts again with the next request).
IDLE_S = 5.0

Prediction = tuple[list[dict[str, Any]], str, float]


@dataclass
class _Request:
    tagger: Tagger
    pixels: list[Any]  # CHW uint8 model inputs, one per image
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    predictions: list[Prediction] | None = None
    error: BaseException | None = None
    # Filled in by the worker: seconds waiting for the pass, seconds of the pass, images in it.
    queued_s: float = 0.0
    forward_s: float = 0.0
    batch_images: int = 0


@dataclass
class BatchStats:
    """What the batcher has done since it was made (the /v1/tag figures of `make bench-load` read it)."""

    passes: int = 0
    requests: int = 0
    images: int = 0
    largest: int = 0


class TagBatcher:
    """Groups concurrent predictions per model into shared forward passes (see the module's docstring)."""

    def __init__(self, window_s: float, max_batch: int, idle_s: float = IDLE_S) -> None:
        self.window_s = max(0.0, window_s)
        self.max_batch = max(1, max_batch)
        self.idle_s = idle_s
        self.stats = BatchStats()
        self._waiting: dict[str, deque[_Request]] = {}
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None

    def predict(self, key: str, tagger: Tagger, pixels: list[Any]) -> tuple[list[Prediction], _Request]:
        """(tags, top tag, top confidence) for each of `pixels`, in order, from a pass shared with other requests
        of model `key`; and the request, whose queued_s, forward_s and batch_images say how it went."""
        request = _Request(tagger, pixels)
        with self._changed:
            self._waiting.setdefault(key, deque()).append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="tag-batcher", daemon=True)
                self._worker.start()
            self._changed.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.predictions is not None
        return request.predictions, request

    def _run(self) -> None:
        while True:
            with self._changed:
                taken = self._next_batch()
                if taken is None:
                    self._worker = None
                    return
            self._forward(taken)

    def _next_batch(self) -> list[_Request] | None:
        """The next pass's requests, once due; None after idle_s with nothing waiting. Holds the condition."""
        while True:
            if not self._waiting:
                if not self._changed.wait(self.idle_s) and not self._waiting:
                    return None
                continue
            key = min(self._waiting, key=lambda k: self._waiting[k][0].arrived)
            queue = self._waiting[key]
            left = queue[0].arrived + self.window_s - time.monotonic()
            if left > 0 and sum(len(r.pixels) for r in queue) < self.max_batch:
                self._changed.wait(left)
                continue
            taken = [queue.popleft()]  # a request larger than the maximum still goes, alone
            images = len(taken[0].pixels)
            while queue and images + len(queue[0].pixels) <= self.max_batch:
                images += len(queue[0].pixels)
                taken.append(queue.popleft())
            if not queue:
                del self._waiting[key]
            return taken

    def _forward(self, taken: list[_Request]) -> None:
        try:
            self._pass(taken)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests, never lost in this thread
            if len(taken) == 1:
                taken[0].error = exc
            else:
                for request in taken:  # which request made the pass fail is unknown: each runs alone
                    self._forward([request])
                return
        for request in taken:
            request.done.set()

    def _pass(self, taken: list[_Request]) -> None:
        import torch

        started = time.monotonic()
        inputs = [pixels for request in taken for pixels in request.pixels]
        predictions = taken[0].tagger.predict(torch.stack(inputs))
        finished = time.monotonic()
        self.stats.passes += 1
        self.stats.requests += len(taken)
        self.stats.images += len(inputs)
        self.stats.largest = max(self.stats.largest, len(inputs))
        offset = 0
        for request in taken:
            request.predictions = predictions[offset : offset + len(request.pixels)]
            offset += len(request.pixels)
            request.queued_s = started - request.arrived
            request.forward_s = finished - started
            request.batch_images = len(inputs)
