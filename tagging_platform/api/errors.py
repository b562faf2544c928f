"""The API's one error type: an HTTP status, a stable machine-readable code and a message for people."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Every `code` the API answers with (the schema's enum; docs/api.md says when each is given)."""

    BAD_REQUEST = "bad_request"
    UNAUTHENTICATED = "unauthenticated"
    INVALID_API_KEY = "invalid_api_key"
    OUTPUT_FORBIDDEN = "output_forbidden"
    IMAGE_FORBIDDEN = "image_forbidden"
    MANIFEST_FORBIDDEN = "manifest_forbidden"
    NOT_FOUND = "not_found"
    BATCH_NOT_FOUND = "batch_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TOO_LARGE = "request_too_large"
    TOO_MANY_IMAGES = "too_many_images"
    IMAGE_TOO_LARGE = "image_too_large"
    MANIFEST_TOO_LARGE = "manifest_too_large"
    INVALID_REQUEST = "invalid_request"
    INVALID_MANIFEST = "invalid_manifest"
    MANIFEST_NOT_FOUND = "manifest_not_found"
    INVALID_MODEL = "invalid_model"
    UNKNOWN_MODEL = "unknown_model"
    INVALID_IMAGE = "invalid_image"
    INTERNAL_ERROR = "internal_error"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_BATCHES = "too_many_batches"
    DAGSTER_UNAVAILABLE = "dagster_unavailable"
    NOT_READY = "not_ready"


class ApiError(Exception):
    """Answered as `{"error": {"code": ..., "message": ..., "details": ...}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = ErrorCode(code)  # a code outside the enum is a bug: the schema would not describe it
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}
