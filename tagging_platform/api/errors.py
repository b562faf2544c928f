"""The API's one error type: an HTTP status, a stable machine-readable code and a message for people."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Answered as `{"error": {"code": ..., "message": ..., "details": ...}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}
