"""Synchronous tagging of a few uploaded images with the engine's own Tagger, models cached per version.

Some models sit idle for weeks while others get bursts: a process keeps at most `api_model_cache`
loaded models (least recently used goes first) and drops one unused for `api_model_idle_s`, so an
idle model does not hold memory forever. A model is loaded once however many requests ask for it
at the same moment. What a request's model spec names is remembered too: a name@version for good (a
version is a content hash), a bare name's latest pointer for `api_model_alias_ttl_s`, so a request reads
nothing from S3. Each request decodes its own images to uint8 pixels; the forward pass, which normalises
the whole batch at once as the engine does, is shared with the requests of the same model that arrive with
it (api/batching.py), one pass at a time per process (replicas scale out).
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from tagging_platform import models
from tagging_platform.api.batching import TagBatcher
from tagging_platform.api.errors import ApiError
from tagging_platform.api.memory import PixelBudget
from tagging_platform.engine import Tagger
from tagging_platform.settings import Settings

# One model load at a time in the process: a load traces the network (torch.jit.trace), and traces share
# process-wide state (graph names, the tracing state) that two threads tracing at once would mix.
_LOADS = threading.Lock()


@dataclass
class _Entry:
    tagger: Tagger
    used: float


class ModelCache:
    def __init__(
        self, s3_client, settings: Settings, on_load: Callable[[models.ModelRef, float], None] | None = None
    ) -> None:
        self.s3 = s3_client
        self.settings = settings
        self.on_load = on_load
        self.capacity = max(1, settings.api_model_cache)
        self.idle_s = settings.api_model_idle_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._resolved: dict[str, tuple[models.ModelRef, float]] = {}
        self.batcher = TagBatcher(settings.api_tag_batch_window_ms / 1000, settings.api_tag_max_batch)
        self.budget = PixelBudget(settings.api_decode_budget_pixels, settings.api_decode_wait_s)

    def resolve(self, spec: str) -> models.ModelRef:
        """The version "name" or "name@version" names (models.resolve_model), remembered; a ModelError is not."""
        now = time.monotonic()
        with self._lock:
            known = self._resolved.get(spec)
        if known is not None and now < known[1]:
            return known[0]
        ref = models.resolve_model(self.s3, self.settings.model_bucket, spec)
        expires = now + self.settings.api_model_alias_ttl_s if "@" not in spec else float("inf")
        with self._lock:
            self._resolved[spec] = (ref, expires)
        return ref

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def get(self, ref: models.ModelRef) -> Tagger:
        key = f"{ref.name}@{ref.version}"
        self.evict_idle()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.used = time.monotonic()
                self._entries.move_to_end(key)
                return entry.tagger
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._entries:
                    return self._entries[key].tagger
            try:
                with _LOADS:
                    tagger = Tagger.load(
                        self.s3,
                        ref,
                        device=self.settings.device,
                        top_k=self.settings.top_k,
                        min_confidence=self.settings.min_confidence,
                    )
            except models.ModelError as exc:
                raise ApiError(422, "unknown_model", str(exc), {"field": "model"}) from None
            if self.on_load:
                self.on_load(ref, tagger.load_s)
            with self._lock:
                self._entries[key] = _Entry(tagger, time.monotonic())
                self._loading.pop(key, None)
                evicted = []
                while len(self._entries) > self.capacity:
                    evicted.append(self._entries.popitem(last=False))
        if evicted:
            del evicted
            gc.collect()
        return tagger

    def evict_idle(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [k for k, e in self._entries.items() if now - e.used > self.idle_s]
            for key in idle:
                del self._entries[key]
        if idle:
            gc.collect()
        return idle

    def _decode(self, tagger: Tagger, index: int, filename: str, data: bytes):
        """One upload to the model's input: its header checked first, then decoded within the pixel budget."""

        def refused(status: int, code: str, reason: str) -> ApiError:
            return ApiError(
                status,
                code,
                f"file {index + 1} ({filename[:100]}): {reason[:300]}",
                {"field": "image", "index": index, "filename": filename[:200]},
            )

        try:
            opened = tagger.open_image(data, self.settings.api_max_tag_pixels)
        except Image.DecompressionBombError as exc:  # ImageTooLarge, or Pillow's own guard at twice its limit
            raise refused(413, "image_too_large", f"{exc}; submit it in a batch") from None
        except Exception as exc:  # noqa: BLE001 - whatever Pillow says, named for the customer
            reason = "not an image: no decoder recognises the file" if "cannot identify" in str(exc) else str(exc)
            raise refused(422, "invalid_image", reason) from None
        with opened:
            width, height = opened.size
            with self.budget.reserve(width * height):
                try:
                    return tagger.opened_pixels(opened)
                except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file fails while decoding
                    raise refused(422, "invalid_image", str(exc)) from None

    def tag(self, ref: models.ModelRef, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Tags for each (filename, bytes), in order; an image that cannot be decoded is a 422 naming it, one over
        the pixel limit a 413 (read from its header: nothing of it is decoded)."""
        tagger = self.get(ref)
        started = time.perf_counter()
        pixels = [self._decode(tagger, index, filename, data) for index, (filename, data) in enumerate(files)]
        decoded = time.perf_counter()
        predictions, _ = self.batcher.predict(f"{ref.name}@{ref.version}", tagger, pixels)
        finished = time.perf_counter()
        results = []
        for (filename, data), (kept, top, top_confidence) in zip(files, predictions, strict=True):
            results.append(
                {
                    "filename": filename,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "status": "ok",
                    "tags": [
                        {
                            "name": t["name"],
                            "confidence": round(float(t["confidence"]), 4),
                            "parents": list(t.get("parents") or []),
                        }
                        for t in kept
                    ],
                    "top_tag": top,
                    "top_confidence": round(float(top_confidence), 4),
                }
            )
        return {
            "model": {"name": ref.name, "version": ref.version},
            "results": results,
            # inference: the wait for the shared pass and the pass.
            "timing_ms": {
                "decode": round((decoded - started) * 1000, 1),
                "inference": round((finished - decoded) * 1000, 1),
            },
        }
