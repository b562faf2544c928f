"""The FastAPI application: routes, authentication, request size limits and one JSON shape for every error."""


import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tagging_platform import models
from tagging_platform.api.batches import Batches
from tagging_platform.api.errors import ApiError, ErrorCode
from tagging_platform.api.inference import ModelCache
from tagging_platform.api.keys import Customer, CustomerStore
from tagging_platform.api.metrics import ApiMetrics, MetricsMiddleware
from tagging_platform.dagster_client import DagsterClient
from tagging_platform.s3 import make_client
from tagging_platform.settings import Settings

log = logging.getLogger("tagging_platform.api")
DOCS_ASSETS = "/docs/assets"
_MODEL_SPEC = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}(@[A-Za-z0-9:._-]{1,100})?\Z")

DESCRIPTION = """
Submit batches of images to be tagged, follow them to completion, and tag a few images synchronously.

Every `/v1` endpoint needs your API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
Errors are JSON: `{"error": {"code": "...", "message": "...", "details": ...}}`; `code` is stable.
"""


# --- schemas ------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: ErrorCode = Field(description="Stable, machine-readable; docs/api.md lists when each is given")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class BatchRequest(BaseModel):
    """A native manifest in the body (`images`, optional `model`, `output`, `id`), or `manifest`: an s3:// URI of a
    manifest in any accepted format (native JSON, SageMaker, JSON Lines; gzip too)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"images": ["s3://images/demo/photos/chelsea.jpg"], "model": "mobilenet_v2"},
                {"manifest": "s3://images/demo/manifests/batch-42.jsonl", "output": "s3://tags/demo/"},
            ]
        },
    )

    images: list[Any] | None = Field(None, description="s3:// URIs of the images (inside your image locations)")
    manifest: str | None = Field(None, description="s3:// URI of a manifest to read instead of `images`")
    model: str | None = Field(None, description='"name" or "name@version"; default: the platform\'s default model')
    output: str | None = Field(None, description="s3:// prefix inside your output locations; default: your first one")
    id: str | None = Field(None, description="your own reference for the batch, echoed back")
    output_format: str | None = Field(
        None, description="jsonl, objects, rekognition (DetectLabels responses) or groundtruth (a Ground Truth "
        "output manifest); default: the deployment's (docs/formats.md)"
    )
    max_labels: int | None = Field(None, ge=0, description="rekognition: DetectLabels' MaxLabels")
    min_confidence: float | None = Field(None, ge=0, le=100, description="rekognition: DetectLabels' MinConfidence (0-100)")


class ModelVersion(BaseModel):
    name: str
    version: str


class BatchAccepted(BaseModel):
    batch_id: str
    customer: str
    status_url: str
    state: Literal["queued"]
    images: int
    model: ModelVersion
    output: str
    result_location: str
    manifest: str
    reference: str | None = None
    submitted_at: str


class Counts(BaseModel):
    images: int
    tagged: int
    errors: int


class CheckResult(BaseModel):
    name: str
    asset: str
    passed: bool
    severity: str


class BatchResult(BaseModel):
    location: str
    marker: str
    format: str
    objects: int
    parts: list[str]


class BatchError(BaseModel):
    step: str | None
    message: str


class RunInfo(BaseModel):
    run_id: str
    status: str
    started_at: str | None
    ended_at: str | None


class BatchStatus(BaseModel):
    batch_id: str
    state: Literal["queued", "running", "succeeded", "completed_with_errors", "failed"] = Field(
        description=(
            "queued: no run has started. running: its run is under way. succeeded: published, every image tagged, "
            "no check of severity ERROR failed. completed_with_errors: published, some images are error rows, no "
            "check of severity ERROR failed. failed: the run failed, published nothing, a check of severity ERROR "
            "failed, or no image could be tagged (`error` says which)."
        )
    )
    progress: float = Field(
        description="0 to 1: images tagged or errored out of the batch's images, as chunks report them; 1 once over"
    )
    counts: Counts
    checks: list[CheckResult]
    result: BatchResult | None
    error: BatchError | None
    run: RunInfo | None
    model: ModelVersion
    output: str
    manifest: str
    reference: str | None
    submitted_at: str


class BatchSummary(BaseModel):
    batch_id: str
    status_url: str
    images: int
    model: ModelVersion
    output: str
    reference: str | None = None
    submitted_at: str


class BatchList(BaseModel):
    batches: list[BatchSummary]


class Tag(BaseModel):
    name: str
    confidence: float
    parents: list[str]


class ImageTags(BaseModel):
    filename: str
    sha256: str
    status: Literal["ok"]
    tags: list[Tag]
    top_tag: str
    top_confidence: float


class TagResponse(BaseModel):
    model: ModelVersion
    results: list[ImageTags]
    timing_ms: dict[str, float]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    kind: str
    num_classes: int
    description: str = ""
    default: bool = False


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


_STATUS_MEANING = {
    400: "Malformed request (a multipart body that cannot be parsed): bad_request",
    401: "No API key, or not a valid one: unauthenticated, invalid_api_key",
    403: "Outside your locations: output_forbidden, image_forbidden, manifest_forbidden",
    404: "Not found (or not yours): batch_not_found, not_found",
    405: "Another method than the path's: method_not_allowed",
    413: "Too large: request_too_large, too_many_images, image_too_large, manifest_too_large",
    422: "Invalid: invalid_request, invalid_manifest, manifest_not_found, invalid_model, unknown_model, invalid_image",
    503: "Not now: busy (retry after Retry-After seconds), dagster_unavailable, not_ready",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _STATUS_MEANING[status]} for status in statuses}


# --- the request size limit ---------------------------------------------------------------------------------


class BodyLimit:
    """Refuses a body over `max_bytes` with 413: by its Content-Length up front, or as it streams in."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            # No route reads the body of another method: a GET with a body is answered as if it had none.
            await self.app(scope, receive, send)
            return
        error = ApiError(413, "request_too_large", f"the request body is larger than {self.max_bytes} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > self.max_bytes:
                    await JSONResponse(error.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing unchanged, to the handler below.
                    raise StarletteHTTPException(413, error.message)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except StarletteHTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await JSONResponse(error.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)


# --- nothing secret in the logs -----------------------------------------------------------------------------

# An API key as keys.py makes them (tp_<customer>_<secret>), wherever in a line it was put.
_KEY_SHAPED = re.compile(r"tp_[a-z0-9-]{1,40}_[A-Za-z0-9_-]+")
class RedactSecrets(logging.Filter):
    """Drops the query string from access-log lines and masks anything shaped like an API key, in any record.

    The record keeps its shape (uvicorn's access formatter unpacks its five arguments): only strings change.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, version, status = args
            args = (client, method, str(path).split("?", 1)[0], version, status)
        if isinstance(args, tuple):
            record.args = tuple(_KEY_SHAPED.sub("tp_[redacted]", a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str):
            record.msg = _KEY_SHAPED.sub("tp_[redacted]", record.msg)
        return True


def redact_access_log() -> None:
    """Put RedactSecrets on uvicorn's loggers and ours (once)."""
    # A logger's filters see only its own records, not its children's: each logger that writes is named.
    for name in ("uvicorn.access", "uvicorn.error", log.name):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


# --- the application ----------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, *, dagster: DagsterClient | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    client = make_client(settings)
    customers = CustomerStore(client, settings)
    batches = Batches(client, settings, customers, dagster or DagsterClient(settings.dagster_url, timeout_s=15))
    metrics = ApiMetrics()
    cache = ModelCache(client, settings, on_load=lambda ref, seconds: metrics.model_load_seconds.labels(ref.name).observe(seconds))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def evict_idle_models():
            while True:
                await asyncio.sleep(max(1.0, min(60.0, settings.api_model_idle_s / 4)))
                await run_in_threadpool(cache.evict_idle)

        def preload_default_model():
            # The first POST /v1/tag should not pay for loading the default model; a failure here only
            # means the first request loads it (or reports why it cannot).
            try:
                cache.get(models.resolve_model(client, settings.model_bucket, settings.default_model))
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

    app = FastAPI(
        title="Tagging platform API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served below from swagger-ui-bundle's files: /docs works on a network without internet.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.customers = customers
    app.state.batches = batches
    app.state.models = cache

    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")

    def customer(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        api_key: Annotated[str | None, Depends(api_key_header)],
    ) -> Customer:
        bearer_key = credentials.credentials if credentials else None
        if api_key and bearer_key and api_key != bearer_key:
            # Which one would count is a guess; a client that sends two keys gets neither.
            raise ApiError(401, "invalid_api_key", "two different API keys were sent (Authorization and X-API-Key)")
        key = api_key or bearer_key
        if not key:
            raise ApiError(401, "unauthenticated", "an API key is required: Authorization: Bearer <key> or X-API-Key")
        found = customers.authenticate(key)
        if found is None:
            raise ApiError(401, "invalid_api_key", "the API key is not valid")
        return found

    Authenticated = Annotated[Customer, Depends(customer)]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.code == ErrorCode.BUSY:
            headers = {"Retry-After": str(exc.details["retry_after_s"])}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"location": "", "message": "invalid request"}
        message = f"{first['location']}: {first['message']}" if first["location"] else first["message"]
        return JSONResponse(ApiError(422, "invalid_request", message, details).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        code = codes.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(
            ApiError(exc.status_code, code, message).body(), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            ApiError(500, "internal_error", "the server failed to handle the request; it has been logged").body(),
            status_code=500,
        )

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

    def batch_url(batch_id: str) -> str:
        # The configured public URL, never the request's Host header (a client chooses that one).
        return settings.api_base_url + app.url_path_for("get_batch", batch_id=batch_id)

    @app.get(
        "/healthz", response_model=Health, tags=["health"], summary="Liveness: the process answers",
        responses=_errors(405),
    )
    def healthz() -> dict:
        return {"status": "ok", "checks": {}}

    @app.get(
        "/readyz", response_model=Health, tags=["health"], summary="Readiness: S3 is reachable",
        responses=_errors(405, 503),
    )
    def readyz():
        try:
            client.head_bucket(Bucket=settings.warehouse_bucket)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return JSONResponse(
                ApiError(503, "not_ready", f"S3 is unreachable: {type(exc).__name__}").body(), status_code=503
            )
        return {"status": "ok", "checks": {"s3": "ok", "models_loaded": ",".join(cache.loaded()) or "none"}}

    @app.post(
        "/v1/batches",
        status_code=202,
        response_model=BatchAccepted,
        tags=["batches"],
        summary="Submit a batch: a manifest in the body or an s3:// URI of one",
        responses=_errors(400, 401, 403, 405, 413, 422),
    )
    def submit_batch(body: BatchRequest, who: Authenticated):
        record = batches.submit(
            who, images=body.images, manifest_uri=body.manifest, model=body.model, output=body.output, reference=body.id,
            publish_options=body.model_dump(include={"output_format", "max_labels", "min_confidence"}, exclude_none=True),
        )
        status_url = batch_url(record["batch_id"])
        answer = {
            **record,
            "status_url": status_url,
            "state": "queued",
            "model": {"name": record["model"]["name"], "version": record["model"]["version"]},
        }
        return JSONResponse(answer, status_code=202, headers={"Location": status_url})

    @app.get(
        "/v1/batches", response_model=BatchList, tags=["batches"], summary="Your batches, newest first",
        responses=_errors(401, 405, 422),
    )
    def list_batches(who: Authenticated, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
        return {
            "batches": [
                {
                    **record,
                    "status_url": batch_url(record["batch_id"]),
                    "model": {"name": record["model"]["name"], "version": record["model"]["version"]},
                }
                for record in batches.list(who, limit)
            ]
        }

    @app.get(
        "/v1/batches/{batch_id}",
        response_model=BatchStatus,
        tags=["batches"],
        summary="A batch's state, counts, progress, check results and result location",
        responses=_errors(401, 404, 405, 503),
        name="get_batch",
    )
    def get_batch(batch_id: str, who: Authenticated):
        return batches.status(who, batch_id)

    @app.post(
        "/v1/tag",
        response_model=TagResponse,
        tags=["tagging"],
        summary="Tag one image (or a few) synchronously: multipart field `image`, repeatable",
        description=(
            "At most `TP_API_MAX_TAG_IMAGES` images (8 by default) per request, each of at most "
            "`TP_API_MAX_TAG_PIXELS` pixels (89,478,485 by default; width x height, read from the file's header "
            "before anything is decoded: larger is 413 `image_too_large`, submit it in a batch). Images are "
            "decoded within a pixel budget shared by every request of the server; when it stays taken too long "
            "the answer is 503 `busy` with `Retry-After`."
        ),
        responses=_errors(400, 401, 405, 413, 422, 503),
    )
    async def tag_images(
        who: Authenticated,
        image: Annotated[list[UploadFile], File(description="image files (JPEG, PNG, ...)")],
        model: Annotated[str | None, Query(description='"name" or "name@version"')] = None,
    ):
        spec = model or settings.default_model
        if not _MODEL_SPEC.match(spec):
            raise ApiError(422, "invalid_model", f"{spec[:100]!r} is not a model name or name@version", {"field": "model"})
        if len(image) > settings.api_max_tag_images:
            raise ApiError(
                413, "too_many_images", f"at most {settings.api_max_tag_images} images per request; submit a batch for more"
            )
        files = [(upload.filename or f"image-{i + 1}", await upload.read()) for i, upload in enumerate(image)]

        def work():
            try:
                ref = models.resolve_model(client, settings.model_bucket, spec)
            except models.ModelError as exc:
                raise ApiError(422, "unknown_model", str(exc), {"field": "model"}) from None
            started = time.perf_counter()
            try:
                answer = cache.tag(ref, files)
            except ApiError as exc:
                if exc.code == "invalid_image":
                    metrics.tagged(ref.name, ok=0, errors=1, seconds=0)
                raise
            metrics.tagged(ref.name, ok=len(files), errors=0, seconds=time.perf_counter() - started)
            return answer

        return await run_in_threadpool(work)

    @app.get(
        "/v1/models", response_model=ModelList, tags=["models"], summary="The registered models (latest versions)",
        responses=_errors(401, 405),
    )
    def list_models(who: Authenticated):
        cards = models.list_models(client, settings.model_bucket)
        keep = ("name", "version", "kind", "architecture", "num_classes", "description", "preprocessing", "profile")
        return {
            "models": [
                {**{k: card.get(k) for k in keep if k in card}, "default": card["name"] == settings.default_model}
                for card in cards
            ]
        }

    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema without its generic 422 where no input can be invalid (a path's string parameter)."""
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

    # Prometheus scrapes it inside the cluster (deploy/prometheus/scrape-configs.yml); no key, no customer data.
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.metrics = metrics
    return app
