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


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _customers(request: Request) -> CustomerStore:
    return request.app.state.customers


def _batches(request: Request) -> Batches:
    return request.app.state.batches


def _models(request: Request) -> ModelCache:
    return request.app.state.models


def _metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


def _tag_rate(request: Request) -> TagRateLimit:
    return request.app.state.tag_rate


def _s3(request: Request):
    return request.app.state.s3


AppSettings = Annotated[Settings, Depends(_settings)]
Customers = Annotated[CustomerStore, Depends(_customers)]
BatchStore = Annotated[Batches, Depends(_batches)]
Models = Annotated[ModelCache, Depends(_models)]
Metrics = Annotated[ApiMetrics, Depends(_metrics)]
S3 = Annotated[object, Depends(_s3)]
TagRate = Annotated[TagRateLimit, Depends(_tag_rate)]


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
