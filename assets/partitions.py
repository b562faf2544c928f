"""One dynamic partition per manifest, added by the manifest sensor."""

import dagster as dg

manifests_partitions = dg.DynamicPartitionsDefinition(name="manifests")

OWNERS = ["team:ml-platform"]

# What each asset of a batch shares: a partition per manifest, its value kept by the warehouse IO manager.
BATCH_ASSET = {"partitions_def": manifests_partitions, "io_manager_key": "warehouse_io_manager", "owners": OWNERS}
