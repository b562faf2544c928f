"""Reuse of earlier tags through the tag_manifest job: a real Dagster instance, the embedded S3 server, the real model."""

import json
import uuid

import dagster as dg

from tagging_platform import publishing
from tests.conftest import record_manifest


def unique(jpeg: bytes) -> bytes:
    """The same picture under a new ETag (decoders stop at the JPEG's end marker), so no other test's tags match."""
    return jpeg + b"\0" + uuid.uuid4().bytes


def _tag(definitions, instance, s3, settings, body: dict) -> tuple[str, dg.ExecuteInProcessResult]:
    partition = f"reuse-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, body)
    instance.add_dynamic_partitions("manifests", [partition])
    result = definitions.resolve_job_def("tag_manifest").execute_in_process(instance=instance, partition_key=partition)
    assert result.success
    return partition, result


def _published(s3, settings, partition) -> dict[str, dict]:
    prefix = f"{settings.output_prefix}{partition}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=settings.output_bucket, Prefix=prefix).get("Contents", [])]
    [marker_key] = [k for k in keys if k.endswith(publishing.MARKER_NAME)]
    marker = json.loads(s3.get_object(Bucket=settings.output_bucket, Key=marker_key)["Body"].read())
    return {
        (obj := json.loads(line))["image"]: obj
        for part in marker["parts"]
        for line in s3.get_object(Bucket=settings.output_bucket, Key=part["key"])["Body"].read().splitlines()
    }


def _reused(result) -> int:
    [materialization] = result.asset_materializations_for_node("image_tags")
    return materialization.metadata["reused"].value


def test_a_second_manifest_reuses_every_overlapping_image_and_reuse_false_tags_all_again(
    registered_instance, definitions, s3, settings, photographs, upload_images
):
    seen = upload_images({n: unique(photographs[n]) for n in ("chelsea.jpg", "coffee.jpg", "rocket.jpg")})
    first_partition, first_run = _tag(definitions, registered_instance, s3, settings, {"images": seen})
    first = _published(s3, settings, first_partition)
    assert _reused(first_run) == 0 and not any("reused_from" in o for o in first.values())

    # The same three pictures under other keys (content, not names, decides) and two pictures not seen before.
    copies = upload_images({f"copy-{i}.jpg": _body(s3, uri) for i, uri in enumerate(seen)})
    new = upload_images({n: unique(photographs[n]) for n in ("astronaut.jpg", "flower.jpg")})
    second_partition, second_run = _tag(definitions, registered_instance, s3, settings, {"images": [*copies, *new]})
    second = _published(s3, settings, second_partition)

    assert _reused(second_run) == 3
    for copy, original in zip(copies, seen, strict=True):
        obj = second[copy]
        assert obj["tags"] == first[original]["tags"] and obj["etag"] == first[original]["etag"]
        assert obj["model"] == first[original]["model"]  # the precision the tags were made in included
        assert obj["reused_from"] == {
            "manifest": first[original]["manifest"],
            "partition": first_partition,
            "run_id": first_run.run_id,
            "chunk": first[original]["chunk"],
        }
        assert obj["run_id"] == second_run.run_id and obj["manifest"].endswith(f"{second_partition}.json")
    assert all("reused_from" not in second[uri] and second[uri]["tags"] for uri in new)
    # Planning took the three from the index: one tag_chunk step, for the two new pictures only.
    chunk_outputs = _tag_chunk_outputs(second_run)
    assert [(m["images"].value, m["tagged_this_attempt"].value) for m in chunk_outputs] == [(2, 2)]
    assert _planned(second_run)["reused"].value == 3
    # The k8s executor's limit for the run's tag_chunk pods comes from this plan: node start-up, one wave.
    from executors import planned_unschedulable_timeout

    plan = _planned(second_run)["plan"].value
    assert planned_unschedulable_timeout(registered_instance, second_run.run_id) == plan["unschedulable_timeout_s"]
    assert plan["unschedulable_timeout_s"] == settings.step_unschedulable_timeout_s

    # Every image tagged before: the plan yields no chunk, so no tag_chunk step (no GPU pod) starts, and the
    # merge still makes the batch's table from the reused rows alone, published like any other.
    all_seen_partition, all_seen_run = _tag(definitions, registered_instance, s3, settings, {"images": [*new, *seen]})
    assert _tag_chunk_outputs(all_seen_run) == [] and not any(
        e.step_key and "tag_chunk" in e.step_key for e in all_seen_run.all_events
    )
    assert _reused(all_seen_run) == 5
    all_seen = _published(s3, settings, all_seen_partition)
    assert sorted(all_seen) == sorted([*new, *seen])
    assert all(obj["reused_from"] and obj["chunk"] == -1 for obj in all_seen.values())

    third_partition, third_run = _tag(
        definitions, registered_instance, s3, settings, {"images": [*copies, *new], "reuse": False}
    )
    third = _published(s3, settings, third_partition)
    assert _reused(third_run) == 0
    assert all("reused_from" not in obj and obj["run_id"] == third_run.run_id for obj in third.values())
    assert [third[uri]["tags"][0]["name"] for uri in copies] == [first[uri]["tags"][0]["name"] for uri in seen]


def _tag_chunk_outputs(result) -> list[dict]:
    return [
        e.event_specific_data.metadata
        for e in result.all_events
        if e.is_successful_output and e.step_key.startswith("image_tags.tag_chunk[")
    ]


def _planned(result) -> dict:
    [planned] = [
        e.event_specific_data.metadata
        for e in result.all_events
        if e.is_successful_output
        and e.step_key == "image_tags.plan_chunks"
        and e.event_specific_data.step_output_handle.output_name == "planned"
    ]
    return planned


def _body(s3, uri: str) -> bytes:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
