"""Reuse of earlier tags by (ETag, model version): the index in the warehouse and chunks that consult it."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pytest

from tagging_platform import engine, reuse, tags
from tagging_platform.models import ModelRef
from tagging_platform.s3 import make_client


def unique(jpeg: bytes) -> bytes:
    """The same picture under a new ETag: decoders stop at the JPEG's end marker and ignore what follows."""
    return jpeg + b"\0" + uuid.uuid4().bytes


@dataclass
class Batch:
    reused: int
    tagged: int  # images with tags, reused or tagged now
    errors: int
    images: int
    chunks: int


@pytest.fixture
def run(s3, settings, model_ref):
    """Runs a batch as the image_tags asset does: reuse decided at planning, one chunk of the rest, the merge's
    table indexed for reuse. Counts model loads."""
    loads = []

    def load():
        loads.append(1)
        return engine.Tagger.load(s3, model_ref, device="cpu", batch_size=4, fetch_workers=2)

    def run_batch(partition: str, uris: list[str], run_id: str, reuse_tags: bool = True) -> tuple[Batch, dict]:
        manifest, manifest_etag = f"s3://manifests/incoming/{partition}.json", f"etag-{partition}-{run_id}"
        positions, images = list(range(len(uris))), list(uris)
        reused_rows = tags.empty_tag_table()
        if reuse_tags:
            found = reuse.plan_reuse(
                s3,
                settings.warehouse_bucket,
                model_ref,
                {"manifest": manifest, "partition": partition},
                run_id,
                positions,
                images,
            )
            reused_rows, positions, images = found.rows, found.positions, found.images
        planned = engine.plan_batch(s3, settings.warehouse_bucket, partition, manifest_etag, model_ref, reused_rows)
        specs = engine.chunk_specs(
            partition, manifest, manifest_etag, positions, images, model_ref, max(1, len(images))
        )
        for spec in specs:
            engine.run_chunk(s3, settings.warehouse_bucket, spec, run_id, load)
        parts = [engine.read_reused(s3, settings.warehouse_bucket, planned)]
        table = pa.concat_tables(parts + [engine.read_chunk(s3, settings.warehouse_bucket, spec) for spec in specs])
        reuse.record(s3, settings.warehouse_bucket, partition, table)
        errors = table.column("status").to_pylist().count(tags.STATUS_ERROR)
        batch = Batch(planned.reused, table.num_rows - errors, errors, table.num_rows, len(specs))
        return batch, {row["image"]: row for row in table.to_pylist()}

    run_batch.loads = loads
    return run_batch


def test_a_second_batch_reuses_every_image_seen_before_and_tags_only_the_new_ones(run, s3, photographs, upload_images):
    first_uris = upload_images({n: unique(photographs[n]) for n in ("chelsea.jpg", "coffee.jpg", "rocket.jpg")})
    # The same bytes under other keys, plus one picture not seen before.
    second_uris = upload_images(
        {
            "cat-again.jpg": _body(s3, first_uris[0]),
            "coffee-again.jpg": _body(s3, first_uris[1]),
            "new.jpg": unique(photographs["astronaut.jpg"]),
        }
    )
    first_stats, first = run("reuse-a", first_uris, "run-a")
    second_stats, second = run("reuse-b", second_uris, "run-b")

    assert (first_stats.reused, first_stats.tagged) == (0, 3)
    assert (second_stats.reused, second_stats.tagged, second_stats.images) == (2, 3, 3)
    for again, original in ((second_uris[0], first_uris[0]), (second_uris[1], first_uris[1])):
        row = second[again]
        assert row["tags"] == first[original]["tags"] and row["etag"] == first[original]["etag"]
        assert row["reused_from"] == {
            "manifest": "s3://manifests/incoming/reuse-a.json",
            "partition": "reuse-a",
            "run_id": "run-a",
            "chunk": 0,
        }
        # The row belongs to this batch and run, and to no chunk; only its tags come from the first one.
        assert (row["partition"], row["run_id"], row["position"]) == ("reuse-b", "run-b", second_uris.index(again))
        assert row["chunk"] == reuse.REUSED_CHUNK
        assert row["tagged_at"] == first[original]["tagged_at"]
    assert second[second_uris[2]]["reused_from"] is None and second[second_uris[2]]["tags"]
    assert tags.tag_object(second[second_uris[0]])["reused_from"]["run_id"] == "run-a"
    assert "reused_from" not in tags.tag_object(second[second_uris[2]])


