"""The tagging platform's own logic: manifests, planning, the engine, models. No Dagster in here."""
