"""A whole manifest of real photographs through the tag_manifest job: multiprocess steps, embedded S3."""

import json
import urllib.request
import uuid

import dagster as dg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagging_platform import tags
from tagging_platform.settings import Settings
from tests.conftest import read_published, record_manifest

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}


def tag_manifest_job():
    """Rebuilt in every step process, which reads the same settings from the environment."""
    from definitions import build_definitions

    return build_definitions(Settings.from_env()).resolve_job_def("tag_manifest")


@pytest.fixture
def batch(s3, settings, photographs, upload_images):
    """A manifest of real photographs plus a corrupt JPEG and a missing key, with its own output location."""
    # Bytes after the image's end change its ETag and nothing else: earlier tests of the session tagged these
    # photographs, and reuse (decided at planning) would take their tags instead of tagging them here.
    unique = {name: data + uuid.uuid4().bytes for name, data in photographs.items()}
    uris = upload_images({**unique, "corrupt.jpg": photographs["coffee.jpg"][:5000]})
    uris.append(uris[0].rsplit("/", 1)[0] + "/missing.jpg")
    partition = f"job-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": uris, "output": "s3://tags/customer-a/"})
    return partition, uris


def _published(s3, settings, partition):
    return read_published(s3, settings.output_bucket, f"customer-a/{partition}/")


def test_a_manifest_of_real_photographs_is_tagged_published_and_checked(
    registered_instance, s3, settings, batch, pushgateway, step_environment
):
    partition, uris = batch
    instance = registered_instance
    step_environment(TP_METRICS_PUSHGATEWAY=pushgateway)
    instance.add_dynamic_partitions("manifests", [partition])

    result = dg.execute_job(
        dg.reconstructable(tag_manifest_job), instance=instance, tags={"dagster/partition": partition}
    )
    assert result.success

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["every_image_accounted_for"].passed
    [tagged] = [
        e.materialization for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("image_tags")
    ]
    assert tagged.metadata["images_per_s_per_step"].value > 0
    assert tagged.metadata["model_version"].value.startswith("sha256:")
    assert len(tagged.metadata["chunk_figures"].value.splitlines()) == 2 + 3  # header, rule, one row per chunk
    tag_chunk_steps = [e for e in result.all_events if e.step_key and e.step_key.startswith("image_tags.tag_chunk[")]
    assert len({e.step_key for e in tag_chunk_steps}) == 3  # 10 images in chunks of at most 4

    marker, objects = _published(s3, settings, partition)
    by_name = {o["image"].rsplit("/", 1)[-1]: o for o in objects}
    assert sorted(o["image"] for o in objects) == sorted(uris)
    assert marker["images"] == len(uris) == marker["tagged"] + marker["errors"]
    assert {t["name"] for t in by_name["chelsea.jpg"]["tags"]} & CAT_CLASSES
    assert {t["name"] for t in by_name["coffee.jpg"]["tags"]} & COFFEE_CLASSES
    assert by_name["corrupt.jpg"]["status"] == "error" and by_name["corrupt.jpg"]["error"]
    assert by_name["missing.jpg"]["status"] == "error" and by_name["missing.jpg"]["error"].startswith("not found")
    pushed = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(urllib.request.urlopen(f"{pushgateway}/metrics").read().decode())
        for sample in family.samples
        if sample.labels.get("batch") == partition
    ]
    # Each chunk pushed its figures while it ran (tests/tagging_platform/test_metrics.py); the merge then deleted
    # the batch's per-chunk groups, so the Pushgateway does not keep one group per chunk of every batch forever.
    assert pushed == []
    lineage = by_name["chelsea.jpg"]
    assert lineage["manifest"].endswith(f"{partition}.json") and lineage["run_id"] == result.run_id
    assert lineage["model"]["version"].startswith("sha256:") and lineage["etag"]

    # Re-running the partition takes every tagged image from the reuse index at planning (errors are tried
    # again): no duplicated rows, no duplicated objects.
    rerun = dg.execute_job(
        dg.reconstructable(tag_manifest_job), instance=instance, tags={"dagster/partition": partition}
    )
    assert rerun.success
    stored = s3.get_object(
        Bucket=settings.warehouse_bucket, Key=f"assets/image_tags/manifest={partition}/data.parquet"
    )["Body"].read()
    rows = tags.from_parquet_bytes(stored)
    assert sorted(rows.column("image").to_pylist()) == sorted(uris)
    marker_again, objects_again = _published(s3, settings, partition)
    assert sorted(o["image"] for o in objects_again) == sorted(uris)
    assert {o["run_id"] for o in objects_again} == {rerun.run_id}
    # The tags themselves come from the first run.
    assert {o["reused_from"]["run_id"] for o in objects_again if o["status"] == "ok"} == {result.run_id}
    assert marker_again["run_id"] == rerun.run_id


