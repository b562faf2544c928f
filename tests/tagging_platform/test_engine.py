"""The engine on real photographs and the real model, reading from the embedded S3 server over HTTP."""

import dataclasses
import io
import json

import pytest
from PIL import Image

from tagging_platform import engine, photos, tags
from tagging_platform.models import ModelRef

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}


@pytest.fixture(scope="module")
def tagger(s3, model_ref: ModelRef):
    return engine.Tagger.load(s3, model_ref, device="cpu", batch_size=4, fetch_workers=2)


def _spec(uris, model_ref, index=0, etag="manifest-etag"):
    return engine.ChunkSpec(
        partition="engine-test",
        manifest="s3://manifests/incoming/engine-test.json",
        manifest_etag=etag,
        index=index,
        positions=tuple(range(len(uris))),
        images=tuple(uris),
        model=model_ref,
    )


def test_real_photographs_get_the_tags_a_person_would_expect(s3, tagger, photographs, upload_images, model_ref):
    uris = upload_images({"cat.jpg": photographs["chelsea.jpg"], "coffee.jpg": photographs["coffee.jpg"]})
    rows, stats = tagger.tag(s3, _spec(uris, model_ref), run_id="run-1")
    by_image = {row["image"]: row for row in rows}
    cat, coffee = by_image[uris[0]], by_image[uris[1]]
    assert {t["name"] for t in cat["tags"]} & CAT_CLASSES
    assert {t["name"] for t in coffee["tags"]} & COFFEE_CLASSES
    assert cat["status"] == tags.STATUS_OK and cat["etag"]
    assert cat["model_version"] == model_ref.version and cat["run_id"] == "run-1"
    assert all(0 < t["confidence"] <= 1 for t in cat["tags"])
    # Hierarchical tags: every ImageNet class comes with its WordNet parents, nearest first.
    cats = [t for t in cat["tags"] if t["name"] in CAT_CLASSES - {"lynx"}]
    assert cats and all({"cat", "feline", "animal"} <= set(t["parents"]) for t in cats)
    assert all("artifact" in t["parents"] or "food" in t["parents"] for t in coffee["tags"])
    assert (stats.images, stats.tagged, stats.errors) == (2, 2, 0)


