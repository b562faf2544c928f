"""What routes take through Depends: the objects the application shares (on app.state) and the customer a key names."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from tagging_platform.api.batches import Batches
from tagging_platform.api.errors import ApiError
from tagging_platform.api.inference import ModelCache
from tagging_platform.api.keys import Customer, CustomerStore
from tagging_platform.api.limits import TagRateLimit
from tagging_platform.api.metrics import ApiMetrics
from tagging_platform.settings import Settings

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


def _shared(name: str):
    """A dependency that hands a route the object create_app put on app.state under `name`."""

    def shared(request: Request):
        return getattr(request.app.state, name)

    return shared


AppSettings = Annotated[Settings, Depends(_shared("settings"))]
Customers = Annotated[CustomerStore, Depends(_shared("customers"))]
BatchStore = Annotated[Batches, Depends(_shared("batches"))]
Models = Annotated[ModelCache, Depends(_shared("models"))]
Metrics = Annotated[ApiMetrics, Depends(_shared("metrics"))]
S3 = Annotated[object, Depends(_shared("s3"))]
TagRate = Annotated[TagRateLimit, Depends(_shared("tag_rate"))]


def customer(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
    customers: Customers,
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
