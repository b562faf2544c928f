"""Settings from TP_* variables: typed by pydantic-settings, errors that name the variable, a faithful round trip,
allow-list entries in either spelling, refused at start-up when malformed."""

import json

import pytest

from tagging_platform.manifests import ManifestError, parse_manifest
from tagging_platform.settings import Settings, SettingsError


def test_defaults_are_the_embedded_deployment():
    settings = Settings.from_env({})
    assert settings.deployment == "local" and settings.s3_endpoint.startswith("http://127.0.0.1:")
    assert settings.allowed_image_prefixes == ("images",) and settings.canary_enabled is True


def test_values_are_typed_and_lists_are_comma_separated():
    settings = Settings.from_env(
        {
            "TP_BATCH_SIZE": "8",
            "TP_MIN_CONFIDENCE": "0.2",
            "TP_ALLOWED_IMAGE_PREFIXES": " a , b/c/ ,",
            "TP_CANARY_ENABLED": "false",
        }
    )
    assert settings.batch_size == 8 and settings.min_confidence == 0.2
    assert settings.allowed_image_prefixes == ("a", "b/c/")
    assert settings.canary_enabled is False


@pytest.mark.parametrize("raw", ["0", "false", "no", "False"])
def test_booleans_are_booleans(raw):
    assert Settings.from_env({"TP_API_PRELOAD_DEFAULT_MODEL": raw}).api_preload_default_model is False


def test_production_talks_to_aws_unless_an_endpoint_is_given():
    assert Settings.from_env({"TP_DEPLOYMENT": "k8s"}).s3_endpoint == ""
    given = {"TP_DEPLOYMENT": "k8s", "TP_S3_ENDPOINT": "https://s3.example.internal"}
    assert Settings.from_env(given).s3_endpoint == "https://s3.example.internal"


def test_the_process_environment_is_read_when_no_mapping_is_given(monkeypatch):
    monkeypatch.setenv("TP_FETCH_WORKERS", "7")
    monkeypatch.setenv("TP_OUTPUT_BUCKET", "acme-tags")
    settings = Settings.from_env()
    assert settings.fetch_workers == 7 and settings.output_bucket == "acme-tags"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TP_BATCH_SIZE": "many"}, "TP_BATCH_SIZE: Input should be a valid integer"),
        ({"TP_DEPLOYMENT": "aws"}, "TP_DEPLOYMENT: Input should be 'local' or 'k8s'"),
        ({"TP_CANARY_ENABLED": "perhaps"}, "TP_CANARY_ENABLED: Input should be a valid boolean"),
        ({"TP_PUBLISH_FORMAT": "xml"}, "TP_PUBLISH_FORMAT"),
        ({"TP_OUTPUT_PREFIX": "published"}, "TP_OUTPUT_PREFIX must end with '/'"),
        (
            {"TP_ERROR_RATE_WARN": "0.5", "TP_ERROR_RATE_ERROR": "0.1"},
            "TP_ERROR_RATE_WARN must be <= TP_ERROR_RATE_ERROR",
        ),
        # The sensor lists a manifest it left alone again only within its listing's 300 s overlap.
        ({"TP_API_LAUNCH_GRACE_S": "300"}, "TP_API_LAUNCH_GRACE_S must be above 0 and below 300 s"),
        ({"TP_API_LAUNCH_GRACE_S": "0"}, "TP_API_LAUNCH_GRACE_S must be above 0 and below 300 s"),
        ({"TP_IN_PROCESS_MAX_IMAGES": "-1"}, "TP_IN_PROCESS_MAX_IMAGES must be 0 or more"),
    ],
)
def test_a_bad_value_names_its_variable(environ, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(environ)


def test_a_bad_value_in_the_process_environment_names_its_variable(monkeypatch):
    monkeypatch.setenv("TP_MAX_GPUS", "eight")
    with pytest.raises(SettingsError, match="TP_MAX_GPUS"):
        Settings.from_env()


def test_as_env_round_trips_and_replace_validates():
    settings = Settings.from_env(
        {"TP_DEPLOYMENT": "k8s", "TP_ALLOWED_IMAGE_PREFIXES": "a,b/c/", "TP_CANARY_ENABLED": "0"}
    )
    assert Settings.from_env(settings.as_env()) == settings
    assert settings.replace(batch_size=4).batch_size == 4
    with pytest.raises(SettingsError, match="TP_BATCH_SIZE"):
        settings.replace(batch_size="four")
    assert set(settings.as_env()) == Settings.variable_names()


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


def test_a_given_mapping_is_read_alone(monkeypatch):
    monkeypatch.setenv("TP_BATCH_SIZE", "3")
    monkeypatch.setenv("TP_CANARY_ENABLED", "0")
    settings = Settings.from_env({"TP_FETCH_WORKERS": "2"})
    assert settings.batch_size == Settings.model_fields["batch_size"].default
    assert settings.canary_enabled is True and settings.fetch_workers == 2


def test_the_constructor_is_the_shipped_defaults_whatever_the_environment(monkeypatch):
    monkeypatch.setenv("TP_MAX_CHUNK_IMAGES", "900")
    assert Settings().max_chunk_images == Settings.model_fields["max_chunk_images"].default
    assert Settings.from_env().max_chunk_images == 900
