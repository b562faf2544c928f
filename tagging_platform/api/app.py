"""The FastAPI application composed: shared objects on app.state, the routers, error handlers and middleware."""

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Mount, Route
from swagger_ui_bundle import swagger_ui_path

from tagging_platform.api import handlers
from tagging_platform.api.batches import Batches
from tagging_platform.api.inference import ModelCache
from tagging_platform.api.keys import CustomerStore
from tagging_platform.api.limits import TagRateLimit
from tagging_platform.api.metrics import ApiMetrics, MetricsMiddleware
from tagging_platform.api.middleware import BodyLimit, redact_access_log
from tagging_platform.api.routes import batches as batch_routes
from tagging_platform.api.routes import health, tag
from tagging_platform.api.routes import models as model_routes
from tagging_platform.dagster_client import DagsterClient
from tagging_platform.s3 import make_client
from tagging_platform.settings import Settings

log = logging.getLogger("tagging_platform.api")
DOCS_ASSETS = "/docs/assets"

DESCRIPTION = """
Submit batches of images to be tagged, follow them to completion, and tag a few images synchronously.

Every `/v1` endpoint needs your API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
Errors are JSON: `{"error": {"code": "...", "message": "...", "details": ...}}`; `code` is stable.
"""


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """Idle models evicted in the background, the default model preloaded, the log filter installed."""
    settings: Settings = app.state.settings
    cache: ModelCache = app.state.models

    async def evict_idle_models():
        while True:
            await asyncio.sleep(max(1.0, min(60.0, settings.api_model_idle_s / 4)))
            await run_in_threadpool(cache.evict_idle)

    def preload_default_model():
        # The first POST /v1/tag should not pay for loading the default model; a failure here only
        # means the first request loads it (or reports why it cannot).
        try:
            cache.get(cache.resolve(settings.default_model))
        except Exception as exc:  # noqa: BLE001
            log.info("default model not preloaded: %s", exc)

    # uvicorn configures its loggers before the application starts: the filter goes on after it.
    redact_access_log()
    task = asyncio.create_task(evict_idle_models())
    if settings.api_preload_default_model:
        asyncio.get_running_loop().run_in_executor(None, preload_default_model)
    try:
        yield
    finally:
        task.cancel()


def _swagger_ui(app: FastAPI) -> None:
    """/docs served from swagger-ui-bundle's files: it works on a network without internet."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")


def _without_generic_422(app: FastAPI) -> None:
    """FastAPI's schema without its generic 422 where no input can be invalid (a path's string parameter)."""
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate_openapi()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    if operation["responses"].get("422", {}).get("description") == "Validation Error":
                        del operation["responses"]["422"]
            for unused in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(unused, None)
        return app.openapi_schema

    app.openapi = openapi


ROUTERS = (health.router, batch_routes.router, tag.router, model_routes.router)


def _flat_routes(app: FastAPI) -> list[BaseRoute]:
    """The app's own routes and each included router's, as the metrics label requests by them."""
    own = [route for route in app.router.routes if isinstance(route, (Route, Mount))]
    return own + [route for router in ROUTERS for route in router.routes]


def create_app(settings: Settings | None = None, *, dagster: DagsterClient | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    app = FastAPI(
        title="Tagging platform API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by _swagger_ui
        redoc_url=None,
    )
    client = make_client(settings)
    metrics = ApiMetrics()
    customers = CustomerStore(client, settings)
    app.state.settings = settings
    app.state.s3 = client
    app.state.metrics = metrics
    app.state.customers = customers
    app.state.batches = Batches(
        client, settings, customers, dagster or DagsterClient(settings.dagster_url, timeout_s=15)
    )
    app.state.tag_rate = TagRateLimit(settings.api_tag_rate_per_s, settings.api_tag_burst)
    app.state.models = ModelCache(
        client, settings, on_load=lambda ref, seconds: metrics.model_load_seconds.labels(ref.name).observe(seconds)
    )

    handlers.install(app)
    _swagger_ui(app)
    for router in ROUTERS:
        app.include_router(router)
    _without_generic_422(app)
    # Prometheus scrapes it inside the cluster (deploy/prometheus/scrape-configs.yml); no key, no customer data.
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=_flat_routes(app))
    return app
