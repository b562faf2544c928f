"""The API process's memory: a budget of decoded pixels shared by every request, and an allocator that gives back.

A request's bytes say little about its memory: an 89-megapixel PNG of one colour is 260 KB on the wire and
267 MB decoded. Each image therefore takes its decoded pixels from one process-wide budget before it is
decoded and returns them once it is reduced to the model's input, so however many requests arrive at once,
at most `api_decode_budget_pixels` are decoded at a time; the others wait their turn (or are told to retry).

The tagging steps run with glibc told never to give memory back (settings.PROCESS_ENV: a step's buffers
are reused image after image). The API's image and ConfigMap are the steps' ones, so the API process
inherits those variables, and a burst of large images would stay resident for good. The API sets its own
allocator options at start-up instead (mallopt overrides the environment) and trims after each burst.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
import time

from tagging_platform.api.errors import ApiError

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# A buffer this large is mapped on its own and unmapped when freed: every decoded image, every large tensor.
# Setting it also stops glibc from raising the threshold after each free, which would move them to the heap.
API_MMAP_THRESHOLD = 1024 * 1024
# Free memory at the top of the heap beyond this goes back to the kernel.
API_TRIM_THRESHOLD = 16 * 1024 * 1024
API_MMAP_MAX = 65536  # glibc's default (the steps' environment sets 0: nothing mapped)
API_TOP_PAD = 128 * 1024  # glibc's default (the steps' environment pads by 512 MB)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only (musl has neither)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


_LIBC = _libc()


def give_memory_back() -> bool:
    """Set this process's allocator to return freed memory, whatever MALLOC_* the environment says; False off glibc."""
    if _LIBC is None:
        return False
    for parameter, value in (
        (_M_MMAP_MAX, API_MMAP_MAX),
        (_M_MMAP_THRESHOLD, API_MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, API_TRIM_THRESHOLD),
        (_M_TOP_PAD, API_TOP_PAD),
    ):
        _LIBC.mallopt(parameter, value)
    return True


def trim() -> None:
    """Hand free memory in every arena back to the kernel (glibc's malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PixelBudget:
    """Decoded pixels in flight, shared by every request of the process."""

    def __init__(self, pixels: int, wait_s: float) -> None:
        self.capacity = pixels
        self.wait_s = wait_s
        self.in_use = 0
        self.peak = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int):
        """Hold `pixels` of the budget for the block; 503 busy when they are not free within wait_s."""
        pixels = min(pixels, self.capacity)  # the pixel limit keeps one image within the budget anyway
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            while self.in_use + pixels > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    if self.in_use + pixels <= self.capacity:
                        break
                    raise ApiError(
                        503,
                        "busy",
                        "the server is decoding as many images as it may; retry in a few seconds",
                        {"retry_after_s": 5},
                    )
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                idle = self.in_use == 0
                self._changed.notify_all()
            if idle:
                trim()
