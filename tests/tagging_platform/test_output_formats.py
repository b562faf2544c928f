"""The rekognition and groundtruth records, checked against AWS's own definitions and read back by our parser."""

import json
from datetime import UTC, datetime

import pytest

from tagging_platform import output_formats, publishing, tags
from tagging_platform.manifests import parse_manifest
from tagging_platform.output_formats import LINEAGE_KEY, Options
from tests.aws_shapes import problems, service_shapes
from tests.conftest import read_published

SHAPES = service_shapes("rekognition")
CAT = ["domestic cat", "cat", "domestic animal", "feline", "carnivore", "placental", "mammal", "animal"]
DOG = ["dog", "domestic animal", "canine", "carnivore", "placental", "mammal", "animal"]


def _row(image="s3://images/p/chelsea.jpg", status=tags.STATUS_OK, found=None):
    found = [("Egyptian cat", 0.69, CAT), ("tabby", 0.12, CAT), ("beagle", 0.08, DOG)] if found is None else found
    return {
        "image": image,
        "position": 0,
        "etag": "e0",
        "status": status,
        "error": None if status == tags.STATUS_OK else "decode failed: truncated",
        "tags": [{"name": n, "confidence": c, "parents": p} for n, c, p in found] if status == tags.STATUS_OK else None,
        "top_tag": None,
        "top_confidence": None,
        "model_name": "mobilenet_v2",
        "model_version": "sha256:abc",
        "manifest": "s3://manifests/incoming/p.json",
        "partition": "p",
        "chunk": 0,
        "run_id": "run-1",
        "tagged_at": datetime.now(UTC),
    }


def assert_detect_labels_response(record):
    """A published rekognition record is a DetectLabelsResponse once our lineage key is set aside."""
    response = {k: v for k, v in record.items() if k != LINEAGE_KEY}
    assert problems(response, "DetectLabelsResponse", SHAPES) == []
    assert set(response) == {"Labels", "LabelModelVersion"}
    names = {label["Name"] for label in response["Labels"]}
    for label in response["Labels"]:
        assert set(label) == {"Name", "Confidence", "Instances", "Parents", "Aliases", "Categories"}
        for parent in label["Parents"]:
            # Every parent is a label too, at least as confident as any label under it (unless cut by MaxLabels).
            parent_label = next((l for l in response["Labels"] if l["Name"] == parent["Name"]), None)
            assert parent_label is not None or parent["Name"] not in names
            if parent_label is not None:
                assert parent_label["Confidence"] >= label["Confidence"]
    confidences = [label["Confidence"] for label in response["Labels"]]
    assert confidences == sorted(confidences, reverse=True)


def test_the_validator_refuses_what_detect_labels_would_never_return():
    assert problems({"Labels": [{"Name": "cat", "Confidence": 0.7}]}, "DetectLabelsResponse", SHAPES) == []
    assert problems({"Labels": [{"Name": "cat", "Confidence": 170}]}, "DetectLabelsResponse", SHAPES) == [
        "$.Labels[0].Confidence: value 170 above the maximum 100"
    ]
    assert problems({"Labels": [{"Name": "cat", "Parents": ["animal"]}]}, "DetectLabelsResponse", SHAPES) == [
        "$.Labels[0].Parents[0]: expected an object (Parent), got str"
    ]
    assert problems({"labels": []}, "DetectLabelsResponse", SHAPES) == [
        "$: 'labels' is not a member of DetectLabelsResponse"
    ]


def test_every_parent_is_a_label_with_the_highest_confidence_of_its_children():
    record = output_formats.rekognition_record(_row(), Options(min_confidence=0))
    assert_detect_labels_response(record)
    labels = {label["Name"]: label for label in record["Labels"]}
    assert labels["Egyptian cat"]["Confidence"] == 69.0
    assert labels["Egyptian cat"]["Parents"] == [{"Name": name} for name in CAT]
    assert labels["animal"]["Confidence"] == labels["carnivore"]["Confidence"] == 69.0  # cat 69 > dog 8
    assert labels["canine"]["Confidence"] == labels["beagle"]["Confidence"] == 8.0
    assert record["LabelModelVersion"] == "mobilenet_v2@sha256:abc"
    assert record[LINEAGE_KEY]["image"] == "s3://images/p/chelsea.jpg" and "tags" not in record[LINEAGE_KEY]


