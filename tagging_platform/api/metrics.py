"""Prometheus metrics of the API, served at /metrics: requests, latency, images tagged synchronously, model loads.

Each app has its own registry, so two apps in one process (tests) never share counters. The route's
template (`/v1/batches/{batch_id}`), not the path, labels a request: batch ids would make every
request a new series.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tagging_api_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tagging_api_request_seconds",
            "Time to answer, by route.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.images_tagged = Counter(
            "tagging_api_images",
            "Images tagged synchronously by POST /v1/tag, by model and outcome.",
            ["model", "status"],
            registry=self.registry,
        )
        self.images_per_second = Histogram(
            "tagging_api_images_per_second",
            "Throughput of one POST /v1/tag request.",
            ["model"],
            registry=self.registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200),
        )
        self.model_load_seconds = Histogram(
            "tagging_api_model_load_seconds",
            "Time to load a model into the API process.",
            ["model"],
            registry=self.registry,
            buckets=(0.5, 1, 2, 5, 10, 20, 60),
        )
        self.submissions = Counter(
            "tagging_api_batch_submissions",
            "POST /v1/batches by outcome (accepted or refused) and the error code of a refusal (none when accepted).",
            ["outcome", "code"],
            registry=self.registry,
        )

    def tagged(self, model: str, ok: int, errors: int, seconds: float) -> None:
        self.images_tagged.labels(model, "ok").inc(ok)
        self.images_tagged.labels(model, "error").inc(errors)
        if seconds > 0 and ok + errors:
            self.images_per_second.labels(model).observe((ok + errors) / seconds)

    def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts and times every request, labelled by the route that matched (or `unmatched`)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        # The routes themselves, not the app's router: routers included in FastAPI's router are matched lazily
        # there, and a request is labelled before it is routed (the body limit may answer it first).
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route_template(self.routes, scope)
        status = {"code": 500}
        submission = route == SUBMIT_ROUTE and scope["method"] == "POST"
        error_body = bytearray()

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif submission and message["type"] == "http.response.body" and status["code"] >= 400:
                error_body.extend(message.get("body", b"")[: 4096 - len(error_body)])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.latency.labels(route, scope["method"]).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            if submission:
                # Counted here, where every answer passes (the body limit and authentication answer before the route).
                accepted = status["code"] == 202
                code = "none" if accepted else _error_code(bytes(error_body))
                self.metrics.submissions.labels("accepted" if accepted else "refused", code).inc()


SUBMIT_ROUTE = "/v1/batches"


def _error_code(body: bytes) -> str:
    """The `code` of an error answer (every code is one of ErrorCode's, so the label set stays small)."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


def _route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", "unmatched")
    return "unmatched"
