"""Dynamic batching of POST /v1/tag: requests that arrive together share a forward pass, each gets its own tags.

The batching server's window is long and its maximum batch small, so a pass starts exactly when a model's
waiting images reach the maximum: which requests share a pass follows from what was sent, not from timing.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tagging_platform import models
from tagging_platform.api.batching import TagBatcher
from tests.api_fixtures import ApiServer

MAX_BATCH = 4


@pytest.fixture(scope="module")
def upper_ref(s3, settings, model_ref):
    """The default network under another name whose labels are in capitals: a second model with other tags."""
    card, artifact = models.builtin_model()
    card = dataclasses.replace(
        card, name="mobilenet_upper", description="capitals", labels=tuple(label.upper() for label in card.labels)
    )
    return models.publish_model(s3, settings.model_bucket, card, artifact)


@pytest.fixture(scope="module")
def batching_api(api_settings):
    settings = api_settings.replace(api_tag_batch_window_ms=120_000, api_tag_max_batch=MAX_BATCH, api_model_cache=2)
    with ApiServer.serving(settings) as server:
        yield server


def _post(url: str, key: str, files: list[tuple[str, bytes]], model: str | None = None) -> requests.Response:
    return requests.post(
        f"{url}/v1/tag",
        params={"model": model} if model else None,
        files=[("image", (name, data, "image/jpeg")) for name, data in files],
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )


def _tags(body: dict) -> list[tuple[str, str, list[tuple[str, float]]]]:
    return [(r["filename"], r["sha256"], [(t["name"], t["confidence"]) for t in r["tags"]]) for r in body["results"]]


def _same_tags(batched: dict, alone: dict) -> None:
    """The same images, tags and order; confidences equal to float noise (a batch may take other kernels)."""
    got, expected = _tags(batched), _tags(alone)
    assert [(f, s, [n for n, _ in t]) for f, s, t in got] == [(f, s, [n for n, _ in t]) for f, s, t in expected]
    for (_, _, tags), (_, _, wanted) in zip(got, expected, strict=True):
        assert [c for _, c in tags] == pytest.approx([c for _, c in wanted], abs=2e-3)


def test_concurrent_requests_of_two_models_each_get_exactly_their_own_tags(
    api, batching_api, keys, photographs, upper_ref
):
    names = sorted(photographs)
    requests_ = [  # two passes: 1 + 3 images of mobilenet_v2, 2 + 2 of mobilenet_upper
        (None, names[0:1]),
        ("mobilenet_upper", names[1:3]),
        (None, names[3:6]),
        ("mobilenet_upper", [names[6], names[0]]),
    ]
    batcher = batching_api.app.state.models.batcher
    before = dataclasses.replace(batcher.stats)
    with ThreadPoolExecutor(len(requests_)) as pool:
        batched = list(
            pool.map(
                lambda r: _post(batching_api.url, keys["acme"], [(n, photographs[n]) for n in r[1]], r[0]), requests_
            )
        )
    for (model, files), response in zip(requests_, batched, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["name"] == (model or "mobilenet_v2")
        alone = _post(api.url, keys["acme"], [(n, photographs[n]) for n in files], model)  # the default server
        assert alone.status_code == 200, alone.text
        _same_tags(body, alone.json())
        assert all(t["name"].isupper() == (model == "mobilenet_upper") for r in body["results"] for t in r["tags"])
    assert (batcher.stats.passes - before.passes, batcher.stats.requests - before.requests) == (2, 4)
    assert batcher.stats.largest == MAX_BATCH


def test_a_bad_image_fails_only_its_own_request(batching_api, keys, photographs):
    names = sorted(photographs)
    sent = {
        "good-1": [(names[0], photographs[names[0]]), (names[1], photographs[names[1]])],
        "bad": [(names[2], photographs[names[2]]), ("broken.jpg", photographs[names[2]][:300])],
        "good-2": [(names[3], photographs[names[3]]), (names[4], photographs[names[4]])],
    }
    with ThreadPoolExecutor(len(sent)) as pool:
        answers = dict(zip(sent, pool.map(lambda files: _post(batching_api.url, keys["acme"], files), sent.values())))
    assert answers["bad"].status_code == 422, answers["bad"].text
    error = answers["bad"].json()["error"]
    assert error["code"] == "invalid_image" and error["details"]["filename"] == "broken.jpg"
    for name in ("good-1", "good-2"):
        assert answers[name].status_code == 200, answers[name].text
        assert [r["filename"] for r in answers[name].json()["results"]] == [n for n, _ in sent[name]]


def test_a_request_that_fails_the_shared_pass_fails_alone(s3, settings, model_ref, photographs):
    """A pass that fails is run again request by request: only the request that fails alone gets the error."""
    from tagging_platform.api.inference import ModelCache

    cache = ModelCache(s3, settings.replace(api_tag_batch_window_ms=120_000, api_tag_max_batch=3))
    tagger = cache.get(model_ref)
    good = [tagger.decode(photographs[name]) for name in sorted(photographs)[:2]]
    one_channel = good[0][:1]  # not the model's input: the shared pass fails to stack it, and it fails alone too
    results: dict[str, object] = {}

    def predict(name: str, pixels) -> None:
        try:
            results[name] = cache.batcher.predict("m", tagger, pixels)[0]
        except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
            results[name] = exc

    threads = [
        threading.Thread(target=predict, args=args)
        for args in (("first", [good[0]]), ("wrong", [one_channel]), ("second", [good[1]]))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert isinstance(results["wrong"], RuntimeError)
    assert [top for _, top, _ in results["first"]] == [tagger.predict(good[0][None])[0][1]]
    assert [top for _, top, _ in results["second"]] == [tagger.predict(good[1][None])[0][1]]
    assert (cache.batcher.stats.passes, cache.batcher.stats.requests) == (2, 2)  # the two good ones, each alone


def test_the_batcher_thread_ends_when_idle(s3, settings, model_ref, photographs):
    from tagging_platform.api.inference import ModelCache

    batcher = TagBatcher(window_s=0, max_batch=8, idle_s=0.2)
    tagger = ModelCache(s3, settings).get(model_ref)
    batcher.predict("m", tagger, [tagger.decode(photographs["coffee.jpg"])])
    worker = batcher._worker
    assert worker is not None
    worker.join(timeout=60)
    assert not worker.is_alive() and batcher._worker is None