def test_min_confidence_defaults_to_detect_labels_55_and_max_labels_keeps_the_most_confident():
    default = output_formats.rekognition_record(_row(), Options())
    assert all(label["Confidence"] >= 55 for label in default["Labels"]) and default["Labels"]
    assert "tabby" not in {label["Name"] for label in default["Labels"]}
    cut = output_formats.rekognition_record(_row(), Options(max_labels=2, min_confidence=10))
    assert [label["Confidence"] for label in cut["Labels"]] == [69.0, 69.0]
    assert output_formats.rekognition_record(_row(), Options(max_labels=0))["Labels"] == []
    assert_detect_labels_response(cut)


def test_an_image_that_failed_has_no_labels_and_says_why_in_its_lineage():
    record = output_formats.rekognition_record(_row(status=tags.STATUS_ERROR), Options())
    assert_detect_labels_response(record)
    assert record["Labels"] == [] and record[LINEAGE_KEY]["error"] == "decode failed: truncated"


def test_published_groundtruth_parts_are_a_manifest_our_parser_reads_back(s3):
    rows = [_row(f"s3://images/p/{i}.jpg") for i in range(4)] + [_row("s3://images/p/bad.jpg", tags.STATUS_ERROR)]
    for position, row in enumerate(rows):
        row["position"] = position
    location = "s3://tags/formats-groundtruth-unit/"
    options = Options(job_name="tagging-platform/p", creation_date="2026-12-03T10:00:00.000000")
    marker = publishing.publish(
        s3, tags.tag_table(rows), location, fmt="groundtruth", part_images=2, lineage={}, options=options
    )
    assert marker["format"] == "groundtruth" and marker["files"] == 3
    _, records = read_published(s3, "tags", "formats-groundtruth-unit/")
    assert_ground_truth_manifest(records, [row["image"] for row in rows])
    first = records[0]
    assert first["labels"] == [0, 2, 1]  # class ids sorted by name across the batch: Egyptian cat, beagle, tabby
    assert first["labels-metadata"]["class-map"] == {"0": "Egyptian cat", "2": "tabby", "1": "beagle"}
    assert first["labels-metadata"]["confidence-map"] == {"0": 0.69, "2": 0.12, "1": 0.08}
    assert records[-1]["labels"] == [] and records[-1]["labels-metadata"]["failure-reason"].startswith("decode failed")


def assert_ground_truth_manifest(records, images):
    """Ground Truth's multi-label image-classification output, line by line; and our own parser reads it back."""
    for record in records:
        metadata = record["labels-metadata"]
        assert set(record) >= {"source-ref", "labels", "labels-metadata"}
        assert {"class-map", "confidence-map", "type", "human-annotated", "creation-date", "job-name"} <= set(metadata)
        assert metadata["type"] == "groundtruth/image-classification-multilabel"
        assert metadata["human-annotated"] == "no"
        datetime.fromisoformat(metadata["creation-date"])
        assert all(isinstance(i, int) for i in record["labels"])
        assert set(metadata["class-map"]) == set(metadata["confidence-map"]) == {str(i) for i in record["labels"]}
        assert all(0 <= c <= 1 for c in metadata["confidence-map"].values())
    text = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    manifest = parse_manifest(text, "groundtruth", allowed_image_prefixes=["images"])
    assert manifest.format == "jsonl" and manifest.images == tuple(images)


@pytest.mark.parametrize("fmt", ["rekognition", "groundtruth"])
def test_a_native_manifest_chooses_its_output_format_and_detect_labels_options(fmt):
    data = json.dumps({"images": ["s3://images/a.jpg"], "output_format": fmt, "max_labels": 3, "min_confidence": 20})
    manifest = parse_manifest(data.encode(), "m", allowed_image_prefixes=["images"])
    assert (manifest.output_format, manifest.max_labels, manifest.min_confidence) == (fmt, 3, 20.0)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"output_format": "csv"}, 'field "output_format": csv is not one of jsonl, objects, rekognition, groundtruth'),
        ({"max_labels": -1}, 'field "max_labels": expected a whole number of labels, 0 or more'),
        ({"max_labels": 2.5}, 'field "max_labels"'),
        ({"max_labels": True}, 'field "max_labels"'),
        ({"min_confidence": 101}, 'field "min_confidence": expected a number from 0 to 100'),
        ({"min_confidence": "50"}, 'field "min_confidence"'),
    ],
)
def test_bad_publishing_fields_are_rejected_naming_the_field(fields, problem):
    from tagging_platform.manifests import ManifestError

    with pytest.raises(ManifestError) as info:
        parse_manifest(
            json.dumps({"images": ["s3://images/a.jpg"], **fields}).encode(), "m", allowed_image_prefixes=["images"]
        )
    assert str(info.value).startswith(problem)