def test_reuse_names_the_run_that_first_produced_the_tags_not_the_last_that_reused_them(
    run, photographs, upload_images
):
    body = unique(photographs["flower.jpg"])
    [a], [b], [c] = (upload_images({f"{n}.jpg": body}) for n in "abc")
    run("origin-1", [a], "run-1")
    run("origin-2", [b], "run-2")
    stats, third = run("origin-3", [c], "run-3")
    assert stats.reused == 1 and third[c]["reused_from"]["run_id"] == "run-1"


def test_a_batch_of_images_all_seen_before_has_no_chunk_and_never_loads_the_model(run, s3, photographs, upload_images):
    uris = upload_images({"a.jpg": unique(photographs["china.jpg"])})
    run("load-1", uris, "run-1")
    loads_before = len(run.loads)
    stats, _ = run("load-2", upload_images({"b.jpg": _body(s3, uris[0])}), "run-2")
    assert (stats.reused, stats.chunks) == (1, 0) and len(run.loads) == loads_before


def test_images_that_failed_are_tried_again_not_reused(run, photographs, upload_images):
    broken = unique(photographs["coffee.jpg"][:4000])
    [first] = upload_images({"broken.jpg": broken})
    stats, rows = run("errors-1", [first], "run-1")
    assert stats.errors == 1 and rows[first]["status"] == tags.STATUS_ERROR
    [again] = upload_images({"broken.jpg": broken})
    stats, rows = run("errors-2", [again], "run-2")
    assert (stats.reused, stats.errors) == (0, 1) and rows[again]["reused_from"] is None


def test_reuse_off_tags_every_image_again(run, s3, photographs, upload_images):
    uris = upload_images({"a.jpg": unique(photographs["chelsea.jpg"])})
    run("fresh-1", uris, "run-1")
    stats, rows = run("fresh-2", upload_images({"a.jpg": _body(s3, uris[0])}), "run-2", reuse_tags=False)
    assert (stats.reused, stats.tagged) == (0, 1)
    [row] = rows.values()
    assert row["reused_from"] is None and row["run_id"] == "run-2"


def test_a_changed_image_under_the_same_key_is_tagged_again(run, s3, photographs, upload_images):
    [uri] = upload_images({"a.jpg": unique(photographs["chelsea.jpg"])})
    run("changed-1", [uri], "run-1")
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=unique(photographs["coffee.jpg"]))
    stats, rows = run("changed-2", [uri], "run-2")
    assert stats.reused == 0 and rows[uri]["top_tag"] in {"espresso", "cup", "coffee mug"}


def test_another_model_version_does_not_see_the_index(s3, settings, model_ref, photographs, upload_images):
    uris = upload_images({"a.jpg": unique(photographs["rocket.jpg"])})
    [spec] = engine.chunk_specs(
        "other-1", "s3://m/other-1.json", uuid.uuid4().hex, [0], uris, model_ref, chunk_images=1
    )
    engine.run_chunk(
        s3, settings.warehouse_bucket, spec, "run-1", lambda: engine.Tagger.load(s3, model_ref, device="cpu")
    )
    table = engine.read_chunk(s3, settings.warehouse_bucket, spec)
    assert reuse.record(s3, settings.warehouse_bucket, "other-1", table) == 1
    etag = table.column("etag")[0].as_py()
    assert set(reuse.lookup(s3, settings.warehouse_bucket, model_ref, [etag])) == {etag}
    other = ModelRef(model_ref.name, "sha256:" + "0" * 64, model_ref.bucket)
    assert reuse.lookup(s3, settings.warehouse_bucket, other, [etag]) == {}


