"""The model registry sensor, ticked against the embedded S3 server with a real Dagster instance."""

import hashlib
import uuid

import dagster as dg

from tagging_platform import models
from tests.sensors.test_manifest_sensor import _tick


def test_registering_a_model_makes_one_tagger_model_materialization(definitions, instance, s3, settings):
    first = _tick(definitions, instance, sensor_name="model_registry")
    [request] = first.run_requests
    assert request.job_name == "publish_model"
    assert _tick(definitions, instance, sensor_name="model_registry").run_requests[0].run_key == request.run_key

    result = definitions.resolve_job_def("publish_model").execute_in_process(instance=instance)
    assert result.success
    [materialization] = result.asset_materializations_for_node("tagger_model")
    registered = materialization.metadata["registered"].value
    assert "mobilenet_v2" in registered and "efficientnet_lite0" in registered
    assert _tick(definitions, instance, sensor_name="model_registry").run_requests == []

    builtin, _ = models.builtin_model()
    artifact = uuid.uuid4().bytes
    card = models.ModelCard(
        name=f"customer-{uuid.uuid4().hex[:6]}",
        kind="torchscript",
        artifact_sha256=hashlib.sha256(artifact).hexdigest(),
        labels=("cat", "dog"),
        preprocessing=builtin.preprocessing,
    )
    models.publish_model(s3, settings.model_bucket, card, artifact)
    after = _tick(definitions, instance, sensor_name="model_registry")
    assert [r.job_name for r in after.run_requests] == ["publish_model"]
    assert after.run_requests[0].run_key != request.run_key
    assert isinstance(after.run_requests[0], dg.RunRequest)
