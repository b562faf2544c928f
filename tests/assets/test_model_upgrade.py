"""A new version of the default model makes earlier batches stale in Dagster, and `retag --dry-run` lists exactly them;
`model promote` of the older version rolls it back, and the sensor, staleness and retag follow."""

import dataclasses
import uuid

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from tagging_platform import cli, models
from tests.conftest import record_manifest
from tests.sensors.test_manifest_sensor import _tick


@pytest.fixture
def upgraded_default_model(s3, settings):
    """Registers a second version of the default model (a different resize: a new content hash) when called,
    and puts the built-in version back as `latest` afterwards: the session's other tests expect it."""

    def register() -> models.ModelRef:
        card, artifact = models.builtin_model()
        upgraded = dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, resize=232))
        return models.publish_model(s3, settings.model_bucket, upgraded, artifact)

    yield register
    models.publish_model(s3, settings.model_bucket, *models.builtin_model())


def _tag_batch(definitions, instance, s3, settings, uris) -> str:
    partition = f"upgrade-{uuid.uuid4().hex[:6]}"
    record_manifest(s3, settings, partition, {"images": uris})
    instance.add_dynamic_partitions("manifests", [partition])
    assert (
        definitions.resolve_job_def("tag_manifest")
        .execute_in_process(instance=instance, partition_key=partition)
        .success
    )
    return partition


def _status(definitions, instance, asset: str, partition: str) -> StaleStatus:
    resolver = CachingStaleStatusResolver(instance, definitions.resolve_asset_graph(), LoadingContextForTest(instance))
    return resolver.get_status(dg.AssetKey(asset), partition)


def test_a_new_model_version_makes_earlier_batches_stale_and_retag_dry_run_lists_exactly_them(
    registered_instance, definitions, s3, settings, photographs, upload_images, upgraded_default_model, capsys
):
    instance = registered_instance
    earlier = [
        _tag_batch(definitions, instance, s3, settings, upload_images({name: photographs[name]}))
        for name in ("chelsea.jpg", "coffee.jpg")
    ]
    assert {_status(definitions, instance, "image_tags", p) for p in earlier} == {StaleStatus.FRESH}

    new = upgraded_default_model()
    # What the model registry sensor does when the registry changes.
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=instance).success
    # image_tags read tagger_model's old data version (the old model's hash): Dagster now shows it stale.
    assert {_status(definitions, instance, "image_tags", p) for p in earlier} == {StaleStatus.STALE}

    later = _tag_batch(definitions, instance, s3, settings, upload_images({"rocket.jpg": photographs["rocket.jpg"]}))
    assert _status(definitions, instance, "image_tags", later) == StaleStatus.FRESH

    manifests = [arg for p in [*earlier, later] for arg in ("--manifest", p)]
    # No Dagster webserver here: the dry run's list comes from the warehouse alone.
    code = cli.main(
        ["retag", "--model", "mobilenet_v2", *manifests, "--dry-run", "--dagster-url", "http://127.0.0.1:9"]
    )
    out = capsys.readouterr().out
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()[2:] if line.startswith("upgrade-")]
    assert listed == sorted(earlier)
    assert f"to re-tag with mobilenet_v2@{new.short_version}" in out and "2 batches, 2 images, 2 chunks" in out
    assert "dry run: nothing launched" in out


def test_promoting_the_older_version_rolls_back_and_the_sensor_staleness_and_retag_follow(
    registered_instance, definitions, s3, settings, photographs, upload_images, upgraded_default_model, capsys
):
    instance = registered_instance
    old = models.resolve_model(s3, settings.model_bucket, "mobilenet_v2")
    earlier = _tag_batch(
        definitions, instance, s3, settings, upload_images({"chelsea.jpg": photographs["chelsea.jpg"]})
    )
    new = upgraded_default_model()
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=instance).success
    later = _tag_batch(definitions, instance, s3, settings, upload_images({"coffee.jpg": photographs["coffee.jpg"]}))
    assert _status(definitions, instance, "image_tags", earlier) == StaleStatus.STALE

    # Rollback: the older version becomes latest again; nothing is re-registered.
    assert cli.main(["model", "promote", f"mobilenet_v2@{old.short_version}"]) == 0
    assert f"latest is now {old.version} (was {new.version})" in capsys.readouterr().out
    assert models.resolve_model(s3, settings.model_bucket, "mobilenet_v2") == old
    [request] = _tick(definitions, instance, sensor_name="model_registry").run_requests  # the registry moved
    assert request.job_name == "publish_model"
    assert definitions.resolve_job_def("publish_model").execute_in_process(instance=instance).success
    assert _status(definitions, instance, "image_tags", earlier) == StaleStatus.FRESH
    assert _status(definitions, instance, "image_tags", later) == StaleStatus.STALE
    code = cli.main(
        [
            "retag",
            "--model",
            "mobilenet_v2",
            "--manifest",
            earlier,
            "--manifest",
            later,
            "--dry-run",
            "--dagster-url",
            "http://127.0.0.1:9",
        ]
    )
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.startswith("upgrade-")]
    assert code == 0 and listed == [later]


def test_promote_names_what_it_cannot_promote(s3, settings, capsys):
    assert cli.main(["model", "promote", "mobilenet_v2"]) == 2
    assert "needs NAME@VERSION" in capsys.readouterr().err
    assert cli.main(["model", "promote", "mobilenet_v2@0000dead"]) == 2
    assert "unknown version '0000dead' of model 'mobilenet_v2'" in capsys.readouterr().err
