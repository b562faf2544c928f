"""Overload refused: per-customer limits on POST /v1/tag's rate and on unfinished batches, answered with 429."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tagging_platform.api.keys import CustomerStore
from tests.api_fixtures import ApiServer

BURST = 2


@pytest.fixture(scope="module")
def limited_api(api_settings, model_ref):
    settings = api_settings.replace(api_tag_rate_per_s=0.0001, api_tag_burst=BURST, api_max_active_batches=1)
    with ApiServer.serving(settings) as server:
        yield server


def _refused(response: requests.Response, code: str, limit: str) -> dict:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert error["code"] == code and error["details"]["limit"] == limit and limit in error["message"]
    assert error["details"]["retry_after_s"] == int(response.headers["Retry-After"])
    return error


def test_tag_requests_past_a_customers_burst_are_refused_with_retry_after(limited_api, keys, photographs):
    def tag(customer: str) -> requests.Response:
        return requests.post(
            f"{limited_api.url}/v1/tag",
            files=[("image", ("coffee.jpg", photographs["coffee.jpg"], "image/jpeg"))],
            headers={"Authorization": f"Bearer {keys[customer]}"},
            timeout=300,
        )

    for _ in range(BURST):
        assert tag("acme").status_code == 200
    error = _refused(tag("acme"), "rate_limited", "TP_API_TAG_RATE_PER_S")
    assert error["details"]["burst"] == BURST
    assert tag("globex").status_code == 200  # another customer's bucket is its own


def test_one_unfinished_batch_per_customer_holds_under_a_burst(
    limited_api, api_settings, s3, customer_images, run_stub
):
    store = CustomerStore(s3, api_settings)
    names = [f"burst-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    key = {name: store.create(name, rotate=True)[0] for name in names}
    images = {name: customer_images({"a.jpg": b"not read at submission"}, customer=name) for name in names}

    def submit(name: str, barrier: threading.Barrier | None = None) -> requests.Response:
        if barrier is not None:
            barrier.wait(timeout=60)
        return requests.post(
            f"{limited_api.url}/v1/batches",
            json={"images": images[name]},
            headers={"Authorization": f"Bearer {key[name]}"},
            timeout=300,
        )

    barrier = threading.Barrier(8)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: submit(names[0], barrier), range(8)))
    accepted = [a for a in answers if a.status_code == 202]
    assert len(accepted) == 1, [a.text for a in answers]
    for refused in (a for a in answers if a.status_code != 202):
        error = _refused(refused, "too_many_batches", "TP_API_MAX_ACTIVE_BATCHES")
        assert error["details"]["max_active_batches"] == 1
    assert submit(names[1]).status_code == 202  # another customer's limit is its own
    run_stub(accepted[0].json()["batch_id"])  # the batch's run finishes: its customer may submit again
    assert submit(names[0]).status_code == 202
