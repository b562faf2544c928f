"""A small client of a running Dagster's GraphQL API: what the CLI and the API need to follow batches.

Which library does what: `dagster_graphql.DagsterGraphQLClient` (dagster-graphql, pinned) offers job submission,
a run's status by run id, code location reload/shutdown and run termination; none of the calls here is among
them (runs filtered by tags, the newest run of a partition, a run's asset check and step failure events, data
versions, stale status, partition backfills and their status). So every call is a raw query, sent through gql's
`RequestsHTTPTransport`, the transport `DagsterGraphQLClient` itself is built on. Importing `dagster_graphql`
would also load `dagster` into the API and the CLI, which have no Dagster imports.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from gql import Client, gql
from gql.transport.exceptions import TransportError, TransportQueryError, TransportServerError
from gql.transport.requests import RequestsHTTPTransport

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

_RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId jobName status startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""

# A page of a run's event log; EVENTS is the selection on the event types a caller wants.
_LOGS = """
query Logs($runId: ID!, $after: String) {
  logsForRun(runId: $runId, afterCursor: $after) {
    __typename
    ... on EventConnection { cursor hasMore events { __typename EVENTS } }
    ... on PythonError { message }
  }
}"""

_CHECKS_AND_FAILURES = """
  ... on AssetCheckEvaluationEvent { evaluation { checkName success severity assetKey { path } } }
  ... on ExecutionStepFailureEvent { stepKey error { message } }
