"""The rekognition and groundtruth formats end to end: manifests noticed by the sensor on the embedded S3 server,
the demo photographs tagged by the real model, the published records checked against AWS's definitions."""

import json
import os
import uuid

import dagster as dg

from tagging_platform import warehouse
from tagging_platform.output_formats import LINEAGE_KEY
from tagging_platform.settings import Settings
from tests.assets.test_tag_manifest_job import CAT_CLASSES, tag_manifest_job
from tests.conftest import read_published
from tests.sensors.test_manifest_sensor import _tick
from tests.tagging_platform.test_output_formats import assert_detect_labels_response, assert_ground_truth_manifest


def test_one_batch_per_format_through_the_sensor_is_published_as_aws_tools_read_it(
    registered_instance, s3, settings, photographs, upload_images
):
    from definitions import build_definitions

    uris = upload_images(photographs)
    prefix = f"formats-{uuid.uuid4().hex[:6]}/"
    manifests = {
        "rekognition": {"images": uris, "output_format": "rekognition", "max_labels": 10, "min_confidence": 5},
        "groundtruth": {"images": uris, "output_format": "groundtruth"},
    }
    for fmt, body in manifests.items():
        s3.put_object(Bucket=settings.manifest_bucket, Key=f"{prefix}{fmt}.json", Body=json.dumps(body).encode())
    sensing = build_definitions(Settings.from_env({**os.environ, "TP_MANIFEST_PREFIX": prefix}))
    requests = _tick(sensing, registered_instance).run_requests
    partitions = {r.tags["tagging/manifest"].rsplit("/", 1)[1].removesuffix(".json"): r.partition_key for r in requests}
    assert set(partitions) == set(manifests)

    for fmt in manifests:  # the second batch reuses the first one's tags: same photographs, same model version
        result = dg.execute_job(
            dg.reconstructable(tag_manifest_job),
            instance=registered_instance,
            tags={"dagster/partition": partitions[fmt]},
        )
        assert result.success

    marker, records = read_published(
        s3, settings.output_bucket, f"{settings.output_prefix}{partitions['rekognition']}/"
    )
    assert marker["format"] == "rekognition" and marker["tagged"] == len(uris)
    assert sorted(r[LINEAGE_KEY]["image"] for r in records) == sorted(uris)
    for record in records:
        assert_detect_labels_response(record)
        assert 0 < len(record["Labels"]) <= 10 and min(label["Confidence"] for label in record["Labels"]) >= 5
    chelsea = next(r for r in records if r[LINEAGE_KEY]["image"].endswith("/chelsea.jpg"))
    assert {label["Name"] for label in chelsea["Labels"]} & CAT_CLASSES
    parents = {parent["Name"] for label in chelsea["Labels"] for parent in label["Parents"]}
    assert parents & {label["Name"] for label in chelsea["Labels"]}  # parents published as labels too

    marker, lines = read_published(s3, settings.output_bucket, f"{settings.output_prefix}{partitions['groundtruth']}/")
    assert marker["format"] == "groundtruth"
    assert_ground_truth_manifest(lines, uris)
    assert {line["labels-metadata"]["job-name"] for line in lines} == {f"tagging-platform/{partitions['groundtruth']}"}

    # The warehouse and its views do not depend on the published format.
    columns = {
        "tags": "image, position, status, error, tags, top_tag, top_confidence, model_name, model_version",
        "tag_labels": "image, tag, confidence, parents, rank",
        "tag_parents": "image, tag, rank, parent, level",
    }
    for name, selected in columns.items():
        sql = f"SELECT {selected} FROM {name} ORDER BY image, {'rank' if name != 'tags' else 'position'}"
        sql += ", level" if name == "tag_parents" else ""
        rekognition, groundtruth = (
            warehouse.query(sql, settings, manifests=[partitions[f]]).to_pylist() for f in manifests
        )
        assert rekognition == groundtruth and rekognition
    print(
        json.dumps(
            {"rekognition": chelsea, "groundtruth": next(l for l in lines if l["source-ref"].endswith("/chelsea.jpg"))}
        )
    )