def test_a_version_that_has_indexed_nothing_plans_without_reading_any_image(settings, model_ref, upload_images):
    """Its first batch can reuse nothing: listing a large manifest's folders for ETags would be pure waste."""
    uris = upload_images({f"{i}.jpg": uuid.uuid4().bytes for i in range(60)})
    client = make_client(settings)
    calls = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    fresh = ModelRef(model_ref.name, f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}", model_ref.bucket)
    batch = {"manifest": "s3://manifests/incoming/first.json", "partition": "first"}
    found = reuse.plan_reuse(client, settings.warehouse_bucket, fresh, batch, "run-1", list(range(60)), uris)
    assert (found.rows.num_rows, found.positions, found.images) == (0, list(range(60)), uris)
    # One listing of the version's (empty) index; nothing of the images' folder, no HEAD.
    assert calls == ["ListObjectsV2"]


def test_current_etags_list_a_folder_of_many_images_and_head_the_rest(s3):
    folder = f"etags-{uuid.uuid4().hex[:6]}/"
    etags = {}
    for i in range(60):
        # Other objects between the chunk's images: a listing sees them and must leave them out.
        for key in (f"{folder}{i:03d}.jpg", f"{folder}{i:03d}.txt"):
            etags[key] = s3.put_object(Bucket="images", Key=key, Body=f"{key}".encode())["ETag"].strip('"')
    elsewhere = f"other-{uuid.uuid4().hex[:6]}/one.jpg"
    etags[elsewhere] = s3.put_object(Bucket="images", Key=elsewhere, Body=b"x")["ETag"].strip('"')
    uris = [f"s3://images/{folder}{i:03d}.jpg" for i in range(5, 60)] + [
        f"s3://images/{folder}missing.jpg",
        f"s3://images/{elsewhere}",
        "s3://no-such-bucket/a.jpg",
    ]
    got = reuse.current_etags(s3, uris)
    assert got[:55] == [etags[f"{folder}{i:03d}.jpg"] for i in range(5, 60)]
    assert got[55:] == [None, etags[elsewhere], None]


def test_a_large_folder_is_listed_in_ranges_side_by_side(s3, settings, monkeypatch):
    # Ranges of 40 keys instead of a page's 1,000: 100 images make three of them.
    monkeypatch.setattr(reuse, "_LIST_PAGE", 40, raising=False)
    folder = f"ranges-{uuid.uuid4().hex[:6]}/"
    keys = [f"{folder}{i:03d}.jpg" for i in range(100)]
    with ThreadPoolExecutor(8) as pool:
        etags = list(pool.map(lambda key: s3.put_object(Bucket="images", Key=key, Body=key.encode())["ETag"], keys))
    client = make_client(settings)
    lock, starts, in_flight, most = threading.Lock(), [], [0], [0]

    def sent(params, **_):
        with lock:
            starts.append(params.get("StartAfter"))
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.3)  # long enough for the other ranges' requests to be sent meanwhile

    def answered(**_):
        with lock:
            in_flight[0] -= 1

    client.meta.events.register("before-parameter-build.s3.ListObjectsV2", sent)
    client.meta.events.register("after-call.s3.ListObjectsV2", answered)
    got = reuse.current_etags(client, [f"s3://images/{key}" for key in reversed(keys)])
    assert got == [etag.strip('"') for etag in reversed(etags)]
    # Each range starts just before its own first image, and they were in flight together.
    assert sorted(starts) == [f"{folder}000.jp", f"{folder}040.jp", f"{folder}080.jp"]
    assert most[0] > 1


def _body(s3, uri: str) -> bytes:
    """The bytes stored at an uploaded image's URI, to upload them again under another key."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
