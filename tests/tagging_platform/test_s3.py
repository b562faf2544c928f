"""The S3 layer: URIs, "not found" whatever the call, and listing past one page, on the embedded server."""

import uuid

import pytest

from tagging_platform import s3 as layer


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("s3://b/k/x.jpg", ("b", "k/x.jpg")),
        ("s3://tags/published/batch/", ("tags", "published/batch/")),
        ("s3://tags/", ("tags", "")),
        ("s3://tags", ("tags", "")),
    ],
)
def test_split_uri_gives_bucket_and_key(uri, parts):
    assert layer.split_uri(uri) == parts


@pytest.mark.parametrize("uri", ["", "s3://", "s3:///k", "http://b/k", "b/k", "S3://b/k", "s3:/b/k", "s3://b c/k"])
def test_split_uri_rejects_anything_else(uri):
    with pytest.raises(layer.S3UriError):
        layer.split_uri(uri)


def test_split_uri_bounds_what_it_echoes():
    with pytest.raises(layer.S3UriError) as raised:
        layer.split_uri("http://" + "x" * 100_000)
    assert len(str(raised.value)) < 400


def test_not_found_is_recognised_from_get_head_and_a_missing_bucket(s3):
    missing = f"missing-{uuid.uuid4().hex}"
    calls = [
        lambda: s3.get_object(Bucket="images", Key=missing),
        lambda: s3.head_object(Bucket="images", Key=missing),
        lambda: s3.get_object(Bucket=missing, Key="k"),
    ]
    for call in calls:
        with pytest.raises(Exception) as raised:
            call()
        assert layer.is_not_found(raised.value), raised.value
    assert layer.read_bytes(s3, "images", missing) is None
    assert not layer.is_not_found(ValueError("NoSuchKey"))


def test_listing_goes_past_one_page_and_separates_folders(s3):
    prefix = f"list-{uuid.uuid4().hex[:8]}/"
    keys = [f"{prefix}{i:04d}.txt" for i in range(1_003)] + [f"{prefix}sub/x.txt"]
    for key in keys:
        s3.put_object(Bucket="images", Key=key, Body=b"")
    assert [o["Key"] for o in layer.list_objects(s3, "images", prefix)] == sorted(keys)
    objects, folders = layer.list_folder(s3, "images", prefix)
    assert len(objects) == 1_003 and folders == [f"{prefix}sub/"]