def test_bad_images_become_error_rows_with_reasons(s3, tagger, photographs, upload_images, model_ref):
    good = photographs["rocket.jpg"]
    uris = upload_images(
        {"truncated.jpg": good[: len(good) // 3], "text.jpg": b"this is not an image", "empty.jpg": b"", "ok.jpg": good}
    )
    missing = uris[0].rsplit("/", 1)[0] + "/missing.jpg"
    rows, stats = tagger.tag(s3, _spec([*uris, missing], model_ref), run_id="run-1")
    by_image = {row["image"]: row for row in rows}
    assert len(rows) == 5
    assert by_image[uris[3]]["status"] == tags.STATUS_OK
    errors = {uri.rsplit("/", 1)[-1]: by_image[uri]["error"] for uri in [*uris[:3], missing]}
    assert "truncated" in errors["truncated.jpg"] or "decode failed" in errors["truncated.jpg"]
    assert errors["text.jpg"].startswith("not an image")
    assert errors["empty.jpg"].startswith("not an image")
    assert errors["missing.jpg"].startswith("not found")
    assert stats.errors == 4


def test_a_chunk_result_is_written_once_and_a_rerun_skips_the_work(s3, settings, photographs, upload_images, model_ref):
    uris = upload_images({"a.jpg": photographs["flower.jpg"], "b.jpg": photographs["china.jpg"]})
    spec = _spec(uris, model_ref, index=3, etag=f"etag-{uris[0]}")
    loads = []

    def load():
        loads.append(1)
        return engine.Tagger.load(s3, model_ref, device="cpu", batch_size=4, fetch_workers=2)

    first = engine.run_chunk(s3, settings.warehouse_bucket, spec, "run-1", load)
    second = engine.run_chunk(s3, settings.warehouse_bucket, spec, "run-2", load)
    assert not first.skipped and second.skipped
    assert len(loads) == 1
    # The step reports its peak memory; torch alone is hundreds of MB, so a figure under 100 MB is no measurement.
    assert 100 < first.peak_rss_mb < 64 * 1024
    assert engine.chunk_stats(s3, settings.warehouse_bucket, spec)["peak_rss_mb"] == first.peak_rss_mb
    assert (second.images, second.tagged, second.errors) == (2, 2, 0)
    table = engine.read_chunk(s3, settings.warehouse_bucket, spec)
    assert table.num_rows == 2 and set(table.column("run_id").to_pylist()) == {"run-1"}
    assert table.schema.equals(tags.TAG_SCHEMA, check_metadata=False)


def _parts(s3, bucket, spec):
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{spec.result_prefix}part-").get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_a_chunk_commits_a_part_every_checkpoint_and_its_marker_last(
    s3, tagger, settings, photographs, upload_images, model_ref
):
    uris = upload_images({f"{i}-{name}": body for i, (name, body) in enumerate(list(photographs.items())[:5])})
    spec = _spec(uris, model_ref, etag=f"checkpoints-{uris[0]}")
    tagger = dataclasses.replace(tagger, batch_size=1)
    stats = engine.run_chunk(s3, settings.warehouse_bucket, spec, "run-1", lambda: tagger, checkpoint_images=2)
    parts = _parts(s3, settings.warehouse_bucket, spec)
    # Five images, a checkpoint every two: parts of 2, 2 and the last 1, all listed by the marker.
    assert (stats.parts, len(parts), stats.resumed, stats.tagged + stats.errors) == (3, 3, 0, 5)
    marker = json.loads(s3.get_object(Bucket=settings.warehouse_bucket, Key=spec.result_key)["Body"].read())
    assert sorted(marker["parts"]) == parts
    latest_part = max(s3.head_object(Bucket=settings.warehouse_bucket, Key=k)["LastModified"] for k in parts)
    assert s3.head_object(Bucket=settings.warehouse_bucket, Key=spec.result_key)["LastModified"] >= latest_part
    table = engine.read_chunk(s3, settings.warehouse_bucket, spec)
    assert sorted(table.column("position").to_pylist()) == [0, 1, 2, 3, 4]


def test_a_retried_attempt_tags_only_what_no_committed_part_holds(
    s3, tagger, settings, photographs, upload_images, model_ref
):
    """What a killed attempt leaves (parts for its first images, no marker) and what the retry then does."""
    uris = upload_images({f"{i}-{name}": body for i, (name, body) in enumerate(list(photographs.items())[:5])})
    spec = _spec(uris, model_ref, etag=f"resumed-{uris[0]}")
    tagger = dataclasses.replace(tagger, batch_size=1)
    # The killed attempt: it committed its first three images as parts (checkpoint every 2), then died.
    killed = engine.Checkpoint(s3, settings.warehouse_bucket, spec, every_images=2, every_s=3600)
    head = dataclasses.replace(spec, positions=spec.positions[:3], images=spec.images[:3])
    rows, _ = tagger.tag(s3, head, "attempt-1", checkpoint=killed)
    killed.commit(rows)
    assert engine.chunk_stats(s3, settings.warehouse_bucket, spec) == {}, "no marker before the chunk is complete"

    retried = engine.run_chunk(s3, settings.warehouse_bucket, spec, "attempt-2", lambda: tagger, checkpoint_images=2)
    assert (retried.resumed, retried.images, retried.tagged + retried.errors) == (3, 5, 5)
    table = engine.read_chunk(s3, settings.warehouse_bucket, spec)
    by_position = dict(zip(table.column("position").to_pylist(), table.column("run_id").to_pylist(), strict=True))
    # Every image once; the retry tagged none of the committed three.
    assert by_position == {0: "attempt-1", 1: "attempt-1", 2: "attempt-1", 3: "attempt-2", 4: "attempt-2"}


def test_parts_of_attempts_running_at_once_add_no_image_twice(
    s3, tagger, settings, photographs, upload_images, model_ref
):
    """A pod presumed dead that was still running: its parts overlap another attempt's, or land after the marker."""
    uris = upload_images({f"{i}-{name}": body for i, (name, body) in enumerate(list(photographs.items())[:3])})
    spec = _spec(uris, model_ref, etag=f"zombie-{uris[0]}")
    tagger = dataclasses.replace(tagger, batch_size=1)

    def commit(attempt: engine.Checkpoint, images: slice, run_id: str) -> None:
        part = dataclasses.replace(spec, positions=spec.positions[images], images=spec.images[images])
        attempt.commit(tagger.tag(s3, part, run_id)[0])

    one, two = (engine.Checkpoint(s3, settings.warehouse_bucket, spec, every_images=10, every_s=3600) for _ in "12")
    commit(one, slice(0, 1), "one")
    commit(two, slice(0, 2), "two")  # started from nothing too: image 0 is in both parts
    stats = engine.run_chunk(s3, settings.warehouse_bucket, spec, "three", lambda: tagger)
    commit(one, slice(1, 3), "one")  # after the marker: not part of the chunk
    assert (stats.resumed, stats.tagged + stats.errors) == (2, 3)
    table = engine.read_chunk(s3, settings.warehouse_bucket, spec)
    rows = dict(zip(table.column("position").to_pylist(), table.column("run_id").to_pylist(), strict=True))
    # Image 0 from whichever of the two overlapping parts sorts first; each image once.
    assert table.num_rows == 3 and rows[0] in {"one", "two"} and (rows[1], rows[2]) == ("two", "three")


def test_a_changed_manifest_gets_a_fresh_chunk_result(model_ref):
    same = _spec(["s3://images/a.jpg"], model_ref, etag="one")
    changed = _spec(["s3://images/a.jpg"], model_ref, etag="two")
    assert same.result_key != changed.result_key
    assert same.result_key == _spec(["s3://images/a.jpg"], model_ref, etag="one").result_key


def test_a_torchscript_model_in_the_model_bucket_tags_like_the_network_it_was_made_from(
    s3, settings, photographs, upload_images, model_ref
):
    """How a customer's own network plugs in: any TorchScript artifact registered with labels and preprocessing."""
    import hashlib
    import io

    import torch

    from tagging_platform import models

    builtin, weights = models.builtin_model()
    network = models.load_network(builtin, weights, "cpu")
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)
    artifact = buffer.getvalue()
    card = models.ModelCard(
        name="customer-net",
        kind="torchscript",
        artifact_sha256=hashlib.sha256(artifact).hexdigest(),
        labels=builtin.labels,
        preprocessing=builtin.preprocessing,
    )
    ref = models.publish_model(s3, settings.model_bucket, card, artifact)
    assert models.resolve_model(s3, settings.model_bucket, "customer-net") == ref
    assert models.resolve_model(s3, settings.model_bucket, f"customer-net@{ref.short_version}") == ref

    uris = upload_images({"cat.jpg": photographs["chelsea.jpg"], "coffee.jpg": photographs["coffee.jpg"]})
    scripted = engine.Tagger.load(s3, ref, device="cpu", batch_size=4, fetch_workers=2)
    builtin_tagger = engine.Tagger.load(s3, model_ref, device="cpu", batch_size=4, fetch_workers=2)
    rows, _ = scripted.tag(s3, _spec(uris, ref), run_id="run-1")
    expected, _ = builtin_tagger.tag(s3, _spec(uris, model_ref), run_id="run-1")
    assert [r["top_tag"] for r in rows] == [r["top_tag"] for r in expected]
    assert [r["top_confidence"] for r in rows] == pytest.approx([r["top_confidence"] for r in expected], abs=1e-4)
    assert {r["model_name"] for r in rows} == {"customer-net"}
    # Its card has no taxonomy, so its tags have no parents.
    assert all(t["parents"] == [] for r in rows for t in r["tags"])


