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


@pytest.fixture
def s3_reads(s3):
    """The GetObject calls the client makes while the test runs."""
    reads: list[str] = []

    def count(params, **_):
        reads.append(params["Key"])

    s3.meta.events.register("before-parameter-build.s3.GetObject", count)
    yield reads
    s3.meta.events.unregister("before-parameter-build.s3.GetObject", count)


def test_a_model_spec_is_read_once_a_name_again_after_its_ttl(s3, settings, s3_reads):
    card, artifact = models.builtin_model()
    with pytest.raises(models.ModelError):
        ModelCache(s3, settings).resolve("alias_probe")  # not registered yet: an error, and not remembered
    first = models.publish_model(s3, settings.model_bucket, dataclasses.replace(card, name="alias_probe"), artifact)
    cache = ModelCache(s3, settings.replace(api_model_alias_ttl_s=3600))
    assert cache.resolve("alias_probe") == first
    pinned = f"alias_probe@{first.version}"
    assert cache.resolve(pinned) == first
    reads = len(s3_reads)
    second = models.publish_model(
        s3,
        settings.model_bucket,
        dataclasses.replace(card, name="alias_probe", labels=(*card.labels[:-1], "retrained")),
        artifact,
    )
    assert second.version != first.version
    # Within the TTL neither spec reads S3: a request's model costs no round trip.
    assert [cache.resolve("alias_probe") for _ in range(5)] == [first] * 5
    assert cache.resolve(pinned) == first
    assert len(s3_reads) == reads
    # With no TTL the name's latest pointer is read again, and the new version is what the name means.
    fresh = ModelCache(s3, settings.replace(api_model_alias_ttl_s=0))
    assert fresh.resolve("alias_probe") == second
    assert fresh.resolve("alias_probe") == second
    assert s3_reads[reads:].count("alias_probe/latest.json") == 2
