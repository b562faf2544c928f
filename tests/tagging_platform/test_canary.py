"""The canary's expectations and verdicts, on published objects shaped as customers receive them."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from tagging_platform import canary, photos, publishing, tags
from tagging_platform.manifests import partition_key_for

CAT_PARENTS = ["domestic cat", "cat", "domestic animal", "feline", "carnivore", "placental", "mammal"]


def published(name: str, tags: list[tuple[str, float, list[str]]], status: str = "ok") -> dict:
    return {
        "image": f"s3://images/canary/{name}.jpg",
        "status": status,
        "tags": [{"name": n, "confidence": c, "parents": p} for n, c, p in tags],
        **({"error": "not found"} if status == "error" else {}),
    }


def test_the_shipped_canary_is_a_few_known_photographs_each_with_an_expectation():
    expectations = canary.load_expectations()
    assert 4 <= len(expectations) <= 6
    assert {e.photograph for e in expectations} <= set(photos.PHOTOGRAPHS)
    assert all(e.shows and (e.any_tag or e.any_parent) for e in expectations)
    images = canary.photographs(expectations)
    assert sorted(images) == sorted(f"{e.photograph}.jpg" for e in expectations)
    # The same bytes every time, so the same ETags in S3.
    assert canary.photographs(expectations) == images


def test_a_customer_manifest_never_becomes_the_canary_batch():
    for key in ("incoming/canary@platform.json", "incoming/canary-platform.json", "incoming/canary.json"):
        assert partition_key_for(key, "incoming/") != canary.PARTITION


def test_the_canary_manifest_asks_for_fresh_tags():
    body = canary.manifest(["s3://images/canary/chelsea.jpg"], "20261124T053000Z")
    assert body == {"images": ["s3://images/canary/chelsea.jpg"], "id": "canary-20261124T053000Z", "reuse": False}


def test_an_image_passes_on_a_named_class_or_a_parent_within_its_top_k():
    chelsea = canary.Expectation("chelsea", "a cat", 1, (), ("cat",))
    coffee = canary.Expectation("coffee", "an espresso", 2, ("espresso", "cup"), ())
    objects = [
        published("chelsea", [("Egyptian cat", 0.69, CAT_PARENTS), ("tabby", 0.16, CAT_PARENTS)]),
        published("coffee", [("eggnog", 0.5, ["beverage"]), ("espresso", 0.4, ["coffee", "beverage"])]),
    ]
    verdicts = canary.judge(objects, [chelsea, coffee])
    assert [v.passed for v in verdicts] == [True, True]
    assert verdicts[0].actual == [("Egyptian cat", 0.69), ("tabby", 0.16)]


def test_a_drifted_prediction_fails_with_the_image_and_the_expected_and_actual_tags():
    chelsea = canary.Expectation("chelsea", "a cat", 1, (), ("cat",))
    objects = [published("chelsea", [("tabby", 0.4, CAT_PARENTS), ("lynx", 0.3, ["wildcat", "cat"])])]
    assert canary.judge(objects, [chelsea])[0].passed

    # The cat is still there, but second: with within_top 1 that is a drift.
    objects = [published("chelsea", [("doormat", 0.4, ["mat", "artifact"]), ("tabby", 0.3, CAT_PARENTS)])]
    [verdict] = canary.judge(objects, [chelsea])
    assert not verdict.passed
    assert verdict.describe() == (
        "chelsea (s3://images/canary/chelsea.jpg): expected a kind of 'cat' in the top 1, got doormat 0.40, tabby 0.30"
    )
    assert "**FAIL**" in canary.verdicts_markdown([verdict])


def test_an_image_missing_from_the_output_or_in_error_fails():
    chelsea = canary.Expectation("chelsea", "a cat", 5, (), ("cat",))
    coffee = canary.Expectation("coffee", "an espresso", 5, ("espresso",), ())
    verdicts = canary.judge([published("coffee", [], status="error")], [chelsea, coffee])
    assert [(v.photograph, v.passed, v.status) for v in verdicts] == [
        ("chelsea", False, "missing"),
        ("coffee", False, "error"),
    ]
    assert verdicts[1].describe().endswith("got error: not found")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"photograph": "dog", "any_tag": ["tabby"]}, "'dog' is not one of"),
        ({"photograph": "chelsea", "any_tag": ["Tabby"]}, "'Tabby' is neither an ImageNet class nor a parent"),
        ({"photograph": "chelsea", "any_parent": ["kitty"]}, "'kitty' is neither"),
        ({"photograph": "chelsea", "within_top": 0, "any_parent": ["cat"]}, "needs within_top >= 1"),
        ({"photograph": "chelsea"}, "at least one of any_tag, any_parent"),
    ],
)
def test_an_expectation_that_could_never_match_is_refused(tmp_path, entry, message):
    path = tmp_path / "canary.json"
    path.write_text(
        json.dumps({"photographs": [{"shows": "x", "within_top": 5, "any_tag": [], "any_parent": [], **entry}]})
    )
    with pytest.raises(canary.CanaryError, match=message):
        canary.load_expectations(str(path))


@pytest.mark.parametrize("fmt", ["jsonl", "objects"])
def test_the_canary_reads_the_published_objects_in_either_format(s3, fmt):
    rows = [
        {
            "image": f"s3://images/canary/{name}.jpg",
            "position": i,
            "etag": "e",
            "status": tags.STATUS_OK,
            "error": None,
            "tags": [{"name": tag, "confidence": 0.9, "parents": parents}],
            "top_tag": tag,
            "top_confidence": 0.9,
            "model_name": "mobilenet_v2",
            "model_version": "sha256:abc",
            "manifest": "s3://warehouse/canary/manifest.json",
            "partition": canary.PARTITION,
            "chunk": 0,
            "run_id": "run-1",
            "tagged_at": datetime.now(UTC),
        }
        for i, (name, tag, parents) in enumerate(
            [("chelsea", "tabby", CAT_PARENTS), ("coffee", "espresso", ["coffee"])]
        )
    ]
    location = f"s3://tags/canary-read-{uuid.uuid4().hex[:6]}/"
    marker = publishing.publish(s3, tags.tag_table(rows), location, fmt=fmt, part_images=1, lineage={})

    objects = canary.published_objects(s3, marker)

    assert sorted((o["image"], o["tags"][0]["name"]) for o in objects) == [
        ("s3://images/canary/chelsea.jpg", "tabby"),
        ("s3://images/canary/coffee.jpg", "espresso"),
    ]