def test_quality_history_follows_every_manifest_with_drift(registered_instance, definitions, s3, settings, batch):
    partition, uris = batch
    instance = registered_instance
    instance.add_dynamic_partitions("manifests", [partition])
    assert dg.execute_job(
        dg.reconstructable(tag_manifest_job), instance=instance, tags={"dagster/partition": partition}
    ).success

    history_job = definitions.resolve_implicit_global_asset_job_def()
    result = history_job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("tag_quality_history")])
    assert result.success
    history = result.output_for_node("tag_quality_history")
    row = history.set_index("partition").loc[partition]
    assert row["images"] == len(uris) and 0 < row["mean_confidence"] <= 1
    assert row["error_rate"] == 2 / len(uris)  # the corrupt JPEG and the missing key
    [materialization] = result.asset_materializations_for_node("tag_quality_history")
    assert materialization.metadata["drift"].value.startswith("![chart](data:image/png;base64,")
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "tag_distribution_drift"


def test_a_manifest_outside_the_allowed_buckets_is_rejected_before_any_tagging(registered_instance, s3, settings):
    partition = f"bad-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": ["s3://elsewhere/x.jpg"]})
    registered_instance.add_dynamic_partitions("manifests", [partition])

    result = dg.execute_job(
        dg.reconstructable(tag_manifest_job),
        instance=registered_instance,
        tags={"dagster/partition": partition},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "manifest"
    assert "s3://elsewhere/x.jpg" in failure.step_failure_data.error.message
    rejected = s3.get_object(Bucket=settings.output_bucket, Key=f"{settings.output_prefix}{partition}/_REJECTED.json")
    assert "outside" in json.loads(rejected["Body"].read())["error"]
    assert not any(e.step_key and "tag_chunk" in e.step_key for e in result.all_events)
    # Run retries (the local instance retries failed runs) would only reject it again.
    assert registered_instance.get_run_by_id(result.run_id).tags["dagster/retry_on_asset_or_op_failure"] == "false"


def test_a_manifest_names_its_model_and_its_tags_say_so(registered_instance, s3, settings, photographs, upload_images):
    from tagging_platform import models

    partition = f"lite-{uuid.uuid4().hex[:6]}"
    uris = upload_images({"chelsea.jpg": photographs["chelsea.jpg"], "coffee.jpg": photographs["coffee.jpg"]})
    record_manifest(
        s3, settings, partition, {"images": uris, "model": "efficientnet_lite0", "output": "s3://tags/customer-a/"}
    )
    registered_instance.add_dynamic_partitions("manifests", [partition])

    result = dg.execute_job(
        dg.reconstructable(tag_manifest_job), instance=registered_instance, tags={"dagster/partition": partition}
    )
    assert result.success
    marker, objects = _published(s3, settings, partition)
    lite = models.resolve_model(s3, settings.model_bucket, "efficientnet_lite0")
    assert {(o["model"]["name"], o["model"]["version"]) for o in objects} == {(lite.name, lite.version)}
    assert f"/efficientnet_lite0/{lite.short_version}/" in marker["parts"][0]["key"]
    by_name = {o["image"].rsplit("/", 1)[-1]: o for o in objects}
    assert by_name["chelsea.jpg"]["tags"][0]["name"] in CAT_CLASSES


def test_a_manifest_naming_an_unknown_model_is_rejected(registered_instance, s3, settings):
    partition = f"nomodel-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": ["s3://images/a.jpg"], "model": "no-such-model"})
    registered_instance.add_dynamic_partitions("manifests", [partition])

    result = dg.execute_job(
        dg.reconstructable(tag_manifest_job),
        instance=registered_instance,
        tags={"dagster/partition": partition},
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "manifest" and "unknown model 'no-such-model'" in failure.step_failure_data.error.message
