"""Liveness and readiness: /healthz (the process answers) and /readyz (S3 is reachable)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tagging_platform.api.deps import S3, AppSettings, Models
from tagging_platform.api.errors import ApiError
from tagging_platform.api.schemas import Health, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers", responses=error_responses(405))
def healthz() -> dict:
    return {"status": "ok", "checks": {}}


@router.get("/readyz", response_model=Health, summary="Readiness: S3 is reachable", responses=error_responses(405, 503))
def readyz(s3: S3, settings: AppSettings, cache: Models):
    try:
        s3.head_bucket(Bucket=settings.warehouse_bucket)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return JSONResponse(
            ApiError(503, "not_ready", f"S3 is unreachable: {type(exc).__name__}").body(), status_code=503
        )
    return {"status": "ok", "checks": {"s3": "ok", "models_loaded": ",".join(cache.loaded()) or "none"}}
