"""The examples of docs/formats.md's "Coming from SageMaker / Rekognition" run as documented."""

import json
import re

from tagging_platform.manifests import parse_manifest
from tagging_platform.output_formats import LINEAGE_KEY
from tests.conftest import REPO
from tests.tagging_platform.test_output_formats import assert_detect_labels_response, assert_ground_truth_manifest

EXAMPLE = re.compile(r"<!-- example: ([a-z-]+) -->\n```json\n(.*?)\n```", re.DOTALL)
EXAMPLES = dict(EXAMPLE.findall((REPO / "docs" / "formats.md").read_text()))


def test_the_three_examples_are_there():
    assert set(EXAMPLES) == {"sagemaker-manifest", "rekognition-record", "groundtruth-line"}


def test_the_sagemaker_manifest_lists_the_images_the_text_says():
    manifest = parse_manifest(EXAMPLES["sagemaker-manifest"].encode(), "docs", allowed_image_prefixes=["images"])
    assert manifest.images == ("s3://images/demo/photos/chelsea.jpg", "s3://images/demo/photos/coffee.jpg")


def test_the_rekognition_record_is_a_detect_labels_response_with_the_options_the_text_names():
    record = json.loads(EXAMPLES["rekognition-record"])
    assert_detect_labels_response(record)
    assert 0 < len(record["Labels"]) <= 10 and min(label["Confidence"] for label in record["Labels"]) >= 5
    assert record[LINEAGE_KEY]["image"].endswith("/chelsea.jpg")


def test_the_groundtruth_line_is_a_manifest_of_that_photograph():
    line = json.loads(EXAMPLES["groundtruth-line"])
    assert_ground_truth_manifest([line], [line["source-ref"]])
    assert line["source-ref"].endswith("/chelsea.jpg")
