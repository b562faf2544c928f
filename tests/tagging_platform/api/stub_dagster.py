"""A stand-in `tag_manifest` job (same name, same partitions, same check name) for a real Dagster webserver.

The API reads batch status from Dagster's GraphQL API; these tests run this small job in a real
instance to produce real runs (failed, succeeded, with check evaluations) in seconds. The real job
runs in the e2e test (test_app_e2e.py).
"""

import dagster as dg

manifests = dg.DynamicPartitionsDefinition(name="manifests")


@dg.asset(partitions_def=manifests, config_schema={"fail_with": dg.Field(str, default_value="")})
def image_tags(context) -> int:
    if context.op_config["fail_with"]:
        raise dg.Failure(description=context.op_config["fail_with"])
    return 1


@dg.asset_check(asset=image_tags, blocking=True)
def every_image_accounted_for() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


@dg.asset_check(asset=image_tags)
def error_rate() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)


tag_manifest = dg.define_asset_job("tag_manifest", selection=[image_tags], partitions_def=manifests)

defs = dg.Definitions(assets=[image_tags], asset_checks=[every_image_accounted_for, error_rate], jobs=[tag_manifest])
