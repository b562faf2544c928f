"""The tagger model asset: the model registry in the model bucket, the built-in models registered, and the default model."""

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.partitions import OWNERS
from resources.settings import PlatformSettings
from tagging_platform import models

# Read back by the model registry sensor: a registry that no longer matches it needs a new materialization.
REGISTRY_FINGERPRINT = "registry_fingerprint"
# On Kubernetes this step runs as the one ServiceAccount whose IAM role may write the model bucket
# (deploy/service-accounts.yaml, deploy/iam/registry-policy.json); tagging steps may only read it.
REGISTRY_SERVICE_ACCOUNT = "tagging-platform-registry"


@dg.asset(
    op_tags={"dagster-k8s/config": {"pod_spec_config": {"service_account_name": REGISTRY_SERVICE_ACCOUNT}}},
    group_name="model",
    io_manager_key="warehouse_io_manager",
    kinds={"pytorch", "s3"},
    owners=OWNERS,
    description="The model registry (s3://<model bucket>/<name>/<version>/): built-in models registered, customers' models added by `tagging-platform model register`. Its value is the default model; its data version that model's content hash.",
)
def tagger_model(context: dg.AssetExecutionContext, s3: S3Resource, platform: PlatformSettings) -> dg.Output[dict]:
    settings = platform.settings
    client = s3.get_client()
    for name in models.BUILTIN_MODELS:
        card, artifact = models.builtin_model(name)
        # Only a built-in version not seen before becomes `latest`: one registered since stays the latest.
        if not models.is_registered(client, settings.model_bucket, card):
            ref = models.publish_model(client, settings.model_bucket, card, artifact)
            context.log.info(f"registered {ref.name} {ref.version} in s3://{ref.bucket}/{card.prefix}")
    default = models.resolve_model(client, settings.model_bucket, settings.default_model)
    registered = models.list_models(client, settings.model_bucket)
    table = "\n".join(
        f"| {c['name']} | `{c['version'][7:23]}` | {c['kind']} | {c['num_classes']} | {c.get('profile', {}).get('accelerator', 'gpu')} |"
        for c in registered
    )
    return dg.Output(
        default.as_dict(),
        data_version=dg.DataVersion(default.version),
        metadata={
            "model": default.name,
            "version": default.version,
            "registered": dg.MetadataValue.md(
                f"| model | version | kind | classes | runs on |\n|---|---|---|---|---|\n{table}"
            ),
            "models": len(registered),
            REGISTRY_FINGERPRINT: models.registry_fingerprint(registered),
            "card": dg.MetadataValue.json(next(c for c in registered if c["name"] == default.name)),
        },
    )
