"""One dynamic partition per manifest, added by the manifest sensor."""

import dagster as dg

manifests_partitions = dg.DynamicPartitionsDefinition(name="manifests")
