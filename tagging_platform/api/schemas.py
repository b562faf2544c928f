"""The API's request and response bodies (pydantic), and the error responses each route declares in its schema."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tagging_platform.api.errors import ErrorCode


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
        None,
        description="jsonl, objects, rekognition (DetectLabels responses) or groundtruth (a Ground Truth "
        "output manifest); default: the deployment's (docs/formats.md)",
    )
    max_labels: int | None = Field(None, ge=0, description="rekognition: DetectLabels' MaxLabels")
    min_confidence: float | None = Field(
        None, ge=0, le=100, description="rekognition: DetectLabels' MinConfidence (0-100)"
    )


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
    429: "Over one of your limits (retry after Retry-After seconds): rate_limited, too_many_batches",
    503: "Not now: busy (retry after Retry-After seconds), dagster_unavailable, not_ready",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _STATUS_MEANING[status]} for status in statuses}
