"""The per-process model cache: a few models, least recently used first out, idle ones dropped."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from tagging_platform import models
from tagging_platform.api.errors import ApiError
from tagging_platform.api.inference import ModelCache


@pytest.fixture(scope="module")
def second_ref(s3, settings, model_ref):
    """The default model registered again under another name: a second version to cache."""
    card, artifact = models.builtin_model()
    card = dataclasses.replace(card, name="mobilenet_copy", description="copy")
    return models.publish_model(s3, settings.model_bucket, card, artifact)


def test_loads_once_then_reuses_and_evicts_least_recently_used(s3, settings, model_ref, second_ref):
    cache = ModelCache(s3, settings.replace(api_model_cache=1))
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(model_ref))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(tagger) for tagger in results}) == 1  # three requests at once, one load
    assert cache.get(model_ref) is results[0]
    cache.get(second_ref)
    assert cache.loaded() == [f"mobilenet_copy@{second_ref.version}"]


def test_idle_models_are_dropped(s3, settings, model_ref):
    cache = ModelCache(s3, settings.replace(api_model_idle_s=60))
    cache.get(model_ref)
    assert cache.evict_idle() == []
    import time

    assert cache.evict_idle(now=time.monotonic() + 61) == [f"mobilenet_v2@{model_ref.version}"]
    assert cache.loaded() == []


def test_tags_and_refuses_undecodable_images(s3, settings, model_ref, photographs):
    cache = ModelCache(s3, settings)
    body = cache.tag(model_ref, [("coffee.jpg", photographs["coffee.jpg"])])
    assert body["model"] == {"name": "mobilenet_v2", "version": model_ref.version}
    assert body["results"][0]["top_tag"] in ("espresso", "cup", "coffee mug", "eggnog")
    with pytest.raises(ApiError) as raised:
        cache.tag(model_ref, [("coffee.jpg", photographs["coffee.jpg"]), ("x.bin", b"\x00\x01")])
    assert raised.value.status == 422 and raised.value.details["index"] == 1
