"""A few small files must not take the API's memory: eight concurrent 89-megapixel PNGs (about 260 KB each)
against `tagging-platform api` in its own process, started with the tagging steps' never-trim allocator
variables in its environment (the image and the ConfigMap set them for every pod).

The process's peak resident memory (the kernel's VmHWM) stays under PEAK_LIMIT, and a minute later at the
latest its resident memory is back within 15% of what it was before them.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from PIL import Image

from tagging_platform.embedded import free_port
from tagging_platform.settings import PROCESS_ENV
from tests.conftest import REPO

PNG_SIDE = 9440  # 89,113,600 pixels: just under the synchronous pixel limit
CONCURRENT = 8
PEAK_LIMIT = int(2.5 * 1024**3)
SETTLE_S = 60
BACK_WITHIN = 1.15


def _memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in bytes."""
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0]) * 1024
    return figures


@pytest.fixture(scope="module")
def big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (PNG_SIDE, PNG_SIDE), (200, 120, 40)).save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def api_process(api_settings, keys, model_ref):
    port = free_port()
    env = {
        **os.environ,
        **PROCESS_ENV,
        **api_settings.as_env(),
        "TP_API_PORT": str(port),
        "TP_API_MAX_TAG_IMAGES": "8",
        "TP_API_MAX_BODY_BYTES": str(16 * 1024 * 1024),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tagging_platform.cli", "api"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "the API did not start"
            try:
                ready = requests.get(f"{url}/readyz", timeout=5).json()
                if ready.get("checks", {}).get("models_loaded", "none") != "none":
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield process.pid, url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_eight_concurrent_89_megapixel_pngs_stay_in_bounds_and_memory_goes_back(
    api_process, keys, big_png, photographs
):
    pid, url = api_process
    headers = {"X-API-Key": keys["acme"]}
    # One small request first: what any request allocates once (threads, buffers) belongs to "before".
    warm = requests.post(
        f"{url}/v1/tag", headers=headers, files={"image": ("cat.jpg", photographs["chelsea.jpg"])}, timeout=120
    )
    assert warm.status_code == 200, warm.text
    time.sleep(2)
    before = _memory(pid)["VmRSS"]
    answers: list[int] = []

    def send() -> None:
        answer = requests.post(f"{url}/v1/tag", headers=headers, files={"image": ("big.png", big_png)}, timeout=600)
        answers.append(answer.status_code)

    threads = [threading.Thread(target=send) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    peak = _memory(pid)["VmHWM"]
    after, waited = _memory(pid)["VmRSS"], 0.0
    started = time.monotonic()
    while after > before * BACK_WITHIN and waited < SETTLE_S:
        time.sleep(1)
        after, waited = _memory(pid)["VmRSS"], time.monotonic() - started
    figures = (
        f"{CONCURRENT} x {PNG_SIDE}x{PNG_SIDE} PNG ({len(big_png)} bytes): answers {sorted(answers)}; RSS before "
        f"{before / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, {after / 2**20:.0f} MiB after {waited:.0f} s"
    )
    print("\n" + figures)
    assert answers == [200] * CONCURRENT, figures
    assert peak < PEAK_LIMIT, figures
    assert after <= before * BACK_WITHIN, figures