"""


_LATEST_RUN = """
query LatestRun($filter: RunsFilter) {
  runsOrError(filter: $filter, limit: 1) {
    __typename
    ... on Runs { results { runId jobName status startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""


_DATA_VERSION = """
query DataVersion($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { __typename ... on AssetNode { dataVersion } ... on Error { message } }
}"""

_STALE_STATUS = """
query StaleStatus($key: AssetKeyInput!, $partitions: [String!]) {
  assetNodeOrError(assetKey: $key) {
    __typename ... on AssetNode { staleStatusByPartition(partitions: $partitions) } ... on Error { message }
  }
}"""

_LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""

_BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } ... on Error { message } }
}"""


_REPOSITORIES = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on PythonError { message }
  }
}"""

_ADD_PARTITION = """
mutation AddPartition($repository: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repository, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on Error { message }
  }
}"""

_LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""


class DagsterError(RuntimeError):
    """The Dagster webserver could not be reached or answered with an error."""


class DagsterClient:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        # A transport per call: a connected one holds its session and refuses a second thread (the API's).
        transport = RequestsHTTPTransport(url=f"{self.url}/graphql", timeout=self.timeout_s)
        try:
            return Client(transport=transport).execute(gql(query), variable_values=variables or {})
        except TransportQueryError as exc:
            raise DagsterError(f"Dagster answered with errors: {exc.errors}") from exc
        except TransportServerError as exc:
            raise DagsterError(f"Dagster at {self.url} answered {exc.code}: {str(exc)[:2000]}") from exc
        except (TransportError, requests.RequestException, OSError) as exc:
            raise DagsterError(f"Dagster at {self.url} is unreachable: {exc}") from exc

    def is_up(self) -> bool:
        try:
            self.query("{ version }")
        except DagsterError:
            return False
        return True

    def wait_until_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_up():
            if time.monotonic() > deadline:
                raise DagsterError(f"Dagster at {self.url} did not come up within {timeout_s:.0f} s")
            time.sleep(1)

    def runs(self, job: str | None = None, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
        result = self.query(_RUNS, {"filter": _run_filter(job, tags)})["runsOrError"]
        return _expect(result, "Runs")["results"]

    def latest_run(self, job: str | None = None, tags: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The newest run of `job` with these tags (one row fetched, however many runs there are), or None."""
        result = self.query(_LATEST_RUN, {"filter": _run_filter(job, tags)})["runsOrError"]
        results = _expect(result, "Runs")["results"]
        return results[0] if results else None

    def data_version(self, asset: str) -> str | None:
        """The data version of an unpartitioned asset's latest materialization."""
        return self._asset_node(_DATA_VERSION, asset)["dataVersion"]

    def stale_status(self, asset: str, partitions: list[str]) -> list[str]:
        """FRESH, STALE or MISSING for each partition, as the UI shows them."""
        return self._asset_node(_STALE_STATUS, asset, partitions=partitions)["staleStatusByPartition"]

    def launch_partition_backfill(
        self, assets: list[str], partitions: list[str], title: str, tags: dict[str, str] | None = None
    ) -> str:
        """An asset backfill of these partitions (what the UI's "Materialize" of selected partitions starts)."""
        params = {
            "assetSelection": [{"path": [asset]} for asset in assets],
            "partitionNames": partitions,
            "title": title,
            "tags": _tag_list(tags),
        }
        result = self.query(_LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        return _expect(result, "LaunchBackfillSuccess")["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        result = self.query(_BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        return _expect(result, "PartitionBackfill")["status"]

    def repository_of(self, job: str) -> dict[str, str]:
        """The repository selector ({repositoryLocationName, repositoryName}) of the code location defining `job`."""
        nodes = _expect(self.query(_REPOSITORIES)["repositoriesOrError"], "RepositoryConnection")["nodes"]
        for node in nodes:
            if any(j["name"] == job for j in node["jobs"]):
                return {"repositoryLocationName": node["location"]["name"], "repositoryName": node["name"]}
        raise DagsterError(f"no code location at {self.url} defines job {job!r}")

    def add_dynamic_partition(self, repository: dict[str, str], partitions: str, key: str) -> None:
        """Add `key` to a dynamic partitions definition; one that is there already is left as it is."""
        result = self.query(_ADD_PARTITION, {"repository": repository, "name": partitions, "key": key})
        result = result["addDynamicPartition"]
        if result["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise DagsterError(result.get("message", result["__typename"]))

    def launch_run(
        self, repository: dict[str, str], job: str, tags: dict[str, str], run_config: dict[str, Any] | None = None
    ) -> str:
        """Launch (or queue, under a queued run coordinator) a run of `job`; its run id."""
        params = {
            "selector": {**repository, "jobName": job},
            "runConfigData": run_config or {},
            "executionMetadata": {"tags": _tag_list(tags)},
        }
        result = self.query(_LAUNCH_RUN, {"params": params})["launchRun"]
        if result["__typename"] == "RunConfigValidationInvalid":
            raise DagsterError("; ".join(e["message"] for e in result["errors"]))
        return _expect(result, "LaunchRunSuccess")["run"]["runId"]

    def _asset_node(self, query: str, asset: str, **variables: Any) -> dict[str, Any]:
        result = self.query(query, {"key": {"path": [asset]}, **variables})["assetNodeOrError"]
        return _expect(result, "AssetNode")

    def log_events(self, run_id: str, selection: str) -> list[dict[str, Any]]:
        """Every event of a run's log, page by page, with `selection` (fragments on the event types wanted)."""
        query, events, cursor = _LOGS.replace("EVENTS", selection), [], None
        while True:
            result = _expect(self.query(query, {"runId": run_id, "after": cursor})["logsForRun"], "EventConnection")
            events += result["events"]
            cursor = result["cursor"]
            if not result["hasMore"]:
                return events

    def run_events(self, run_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The run's asset check evaluations and step failures."""
        checks, failures = [], []
        for event in self.log_events(run_id, _CHECKS_AND_FAILURES):
            if event["__typename"] == "AssetCheckEvaluationEvent":
                checks.append(event["evaluation"])
            elif event["__typename"] == "ExecutionStepFailureEvent":
                failures.append({"step": event["stepKey"], "error": event["error"]["message"]})
        return checks, failures


def _expect(result: dict[str, Any], typename: str) -> dict[str, Any]:
    """A GraphQL union's member, or the DagsterError its error member (or unexpected type) stands for."""
    if result["__typename"] != typename:
        raise DagsterError(result.get("message", result["__typename"]))
    return result


def _tag_list(tags: dict[str, str] | None) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in (tags or {}).items()]


def _run_filter(job: str | None, tags: dict[str, str] | None) -> dict[str, Any]:
    return {**({"tags": _tag_list(tags)} if tags else {}), **({"pipelineName": job} if job else {})}
