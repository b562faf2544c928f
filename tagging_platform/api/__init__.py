"""The customers' HTTP API: submit and follow batches, tag a few images synchronously, list models.

`app.create_app(settings)` builds the FastAPI application; `serve` runs it (`tagging-platform api`).
`keys`, `batches` and `inference` hold the logic and import no web framework; nothing here imports
Dagster: batch status comes from a running Dagster's GraphQL API (`tagging_platform.dagster_client`).
"""
