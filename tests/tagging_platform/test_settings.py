"""Settings read from the environment: allow-list entries in either spelling, refused at start-up when malformed."""

import json

import pytest

from tagging_platform.manifests import ManifestError, parse_manifest
from tagging_platform.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("raw", "entries"),
    [
        ("s3://bucket/in/", ("bucket/in/",)),
        ("bucket/in/", ("bucket/in/",)),
        ("bucket/in", ("bucket/in/",)),
        ("s3://bucket/in", ("bucket/in/",)),
        ("s3://bucket, bucket2/", ("bucket", "bucket2")),
        ("s3://images/a/b/, other", ("images/a/b/", "other")),
    ],
)
def test_allow_list_entries_are_read_in_either_spelling_as_folders(raw, entries):
    settings = Settings.from_env({"TP_ALLOWED_IMAGE_PREFIXES": raw, "TP_ALLOWED_OUTPUT_PREFIXES": raw})
    assert settings.allowed_image_prefixes == settings.allowed_output_prefixes == entries


@pytest.mark.parametrize("entry", ["s3://bucket/in/", "bucket/in/", "bucket/in", "s3://bucket/in"])
def test_an_entry_admits_its_folder_and_not_a_sibling_that_shares_its_name(entry):
    allowed = Settings.from_env({"TP_ALLOWED_IMAGE_PREFIXES": entry}).allowed_image_prefixes

    def parse(uri):
        return parse_manifest(json.dumps({"images": [uri]}).encode(), "m", allowed_image_prefixes=allowed)

    assert parse("s3://bucket/in/a.jpg").images == ("s3://bucket/in/a.jpg",)
    with pytest.raises(ManifestError, match="outside the allowed image locations"):
        parse("s3://bucket/inbox/a.jpg")


@pytest.mark.parametrize(
    ("variable", "raw", "problem"),
    [
        ("TP_ALLOWED_IMAGE_PREFIXES", "gs://bucket/in/", "is not an s3:// location"),
        ("TP_ALLOWED_IMAGE_PREFIXES", "https://bucket.s3.amazonaws.com/in/", "is not an s3:// location"),
        ("TP_ALLOWED_IMAGE_PREFIXES", "s3:///in/", "'' is not a bucket name"),
        ("TP_ALLOWED_OUTPUT_PREFIXES", "bucket/../other/", "'.' or '..' segment"),
        ("TP_ALLOWED_OUTPUT_PREFIXES", "my bucket/", "'my bucket' is not a bucket name"),
        ("TP_ALLOWED_IMAGE_PREFIXES", "bucket\\in", "is not a bucket name"),
    ],
)
def test_any_other_entry_is_refused_at_start_up_naming_the_variable(variable, raw, problem):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: raw})
    assert str(info.value).startswith(f"{variable}: ")
    assert problem in str(info.value)
