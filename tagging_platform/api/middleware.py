"""What wraps every request: the body size limit, and the log filter that keeps secrets out of the logs."""

from __future__ import annotations

import logging
import re

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tagging_platform.api.errors import ApiError

log = logging.getLogger("tagging_platform.api")


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
                    await JSONResponse(error.body(), status_code=413, headers={"Connection": "close"})(
                        scope, receive, send
                    )
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
