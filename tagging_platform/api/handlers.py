"""One JSON shape for every error: ApiError, FastAPI's validation errors, Starlette's HTTP errors and the unexpected."""

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tagging_platform.api.errors import ApiError

log = logging.getLogger("tagging_platform.api")


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc.details, dict) and "retry_after_s" in exc.details:  # busy, rate_limited, too_many_batches
        headers = {"Retry-After": str(exc.details["retry_after_s"])}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [
        {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    first = details[0] if details else {"location": "", "message": "invalid request"}
    message = f"{first['location']}: {first['message']}" if first["location"] else first["message"]
    return JSONResponse(ApiError(422, "invalid_request", message, details).body(), status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    code = codes.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return JSONResponse(
        ApiError(exc.status_code, code, message).body(), status_code=exc.status_code, headers=exc.headers
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        ApiError(500, "internal_error", "the server failed to handle the request; it has been logged").body(),
        status_code=500,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