def test_an_unknown_model_is_a_clear_error(s3, settings, model_ref):
    from tagging_platform import models

    with pytest.raises(models.ModelError, match="unknown model 'no-such-model'"):
        models.resolve_model(s3, settings.model_bucket, "no-such-model")
    with pytest.raises(models.ModelError, match="unknown version"):
        models.resolve_model(s3, settings.model_bucket, "mobilenet_v2@0123456789abcdef")


def test_jpegs_decoded_by_torchvision_in_batches_tag_like_pillow(s3, photographs, upload_images, model_ref):
    """The CUDA path (nvJPEG, a batch per call) on the CPU: the same call with device="cpu" is libjpeg's."""
    cmyk = io.BytesIO()
    photos.photograph("coffee").convert("CMYK").save(cmyk, format="JPEG", quality=90)
    png = io.BytesIO()
    Image.open(io.BytesIO(photographs["chelsea.jpg"])).save(png, format="PNG")
    images = {
        **photographs,
        "truncated.jpg": photographs["coffee.jpg"][:5000],  # fails the batched call: Pillow names the problem
        "cmyk.jpg": cmyk.getvalue(),  # not for the device's decoder: Pillow converts it
        "cat.png": png.getvalue(),
    }
    uris = upload_images(images)
    spec = _spec(uris, model_ref)
    options = {"device": "cpu", "batch_size": 4, "fetch_workers": 2}
    by_device, device_stats = engine.Tagger.load(s3, model_ref, jpeg_device="cpu", **options).tag(s3, spec, "run-1")
    by_pillow, pillow_stats = engine.Tagger.load(s3, model_ref, **options).tag(s3, spec, "run-1")

    assert pillow_stats.device_decoded == 0
    plain = [u for u, name in zip(uris, images, strict=True) if name in photographs]
    # Batches holding the truncated JPEG went to Pillow whole; every other batch's photographs to the device.
    assert 0 < device_stats.device_decoded <= len(plain)
    device, pillow = ({row["image"]: row for row in rows} for rows in (by_device, by_pillow))
    assert {u: r["status"] for u, r in device.items()} == {u: r["status"] for u, r in pillow.items()}
    assert device[uris[list(images).index("truncated.jpg")]]["error"].startswith("decode failed")
    assert device[uris[list(images).index("cmyk.jpg")]]["status"] == tags.STATUS_OK
    # Pillow's draft mode decodes at a reduced scale, libjpeg in full: the best tags agree, confidences differ a little.
    for uri in plain:
        assert pillow[uri]["top_tag"] in {t["name"] for t in device[uri]["tags"]}
    agree = sum(device[u]["top_tag"] == pillow[u]["top_tag"] for u in plain)
    assert agree >= len(plain) - 1


def test_resizing_only_the_kept_box_gives_the_pixels_of_resizing_then_cropping(photographs):
    # The decode resamples only the part of the photograph the centre crop keeps: each pixel must come out as the
    # whole resize followed by the crop would give it (rounding aside), whatever the photograph's shape.
    photograph = Image.open(io.BytesIO(photographs["chelsea.jpg"])).convert("RGB")
    width, height = photograph.size
    shapes = [(width, height), (height, width), (width, width), (301, 257), (257, 513), (1000, 999)]
    for shape in shapes:
        image = photograph.resize(shape)
        boxed = engine._resize_crop_box(image, 256, 224)
        whole = engine._resize_then_crop(image, 256, 224)
        assert boxed.size == whole.size == (224, 224)
        difference = max(abs(a - b) for a, b in zip(boxed.tobytes(), whole.tobytes(), strict=True))
        assert difference <= 1, f"{shape}: pixels differ by up to {difference} levels"
